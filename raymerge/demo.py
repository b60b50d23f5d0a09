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

from raymerge.cli import print_summary
from raymerge.config import load_config
from raymerge.runner import RunOptions, run_merge
from raymerge.storage import resolve
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


def run_demo(workdir: str, *, s3: bool = False, method: str = "task_arithmetic") -> int:
    workdir = os.path.abspath(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    cfg_model = llama_config(
        hidden=256, intermediate=688, layers=4, vocab=2048, heads=8, kv_heads=4
    )
    base, ft1, ft2 = make_family(os.path.join(workdir, "models"), 2, cfg=cfg_model, n_shards=2)
    server = None
    storage_options: dict = {}
    out = os.path.join(workdir, "merged")
    refs = [base, ft1, ft2]
    if s3:
        server, endpoint = start_s3()
        opts = {"endpoint_url": endpoint, "key": "demo-access-key", "secret": "demo-secret-key"}
        storage_options = {f"s3://{DEMO_BUCKET}": opts}
        fs = resolve(f"s3://{DEMO_BUCKET}", storage_options).fs
        fs.mkdir(DEMO_BUCKET)
        for p in refs:
            fs.put(p, f"{DEMO_BUCKET}/models/{os.path.basename(p)}", recursive=True)
        refs = [f"s3://{DEMO_BUCKET}/models/{os.path.basename(p)}" for p in refs]
        out = f"s3://{DEMO_BUCKET}/merged"
        print(f"demo: local S3 endpoint {endpoint}, models uploaded to s3://{DEMO_BUCKET}/models/")
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
    path = os.path.join(workdir, "merge.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"demo: wrote {path}; merging on a local Ray cluster ...")
    try:
        cfg = load_config(path)
        summary = run_merge(cfg, out, RunOptions(overwrite=True))
        print(f"demo: merged into {out}")
        print_summary(summary)
        report = verify_output(resolve(out, storage_options))
        print(f"demo: verify OK: {report['pieces']} tensors checked against the manifest")
    finally:
        if server is not None:
            server.stop()
    if not s3:
        from safetensors import safe_open

        first = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[0]
        with safe_open(os.path.join(out, first), "pt") as f:
            print(f"demo: {first} loads with safetensors ({len(list(f.keys()))} tensors)")
    return 0
