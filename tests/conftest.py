"""Shared fixtures: tiny generated model families, one Ray cluster per session, a local S3 endpoint.

Nothing is downloaded: models are generated with raymerge.synth (written by the reference
safetensors writer); S3 is moto's real HTTP server on 127.0.0.1, never a mock of s3fs.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from raymerge.synth import llama_config, make_family


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cfg() -> dict:
    return llama_config(hidden=64, intermediate=172, layers=3, vocab=256, heads=4, kv_heads=2)


@pytest.fixture(scope="session")
def family(tmp_path_factory, tiny_cfg) -> list[str]:
    """base, ft1, ft2: bf16, 3 shards each with index.json."""
    root = tmp_path_factory.mktemp("family")
    return make_family(str(root), 2, cfg=tiny_cfg, n_shards=3)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (starting one costs seconds)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 for the session; credentials are fake."""
    from moto.server import ThreadedMotoServer

    from raymerge.demo import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """A clean S3 endpoint per test: returns storage options for s3:// URLs."""
    import requests
    import s3fs

    requests.post(f"{s3_endpoint}/moto-api/reset", timeout=10)
    s3fs.S3FileSystem.clear_instance_cache()
    return {
        "endpoint_url": s3_endpoint,
        "key": "AKIAFAKEKEY0001",
        "secret": "FAKE-SECRET-do-not-log-7f3a",
    }


@pytest.fixture(scope="session")
def wide_family(tmp_path_factory) -> list[str]:
    """A family whose embeddings (4096 x 64) get chunked under a small --job-memory."""
    cfg = llama_config(hidden=64, intermediate=172, layers=2, vocab=4096, heads=4, kv_heads=2)
    return make_family(str(tmp_path_factory.mktemp("wide")), 3, cfg=cfg, n_shards=2)
