"""End-to-end throughput benchmark for ``raymerge run`` on one machine.

What one run measures (all on the same synthetic model family, page cache warm):

* **family**: a base model and two fine-tunes, Llama-shaped (hidden 1024, intermediate 2816,
  16 layers, vocab 32000; ~267M parameters, ~518 MB of bf16 per model, 2 shards each), built
  once with :mod:`raymerge.synth` and cached in ``--workdir``.
* **I/O floor**: read every byte of the three inputs' ``*.safetensors`` files, then write and
  fsync one output-sized file (raymerge fsyncs every output shard too). One untimed warm-up read
  first, then the median of ``--repeats`` runs. No merge can be faster than this on this disk.
* **raymerge, warm**: ``raymerge run CFG OUT --address ...`` as a subprocess against a Ray
  cluster that is already running (``ray start --head --block --num-cpus 2``, started by this
  script and always stopped again, even on errors or Ctrl-C), for every method in ``--methods``:
  see Methods below. Timed is what a user sees: interpreter start-up, planning, the Ray jobs, commit
  and side files; "in-run s" is raymerge's own ``wall_s`` from its ``--json`` summary.
* **raymerge, pooled**: the warm CLI run with ``--keep-workers 120``, after one untimed run that
  starts the pool: each timed run is a fresh driver process that finds warm worker processes.
* **raymerge, in-process**: the same configs through ``run_merge`` in one long-lived Python
  driver connected to the same cluster, after one untimed warm-up merge: what a notebook, a
  service or a nightly job merging several configs in one driver sees (no interpreter start-up,
  no imports, no Ray worker start-up in the timing).
* **raymerge, cold**: the same linear run without ``--address``, so it includes starting (and
  shutting down) a local Ray.
* **mergekit**: ``mergekit-yaml`` 0.1.5 on the same YAMLs (``-j 2 --quiet``), when
  ``--mergekit`` (or ``mergekit-yaml`` on PATH) is available; otherwise skipped.
* **peak RSS**: a thread polls every 0.1 s the RSS of the timed process, its descendants and the
  benchmark's Ray cluster (Ray processes of other users are not counted). Reported: the driver's
  peak, the largest single Ray worker's peak, and the peak of the sum over all of them.

GB/s columns are *input bytes read* (the safetensors bytes of the models a method reads: two for
linear and slerp, three for the others and the floor) divided by the median wall time.
"x floor" is wall time over the I/O floor's wall time.

Methods: ``linear``, ``task_arithmetic``, ``ties`` and ``dare_ties`` (density 0.2 on both
fine-tunes), ``slerp`` (base and ft1, t 0.5). mergekit runs every method in
``--mergekit-methods``.

Targets (scale-and-speed issue, warm cluster): linear <= 1.5x the I/O floor and >= 8x faster than
mergekit; TIES <= 4x the floor and >= 15x faster than mergekit.

The last line printed is one JSON object holding every number.

Usage::

    python benchmarks/throughput.py [--workdir /tmp/raymerge-bench] [--repeats 3]
        [--mergekit /path/to/mergekit-yaml] [--methods linear,ties] [--mergekit-methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _common import BENCH_MODEL, ONE_B_MODEL, build_family, free_port, model_bytes

try:
    import psutil
except ImportError:  # Ray vendors psutil and puts it on sys.path only on `import ray`
    import importlib.util

    _ray = importlib.util.find_spec("ray")
    if _ray is None or not _ray.submodule_search_locations:
        raise
    sys.path.append(os.path.join(_ray.submodule_search_locations[0], "thirdparty_files"))
    import psutil

METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")
# (max x floor, min speed-up vs mergekit) per family: the scale-and-speed issue's (bench) and
# the throughput-at-scale issue's (1b)
TARGETS = {
    "bench": {"linear": (1.5, 8.0), "ties": (4.0, 15.0)},
    "1b": {"linear": (1.5, 8.0), "ties": (3.0, 20.0)},
}
BUF = 16 << 20
BIN = Path(sys.executable).parent
# --------------------------------------------------------------------------- inputs


def weight_files(model: Path) -> list[Path]:
    return sorted(model.glob("*.safetensors"))


FAMILIES = {"bench": BENCH_MODEL, "1b": ONE_B_MODEL}


def write_configs(
    workdir: Path, models: dict[str, Path], linear_of_all: bool = False
) -> dict[str, Path]:
    """mergekit-style YAMLs (raymerge loads them as-is; mergekit runs the linear one).
    ``linear_of_all``: linear averages all three models (the 1B family, as the issue measured),
    else the two fine-tunes."""
    ft = [{"model": str(models[n]), "parameters": {"weight": 0.5}} for n in ("ft1", "ft2")]
    lin = ft
    if linear_of_all:
        lin = [{"model": str(models[n]), "parameters": {"weight": 1.0}} for n in models]
    configs = {
        "linear": {"merge_method": "linear", "models": lin, "dtype": "bfloat16"},
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": str(models["base"]),
            "models": ft,
            "dtype": "bfloat16",
        },
        "ties": {
            "merge_method": "ties",
            "base_model": str(models["base"]),
            "models": [
                {"model": m["model"], "parameters": {"weight": 0.5, "density": 0.2}} for m in ft
            ],
            "dtype": "bfloat16",
        },
        "dare_ties": {
            "merge_method": "dare_ties",
            "base_model": str(models["base"]),
            "models": [
                {"model": m["model"], "parameters": {"weight": 0.5, "density": 0.2}} for m in ft
            ],
            "dtype": "bfloat16",
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": str(models["base"]),
            "models": [{"model": str(models["ft1"])}],
            "parameters": {"t": 0.5},
            "dtype": "bfloat16",
        },
    }
    paths = {}
    for name, body in configs.items():
        paths[name] = workdir / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(body, sort_keys=False))
    return paths


# --------------------------------------------------------------------------- I/O floor


def read_all(files: list[Path]) -> int:
    buf = bytearray(BUF)
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def write_file(path: Path, nbytes: int) -> None:
    block = os.urandom(BUF)
    with open(path, "wb", buffering=0) as f:
        left = nbytes
        while left:
            left -= f.write(memoryview(block)[: min(left, BUF)])
        os.fsync(f.fileno())


def io_floor(models: dict[str, Path], out_bytes: int, scratch: Path, repeats: int) -> dict:
    files = [f for m in models.values() for f in weight_files(m)]
    read_all(files)  # warm the page cache
    target = scratch / "floor.bin"
    walls, reads, writes = [], [], []
    for _ in range(repeats):
        os.sync()
        t0 = time.perf_counter()
        nread = read_all(files)
        t1 = time.perf_counter()
        write_file(target, out_bytes)
        t2 = time.perf_counter()
        target.unlink()
        walls.append(t2 - t0)
        reads.append(t1 - t0)
        writes.append(t2 - t1)
    return {
        "wall_s": statistics.median(walls),
        "walls_s": walls,
        "read_s": statistics.median(reads),
        "write_s": statistics.median(writes),
        "bytes_read": nread,
        "bytes_written": out_bytes,
        "read_gbps": nread / statistics.median(reads) / 1e9,
        "write_gbps": out_bytes / statistics.median(writes) / 1e9,
    }


# --------------------------------------------------------------------------- memory sampling


def is_ray_worker(cmdline: list[str]) -> bool:
    """A Ray worker (``ray::IDLE``, ``ray::_remote_job``, ...), not one of Ray's agents."""
    text = " ".join(cmdline).strip()
    if "default_worker.py" in text:
        return True
    return text.startswith("ray::") and not text.split()[0].endswith("Agent")


