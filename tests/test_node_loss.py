"""Node loss: a simulated multi-node cluster (ray.cluster_utils.Cluster) loses a worker node in
the middle of a merge; the merge completes with output identical to an undisturbed run.

The cluster runs in a child process (a process can hold one Ray connection, and the rest of the
suite shares an in-process local cluster)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from raymerge.cli import main
from tests.helpers import shard_bytes

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def child(cfg_path: str, out: str) -> None:
    """Runs in the child process: 2 worker nodes, remove one after the first jobs finish."""
    import ray
    from ray.cluster_utils import Cluster

    from raymerge.config import load_config
    from raymerge.executor import ExecOptions
    from raymerge.runner import RunOptions, run_merge

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    ledger = Path(out) / ".raymerge" / "ledger"
    removed = threading.Event()

    def remove_when_started() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not (ledger.exists() and any(ledger.iterdir())):
            time.sleep(0.01)
        cluster.remove_node(victim)
        removed.set()

    threading.Thread(target=remove_when_started, daemon=True).start()
    opts = RunOptions(
        job_bytes=16 << 10, ledger_interval=0, execution=ExecOptions(in_flight=4, progress=False)
    )
    summary = run_merge(load_config(cfg_path), out, opts)
    summary["node_removed"] = removed.is_set()
    print("SUMMARY " + json.dumps(summary), flush=True)
    ray.shutdown()
    cluster.shutdown()


def test_node_lost_mid_run(tmp_path, wide_family, ray_session, capsys):
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": wide_family[0],
        "models": [{"model": m, "parameters": {"weight": 0.5}} for m in wide_family[1:]],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    code = f"from tests.test_node_loss import child; child({str(p)!r}, {str(out)!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=400
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads(line[len("SUMMARY ") :])
    assert summary["node_removed"]
    ref = tmp_path / "ref"
    assert main(["run", str(p), str(ref), "--no-progress", "--job-bytes", "16KiB"]) == 0
    capsys.readouterr()
    with capsys.disabled():
        print(f"\nnode loss: {summary['jobs']} jobs, {summary['retries']} retried")
    assert shard_bytes(str(out)) == shard_bytes(str(ref))
    assert main(["verify", str(out)]) == 0
