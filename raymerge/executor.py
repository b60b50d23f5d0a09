"""The only module that schedules work with Ray.

Each planned job becomes one Ray task that range-reads its own inputs and writes its own output
bytes (:mod:`raymerge.job`); the driver sees only small result dicts. Design points:

- **Resources**: every task asks for ``num_cpus`` (1; 0.5 when an input or the output is
  remote, so a CPU runs two network-bound jobs and computes one while the other reads or
  writes), its planned ``memory`` (Ray's admission control, so a node never runs more jobs than
  its memory holds) and ``num_gpus`` when the cluster has GPUs; a task that got a GPU computes
  on it.
- **Pooled workers** (``keep_workers``, and one actor per GPU) run two jobs at a time on
  threads with a compute lock: the next job's reads and the last one's writes overlap the
  current compute.
- **Order and backpressure**: jobs go out largest first; at most ``in_flight`` are submitted at
  once (default: twice the job slots), so a 2,000-job 70B plan never floods the scheduler or the
  object store.
- **ZipIt's statistics stage** (:func:`zipit_stats`, :func:`match_spaces`) runs before the jobs:
  actors that each load the K models once accumulate calibration shards, a tree of reduce tasks
  sums the shard statistics (in shard order: deterministic), and one task per feature space runs
  the matcher.
- **Retries**: Ray's own task retries are off; the executor resubmits a failed job itself (up to
  ``max_attempts``), so it can count retries for the summary and manifest. Worker or node loss
  and storage errors are retried; user errors (:class:`RaymergeError`, e.g. NaN inputs) fail the
  run at once. Jobs are idempotent (fixed offsets / part numbers), so a retry rewrites the same
  bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from raymerge.errors import RaymergeError
from raymerge.io.header import TensorSource
from raymerge.job import JobContext, run_job, run_stats
from raymerge.methods.base import Stats, combine
from raymerge.plan import Job, Piece
from raymerge.storage import Location
from raymerge.zipit.spaces import Space

if TYPE_CHECKING:
    from raymerge.zipit.matching import Matching
    from raymerge.zipit.stats import FeatureStats


@dataclass
class ExecOptions:
    address: str | None = None
    num_cpus: int | None = None
    num_gpus_per_job: float | None = None  # None: 0.5 when the cluster has GPUs, else 0
    in_flight: int | None = None
    max_attempts: int = 3
    progress: bool = True
    # seconds a pool of worker actors outlives the run, idle, for the next run to reuse (0: no
    # pool on CPU clusters: one task per job). GPU clusters always use a pool (one actor per GPU).
    keep_workers: float = 0.0
    # jobs sharing one CPU (task mode). None: 2 when an input or the output is remote (one
    # computes while the other waits on the network), 1 when everything is local
    jobs_per_cpu: int | None = None


@dataclass
class ExecResult:
    results: dict[int, dict[str, Any]]
    retries: int
    nodes: list[str]
    seconds: float


def connect(opts: ExecOptions) -> bool:
    """Connect to the given/ambient cluster, or start a local one. True if we started it."""
    if ray.is_initialized():
        return False
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    ray.init(
        address="local",  # never attach silently to some other cluster on this machine
        num_cpus=opts.num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=False,
    )
    return True


def _job_body(
    job: Job, ctx: JobContext, stats: dict, attempt: int, lock: Any = None
) -> dict[str, Any]:
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    result = run_job(job, ctx, stats, device=device, attempt=attempt, compute_lock=lock)
    result["node"] = ray.get_runtime_context().get_node_id()
    result["host"] = socket.gethostname()
    result["pid"] = os.getpid()
    return result


def _stats_body(
    piece: Piece, ctx: JobContext, prev: list, attempt: int, lock: Any = None
) -> dict[str, Any]:
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    stats = run_stats(piece, ctx, prev, device=device, compute_lock=lock)
    return {"stats": stats, "attempt": attempt}


_remote_job = ray.remote(_job_body)
_remote_stats = ray.remote(_stats_body)


SLOTS_PER_WORKER = 2  # jobs a pooled worker holds at once: one computes, one reads or writes


@ray.remote(max_concurrency=SLOTS_PER_WORKER)
class _Worker:
    """A long-lived worker process for :class:`_Pool`: torch imported once, CUDA context once.
    It runs up to ``SLOTS_PER_WORKER`` jobs at a time on threads, computing one at a time (a
    lock), so the next job's reads and the last job's writes overlap the current compute. With
    ``idle_s > 0`` it exits by itself after that long without work."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s, self.last, self.active = idle_s, time.monotonic(), 0
        self.compute = threading.Lock()
        self.state = threading.Lock()
        if idle_s > 0:
            threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.idle_s))
            with self.state:
                if not self.active and time.monotonic() - self.last > self.idle_s:
                    os._exit(0)  # idle for too long: give the CPU/GPU back to the cluster

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.state:
            self.active += 1
        try:
            return fn(*args, self.compute)
        finally:
            with self.state:
                self.active -= 1
                self.last = time.monotonic()

    def job(self, job: Job, ctx: JobContext, stats: dict, attempt: int) -> dict[str, Any]:
        return self._run(_job_body, job, ctx, stats, attempt)

    def stats(self, piece: Piece, ctx: JobContext, prev: list, attempt: int) -> dict[str, Any]:
        return self._run(_stats_body, piece, ctx, prev, attempt)

    def ping(self) -> int:
        return os.getpid()