class PeakRSS:
    """Polls the RSS of a driver process and of everything under it and under ``cluster_pid``.

    ``driver``: the driver process itself; ``worker``: the largest single Ray worker; ``total``:
    the sum over both process trees (driver, its children, Ray's own processes and workers).
    """

    def __init__(self, pid: int, cluster_pid: int | None = None, interval: float = 0.1) -> None:
        self.pid = pid
        self.cluster_pid = cluster_pid
        self.interval = interval
        self.driver = self.worker = self.total = 0
        self.workers: set[int] = set()
        self.descendants: set[int] = set()  # of the driver: checked for leftovers afterwards
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        procs = {p.pid: p.info for p in psutil.process_iter(["ppid", "cmdline", "memory_info"])}
        children: dict[int, list[int]] = {}
        for pid, info in procs.items():
            children.setdefault(info["ppid"], []).append(pid)

        def tree(root: int | None) -> set[int]:
            out, stack = set(), [root] if root else []
            while stack:
                pid = stack.pop()
                out.add(pid)
                stack.extend(children.get(pid, []))
            return out

        mine = tree(self.pid)
        self.descendants |= mine - {self.pid}
        total = 0
        for pid in mine | tree(self.cluster_pid):
            info = procs.get(pid)
            if info is None or info["memory_info"] is None:
                continue
            rss = info["memory_info"].rss
            total += rss
            if pid == self.pid:
                self.driver = max(self.driver, rss)
            elif is_ray_worker(info["cmdline"] or []):
                self.worker = max(self.worker, rss)
                self.workers.add(pid)
        self.total = max(self.total, total)


