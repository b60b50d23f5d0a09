"""What runs when: the statistics rounds of chunked tensors and the merge jobs (pure).

No Ray here: object references are opaque values and ``put`` (``ray.put`` in a run, the identity
in tests) is passed in, so the policy is driven by hand in ``tests/unit/execution``.

A merge job may start once every chunked tensor it touches has all its statistics; others start
at once (largest first). A tensor is *opened* when its first round is handed out and goes round
by round on its own, so its merge jobs start as soon as it is done, not when every tensor is.
Where an input is remote, the first round keeps each chunk's bytes in Ray's object store (task
return values live on the node that read them; in task mode Ray prefers to run the later rounds
and the merge job there, pooled actors fetch them), so a TIES/DARE-TIES/DELLA/Model Stock tensor
is read from storage once, not once per round plus once to merge. Tensors are opened, in plan
order, while their kept bytes fit ``keep_bytes`` (one that does not fit now lets a later, smaller
one go first); a tensor larger than that, or one that must start when nothing else can run, goes
without (read again each round). A lost object costs one retry of the task that needed it, which
then reads from storage.

Priority when a slot frees: the next round of an opened tensor (its barrier is on the critical
path), then jobs whose statistics just completed (they free kept bytes), then opening the next
tensor, then independent jobs.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from raymerge.errors import ClusterError
from raymerge.methods.base import Stats, combine
from raymerge.plan import Job, Piece
from raymerge.results import StatsResult
from raymerge.storage import Location

TAKE_WINDOW = 64  # ready items searched for one whose kept chunks are on the free slot's node


@dataclass
class TensorState:
    """A chunked tensor whose method needs whole-tensor statistics: rounds over all its chunks
    (reduced in chunk order, :func:`raymerge.methods.base.combine`), then its merge jobs."""

    name: str
    chunks: list[Piece]
    keep: dict[int, int]  # chunk -> bytes of it worth keeping (remote sources, a job to come)
    waiting: list[Job] = field(default_factory=list)  # jobs that need its statistics
    stats: list[Stats] = field(default_factory=list)  # one per finished round
    stats_ref: Any = None  # put(stats): shared by every task that needs them
    partials: dict[int, Stats] = field(default_factory=dict)
    raw: dict[int, Any] = field(default_factory=dict)  # chunk -> ref of its kept bytes
    where: dict[int, str] = field(default_factory=dict)  # chunk -> node holding them


@dataclass(frozen=True, eq=False)
class StatsWork:
    """One chunk's next statistics round."""

    tensor: TensorState
    piece: Piece

    @property
    def memory_bytes(self) -> int:
        return self.piece.memory_bytes

    def label(self) -> str:
        p = self.piece
        return f"statistics of {p.name!r} chunk {p.chunk} (round {len(self.tensor.stats) + 1})"


@dataclass(frozen=True, eq=False)
class MergeWork:
    """One merge job."""

    job: Job

    @property
    def memory_bytes(self) -> int:
        return self.job.memory_bytes

    def label(self) -> str:
        j = self.job
        return f"job {j.id} ({j.pieces[0].name if j.pieces else 'header'} ...)"


Work = StatsWork | MergeWork


@dataclass(frozen=True)
class StatsArgs:
    """How to submit a statistics round: the task's arguments, and whether it keeps its bytes
    (a second return value)."""

    args: tuple[Any, ...]
    keep: bool


@dataclass(frozen=True)
class JobArgs:
    """How to submit a merge job: the task's arguments (statistics and kept bytes as top-level
    object arguments, so Ray places the task near them): ``(job, ctx, external, attempt,
    names, which, *statistics of tensors names, *kept bytes of pieces which)``."""

    args: tuple[Any, ...]


def unpack_job(
    job: Job, names: tuple[str, ...], which: tuple[int, ...], objs: tuple[Any, ...]
) -> tuple[dict[str, Any], list[Any]]:
    """The statistics by tensor name and the kept bytes per piece of a job's arguments."""
    stats = dict(zip(names, objs[: len(names)]))
    held: list[Any] = [None] * len(job.pieces)
    for pi, raw in zip(which, objs[len(names) :]):
        held[pi] = raw
    return stats, held