def pool_tag() -> str:
    """Name prefix of pooled workers: raymerge's code and the job's runtime environment (which
    may carry credentials), so a run only ever reuses workers of identical code and settings."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    env = ray.get_runtime_context().runtime_env or {}
    h.update(json.dumps(env, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


class _Pool:
    """Worker actors that outlive a run (``keep_workers`` seconds idle, detached and named, so the
    next driver finds them warm) or live for one run (GPU clusters: one actor per GPU, so CUDA
    and torch start once per run, not once per job as Ray's ``num_gpus`` tasks do)."""

    def __init__(
        self, size: int, num_gpus: float, keep_s: float, actors: list[Any] | None = None
    ) -> None:
        self.tag, self.num_gpus, self.keep_s = pool_tag(), num_gpus, keep_s
        # an adopted pool keeps its own idle timer: only the actors started here are killed
        self.mine = set(range(size)) if actors is None else set()
        self.actors = actors if actors is not None else [self._start(i) for i in range(size)]
        # one entry per free slot, actors interleaved, so work spreads before slots double up
        self.free = deque(i for _ in range(SLOTS_PER_WORKER) for i in range(len(self.actors)))
        self.busy: dict[ray.ObjectRef, tuple[int, Any]] = {}

    @staticmethod
    def name(tag: str, i: int) -> str:
        return f"raymerge-worker-{tag}-{i}"

    @classmethod
    def adopt(cls, size: int) -> _Pool | None:
        """The live pool a ``keep_workers`` run left behind (same code and runtime env), if any.
        A run without ``keep_workers`` uses it: its idle actors hold the CPUs that Ray tasks
        would wait for until the pool times out."""
        tag, found = pool_tag(), []
        for i in range(size):
            try:
                found.append(ray.get_actor(cls.name(tag, i), namespace="raymerge"))
            except ValueError:
                continue
        return cls(len(found), 0, 0.0, actors=found) if found else None

    def _start(self, i: int) -> Any:
        opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": self.num_gpus, "max_restarts": 0}
        if self.keep_s > 0:
            opts.update(
                name=self.name(self.tag, i),
                namespace="raymerge",
                lifetime="detached",
                get_if_exists=True,
            )
        return _Worker.options(**opts).remote(self.keep_s)

    def submit(self, kind: str, *args: Any) -> ray.ObjectRef:
        i = self.free.popleft()
        ref = getattr(self.actors[i], kind).remote(*args)
        self.busy[ref] = (i, self.actors[i])
        return ref

    def release(self, ref: ray.ObjectRef, exc: BaseException | None) -> None:
        i, actor = self.busy.pop(ref)
        # died (node lost, killed): a fresh one, once (its other slot fails the same way)
        if isinstance(exc, ray.exceptions.RayActorError) and self.actors[i] is actor:
            self.actors[i] = self._start(i)
            self.mine.add(i)
        self.free.append(i)

    def close(self) -> None:
        if self.keep_s <= 0:
            for i in self.mine:
                ray.kill(self.actors[i])


def _user_error(exc: BaseException) -> RaymergeError | None:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RaymergeError):
        return cause
    return exc if isinstance(exc, RaymergeError) else None


