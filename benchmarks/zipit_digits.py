"""ZipIt! on digits: the paper's disjoint-task table in small (reported, not gated).

Two MLPs (64 -> H -> H -> 10, ReLU) from *different random initializations* are trained on
disjoint halves of the classes of scikit-learn's ``load_digits`` (shipped inside the package: no
download), each with the full 10-way output. They are merged through the same code path as
``raymerge run`` (the CLI entry point on a local Ray: statistics actors, tree reduce, matcher
tasks, per-tensor jobs, writer, manifest) and evaluated on the joint 10-class test set:

- ``model_a`` / ``model_b``: each model alone (at most ~50% each: it never saw half the classes);
- ``ensemble``: the sum of both models' softmaxes (two forward passes; the upper reference);
- ``weight_avg``: ``merge_method: zipit`` with ``matcher: identity`` (plain weight averaging);
- ``permute``: ``merge_method: permute`` (Hungarian matching of activations, then averaging);
- ``zipit``: the ZipIt! greedy matcher (``alpha``, ``beta``), all layers zipped;
- ``zipit_partial``: ``stop_at: 1`` (only the first layer zipped; one head per model, their
  softmaxes summed as in the ensemble).

Calibration data: ``--calibration`` training images from both tasks (the paper uses data of both
tasks). ``alpha``/``beta`` are picked on a validation split held out of the training data, over
the grid ``--alphas`` x ``--betas`` (the test set is never used for choosing).

Usage::

    python benchmarks/zipit_digits.py [--seed 0] [--split 0,1,2,3,4] [--hidden 64]

The last line printed is one JSON object with keys ``model_a, model_b, ensemble, weight_avg,
permute, zipit, zipit_partial`` (accuracies in percent) plus the chosen ``alpha``/``beta``.
Reference shape (paper, CIFAR-10 5+5): W.Avg 43.0, Permute 58.4, ZipIt 79.1, partial 83.8,
ensemble 87.4.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from raymerge.cli import main as raymerge_main
from raymerge.zipit.forward import mlp_forward


def load_data(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xtr, ytr, test_size=0.2, random_state=seed, stratify=ytr)
    return (xtr, ytr), (xva, yva), (xte, yte)


def train(x, y, hidden: int, seed: int, epochs: int = 400) -> dict[str, torch.Tensor]:
    """Full-batch Adam on one task's data; the model keeps the full 10-way output."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    out = {}
    for i, m in enumerate(layers):
        out[f"layers.{i}.weight"] = m.weight.detach().clone()
        out[f"layers.{i}.bias"] = m.bias.detach().clone()
    return out


def probs(tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Softmax of a plain MLP, or the sum of the heads' softmaxes of a partial zip."""
    with torch.no_grad():
        out, _ = mlp_forward(tensors, x)
    if isinstance(out, list):
        return sum(o.softmax(-1) for o in out)
    return out.softmax(-1)


def accuracy(p: torch.Tensor, y: torch.Tensor) -> float:
    return float((p.argmax(-1) == y).float().mean()) * 100


def merge(work: Path, name: str, cfg: dict) -> dict[str, torch.Tensor]:
    """``raymerge run`` on the config (the CLI entry point, in this process's Ray)."""
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    out = work / f"out-{name}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        rc = raymerge_main(["run", str(path), str(out), "--no-progress", "--overwrite"])
    if rc != 0:
        raise RuntimeError(f"raymerge run failed for {name}:\n{err.getvalue()}")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="0,1,2,3,4", help="classes of model A; B gets the rest")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=500, help="calibration samples")
    ap.add_argument("--alphas", default="0.3,0.5,0.7")
    ap.add_argument("--betas", default="0.25,0.5,1.0")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="zipit-digits-"))
    work.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xva, yva), (xte, yte) = load_data(args.seed)
    task_a = torch.tensor([int(c) for c in args.split.split(",")])
    in_a = torch.isin(ytr, task_a)
    a = train(xtr[in_a], ytr[in_a], args.hidden, seed=1000 + args.seed)
    b = train(xtr[~in_a], ytr[~in_a], args.hidden, seed=2000 + args.seed)
    paths = []
    for name, t in (("a", a), ("b", b)):
        (work / name).mkdir(exist_ok=True)
        save_file(t, str(work / name / "model.safetensors"), metadata={"format": "pt"})
        paths.append(str(work / name))
    g = torch.Generator().manual_seed(args.seed)
    cal = xtr[torch.randperm(len(xtr), generator=g)[: args.calibration]]
    save_file({"inputs": cal.contiguous()}, str(work / "calibration.safetensors"))

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:

        def cfg(method: str, **params) -> dict:
            return {
                "merge_method": method,
                "models": [{"model": p} for p in paths],
                "parameters": params,
                "calibration": {"url": str(work / "calibration.safetensors"), "batch_size": 100},
            }

        # alpha/beta on the validation split
        grid = []
        for al in (float(v) for v in args.alphas.split(",")):
            for be in (float(v) for v in args.betas.split(",")):
                m = merge(work, f"tune-{al}-{be}", cfg("zipit", alpha=al, beta=be))
                grid.append((accuracy(probs(m, xva), yva), al, be))
        _, alpha, beta = max(grid, key=lambda r: (r[0], -r[1], -r[2]))
        merged = {
            "weight_avg": merge(work, "avg", cfg("zipit", matcher="identity")),
            "permute": merge(work, "permute", cfg("permute")),
            "zipit": merge(work, "zipit", cfg("zipit", alpha=alpha, beta=beta)),
            "zipit_partial": merge(
                work, "partial", cfg("zipit", alpha=alpha, beta=beta, stop_at=1)
            ),
        }
    finally:
        ray.shutdown()
    res = {
        "model_a": accuracy(probs(a, xte), yte),
        "model_b": accuracy(probs(b, xte), yte),
        "ensemble": accuracy(probs(a, xte) + probs(b, xte), yte),
        **{k: accuracy(probs(m, xte), yte) for k, m in merged.items()},
    }
    print(f"digits, classes {args.split} vs the rest, hidden {args.hidden}, seed {args.seed}")
    print(f"alpha {alpha}, beta {beta} (validation grid: {len(grid)} zipit runs)")
    for k, v in res.items():
        print(f"  {k:14s} {v:6.1f}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    out = {k: round(v, 2) for k, v in res.items()}
    out.update(alpha=alpha, beta=beta, seed=args.seed, split=args.split, hidden=args.hidden)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
