"""ZipIt! on language models: two tiny Llamas from different inits on two text domains (reported).

Data (offline, from this machine's files, read in sorted order):

- ``code``: Python source of the standard library, ``/usr/lib/python3.*/*.py``;
- ``prose``: English prose, the license texts under ``/usr/share/common-licenses`` and the
  README and ``*.txt`` files of the package documentation under ``/usr/share/doc``, paragraphs
  that are mostly letters and spaces (no tables, code samples or changelogs).

Both are cut into paragraphs and each distinct paragraph is kept once.

Each domain is cut to ``--max-bytes``, split by position into train (90%), validation (5%) and
test (5%). Tokenizer: raw bytes (vocabulary 256, no merges). Two ``LlamaForCausalLM`` models
(``transformers``; hidden 128, MLP 352, 4 layers, 4 query / 2 KV heads) are trained from
*different random initialisations*, model A on code and model B on prose, then merged through
``raymerge run`` (the zipit path: statistics actors, matchers, per-tensor jobs) on a local Ray:

- ``weight_avg``: ``merge_method: zipit`` with ``matcher: identity`` (plain averaging);
- ``permute``: Hungarian matching of activations, then averaging;
- ``zipit``: the greedy ZipIt! matcher, every layer zipped;
- ``partial@k``: ``stop_at: k`` (layers 0..k-1 zipped; one checkpoint per model, their logits
  averaged as in the ensemble); ``partial@k b0``: the same with ``beta: 0`` (no within-model
  merges, so each model's residual features are matched one-to-one and its own layers see the
  trunk's output exactly);
- ``ensemble``: both original models, logits averaged (two full forward passes);
- oracles that know the domain: ``own models`` (model A on code, model B on prose) and
  ``partial@k own`` (partial-zip checkpoint j on model j's domain).

Calibration: ``--calibration`` training windows, half from each domain. Reported: perplexity on
each domain's test split and jointly (the exponential of the mean loss over both), per seed and
the mean over seeds. Every output checkpoint is loaded with ``AutoModelForCausalLM``.

Usage::

    python benchmarks/zipit_lm.py [--seeds 0,1,2] [--steps 600] [--workdir DIR]

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import gzip
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from raymerge.cli import main as raymerge_main

DOMAINS = ("code", "prose")


def domain_files(name: str) -> list[str]:
    if name == "code":
        return sorted(glob.glob("/usr/lib/python3.*/*.py"))
    lic = sorted({os.path.realpath(p) for p in glob.glob("/usr/share/common-licenses/*")})
    docs = sorted(
        p
        for pat in ("README*", "*.txt", "*.txt.gz")
        for p in glob.glob(f"/usr/share/doc/**/{pat}", recursive=True)
        if os.path.isfile(p)
    )
    return lic + docs


def prose_like(para: bytes) -> bool:
    """A paragraph of English prose: mostly letters and spaces, a few words at least (drops
    tables, code samples and changelog entries from the documentation)."""
    words = para.split()
    if not 8 <= len(words) <= 600:  # a few words; not a table thousands of lines long
        return False
    text = para.decode("latin-1")
    letters = sum(c.isalpha() or c.isspace() for c in text)
    plain = sum(w.strip(b".,;:!?()\"'").isalpha() for w in words)
    return letters >= 0.85 * len(text) and plain >= 0.75 * len(words)


def domain_bytes(name: str, limit: int) -> bytes:
    """The domain's text: files in sorted order, cut into paragraphs (blank-line separated),
    each distinct paragraph kept once (license texts and READMEs repeat a lot; without this 39%
    of the prose test windows appeared verbatim in its training part), joined by blank lines and
    cut to ``limit`` bytes."""
    seen: set[bytes] = set()
    parts, size = [], 0
    for path in domain_files(name):
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if b"\0" in data:  # not text
            continue
        for para in data.replace(b"\r\n", b"\n").split(b"\n\n"):
            key = b" ".join(para.split())
            if len(key) < 16 or key in seen or (name == "prose" and not prose_like(para)):
                continue
            seen.add(key)
            parts.append(para.strip(b"\n"))
            size += len(para) + 2
        if size >= limit:
            break
    text = b"\n\n".join(parts)[:limit]
    if len(text) < limit // 4:
        raise SystemExit(f"domain {name}: only {len(text)} bytes of text found")
    return text


def splits(data: bytes) -> dict[str, torch.Tensor]:
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    a, b = int(0.9 * len(t)), int(0.95 * len(t))
    return {"train": t[:a], "val": t[a:b], "test": t[b:]}


def model_config(seq: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=seq,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def windows(t: torch.Tensor, n: int, seq: int, g: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(t) - seq - 1, (n,), generator=g)
    return torch.stack([t[s : s + seq + 1] for s in starts.tolist()])


def train(data: torch.Tensor, seed: int, args) -> torch.nn.Module:
    """AdamW, linear warm-up then cosine decay, on random windows of one domain."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)  # the initialisation: different per model
    model = LlamaForCausalLM(model_config(args.seq))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed + 1)
    for step in range(args.steps):
        warm = min(1.0, (step + 1) / 50)
        cos = 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * (0.1 + 0.9 * cos)
        batch = windows(data, args.batch, args.seq, g)
        loss = model(batch[:, :-1], labels=batch[:, :-1]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_windows(t: torch.Tensor, seq: int, most: int) -> torch.Tensor:
    n = min(most, (len(t) - 1) // seq)
    return torch.stack([t[i * seq : i * seq + seq + 1] for i in range(n)])


@torch.no_grad()
def nll(models: list, batch: torch.Tensor) -> float:
    """Mean next-byte loss of the models' averaged logits."""
    logits = sum(m(batch[:, :-1]).logits for m in models) / len(models)
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()))