# --------------------------------------------------------------------------- timed commands


def _parse_summary(stdout: str) -> dict[str, Any] | None:
    """The JSON object ``raymerge run --json`` prints (other output may surround it)."""
    decoder = json.JSONDecoder()
    found = None
    pos = stdout.find("{")
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(stdout, pos)
        except json.JSONDecodeError:
            pos = stdout.find("{", pos + 1)
            continue
        if isinstance(obj, dict) and "wall_s" in obj:
            found = obj
        pos = stdout.find("{", end)
    return found


def reap(pids: set[int], grace: float = 15.0) -> int:
    """Wait for processes the last run started to exit; kill those that do not. Returns how
    many had to be killed (a run should leave nothing behind)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return len(alive)


def timed(cmd: list[str], env: dict[str, str], cluster_pid: int | None = None) -> dict[str, Any]:
    """Run ``cmd`` once; wall time, exit status, peak RSS, output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with proc, PeakRSS(proc.pid, cluster_pid) as rss:
        try:
            out, err = proc.communicate()
        except BaseException:  # e.g. Ctrl-C: do not leave the run behind
            proc.kill()
            raise
    wall = time.perf_counter() - t0
    leftovers = reap(rss.descendants)
    if leftovers:
        print(f"    warning: {leftovers} process(es) of this run outlived it; killed them")
    return {
        "wall_s": wall,
        "rc": proc.returncode,
        "driver_rss": rss.driver,
        "worker_rss": rss.worker,
        "total_rss": rss.total,
        "workers": len(rss.workers),
        "leftovers": leftovers,
        "stdout": out,
        "stderr": err,
    }


def repeat(
    label: str,
    cmd: list[str],
    out: Path,
    env: dict[str, str],
    repeats: int,
    input_bytes: int,
    cluster_pid: int | None = None,
) -> dict[str, Any]:
    """``repeats`` runs of ``cmd`` writing into a fresh ``out``; the median and peaks."""
    runs = []
    for k in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        os.sync()  # no write-back of earlier runs' output during this one
        r = timed(cmd, env, cluster_pid)
        status = "ok" if r["rc"] == 0 else f"FAILED rc={r['rc']}"
        print(f"  {label} run {k + 1}/{repeats}: {r['wall_s']:.2f} s {status}", flush=True)
        if r["rc"] != 0:
            tail = (r["stderr"] or r["stdout"]).strip().splitlines()[-15:]
            print("    " + "\n    ".join(tail), file=sys.stderr)
            return {"error": f"exit status {r['rc']}", "stderr_tail": tail}
        runs.append(r)
    wall = statistics.median(r["wall_s"] for r in runs)
    result: dict[str, Any] = {
        "wall_s": wall,
        "walls_s": [r["wall_s"] for r in runs],
        "input_bytes": input_bytes,
        "read_gbps": input_bytes / wall / 1e9,
        "driver_rss": max(r["driver_rss"] for r in runs),
        "worker_rss": max(r["worker_rss"] for r in runs),
        "total_rss": max(r["total_rss"] for r in runs),
        "workers": max(r["workers"] for r in runs),
        "leftover_processes": sum(r["leftovers"] for r in runs),
    }
    summaries = [s for r in runs if (s := _parse_summary(r["stdout"]))]
    if summaries:
        pick = {k: statistics.median(s[k] for s in summaries) for k in ("wall_s", "merge_s")}
        result["raymerge"] = {
            "wall_s": pick["wall_s"],
            "merge_s": pick["merge_s"],
            "jobs": summaries[0]["jobs"],
            "bytes_read": summaries[0]["bytes_read"],
            "bytes_written": summaries[0]["bytes_written"],
            "peak_worker_rss": max(s["peak_worker_rss"] for s in summaries),
            "peak_job_memory_planned": summaries[0]["peak_job_memory_planned"],
            "driver_rss": max(s["driver_rss"] for s in summaries),
            "retries": sum(s["retries"] for s in summaries),
        }
    return result


