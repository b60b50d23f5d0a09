"""ZipIt at ~1B parameters from S3: the statistics actor's memory stays flat as layers are added.

Two Llama-shaped models with random weights (``raymerge.synth``; hidden 2048, MLP 5632, 32
query / 8 KV heads, vocabulary 32000, bf16), at ``--layers`` depths (4 and 16 by default: same
width), are uploaded to a local S3 endpoint (moto's server in a child process) and zipped with
``raymerge run`` (statistics actors range-reading one layer at a time from S3, one matcher task
per space, per-tensor jobs reading S3 and writing a local folder). Per depth it reports the
statistics actor's planned and measured peak RSS (VmHWM, measured inside the actor: it also counts
the object-store pages the actor wrote its statistics into) and its private memory (RssAnon when
each layer's statistics are ready), the seconds
per streamed layer, statistics / matching / apply / wall seconds, and the bytes the statistics
read. Everything is removed afterwards (``df -h`` first: ~2 GB of bf16 per 1B model, twice:
local files and the S3 copies).

Usage::

    python benchmarks/zipit_scale.py [--layers 4,16] [--matcher zipit] [--samples 4 --seq 128]

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LocalS3, gb

BUILD = """
import json, sys, torch
from raymerge.synth import llama_config, random_weights, save_checkpoint
cfg = llama_config(**json.loads(sys.argv[2]))
for name, seed in (("a", 1), ("b", 2)):
    w = random_weights(cfg, seed)
    save_checkpoint(sys.argv[1] + "/" + name, w, cfg, n_shards=int(sys.argv[3]))
    del w
g = torch.Generator().manual_seed(3)
ids = torch.randint(0, cfg["vocab_size"], (int(sys.argv[4]), int(sys.argv[5])), generator=g)
from safetensors.torch import save_file
save_file({"input_ids": ids}, sys.argv[1] + "/calibration.safetensors")
"""


def build(root: Path, model: dict, samples: int, seq: int) -> None:
    """The two models and the calibration file, in a child process (this one stays small)."""
    shards = max(1, model["layers"] // 4)
    args = [str(root), json.dumps(model), str(shards), str(samples), str(seq)]
    subprocess.run([sys.executable, "-c", BUILD, *args], check=True)


def zip_once(work: Path, s3: LocalS3, model: dict, args) -> dict:
    from raymerge.cli import main as raymerge_main

    local = work / f"L{model['layers']}"
    t0 = time.perf_counter()
    build(local, model, args.samples, args.seq)
    fs = s3.fs()
    bucket = f"zip{model['layers']}"
    fs.mkdir(bucket)
    for name in ("a", "b"):
        fs.put(str(local / name), f"{bucket}/{name}", recursive=True)
    fs.put(str(local / "calibration.safetensors"), f"{bucket}/calibration.safetensors")
    nbytes = sum(f.stat().st_size for f in (local / "a").glob("*.safetensors"))
    prep = time.perf_counter() - t0
    cfg = {
        "merge_method": "zipit",
        "models": [{"model": f"s3://{bucket}/a"}, {"model": f"s3://{bucket}/b"}],
        "parameters": {"matcher": args.matcher},
        "calibration": {
            "url": f"s3://{bucket}/calibration.safetensors",
            "batch_size": args.batch,
            "shards": 1,
        },
        "storage_options": s3.storage_options,
    }
    path = work / "zip.json"
    path.write_text(json.dumps(cfg))
    out = work / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = raymerge_main(["run", str(path), str(out), "--no-progress", "--json", "--overwrite"])
    if rc != 0:
        raise RuntimeError(f"raymerge run failed:\n{buf.getvalue()[-3000:]}")
    text = buf.getvalue()
    summary = json.loads(text[text.index("{\n") :])
    z = summary["zipit"]
    layers = z["stage_s"][1:]  # stage 0 is the embedding
    row = {
        "layers": model["layers"],
        "model_bytes": nbytes,
        "actor_planned": z["budget"]["actor_bytes"],
        "actor_peak_rss": z["actor_peak_rss"],
        "actor_private_rss": z["actor_private_rss"],
        "stats_bytes_read": z["stats_bytes_read"],
        "embed_s": z["stage_s"][0],
        "layer_s_median": statistics.median(layers),
        "layer_s": layers,
        "stats_s": z["stats_s"],
        "match_s_after_stats": z["match_s"],
        "match_s_by_space": z["match_s_by_space"],
        "apply_s": summary["merge_s"],
        "wall_s": summary["wall_s"],
        "peak_job_rss": summary["peak_worker_rss"],
        "prepare_s": prep,
    }
    shutil.rmtree(local)
    shutil.rmtree(out)
    fs.rm(bucket, recursive=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="4,16")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--matcher", default="zipit")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    print(subprocess.run(["df", "-h", "/tmp"], capture_output=True, text=True).stdout.strip())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="zipit-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        with LocalS3() as s3:
            for n in (int(v) for v in args.layers.split(",")):
                model = {
                    "hidden": args.hidden,
                    "intermediate": args.intermediate,
                    "layers": n,
                    "vocab": args.vocab,
                    "heads": args.heads,
                    "kv_heads": args.kv_heads,
                }
                rows.append(zip_once(work, s3, model, args))
                r = rows[-1]
                print(
                    f"  {n:3d} layers ({gb(r['model_bytes'])} per model): actor planned "
                    f"{gb(r['actor_planned'])}, peak RSS {gb(r['actor_peak_rss'])} (private "
                    f"{gb(r['actor_private_rss'])}); "
                    f"{r['layer_s_median']:.2f} s per layer (embedding {r['embed_s']:.2f} s), "
                    f"statistics {r['stats_s']:.0f} s, matching after them "
                    f"{r['match_s_after_stats']:.0f} s, apply {r['apply_s']:.0f} s, wall "
                    f"{r['wall_s']:.0f} s",
                    flush=True,
                )
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    out = {"rows": rows, "args": vars(args)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
