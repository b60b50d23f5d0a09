"""Cold start: a tiny merge from a fresh CLI process, raymerge against mergekit.

What a user waits for when they merge small models (a smoke test, a CI check, a notebook):
interpreter start-up, imports, planning, the merge and the commit, from a process that starts
nothing in advance. Measured on the ``small`` family (~4M parameters, 8 MB of bf16 per model,
built once), linear over the two fine-tunes, interleaved repetitions (median):

* **raymerge, auto**: ``raymerge run CFG OUT`` with no cluster: small merges run in-process on
  threads (``--executor auto`` picks the local executor), no Ray started;
* **raymerge, ray**: the same with ``--executor ray``: a local Ray is started and shut down by
  the command (what every cold run did before the local executor);
* **mergekit**: ``mergekit-yaml CFG OUT`` (0.1.5, ``--quiet``), when ``--mergekit`` (or
  ``mergekit-yaml`` on PATH) is given;
* **imports**: ``python -c "import raymerge.cli"`` and ``python -c "import ray"``, for the share
  of start-up that is not the merge.

The two raymerge outputs are compared byte for byte (shards and manifest checksums).
The last line printed is one JSON object holding every number.

Usage::

    python benchmarks/cold_start.py [--repeats 5] [--mergekit PATH/mergekit-yaml]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCALES, build_family, median  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return dt


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.safetensors"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "raymerge-cold"))
    ap.add_argument("--mergekit", default=shutil.which("mergekit-yaml"))
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    models = build_family(work / "models", SCALES["small"]["model"])
    cfg = {
        "merge_method": "linear",
        "models": [
            {"model": str(models[n]), "parameters": {"weight": 0.5}} for n in ("ft1", "ft2")
        ],
        "dtype": "bfloat16",
    }
    path = work / "linear.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    raymerge = str(BIN / "raymerge")
    runs = {
        "raymerge auto (in-process)": lambda out: [
            raymerge, "run", str(path), out, "--no-progress",
        ],
        "raymerge --executor ray (local Ray)": lambda out: [
            raymerge, "run", str(path), out, "--no-progress", "--executor", "ray",
        ],
        "import raymerge.cli": lambda out: [sys.executable, "-c", "import raymerge.cli"],
        "import ray": lambda out: [sys.executable, "-c", "import ray"],
    }  # fmt: skip
    if args.mergekit:
        runs["mergekit-yaml"] = lambda out: [args.mergekit, str(path), out, "--quiet"]
    times: dict[str, list[float]] = {k: [] for k in runs}
    outs = {name: work / f"out-{i}" for i, name in enumerate(runs)}
    for _ in range(args.repeats):  # interleaved: drift on a shared machine hits every row alike
        for name, cmd in runs.items():
            shutil.rmtree(outs[name], ignore_errors=True)
            times[name].append(timed(cmd(str(outs[name]))))
    auto = shard_bytes(outs["raymerge auto (in-process)"])
    same = bool(auto) and auto == shard_bytes(outs["raymerge --executor ray (local Ray)"])
    result = {
        k: {"median_s": round(median(v), 2), "runs_s": [round(x, 2) for x in v]}
        for k, v in times.items()
    }
    print(f"{'run':40s} {'median s':>9s}  runs")
    for k, v in result.items():
        print(f"{k:40s} {v['median_s']:9.2f}  {v['runs_s']}")
    if "mergekit-yaml" in result:
        mk = result["mergekit-yaml"]["median_s"]
        for k in ("raymerge auto (in-process)", "raymerge --executor ray (local Ray)"):
            print(f"mergekit / {k}: {mk / result[k]['median_s']:.2f}x")
    print(f"auto and ray outputs bit-identical: {same}")
    print(json.dumps({"cold_start": result, "identical": same}))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