INPROC = """
import json, os, shutil, sys, time
from raymerge.config import load_config
from raymerge.options import ExecOptions
from raymerge.options import RunOptions
from raymerge.pipeline import run_merge
cfg_path, out, address, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = load_config(cfg_path)
opts = RunOptions(overwrite=True, execution=ExecOptions(address=address, progress=False))
run_merge(cfg, out + "-warmup", opts)  # untimed: starts this driver's workers (imports)
shutil.rmtree(out + "-warmup", ignore_errors=True)
walls, sums = [], []
for _ in range(n):
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    t = time.perf_counter()
    summary = run_merge(cfg, out, opts)
    walls.append(time.perf_counter() - t)
    sums.append(summary)
print(json.dumps({"walls": walls, "summaries": sums}))
"""


def inproc(
    label: str, cfg: Path, out: Path, cluster: Any, repeats: int, input_bytes: int
) -> dict[str, Any]:
    """raymerge as a library in one long-lived driver: one warm-up merge, then ``repeats`` timed
    ``run_merge`` calls (no interpreter start-up, imports or worker start-up in the timing)."""
    cmd = [sys.executable, "-c", INPROC, str(cfg), str(out), cluster.address, str(repeats)]
    r = timed(cmd, cluster.driver_env, cluster.pid)
    if r["rc"] != 0:
        tail = (r["stderr"] or r["stdout"]).strip().splitlines()[-15:]
        print("    " + "\n    ".join(tail), file=sys.stderr)
        return {"error": f"exit status {r['rc']}", "stderr_tail": tail}
    body = json.loads(r["stdout"].strip().splitlines()[-1])
    walls = body["walls"]
    print(f"  {label}: " + ", ".join(f"{w:.2f}" for w in walls) + " s", flush=True)
    wall = statistics.median(walls)
    sums = body["summaries"]
    return {
        "wall_s": wall,
        "walls_s": walls,
        "input_bytes": input_bytes,
        "read_gbps": input_bytes / wall / 1e9,
        "driver_rss": r["driver_rss"],
        "worker_rss": r["worker_rss"],
        "total_rss": r["total_rss"],
        "workers": r["workers"],
        "leftover_processes": r["leftovers"],
        "raymerge": {
            "wall_s": statistics.median(x["wall_s"] for x in sums),
            "merge_s": statistics.median(x["merge_s"] for x in sums),
            "jobs": sums[0]["jobs"],
            "peak_worker_rss": max(x["peak_worker_rss"] for x in sums),
        },
    }


# --------------------------------------------------------------------------- Ray cluster


