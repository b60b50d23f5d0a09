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
REPO = Path(__file__).resolve().parents[2]


def child(cfg_path: str, out: str, when: str = "jobs") -> None:
    """Runs in the child process: 2 worker nodes, remove one after the first jobs finish
    (``when="jobs"``) or after the first statistics round of the chunked tensors, while their
    chunks are kept in the nodes' object stores (``when="kept"``)."""
    import ray
    from ray.cluster_utils import Cluster

    from raymerge.config import load_config
    from raymerge.execution.schedule import Flow
    from raymerge.options import ExecOptions, RunOptions
    from raymerge.pipeline import run_merge

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    victim = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    ledger = Path(out) / ".raymerge" / "ledger"
    removed, kept = threading.Event(), threading.Event()
    done = Flow.stats_done

    def stats_done(self, work, res):
        done(self, work, res)
        held = len(self.raw_pending) + sum(len(x.raw) for x in self.tensors.values())
        if work.tensor.stats and held > 2:
            kept.set()  # a round finished with several chunks kept: take a node away now

    Flow.stats_done = stats_done

    def started() -> bool:
        if when == "kept":
            return kept.is_set()
        return ledger.exists() and any(ledger.iterdir())

    def remove_when_started() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not started():
            time.sleep(0.01)
        cluster.remove_node(victim)
        removed.set()

    threading.Thread(target=remove_when_started, daemon=True).start()
    sizing = {"job_memory": 34 << 20} if when == "kept" else {"job_bytes": 16 << 10}
    opts = RunOptions(
        ledger_interval=0, execution=ExecOptions(in_flight=4, progress=False), **sizing
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
    code = f"from tests.integration.test_node_loss import child; child({str(p)!r}, {str(out)!r})"
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
    print(  # shown in the report of a failing test only
        f"\nnode loss: {summary['jobs']} jobs, {summary['retries']} retried"
    )
    assert shard_bytes(str(out)) == shard_bytes(str(ref))
    assert main(["verify", str(out)]) == 0


def test_node_lost_while_chunks_are_kept(tmp_path, wide_family, ray_session, s3, capsys):
    """TIES from S3 over chunked tensors on two nodes: the first threshold round keeps each
    chunk in the object store of the node that read it; one node goes away after that round.
    Its kept chunks are lost with it: the tasks that needed them are retried reading S3, and
    the output equals a local, undisturbed run."""
    from raymerge.storage import resolve

    fs = resolve("s3://fam", {"s3://": s3}).fs
    fs.mkdir("fam")
    refs = []
    for i, path in enumerate(wide_family):
        fs.put(path, f"fam/m{i}", recursive=True)
        refs.append(f"s3://fam/m{i}")

    def config(models, name, opts=None):
        cfg = {
            "merge_method": "ties",
            "base_model": models[0],
            "models": [{"model": m, "parameters": {"weight": 0.5, "density": 0.4}}
                       for m in models[1:]],
        }  # fmt: skip
        if opts:
            cfg["storage_options"] = {"s3://": opts}
        p = tmp_path / name
        p.write_text(json.dumps(cfg))
        return str(p)

    out = tmp_path / "out"
    code = (
        "from tests.integration.test_node_loss import child; "
        f"child({config(refs, 's3.json', s3)!r}, {str(out)!r}, 'kept')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=400
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SUMMARY ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads(line[len("SUMMARY ") :])
    assert summary["node_removed"] and summary["bytes_reused"] > 0, summary
    ref = tmp_path / "ref"
    local = config(wide_family, "local.json")
    assert main(["run", local, str(ref), "--no-progress", "--job-memory", "34MiB"]) == 0
    capsys.readouterr()
    print(  # shown in the report of a failing test only
        f"\nnode loss with kept chunks: {summary['jobs']} jobs, {summary['retries']} retried, "
        f"{summary['bytes_read']} bytes read from S3, {summary['bytes_reused']} reused"
    )
    assert shard_bytes(str(out)) == shard_bytes(str(ref))
