"""``raymerge demo``: a real merge on an embedded default, no downloads.

Generates a tiny Llama-shaped family (a base and two fine-tunes, two shards each), writes a
mergekit YAML, merges it on a local Ray cluster, verifies the output against its manifest and
loads it back. With ``--s3`` the models are uploaded to a local S3 endpoint (moto's server on
127.0.0.1) and merged s3 -> s3, as on a real cluster.
"""

from __future__ import annotations

import os
import shutil
import socket

import yaml

from raymerge.config import load_config
from raymerge.errors import OutputError
from raymerge.options import RunOptions
from raymerge.pipeline import run_merge
from raymerge.storage import resolve
from raymerge.summary import print_summary
from raymerge.synth import llama_config, make_family
from raymerge.verify import verify_output

DEMO_BUCKET = "raymerge-demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[object, str]:
    """A local S3 endpoint (moto's server) on 127.0.0.1; returns (server, endpoint URL)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise SystemExit("raymerge demo --s3 needs moto: pip install 'raymerge[demo]'") from None
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


MARKER = ".raymerge-demo"


def _fresh_workdir(workdir: str) -> None:
    """An empty ``workdir``: created, or emptied when it holds an earlier demo (its marker
    file); any other non-empty folder is refused, never wiped."""
    if os.path.isdir(workdir) and os.listdir(workdir):
        if not os.path.exists(os.path.join(workdir, MARKER)):
            raise OutputError(
                f"{workdir}: is not empty and holds no earlier raymerge demo; the demo would "
                "replace its contents. Choose an empty or new folder with --workdir"
            )
        shutil.rmtree(workdir)
    elif os.path.exists(workdir) and not os.path.isdir(workdir):
        raise OutputError(f"{workdir}: exists and is not a folder; choose another --workdir")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, MARKER), "w") as f:
        f.write("made by `raymerge demo`; the next demo run may replace this folder\n")


def _config(method: str, refs: list[str], storage_options: dict | None = None) -> dict:
    config = {
        "merge_method": method,
        "models": [
            {"model": refs[1], "parameters": {"weight": 0.6}},
            {"model": refs[2], "parameters": {"weight": 0.4}},
        ],
        "dtype": "bfloat16",
    }
    if method == "task_arithmetic":
        config["base_model"] = refs[0]
        config["parameters"] = {"lambda": 1.0}
    if storage_options:
        config["storage_options"] = storage_options
    return config


def _write_yaml(path: str, config: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def _merge_through_s3(workdir: str, refs: list[str], method: str, out: str) -> None:
    """Upload the family to a local S3 endpoint, merge s3 -> s3, verify, and copy the merged
    model back to ``out`` (the endpoint is gone when the demo exits)."""
    server, endpoint = start_s3()
    try:
        opts = {"endpoint_url": endpoint, "key": "demo-access-key", "secret": "demo-secret-key"}
        storage_options = {f"s3://{DEMO_BUCKET}": opts}
        fs = resolve(f"s3://{DEMO_BUCKET}", storage_options).fs
        fs.mkdir(DEMO_BUCKET)
        for p in refs:
            fs.put(p, f"{DEMO_BUCKET}/models/{os.path.basename(p)}", recursive=True)
        s3_refs = [f"s3://{DEMO_BUCKET}/models/{os.path.basename(p)}" for p in refs]
        print(f"demo: local S3 endpoint {endpoint}, models uploaded to s3://{DEMO_BUCKET}/models/")
        cfg = load_config(_config(method, s3_refs, storage_options))
        s3_out = f"s3://{DEMO_BUCKET}/merged"
        print("demo: merging s3 -> s3 on a local Ray cluster ...")
        summary = run_merge(cfg, s3_out, RunOptions())
        print(f"demo: merged into {s3_out}")
        print_summary(summary)
        report = verify_output(resolve(s3_out, storage_options, output=True))
        print(f"demo: verify OK on S3: {report['pieces']} tensors checked against the manifest")
        fs.get(f"{DEMO_BUCKET}/merged", out, recursive=True)
        print(f"demo: copied the merged model to {out}")
    finally:
        server.stop()


def run_demo(workdir: str, *, s3: bool = False, method: str = "task_arithmetic") -> int:
    """Generate a tiny family in ``workdir``, merge it (through a local S3 endpoint with
    ``s3``), verify the output and load it back; leave the models, a working ``merge.yaml``
    and the merged model on local disk."""
    workdir = os.path.abspath(workdir)
    _fresh_workdir(workdir)
    cfg_model = llama_config(
        hidden=256, intermediate=688, layers=4, vocab=2048, heads=8, kv_heads=4
    )
    refs = make_family(os.path.join(workdir, "models"), 2, cfg=cfg_model, n_shards=2)
    out = os.path.join(workdir, "merged")
    path = _write_yaml(os.path.join(workdir, "merge.yaml"), _config(method, refs))
    print(f"demo: wrote {path}")
    if s3:
        _merge_through_s3(workdir, refs, method, out)
    else:
        print("demo: merging on a local Ray cluster ...")
        summary = run_merge(load_config(path), out, RunOptions())
        print(f"demo: merged into {out}")
        print_summary(summary)
    report = verify_output(resolve(out, output=True))
    print(f"demo: verify OK: {report['pieces']} tensors in {out} match the manifest")
    from safetensors import safe_open

    first = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[0]
    with safe_open(os.path.join(out, first), "pt") as f:
        print(f"demo: {first} loads with safetensors ({len(list(f.keys()))} tensors)")
    rel = os.path.relpath(workdir)
    again = f"{rel}/merged-again" if s3 else f"{rel}/merged"
    print("demo: next, try:")
    print(f"  raymerge plan {rel}/merge.yaml          # what a run does, from headers only")
    print(f"  raymerge verify {rel}/merged            # re-check every byte")
    print(f"  raymerge run {rel}/merge.yaml {again}   # merge again from the local models")
    return 0