def tool(name: str) -> str:
    """A console script of this environment (falls back to PATH)."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


class RayCluster:
    """A one-node Ray cluster: ``ray start --head --block`` in a child process.

    Stopping it terminates that process, which shuts down exactly the Ray processes it started
    (``ray stop --force`` would kill every Ray process on the machine, other users' included);
    anything of ours still alive after that is killed by PID.
    """

    def __init__(self, env: dict[str, str], num_cpus: int = 2) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="raymerge-bench-ray-")
        self.cmd = [tool("ray"), "start", "--head", "--block", "--num-cpus", str(num_cpus),
                    "--include-dashboard=false", "--port", str(self.port),
                    "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                    "--temp-dir", self.temp_dir]  # fmt: skip
        self.env = env
        self.driver_env = dict(env)
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def __enter__(self) -> RayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        print(f"ray: starting a cluster on port {self.port} ...", flush=True)
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        ready = threading.Event()

        def drain() -> None:  # keep reading, or a full pipe would block Ray
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                if "Ray runtime started" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        ready.wait(timeout)
        text = "".join(self.output)
        if "Ray runtime started" not in text:
            raise RuntimeError(f"ray start failed:\n{text[-3000:]}")
        # Recent Ray enables token auth by default; a driver then presents the token `ray start`
        # stored (~/.ray/auth_token) only with RAY_AUTH_MODE=token.
        if "Token authentication is enabled" in text and "RAY_AUTH_MODE" not in self.env:
            self.driver_env["RAY_AUTH_MODE"] = "token"

    def stop(self) -> None:
        if self.proc is not None:
            try:
                ours = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                ours = []
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            reap({p.pid for p in ours}, grace=10)
            self.proc = None
            print("ray: cluster stopped")
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- report


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


COLUMNS = ("run", "wall s", "in-run s", "read GB/s", "x floor", "vs mergekit",
           "driver RSS", "worker RSS", "sum RSS")  # fmt: skip


def table_row(name: str, r: dict[str, Any], mergekit: dict[str, float]) -> list[str]:
    inner = r.get("raymerge", {}).get("wall_s")
    method = name.split()[1] if name.split()[1] in mergekit else None
    speedup = mergekit[method] / r["wall_s"] if method and not name.startswith("mergekit") else None
    return [
        name,
        f"{r['wall_s']:.2f}",
        f"{inner:.2f}" if inner else "-",
        f"{r['read_gbps']:.2f}",
        f"{r['x_floor']:.2f}",
        f"{speedup:.1f}x" if speedup else "-",
        gb(r["driver_rss"]),
        gb(r["worker_rss"]) if r["workers"] else "-",
        gb(r["total_rss"]),
    ]


def print_table(floor: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    mergekit = {
        name.split()[-1]: r["wall_s"] for name, r in rows.items()
        if name.startswith("mergekit") and "wall_s" in r
    }  # fmt: skip
    floor_gbps = floor["bytes_read"] / floor["wall_s"] / 1e9
    floor_row = ["I/O floor", f"{floor['wall_s']:.2f}", "-", f"{floor_gbps:.2f}", "1.00"]
    floor_row += ["-"] * (len(COLUMNS) - len(floor_row))
    lines = [list(COLUMNS), floor_row]
    lines += [table_row(name, r, mergekit) for name, r in rows.items() if "wall_s" in r]
    widths = [max(len(row[i]) for row in lines) for i in range(len(COLUMNS))]
    for k, row in enumerate(lines):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for name, r in rows.items():
        if "wall_s" not in r:
            print(f"{name:<{widths[0]}}  {r.get('error') or r.get('skipped')}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        default="bench",
        help="bench: 3 x 267M parameters (518 MB bf16 each); 1b: 3 x 1.08B (2.2 GB each; linear "
        "then averages all three)",
    )
    ap.add_argument("--workdir", default=None, help="models, configs, outputs")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument(
        "--mergekit",
        default=None,
        help="mergekit-yaml executable (default: mergekit-yaml on PATH, if any)",
    )
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated raymerge methods to time warm (from {', '.join(METHODS)})",
    )
    ap.add_argument(
        "--mergekit-methods",
        default=",".join(METHODS),
        help="methods to time with mergekit too (its TIES takes ~35 s per run here)",
    )
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown method(s) {', '.join(sorted(unknown))}; valid: {', '.join(METHODS)}")

    model = FAMILIES[args.family]
    default_dir = "/tmp/raymerge-bench" + ("" if args.family == "bench" else f"-{args.family}")
    workdir = Path(args.workdir or default_dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    models = build_family(workdir / "models", model)
    configs = write_configs(workdir, models, linear_of_all=args.family == "1b")
    sizes = {n: model_bytes(p) for n, p in models.items()}
    reads = {
        "linear": sum(sizes.values()) if args.family == "1b" else sizes["ft1"] + sizes["ft2"],
        "task_arithmetic": sum(sizes.values()),
        "ties": sum(sizes.values()),
        "dare_ties": sum(sizes.values()),
        "slerp": sizes["base"] + sizes["ft1"],
    }
    out_bytes = sizes["ft1"]
    print(f"family: {gb(sum(sizes.values()))} of safetensors in 3 models, output {gb(out_bytes)}")

    print(f"I/O floor: read 3 inputs + write {gb(out_bytes)} with fsync, page cache warm ...")
    floor = io_floor(models, out_bytes, workdir, args.repeats)
    print(
        f"  {floor['wall_s']:.2f} s (read {floor['read_gbps']:.2f} GB/s, "
        f"write {floor['write_gbps']:.2f} GB/s)"
    )

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    raymerge = [tool("raymerge"), "run"]
    flags = ["--overwrite", "--no-progress", "--json"]
    rows: dict[str, dict[str, Any]] = {}
    with RayCluster(env) as cluster:
        for m in methods:
            out = workdir / f"out-{m}"
            cmd = [*raymerge, str(configs[m]), str(out), "--address", cluster.address, *flags]
            rows[f"raymerge {m} (warm)"] = repeat(
                f"raymerge {m} (warm)", cmd, out, cluster.driver_env, args.repeats, reads[m],
                cluster.pid,
            )  # fmt: skip
        for m in methods:
            label = f"raymerge {m} (in-process)"
            rows[label] = inproc(
                label, configs[m], workdir / f"out-inproc-{m}", cluster, args.repeats, reads[m]
            )
        # last: the pool holds the cluster's CPUs while idle
        for m in methods:
            label = f"raymerge {m} (pooled)"
            out = workdir / f"out-pooled-{m}"
            cmd = [*raymerge, str(configs[m]), str(out), "--address", cluster.address, *flags]
            cmd += ["--keep-workers", "120"]
            timed(cmd, cluster.driver_env, cluster.pid)  # untimed: starts the pool
            rows[label] = repeat(
                label, cmd, out, cluster.driver_env, args.repeats, reads[m], cluster.pid
            )

    if "linear" in methods:
        out = workdir / "out-linear-cold"
        cmd = [*raymerge, str(configs["linear"]), str(out), *flags]
        rows["raymerge linear (cold)"] = repeat(
            "raymerge linear (cold)", cmd, out, env, args.repeats, reads["linear"]
        )
    mergekit = args.mergekit or shutil.which("mergekit-yaml")
    for m in [m for m in METHODS if m in methods and m in args.mergekit_methods.split(",")]:
        if mergekit and Path(mergekit).exists():
            out = workdir / f"out-mergekit-{m}"
            cmd = [mergekit, str(configs[m]), str(out), "-j", "2", "--quiet"]
            rows[f"mergekit {m}"] = repeat(f"mergekit {m}", cmd, out, env, args.repeats, reads[m])
        else:
            print("mergekit not installed, skipped")
            rows[f"mergekit {m}"] = {"skipped": "mergekit not installed"}

    for r in rows.values():
        if "wall_s" in r:
            r["x_floor"] = r["wall_s"] / floor["wall_s"]
    targets: dict[str, Any] = {}
    for m, (floor_max, mk_min) in TARGETS[args.family].items():
        mk = rows.get(f"mergekit {m}", {}).get("wall_s")
        for mode in ("warm", "pooled", "in-process"):
            r = rows.get(f"raymerge {m} ({mode})", {})
            if "wall_s" not in r:
                continue
            t = targets.setdefault(f"{m} {mode}", {})
            t["x_floor"] = r["x_floor"]
            t["floor_ok"] = r["x_floor"] <= floor_max
            if mk:
                r["speedup_vs_mergekit"] = t["speedup_vs_mergekit"] = mk / r["wall_s"]
                t["mergekit_ok"] = t["speedup_vs_mergekit"] >= mk_min

    print()
    print(
        f"median of {args.repeats} run(s); in-run s = raymerge's own wall_s (no interpreter "
        "start-up); read GB/s = input bytes the run reads / wall s; x floor = wall s / floor "
        "wall s;\nRSS = peak resident set polled every 0.1 s: driver process, largest Ray worker, "
        "sum over the driver's process tree and the benchmark's Ray cluster"
    )
    print_table(floor, rows)
    for name, t in targets.items():
        m = name.split()[0]
        floor_max, mk_min = TARGETS[args.family][m]
        line = f"target {name}: {t['x_floor']:.2f}x floor (<= {floor_max}: "
        line += "met" if t["floor_ok"] else "MISSED"
        if "speedup_vs_mergekit" in t:
            line += f"), {t['speedup_vs_mergekit']:.1f}x faster than mergekit (>= {mk_min}: "
            line += "met" if t["mergekit_ok"] else "MISSED"
        print(line + ")")
    report = {
        "model": model,
        "model_bytes": sizes,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "floor": floor,
        "runs": rows,
        "targets": targets,
    }
    print(json.dumps(report, sort_keys=True))
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
