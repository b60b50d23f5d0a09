"""jobs/merge.py and jobs/nightly.py through the real Ray job API, s3 -> s3.

A real two-node Ray cluster (`ray start --head` + `ray start --address`, one CPU each, its own
temp dir, ports and auth token) and moto's S3 server on 127.0.0.1; jobs are submitted with the
`ray job submit --working-dir <repo>` command the README gives. The in-process `ray_session`
fixture is not used: the jobs' drivers run inside the cluster.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raymerge.cli import main as raymerge_main
from raymerge.demo import free_port
from raymerge.storage import resolve
from tests.helpers import shard_bytes, task_arithmetic_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BUCKET = "models"


def _kill_tree(procs, tmp: str) -> None:
    """Stop everything this fixture started: the `ray start --block` processes, their
    children (gcs, raylet, dashboard, agents, workers, job drivers) and anything else whose
    command line names our private temp dir. Never touches other Ray clusters."""
    import psutil

    victims: dict[int, psutil.Process] = {}
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            victims[root.pid] = root
            victims.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter(["cmdline"]):
        if tmp in " ".join(p.info["cmdline"] or []):
            victims[p.pid] = p
            try:
                victims.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    victims.pop(os.getpid(), None)
    # `ray start --block` shuts its node down on SIGTERM; whatever is left after that is killed.
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for p in victims.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(victims.values()), timeout=5)


def _get(url: str, token: str) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (dashboard = job API) and a worker node; yields (dashboard URL, CLI env)."""
    tmp = tempfile.mkdtemp(prefix="rmj-", dir="/tmp")  # short: Ray's socket paths must fit
    token = secrets.token_hex(32)
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    dashboard = f"http://127.0.0.1:{dash}"

    def node_ports() -> list[str]:
        return [
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--dashboard-agent-grpc-port",
            str(free_port()),
            "--runtime-env-agent-port",
            str(free_port()),
            "--metrics-export-port",
            str(free_port()),
        ]

    procs = []
    logs = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = open(os.path.join(tmp, f"{name}.log"), "wb")
        logs.append(log)
        p = subprocess.Popen(
            ["ray", "start", *args, "--block", "--disable-usage-stats"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(p)
        return p

    try:
        start(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                "--port",
                str(gcs),
                "--dashboard-port",
                str(dash),
                "--dashboard-host",
                "127.0.0.1",
                "--ray-client-server-port",
                str(free_port()),
                "--include-dashboard=true",
                "--num-cpus",
                "1",
                "--temp-dir",
                os.path.join(tmp, "head"),
                *node_ports(),
            ],
            "head",
        )
        deadline = time.time() + 90
        while True:
            try:
                _get(f"{dashboard}/api/version", token)
                break
            except OSError:
                if time.time() > deadline or procs[0].poll() is not None:
                    raise RuntimeError(
                        "Ray head did not come up:\n" + Path(tmp, "head.log").read_text()
                    ) from None
                time.sleep(0.5)
        start(
            [
                f"--address=127.0.0.1:{gcs}",
                "--node-ip-address=127.0.0.1",
                "--num-cpus",
                "1",
                "--temp-dir",
                os.path.join(tmp, "worker"),
                *node_ports(),
            ],
            "worker",
        )
        nodes = 0
        deadline = time.time() + 60
        while nodes < 2 and time.time() < deadline:
            try:
                got = _get(f"{dashboard}/api/v0/nodes?detail=false&limit=10", token)
                nodes = sum(n.get("state") == "ALIVE" for n in got["data"]["result"]["result"])
            except (OSError, KeyError):
                pass
            time.sleep(0.5)
        if nodes < 2:
            raise RuntimeError(
                "Ray worker did not join:\n" + Path(tmp, "worker.log").read_text()[-3000:]
            )
        yield dashboard, env, f"127.0.0.1:{gcs}"
    finally:
        _kill_tree(procs, tmp)
        for log in logs:
            log.close()
        shutil.rmtree(tmp, ignore_errors=True)


TIMES: list[str] = []


def submit(dashboard: str, env: dict, *entrypoint: str) -> subprocess.CompletedProcess:
    """The README's command: ray job submit --working-dir <repo> --runtime-env ... -- python ..."""
    cmd = [
        "ray",
        "job",
        "submit",
        "--address",
        dashboard,
        "--working-dir",
        str(REPO),
        "--runtime-env",
        str(REPO / "jobs" / "runtime_env.yaml"),
        "--",
        "python",
        *entrypoint,
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    TIMES.append(f"{entrypoint[0]}: rc {r.returncode} in {time.perf_counter() - t0:.1f} s")
    return r


def test_merge_and_nightly_jobs_on_a_ray_cluster(ray_cluster, family, s3, tmp_path, capsys):
    dashboard, env, _ = ray_cluster
    fs = resolve(f"s3://{BUCKET}", {"s3://": s3}).fs
    fs.mkdir(BUCKET)
    for p in family:
        fs.put(p, f"{BUCKET}/in/{os.path.basename(p)}", recursive=True)
    base, ft1, ft2 = (f"s3://{BUCKET}/in/{os.path.basename(p)}" for p in family)
    cfg = tmp_path / "merge.yaml"
    # the storage options are how the job's workers reach moto
    cfg.write_text(json.dumps(task_arithmetic_config((base, ft1, ft2), s3)))

    # 1. one merge job, then `raymerge verify` from outside the cluster
    r = submit(
        dashboard, env, "jobs/merge.py", str(cfg), f"s3://{BUCKET}/out", "--shard-size", "100KB"
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "verify OK" in r.stdout and "succeeded" in r.stdout + r.stderr
    TIMES.extend(ln for ln in (r.stdout + r.stderr).splitlines() if "package" in ln.lower())
    assert fs.exists(f"{BUCKET}/out/_SUCCESS")
    assert s3["secret"] not in r.stdout + r.stderr
    capsys.readouterr()
    assert raymerge_main(["verify", f"s3://{BUCKET}/out", "--storage-options", json.dumps(s3)]) == 0
    assert " OK: " in capsys.readouterr().out

    # 2. nightly twice with the same inputs: one merge, then "inputs unchanged"
    root = f"s3://{BUCKET}/nightly"
    nightly = ("jobs/nightly.py", str(cfg), "--output-root", root, "--keep", "2")
    r1 = submit(dashboard, env, *nightly, "--shard-size", "100KB")
    assert r1.returncode == 0, r1.stdout[-4000:] + r1.stderr[-4000:]
    first = fs.cat_file(f"{BUCKET}/nightly/LATEST").decode().strip()
    assert f"LATEST -> {first}" in r1.stdout
    assert fs.exists(f"{BUCKET}/nightly/{first}/_SUCCESS")
    r2 = submit(dashboard, env, *nightly, "--shard-size", "100KB")
    assert r2.returncode == 0, r2.stdout[-4000:] + r2.stderr[-4000:]
    assert "inputs unchanged" in r2.stdout and "merging into" not in r2.stdout
    assert fs.cat_file(f"{BUCKET}/nightly/LATEST").decode().strip() == first

    # 3. one input object changes (ft1's first shard gets other, valid bytes): a new dated run
    shard = "model-00001-of-00003.safetensors"
    fs.pipe_file(f"{BUCKET}/in/ft1/{shard}", Path(family[2], shard).read_bytes())
    r3 = submit(dashboard, env, *nightly, "--shard-size", "100KB")
    assert r3.returncode == 0, r3.stdout[-4000:] + r3.stderr[-4000:]
    second = fs.cat_file(f"{BUCKET}/nightly/LATEST").decode().strip()
    assert second != first and second[:8] == first[:8]  # same UTC day, other fingerprint
    runs = sorted(os.path.basename(p) for p in fs.ls(f"{BUCKET}/nightly"))
    assert runs == sorted(["LATEST", first, second])
    capsys.readouterr()
    assert raymerge_main(["verify", f"{root}/{second}", "--storage-options", json.dumps(s3)]) == 0
    for res in (r1, r2, r3):
        assert s3["secret"] not in res.stdout + res.stderr
    record = fs.cat_file(f"{BUCKET}/nightly/{second}/.raymerge/nightly.json").decode()
    assert json.loads(record)["fingerprint"][:8] == second[-8:] and s3["secret"] not in record
    print(  # shown in the report of a failing test only
        "\n" + "\n".join(TIMES)
    )


def test_keep_workers_reuses_warm_processes_across_drivers(ray_cluster, family, tmp_path):
    """`raymerge run` drivers against the same cluster: with --keep-workers the second one's jobs
    run in the first one's worker processes (no start-up); a third run without the flag uses the
    idle pool too (rather than waiting for the CPUs it holds), and the pool exits when idle."""
    _, env, address = ray_cluster
    cfg = tmp_path / "ta.json"
    cfg.write_text(json.dumps(task_arithmetic_config(family)))
    pids = []
    for k, keep in enumerate(["15", "15", None]):
        out = tmp_path / f"out{k}"
        cmd = [sys.executable, "-m", "raymerge", "run", str(cfg), str(out), "--address", address]
        cmd += ["--no-progress", "--job-bytes", "64KiB"]
        cmd += ["--keep-workers", keep] if keep else []
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        rows = pq.read_table(out / "manifest.parquet").to_pylist()
        pids.append({row["pid"] for row in rows})
    assert pids[1] <= pids[0] and pids[2] <= pids[0] and all(pids)
    assert shard_bytes(str(tmp_path / "out0")) == shard_bytes(str(tmp_path / "out1"))
    assert shard_bytes(str(tmp_path / "out0")) == shard_bytes(str(tmp_path / "out2"))
    # idle for longer than --keep-workers: the pool gives its CPUs back
    check = (
        "import ray, time, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "from ray.util import list_named_actors as ls; time.sleep(20); "
        "print(len([a for a in ls(all_namespaces=True) if 'raymerge-worker' in a['name']]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", check, address], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "0"


def test_a_token_cluster_without_the_token_says_what_to_set(ray_cluster, family, tmp_path):
    """`--address` to a cluster with token authentication, from a shell without
    RAY_AUTH_MODE=token: one paragraph naming the variables, exit 2, in seconds (ray.init
    alone retries for ~20 s and ends in an unrelated ConnectionError)."""
    _, env, address = ray_cluster
    bare = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    bare["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    cfg = tmp_path / "ta.json"
    cfg.write_text(json.dumps(task_arithmetic_config(family)))
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "raymerge", "run", str(cfg), str(tmp_path / "out"),
         "--address", address, "--no-progress"],
        env=bare, capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "requires token authentication" in r.stderr and "RAY_AUTH_MODE=token" in r.stderr
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 30