def merge(work: Path, name: str, cfg: dict) -> list:
    """``raymerge run`` on the config; the output's checkpoint(s), loaded with transformers."""
    from transformers import AutoModelForCausalLM

    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    out = work / f"out-{name}"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        rc = raymerge_main(["run", str(path), str(out), "--no-progress", "--overwrite"])
    if rc != 0:
        raise RuntimeError(f"raymerge run failed for {name}:\n{err.getvalue()}")
    folders = sorted(out.glob("model_*")) or [out]
    models = []
    for f in folders:
        m, info = AutoModelForCausalLM.from_pretrained(str(f), output_loading_info=True)
        assert not any(info.values()), (name, info)
        models.append(m.eval())
    return models


def run_seed(seed: int, data: dict, args, work: Path) -> dict[str, dict[str, float]]:
    """Train both models, merge every way, evaluate (losses per domain)."""
    t0 = time.perf_counter()
    models = {
        d: train(data[d]["train"], 1000 * (i + 1) + seed, args) for i, d in enumerate(DOMAINS)
    }
    paths = []
    for d, m in models.items():
        m.save_pretrained(str(work / d), safe_serialization=True)
        paths.append(str(work / d))
    g = torch.Generator().manual_seed(seed)
    half = args.calibration // 2
    cal = torch.cat([windows(data[d]["train"], half, args.seq - 1, g) for d in DOMAINS])
    save_file({"input_ids": cal.contiguous()}, str(work / "calibration.safetensors"))
    print(f"  seed {seed}: trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def cfg(method: str, **params) -> dict:
        return {
            "merge_method": method,
            "models": [{"model": p} for p in paths],
            "parameters": params,
            "calibration": {"url": str(work / "calibration.safetensors"), "batch_size": 16},
        }

    ab = {"alpha": args.alpha, "beta": args.beta}
    merged = {
        "weight_avg": merge(work, "avg", cfg("zipit", matcher="identity")),
        "permute": merge(work, "permute", cfg("permute")),
        "zipit": merge(work, "zipit", cfg("zipit", **ab)),
    }
    for k in args.stop_at:
        merged[f"partial@{k}"] = merge(work, f"partial{k}", cfg("zipit", **ab, stop_at=k))
    if args.beta != 0:  # residual matched across models only: the heads' unmerge is a permutation
        for k in args.stop_at:
            merged[f"partial@{k} b0"] = merge(
                work, f"partial{k}b0", cfg("zipit", alpha=args.alpha, beta=0.0, stop_at=k)
            )
    rows = {"model_code": [models["code"]], "model_prose": [models["prose"]]}
    rows.update(merged)
    rows["ensemble"] = [models["code"], models["prose"]]
    tests = {d: test_windows(data[d]["test"], args.seq, args.eval_windows) for d in DOMAINS}
    out = {k: {d: nll(ms, tests[d]) for d in DOMAINS} for k, ms in rows.items()}
    # oracles: each model (or each partial-zip checkpoint, model_j = model j) on its own domain
    own = {"own models": [models["code"], models["prose"]]}
    own.update({f"{k} own": merged[k] for k in merged if k.startswith("partial")})
    for k, ms in own.items():
        out[k] = {d: nll([m], tests[d]) for d, m in zip(DOMAINS, ms)}
    return out


def ppl_table(losses: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {
            "code": math.exp(v["code"]),
            "prose": math.exp(v["prose"]),
            "joint": math.exp((v["code"] + v["prose"]) / 2),
        }
        for k, v in losses.items()
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-bytes", type=int, default=2_000_000)
    ap.add_argument("--calibration", type=int, default=64, help="calibration windows")
    ap.add_argument("--eval-windows", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--stop-at", default="1,2", help="partial zip depths (of 4 layers)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    args.stop_at = [int(v) for v in args.stop_at.split(",")]
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)  # two threads on the shared 2-core machine ran 3x slower
    work = Path(args.workdir or tempfile.mkdtemp(prefix="zipit-lm-"))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    data = {d: splits(domain_bytes(d, args.max_bytes)) for d in DOMAINS}
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    per_seed = {}
    try:
        for seed in (int(s) for s in args.seeds.split(",")):
            (work / f"seed{seed}").mkdir(parents=True, exist_ok=True)
            per_seed[seed] = ppl_table(run_seed(seed, data, args, work / f"seed{seed}"))
    finally:
        ray.shutdown()
    keys = list(next(iter(per_seed.values())))
    mean = {
        k: {
            c: sum(p[k][c] for p in per_seed.values()) / len(per_seed)
            for c in ("code", "prose", "joint")
        }
        for k in keys
    }
    print(f"byte-level perplexity, mean over seeds {list(per_seed)} (code / prose / joint):")
    for k in keys:
        spread = " ".join(f"{per_seed[s][k]['joint']:.2f}" for s in per_seed)
        print(
            f"  {k:12s} {mean[k]['code']:7.2f} {mean[k]['prose']:7.2f} {mean[k]['joint']:7.2f}"
            f"   (joint per seed: {spread})"
        )
    print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    out = {"mean": mean, "per_seed": per_seed, "args": {k: v for k, v in vars(args).items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