def _lpt(j: Job) -> tuple[int, int, int]:
    """Largest first (LPT): the last jobs to start are the short ones, so workers finish
    together instead of one running a big job while the others sit idle."""
    return (-j.bytes_read, -j.nbytes, j.id)


def _take(queue: deque, node: str | None, holder: Callable[[Any], str | None]) -> Any:
    """The first of the first ``TAKE_WINDOW`` items of ``queue`` held on ``node``, else the
    head; removed from the queue."""
    if node is not None:
        for k, item in enumerate(itertools.islice(queue, TAKE_WINDOW)):
            if holder(item) == node:
                del queue[k]
                return item
    return queue.popleft()


class Flow:
    """The scheduling state of one run (see the module docstring)."""

    def __init__(
        self,
        jobs: Sequence[Job],
        all_jobs: Sequence[Job],
        inputs: Sequence[Location],
        keep_bytes: int,
        put: Callable[[Any], Any],
        ctx_ref: Any = None,
        external_ref: Any = None,
    ) -> None:
        self.put, self.ctx_ref, self.external_ref = put, ctx_ref, external_ref
        self.keep_bytes, self.held, self.peak = keep_bytes, 0, 0
        self.stats_read = self.stats_retries = 0
        wanted = {p.name for j in jobs for p in j.pieces if p.n_chunks > 1 and p.rounds}
        todo = {(p.name, p.chunk) for j in jobs for p in j.pieces}
        remote = {i for i, loc in enumerate(inputs) if not loc.is_local}
        chunks: dict[str, list[Piece]] = {}
        for j in all_jobs:  # a resumed run needs statistics of the chunks it kept, too
            for p in j.pieces:
                if p.name in wanted:
                    chunks.setdefault(p.name, []).append(p)
        self.tensors: dict[str, TensorState] = {}
        for name, ps in chunks.items():
            ps.sort(key=lambda p: p.chunk)
            assert [p.chunk for p in ps] == list(range(ps[0].n_chunks)), "incomplete chunks"
            keep = {
                p.chunk: sum(s.end - s.start for s in p.sources if s.input in remote)
                for p in ps
                if (name, p.chunk) in todo
            }
            self.tensors[name] = TensorState(name, ps, {c: n for c, n in keep.items() if n})
        self.deps = {j.id: {p.name for p in j.pieces if p.name in wanted} for j in jobs}
        for j in jobs:
            for name in sorted(self.deps[j.id]):
                self.tensors[name].waiting.append(j)
        self.to_open = deque(self.tensors.values())
        self.rounds: deque[StatsWork] = deque()
        self.released: deque[Job] = deque()
        self.plain = deque(sorted((j for j in jobs if not self.deps[j.id]), key=_lpt))
        self.raw_pending: dict[tuple[str, int], Any] = {}

    # -- what runs next -------------------------------------------------------------------
    def next(self, idle: bool, node: str | None = None) -> Work | None:
        """The next work to run (None: nothing ready now). ``idle``: nothing is running;
        ``node``: where it will run if known (pooled workers get no locality from Ray's
        scheduler), so a round or job whose kept chunks are there goes first."""
        if self.rounds:
            return _take(self.rounds, node, lambda w: self._holder([w]))
        if self.released:
            return MergeWork(_take(self.released, node, self._job_holder))
        for t in self.to_open:  # in plan order; one that does not fit lets the next try
            need = sum(t.keep.values())
            if not need or need > self.keep_bytes:
                return self._open(t, keep=False)
            if self.held + need <= self.keep_bytes:
                return self._open(t, keep=True)
        if self.to_open and idle and not self.plain:  # never wait for memory nothing will free
            return self._open(self.to_open[0], keep=False)
        if self.plain:
            return MergeWork(self.plain.popleft())
        return None

    def _open(self, t: TensorState, keep: bool) -> StatsWork:
        self.to_open.remove(t)
        if keep:
            self.held += sum(t.keep.values())
            self.peak = max(self.peak, self.held)
        else:
            t.keep = {}
        self.rounds.extend(StatsWork(t, p) for p in t.chunks)
        return self.rounds.popleft()

    def _holder(self, works: list[StatsWork]) -> str | None:
        """The node holding most of the kept bytes of these chunks, if any are kept."""
        held: dict[str, int] = {}
        for w in works:
            t, p = w.tensor, w.piece
            node = t.where.get(p.chunk) if p.chunk in t.raw else None
            if node is not None:
                held[node] = held.get(node, 0) + t.keep.get(p.chunk, 0)
        return max(held, key=lambda n: held[n]) if held else None

    def _job_holder(self, job: Job) -> str | None:
        return self._holder(
            [StatsWork(self.tensors[p.name], p) for p in job.pieces if p.name in self.tensors]
        )

    def _drop(self, t: TensorState, chunk: int) -> None:
        """Chunk ``chunk`` of ``t`` is no longer kept (merged, or its object failed a task)."""
        self.held -= t.keep.pop(chunk, 0)
        t.raw.pop(chunk, None)
        t.where.pop(chunk, None)

    # -- submission and completion ----------------------------------------------------------
    def stats_args(self, w: StatsWork, attempt: int) -> StatsArgs:
        t, p = w.tensor, w.piece
        cached = t.raw.get(p.chunk)
        if cached is not None and attempt > 1:  # maybe lost: read storage from now on
            self._drop(t, p.chunk)
            cached = None
        keep = not t.stats and p.chunk in t.keep
        prev = t.stats_ref if t.stats else []
        return StatsArgs((p, self.ctx_ref, prev, attempt, keep, cached), keep)

    def kept_pending(self, w: StatsWork, raw_ref: Any) -> None:
        """A first round was submitted that keeps its chunk's bytes (``raw_ref``)."""
        self.raw_pending[(w.tensor.name, w.piece.chunk)] = raw_ref

    def job_args(self, job: Job, attempt: int) -> JobArgs:
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
        head = (job, self.ctx_ref, self.external_ref, attempt, tuple(names), tuple(which))
        return JobArgs((*head, *stats_refs, *cached_refs))

    def stats_done(self, w: StatsWork, res: StatsResult) -> None:
        t, p = w.tensor, w.piece
        raw = self.raw_pending.pop((t.name, p.chunk), None)
        if raw is not None:
            t.raw[p.chunk] = raw
            if res.node:
                t.where[p.chunk] = res.node
        self.stats_read += res.bytes_read
        self.stats_retries += res.storage_retries
        t.partials[p.chunk] = res.stats
        if len(t.partials) < len(t.chunks):
            return
        t.stats.append(combine([t.partials[c] for c in range(len(t.chunks))]))
        t.stats_ref, t.partials = self.put(t.stats), {}
        if len(t.stats) < t.chunks[0].rounds:
            self.rounds.extend(StatsWork(t, q) for q in t.chunks)
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


def stalled(timeout: float, waiting: Sequence[Work], stuck: bool = False) -> ClusterError:
    """The error for a run in which no job or statistics task finished for ``timeout`` s."""
    labels = [w.label() for w in list(waiting)[:3]]
    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    return ClusterError(
        f"no job or statistics task finished for {timeout:.0f} s (waiting for "
        f"{'; '.join(labels)}{more}); nothing was committed. Tasks that never start "
        "usually ask for resources no node has (`ray status` shows them pending); a "
        "rerun resumes the finished jobs. Raise --stall-timeout for very slow storage",
        stuck=stuck,
    )


__all__ = [
    "stalled",
    "Flow",
    "JobArgs",
    "MergeWork",
    "StatsArgs",
    "StatsWork",
    "TensorState",
    "Work",
    "unpack_job",
]
