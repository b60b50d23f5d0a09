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
- **Statistics rounds** of chunked tensors (TIES thresholds, L1 sums, Model Stock cosines) run
  tensor by tensor before that tensor's merge jobs (:class:`_Flow`); chunks of remote inputs are
  kept in the object store between the rounds and the merge, so each is read from storage once.
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
import itertools
import json
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
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
    # object-store bytes for chunks of remote inputs kept between the statistics rounds and the
    # merge of their tensor (each read from storage once). None: half the cluster's object
    # store; 0: read again each round
    keep_bytes: int | None = None


@dataclass
class ExecResult:
    results: dict[int, dict[str, Any]]
    retries: int
    nodes: list[str]
    seconds: float
    stats_bytes_read: int = 0  # read from storage by statistics rounds (jobs: in results)
    stats_storage_retries: int = 0  # storage requests they retried
    kept_peak_bytes: int = 0  # most chunk bytes held in the object store between reads


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
    job: Job,
    ctx: JobContext,
    external: dict,
    attempt: int,
    names: tuple[str, ...],
    which: tuple[int, ...],
    *objs: Any,
    lock: Any = None,
) -> dict[str, Any]:
    """``objs``: the statistics of chunked tensors ``names``, then the kept source bytes of
    pieces ``which`` (object-store arguments: in task mode Ray prefers the node holding them)."""
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    stats = dict(zip(names, objs[: len(names)]))
    held: list[Any] = [None] * len(job.pieces)
    for pi, raw in zip(which, objs[len(names) :]):
        held[pi] = raw
    result = run_job(
        job,
        ctx,
        {**stats, **external},
        device=device,
        attempt=attempt,
        compute_lock=lock,
        cached=held,
    )
    result["node"] = ray.get_runtime_context().get_node_id()
    result["host"] = socket.gethostname()
    result["pid"] = os.getpid()
    return result