class _Runner:
    """Bounded submission with executor-side retries, shared by stats rounds and jobs."""

    def __init__(self, opts: ExecOptions, remote_io: bool = False) -> None:
        resources = ray.cluster_resources()
        cpus = max(1, int(resources.get("CPU", 1)))
        gpus = resources.get("GPU", 0)
        self.num_gpus = (
            opts.num_gpus_per_job if opts.num_gpus_per_job is not None else (0.5 if gpus else 0)
        )
        # jobs that wait on the network share a CPU two at a time: one computes while the other
        # reads or writes (local jobs wait on nothing: one per CPU)
        self.num_cpus = 1 / (opts.jobs_per_cpu or (2 if remote_io else 1))
        self.limit = opts.in_flight or int(2 * cpus / self.num_cpus)
        self.max_attempts = opts.max_attempts
        self.retries = 0
        self.pool: _Pool | None = None
        if opts.keep_workers > 0 or (gpus and self.num_gpus):
            size = max(1, int(gpus)) if gpus and self.num_gpus else cpus
            size = min(size, opts.in_flight or size)
            self.pool = _Pool(size, 1 if gpus and self.num_gpus else 0, opts.keep_workers)
        elif not gpus:
            self.pool = _Pool.adopt(min(cpus, opts.in_flight or cpus))
        if self.pool is not None:
            slots = len(self.pool.free)
            self.limit = min(slots, opts.in_flight or slots)

    def submit(self, kind: str, item_opts: dict[str, Any], *args: Any) -> ray.ObjectRef:
        """One job or statistics task: to a pooled worker, or as a Ray task."""
        if self.pool is not None:
            return self.pool.submit(kind, *args)
        fn = _remote_job if kind == "job" else _remote_stats
        return fn.options(**item_opts).remote(*args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def run(
        self,
        items: list[Any],
        submit: Callable[[Any, int, dict[str, Any]], ray.ObjectRef],
        label: Callable[[Any], str],
        memory: Callable[[Any], int],
        on_done: Callable[[Any, Any], None],
    ) -> None:
        pending: dict[ray.ObjectRef, tuple[Any, int]] = {}
        queue = list(reversed(items))

        def go(item: Any, attempt: int) -> None:
            opts = {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                "memory": memory(item),
                "max_retries": 0,
            }
            pending[submit(item, attempt, opts)] = (item, attempt)

        try:
            while queue or pending:
                while queue and len(pending) < self.limit:
                    go(queue.pop(), 1)
                done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                for ref in done:
                    item, attempt = pending.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - classify, then retry or fail
                        if self.pool is not None:
                            self.pool.release(ref, exc)
                        user = _user_error(exc)
                        if user is not None:
                            raise user from None
                        if attempt >= self.max_attempts:
                            raise RuntimeError(
                                f"{label(item)} failed {attempt} times; last error: {exc}"
                            ) from exc
                        self.retries += 1
                        print(
                            f"raymerge: retrying {label(item)} (attempt {attempt + 1}) after "
                            f"{type(exc).__name__}",
                            file=sys.stderr,
                        )
                        go(item, attempt + 1)
                        continue
                    if self.pool is not None:
                        self.pool.release(ref, None)
                    on_done(item, res)
        except BaseException:
            for ref in pending:
                try:  # actor tasks (pooled workers) cannot be force-cancelled
                    ray.cancel(ref, force=self.pool is None)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise


def compute_stats(
    jobs: list[Job], all_jobs: list[Job], ctx_ref: Any, runner: _Runner
) -> dict[str, list[Stats]]:
    """Whole-tensor statistics of the chunked tensors that ``jobs`` touch: one task per chunk
    (of *every* chunk of such a tensor in ``all_jobs``, also those a resumed run kept) and round,
    reduced here in chunk order (the reduction of :func:`raymerge.methods.base.combine`)."""
    wanted = {p.name for j in jobs for p in j.pieces if p.n_chunks > 1 and p.rounds}
    chunks: dict[str, list[Piece]] = {}
    for j in all_jobs:
        for p in j.pieces:
            if p.name in wanted:
                chunks.setdefault(p.name, []).append(p)
    for ps in chunks.values():
        ps.sort(key=lambda p: p.chunk)
        assert [p.chunk for p in ps] == list(range(ps[0].n_chunks)), "incomplete chunk list"
    stats: dict[str, list[Stats]] = {name: [] for name in chunks}
    for rnd in range(max((ps[0].rounds for ps in chunks.values()), default=0)):
        todo = [p for ps in chunks.values() if ps[0].rounds > rnd for p in ps]
        partials: dict[tuple[str, int], Stats] = {}
        prev_refs = {name: ray.put(stats[name]) for name in {p.name for p in todo}}

        def submit(p: Piece, attempt: int, o: dict[str, Any], refs=prev_refs) -> ray.ObjectRef:
            return runner.submit("stats", o, p, ctx_ref, refs[p.name], attempt)

        def label(p: Piece, r: int = rnd) -> str:
            return f"statistics of {p.name!r} chunk {p.chunk} (round {r + 1})"

        def keep(p: Piece, res: dict[str, Any], into=partials) -> None:
            into[(p.name, p.chunk)] = res["stats"]

        runner.run(todo, submit, label, lambda p: p.memory_bytes, keep)
        for name in {p.name for p in todo}:
            ordered = [partials[(name, c)] for c in range(len(chunks[name]))]
            stats[name].append(combine(ordered))
    return stats


@ray.remote
class _ZipStatsActor:
    """Holds the K models (loaded once) and accumulates calibration shards through them."""

    def __init__(self, arch: str, models: list, config: dict | None) -> None:
        from raymerge.zipit.gather import load_tensors

        self.arch, self.config = arch, config
        self.models = [load_tensors(loc, sources) for loc, sources in models]

    def shard(self, x: Any, batches: list, spaces: list[str]) -> dict[str, FeatureStats]:
        from raymerge.zipit.gather import shard_stats

        return shard_stats(self.arch, self.models, self.config, x, batches, spaces)


@ray.remote
def _sum_stats(a: dict[str, FeatureStats], b: dict[str, FeatureStats]) -> dict:
    return {k: a[k] + b[k] for k in a}


def zipit_stats(
    arch: str,
    models: list[tuple[Location, dict[str, TensorSource]]],
    config: dict | None,
    x: Any,
    shards: list[list[tuple[int, int]]],
    spaces: list[str],
    opts: ExecOptions,
) -> tuple[dict[str, FeatureStats], int]:
    """Statistics of every space over all calibration shards; also the number of actors used.
    Actors (one CPU each, at most one per shard and per cluster CPU) take shards round-robin;
    shard results are summed pairwise in a fixed tree, so the sum never depends on timing."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n_actors = max(1, min(len(shards), opts.num_cpus or cpus, cpus))
    pooled = opts.keep_workers > 0 or _Pool.adopt(1) is not None
    actors = [
        # idle pooled workers (keep_workers) may hold every CPU: do not wait for them
        _ZipStatsActor.options(num_cpus=0 if pooled else 1).remote(arch, models, config)
        for _ in range(n_actors)
    ]
    try:
        x_ref = ray.put(x)
        level = [
            actors[s % n_actors].shard.remote(x_ref, batches, spaces)
            for s, batches in enumerate(shards)
        ]
        ray.wait(level, num_returns=len(level), fetch_local=False)
        for a in actors:  # free their CPUs for the reduce tasks
            ray.kill(a, no_restart=True)
        actors = []
        while len(level) > 1:
            nxt = [_sum_stats.remote(a, b) for a, b in zip(level[::2], level[1::2])]
            level = nxt + ([level[-1]] if len(level) % 2 else [])
        return ray.get(level[0]), n_actors
    finally:
        for a in actors:
            ray.kill(a)


@ray.remote
def _match_space(
    stats: FeatureStats | None, space: Space, sizes: list[int], kind: str, alpha: float, beta: float
) -> Matching:
    from raymerge.zipit.matching import group_similarity, match, match_identity

    units = [n // space.group for n in sizes]
    if kind == "identity" or stats is None:
        return match_identity(units)
    corr = stats.correlation()
    if space.group > 1:
        corr = group_similarity(corr, list(sizes), space.group)
    return match(kind, corr, units, alpha=alpha, beta=beta if space.within else 0.0)


def match_spaces(
    stats: dict[str, FeatureStats],
    spaces: list[Space],
    n_models: int,
    kind: str,
    alpha: float,
    beta: float,
) -> dict[str, Matching]:
    """One matcher task per feature space (they are independent; O(C^3) each for zipit)."""
    refs = {
        s.name: _match_space.remote(
            stats.get(s.name), s, [s.units * s.group] * n_models, kind, alpha, beta
        )
        for s in spaces
    }
    return dict(zip(refs, ray.get(list(refs.values()))))


def execute(
    jobs: list[Job],
    ctx: JobContext,
    opts: ExecOptions,
    on_done: Callable[[Job, dict[str, Any]], None] | None = None,
    all_jobs: list[Job] | None = None,
    external: dict[str, list[Stats]] | None = None,
) -> ExecResult:
    """Run ``jobs`` on the connected cluster; raise on a user error or exhausted retries.
    ``all_jobs`` is the whole plan when ``jobs`` is what a resumed run still has to do;
    ``external`` holds statistics computed before the jobs (ZipIt's matchings)."""
    t0 = time.perf_counter()
    runner = _Runner(opts, ctx.remote_io)
    ctx_ref = ray.put(ctx)
    results: dict[int, dict[str, Any]] = {}

    def done(job: Job, res: dict[str, Any]) -> None:
        results[job.id] = res
        if on_done:
            on_done(job, res)

    try:
        stats = compute_stats(jobs, all_jobs or jobs, ctx_ref, runner)
        stats_ref = ray.put({**stats, **(external or {})})
        # largest first (LPT): the last jobs to start are the short ones, so workers finish
        # together instead of one running a big job while the others sit idle
        order = sorted(jobs, key=lambda j: (-j.bytes_read, -j.nbytes, j.id))
        runner.run(
            order,
            lambda j, attempt, o: runner.submit("job", o, j, ctx_ref, stats_ref, attempt),
            lambda j: f"job {j.id} ({j.pieces[0].name if j.pieces else 'header'} ...)",
            lambda j: j.memory_bytes,
            done,
        )
    finally:
        runner.close()
    nodes = sorted({r["node"] for r in results.values()})
    return ExecResult(results, runner.retries, nodes, time.perf_counter() - t0)