def _stats_body(
    piece: Piece,
    ctx: JobContext,
    prev: list,
    attempt: int,
    keep: bool,
    cached: list[Any] | None = None,
    lock: Any = None,
) -> Any:
    """Statistics of one chunk; with ``keep`` a second return value: its source bytes."""
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    out = run_stats(piece, ctx, prev, device=device, compute_lock=lock, cached=cached, keep=keep)
    out["attempt"] = attempt
    out["node"] = ray.get_runtime_context().get_node_id()
    return (out, out.pop("raw")) if keep else out


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
            return fn(*args, lock=self.compute)
        finally:
            with self.state:
                self.active -= 1
                self.last = time.monotonic()

    def job(self, *args: Any) -> dict[str, Any]:
        return self._run(_job_body, *args)

    def stats(self, *args: Any) -> Any:
        return self._run(_stats_body, *args)


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
        self.nodes: list[str | None] = [None] * len(self.actors)  # learnt from results

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

    def submit(self, kind: str, num_returns: int, *args: Any) -> Any:
        i = self.free.popleft()
        refs = getattr(self.actors[i], kind).options(num_returns=num_returns).remote(*args)
        self.busy[refs if num_returns == 1 else refs[0]] = (i, self.actors[i])
        return refs

    def release(
        self, ref: ray.ObjectRef, exc: BaseException | None, node: str | None = None
    ) -> None:
        """A slot is free again; ``node``: where its work ran (results carry it)."""
        i, actor = self.busy.pop(ref)
        # died (node lost, killed): a fresh one, once (its other slot fails the same way)
        if isinstance(exc, ray.exceptions.RayActorError) and self.actors[i] is actor:
            self.actors[i] = self._start(i)
            self.nodes[i] = None
            self.mine.add(i)
        elif node is not None and self.actors[i] is actor:
            self.nodes[i] = node
        self.free.append(i)

    def free_node(self) -> str | None:
        """The node of the slot the next submission gets, if known."""
        return self.nodes[self.free[0]] if self.free else None

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

    def submit(self, kind: str, item_opts: dict[str, Any], *args: Any, num_returns: int = 1) -> Any:
        """One job or statistics task: to a pooled worker, or as a Ray task. Its ref, or its
        ``num_returns`` refs."""
        if self.pool is not None:
            return self.pool.submit(kind, num_returns, *args)
        fn = _remote_job if kind == "job" else _remote_stats
        return fn.options(**item_opts, num_returns=num_returns).remote(*args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def run(
        self,
        next_item: Callable[[bool, str | None], Any],
        submit: Callable[[Any, int, dict[str, Any]], ray.ObjectRef],
        label: Callable[[Any], str],
        memory: Callable[[Any], int],
        on_done: Callable[[Any, Any], None],
    ) -> None:
        """Submit what ``next_item(idle, node)`` hands out (None: nothing ready now; ``idle``:
        nothing is running either; ``node``: where a pooled worker's slot is free, if known)
        while fewer than ``limit`` are pending; ends when it hands out nothing and nothing is
        pending."""
        pending: dict[ray.ObjectRef, tuple[Any, int]] = {}

        def go(item: Any, attempt: int) -> None:
            opts = {
                "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus,
                "memory": memory(item),
                "max_retries": 0,
            }
            pending[submit(item, attempt, opts)] = (item, attempt)

        try:
            while True:
                while len(pending) < self.limit:
                    item = next_item(not pending, self.pool.free_node() if self.pool else None)
                    if item is None:
                        break
                    go(item, 1)
                if not pending:
                    return
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
                        self.pool.release(ref, None, res.get("node"))
                    on_done(item, res)
        except BaseException:
            for ref in pending:
                try:  # actor tasks (pooled workers) cannot be force-cancelled
                    ray.cancel(ref, force=self.pool is None)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
            raise


@dataclass
class _Tensor:
    """A chunked tensor whose method needs whole-tensor statistics: rounds over all its chunks
    (reduced in chunk order, :func:`raymerge.methods.base.combine`), then its merge jobs."""

    name: str
    chunks: list[Piece]
    keep: dict[int, int]  # chunk -> bytes of it worth keeping (remote sources, a job to come)
    waiting: list[Job] = field(default_factory=list)  # jobs that need its statistics
    stats: list[Stats] = field(default_factory=list)  # one per finished round
    stats_ref: Any = None  # ray.put(stats)
    partials: dict[int, Stats] = field(default_factory=dict)
    raw: dict[int, ray.ObjectRef] = field(default_factory=dict)  # chunk -> its kept bytes
    where: dict[int, str] = field(default_factory=dict)  # chunk -> node holding its kept bytes


class _Flow:
    """What runs when: statistics rounds of chunked tensors, and the merge jobs.

    A merge job may start once every chunked tensor it touches has all its statistics; others
    start at once (largest first). A tensor is *opened* when its first round is submitted and
    goes round by round on its own, so its merge jobs start as soon as it is done, not when
    every tensor is. Where an input is remote, the first round keeps each chunk's bytes in Ray's
    object store (task return values: they live on the node that read them; in task mode Ray
    prefers to run the later rounds and the merge job there, pooled actors fetch them from
    there), so a TIES/DARE-TIES/DELLA/Model Stock tensor is read from storage once, not once per
    round plus once to merge. Tensors are opened, in plan order, while their kept bytes fit
    ``keep_bytes`` (a tensor that does not fit now lets a later, smaller one go first); a
    tensor larger than that, or one that must start when nothing else can run, goes without
    (read again each round). Ray spills a node's store to its disk if the kept bytes pile up on
    one node. A lost object costs one retry of the task that needed it, which then reads from
    storage.

    Priority when a slot frees: the next round of an opened tensor (its barrier is on the
    critical path), then jobs whose statistics just completed (they free kept bytes), then
    opening the next tensor, then independent jobs.
    """

    def __init__(
        self,
        jobs: list[Job],
        all_jobs: list[Job],
        ctx: JobContext,
        runner: _Runner,
        refs: tuple[Any, Any],
        keep_bytes: int,
    ) -> None:
        self.runner, (self.ctx_ref, self.external_ref) = runner, refs
        self.keep_bytes, self.held, self.peak = keep_bytes, 0, 0
        self.stats_read = self.stats_retries = 0
        wanted = {p.name for j in jobs for p in j.pieces if p.n_chunks > 1 and p.rounds}
        todo = {(p.name, p.chunk) for j in jobs for p in j.pieces}
        remote = {i for i, loc in enumerate(ctx.inputs) if not loc.is_local}
        chunks: dict[str, list[Piece]] = {}
        for j in all_jobs:  # a resumed run needs statistics of the chunks it kept, too
            for p in j.pieces:
                if p.name in wanted:
                    chunks.setdefault(p.name, []).append(p)
        self.tensors: dict[str, _Tensor] = {}
        for name, ps in chunks.items():
            ps.sort(key=lambda p: p.chunk)
            assert [p.chunk for p in ps] == list(range(ps[0].n_chunks)), "incomplete chunks"
            keep = {
                p.chunk: sum(s.end - s.start for s in p.sources if s.input in remote)
                for p in ps
                if (name, p.chunk) in todo
            }
            self.tensors[name] = _Tensor(name, ps, {c: n for c, n in keep.items() if n})
        self.deps = {j.id: {p.name for p in j.pieces if p.name in wanted} for j in jobs}
        for j in jobs:
            for name in sorted(self.deps[j.id]):
                self.tensors[name].waiting.append(j)
        self.to_open = deque(self.tensors.values())
        self.rounds: deque[tuple[_Tensor, Piece]] = deque()
        self.released: deque[Job] = deque()
        # largest first (LPT): the last jobs to start are the short ones, so workers finish
        # together instead of one running a big job while the others sit idle
        self.plain = deque(sorted((j for j in jobs if not self.deps[j.id]), key=_lpt))
        self.raw_pending: dict[tuple[str, int], ray.ObjectRef] = {}

    # -- what runs next -------------------------------------------------------------------
    def next(self, idle: bool, node: str | None = None) -> tuple[Any, ...] | None:
        """The next item to run; ``node``: where it will run if known (pooled workers: actors
        get no locality from Ray's scheduler), so a round or job whose kept chunks are there
        goes first."""
        if self.rounds:
            return ("stats", *_take(self.rounds, node, lambda tp: self._holder([tp])))
        if self.released:
            return ("job", _take(self.released, node, self._job_holder))
        for t in self.to_open:  # in plan order; one that does not fit lets the next try
            need = sum(t.keep.values())
            if not need or need > self.keep_bytes:
                return self._open(t, keep=False)
            if self.held + need <= self.keep_bytes:
                return self._open(t, keep=True)
        if self.to_open and idle and not self.plain:  # never wait for memory nothing will free
            return self._open(self.to_open[0], keep=False)
        if self.plain:
            return ("job", self.plain.popleft())
        return None

    def _open(self, t: _Tensor, keep: bool) -> tuple[Any, ...]:
        self.to_open.remove(t)
        if keep:
            self.held += sum(t.keep.values())
            self.peak = max(self.peak, self.held)
        else:
            t.keep = {}
        self.rounds.extend((t, p) for p in t.chunks)
        return ("stats", *self.rounds.popleft())

    def _holder(self, pairs: list[tuple[_Tensor, Piece]]) -> str | None:
        """The node holding most of the kept bytes of these chunks, if any are kept."""
        held: dict[str, int] = {}
        for t, p in pairs:
            node = t.where.get(p.chunk) if p.chunk in t.raw else None
            if node is not None:
                held[node] = held.get(node, 0) + t.keep.get(p.chunk, 0)
        return max(held, key=lambda n: held[n]) if held else None

    def _job_holder(self, job: Job) -> str | None:
        return self._holder(
            [(self.tensors[p.name], p) for p in job.pieces if p.name in self.tensors]
        )

    def _drop(self, t: _Tensor, chunk: int) -> None:
        """Chunk ``chunk`` of ``t`` is no longer kept (merged, or its object failed a task)."""
        self.held -= t.keep.pop(chunk, 0)
        t.raw.pop(chunk, None)
        t.where.pop(chunk, None)

    # -- submission and completion ----------------------------------------------------------
    def submit(self, item: tuple[Any, ...], attempt: int, opts: dict[str, Any]) -> ray.ObjectRef:
        if item[0] == "stats":
            _, t, p = item
            cached = t.raw.get(p.chunk)
            if cached is not None and attempt > 1:  # maybe lost: read storage from now on
                self._drop(t, p.chunk)
                cached = None
            keep = not t.stats and p.chunk in t.keep
            args = (p, self.ctx_ref, t.stats_ref if t.stats else [], attempt, keep, cached)
            if not keep:
                return self.runner.submit("stats", opts, *args)
            ref, raw = self.runner.submit("stats", opts, *args, num_returns=2)
            self.raw_pending[(t.name, p.chunk)] = raw
            return ref
        job: Job = item[1]
        which, cached_refs, names, stats_refs = [], [], [], []
        for pi, p in enumerate(job.pieces):
            t = self.tensors.get(p.name)
            if t is None:
                continue
            if p.name not in names:  # statistics: put once per round, shared by its jobs
                names.append(p.name)
                stats_refs.append(t.stats_ref)
            if p.chunk in t.raw:
                if attempt > 1:
                    self._drop(t, p.chunk)
                    continue
                which.append(pi)
                cached_refs.append(t.raw[p.chunk])
        args = (job, self.ctx_ref, self.external_ref, attempt, tuple(names), tuple(which))
        return self.runner.submit("job", opts, *args, *stats_refs, *cached_refs)

    def stats_done(self, t: _Tensor, p: Piece, res: dict[str, Any]) -> None:
        raw = self.raw_pending.pop((t.name, p.chunk), None)
        if raw is not None:
            t.raw[p.chunk] = raw
            if res.get("node"):
                t.where[p.chunk] = res["node"]
        self.stats_read += res["bytes_read"]
        self.stats_retries += res["storage_retries"]
        t.partials[p.chunk] = res["stats"]
        if len(t.partials) < len(t.chunks):
            return
        t.stats.append(combine([t.partials[c] for c in range(len(t.chunks))]))
        t.stats_ref, t.partials = ray.put(t.stats), {}
        if len(t.stats) < t.chunks[0].rounds:
            self.rounds.extend((t, q) for q in t.chunks)
            return
        ready = []
        for j in t.waiting:
            self.deps[j.id].discard(t.name)
            if not self.deps[j.id]:
                ready.append(j)
        self.released.extend(sorted(ready, key=_lpt))

    def job_done(self, job: Job) -> None:
        for p in job.pieces:
            t = self.tensors.get(p.name)
            if t is not None:
                self._drop(t, p.chunk)


TAKE_WINDOW = 64  # ready items searched for one whose kept chunks are on the free slot's node


def _take(queue: deque, node: str | None, holder: Callable[[Any], str | None]) -> Any:
    """The first of the first ``TAKE_WINDOW`` items of ``queue`` held on ``node``, else the
    head; removed from the queue."""
    if node is not None:
        for k, item in enumerate(itertools.islice(queue, TAKE_WINDOW)):
            if holder(item) == node:
                del queue[k]
                return item
    return queue.popleft()


def _lpt(j: Job) -> tuple[int, int, int]:
    return (-j.bytes_read, -j.nbytes, j.id)


def _label(item: tuple[Any, ...]) -> str:
    if item[0] == "stats":
        t, p = item[1], item[2]
        return f"statistics of {p.name!r} chunk {p.chunk} (round {len(t.stats) + 1})"
    j = item[1]
    return f"job {j.id} ({j.pieces[0].name if j.pieces else 'header'} ...)"


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
    keep = opts.keep_bytes
    if keep is None:  # half the object store: the rest is for arguments, results, spilling
        keep = int(ray.cluster_resources().get("object_store_memory", 0) // 2)
    flow = _Flow(jobs, all_jobs or jobs, ctx, runner, (ray.put(ctx), ray.put(external or {})), keep)
    results: dict[int, dict[str, Any]] = {}

    def done(item: tuple[Any, ...], res: dict[str, Any]) -> None:
        if item[0] == "stats":
            flow.stats_done(item[1], item[2], res)
            return
        job = item[1]
        flow.job_done(job)
        results[job.id] = res
        if on_done:
            on_done(job, res)

    def memory(item: tuple[Any, ...]) -> int:
        return item[2].memory_bytes if item[0] == "stats" else item[1].memory_bytes

    try:
        runner.run(flow.next, flow.submit, _label, memory, done)
    finally:
        runner.close()
    assert len(results) == len(jobs), "the flow ended with jobs left"
    nodes = sorted({r["node"] for r in results.values()})
    return ExecResult(
        results,
        runner.retries,
        nodes,
        time.perf_counter() - t0,
        stats_bytes_read=flow.stats_read,
        stats_storage_retries=flow.stats_retries,
        kept_peak_bytes=flow.peak,
    )
