"""The scheduling policy for statistics rounds and merge jobs (``execution.schedule.Flow``),
driven by hand: no Ray, no tasks; ``put`` is the identity."""

from __future__ import annotations

import pytest

from raymerge.execution.schedule import Flow, StatsWork
from raymerge.params import ResolvedParams
from raymerge.plan import Job, Piece, Source
from raymerge.results import StatsResult
from raymerge.storage import resolve


def piece(name: str, chunk: int, n_chunks: int, nbytes: int, rounds: int = 2) -> Piece:
    """A chunk whose one source (input 0, remote) is ``nbytes`` long."""
    src = Source(0, name, "model.safetensors", 1000 * chunk, 1000 * chunk + nbytes, "F32")
    return Piece(
        name=name,
        chunk=chunk,
        n_chunks=n_chunks,
        shape=(n_chunks, nbytes // 4),
        piece_shape=(1, nbytes // 4),
        elem_start=chunk * nbytes // 4,
        elem_end=(chunk + 1) * nbytes // 4,
        out_dtype="F32",
        out_start=0,
        out_end=nbytes,
        sources=(src,),
        has_base=False,
        params=ResolvedParams({}, ()),
        memory_bytes=nbytes,
        block_bytes=0,
        rounds=rounds,
        seed=0,
    )


def job(jid: int, *pieces: Piece) -> Job:
    return Job(jid, 0, jid + 1, 0, sum(p.nbytes for p in pieces), pieces, 1)


@pytest.fixture
def flow_of():
    remote = resolve("s3://bucket/model", {})

    def make(jobs: list[Job], keep_bytes: int) -> Flow:
        return Flow(jobs, jobs, (remote,), keep_bytes, put=lambda value: value)

    return make


def done(node: str = "") -> StatsResult:
    return StatsResult({}, 0, 0, node=node)


def finish_rounds(flow: Flow, items: list) -> None:
    for item in items:
        assert isinstance(item, StatsWork)
        flow.stats_done(item, done())


def take(flow: Flow, idle: bool = False) -> list:
    """Everything ``next`` hands out now."""
    out = []
    while (item := flow.next(idle and not out)) is not None:
        out.append(item)
    return out


def kind_and_name(w) -> tuple[str, str | None]:
    return ("stats", w.piece.name) if isinstance(w, StatsWork) else ("job", None)


def test_a_tensor_that_does_not_fit_lets_a_smaller_one_go_first(flow_of):
    a = [piece("a", c, 2, 30) for c in range(2)]  # keeps 60
    b = [piece("b", c, 2, 30) for c in range(2)]  # keeps 60
    c = [piece("c", k, 2, 15) for k in range(2)]  # keeps 30
    plain = piece("norm", 0, 1, 8, rounds=0)
    jobs = [job(0, *a), job(1, *b), job(2, *c), job(3, plain)]
    flow = flow_of(jobs, keep_bytes=100)
    first = take(flow)
    # a opens (60 held); b would make 120: c (90) goes ahead of it; then the independent job
    assert [kind_and_name(i) for i in first] == [
        ("stats", "a"),
        ("stats", "a"),
        ("stats", "c"),
        ("stats", "c"),
        ("job", None),
    ]
    assert flow.held == 90 and flow.peak == 90
    finish_rounds(flow, first[:4])  # round 1 of a and c done: their second rounds come next
    second = take(flow)
    assert [i.piece.name for i in second] == ["a", "a", "c", "c"]
    finish_rounds(flow, second)
    released = take(flow)  # both tensors complete: their merge jobs; b still does not fit
    assert [i.job.id for i in released] == [0, 2]
    flow.job_done(jobs[0])  # a's kept bytes are freed: b fits now
    assert flow.held == 30
    assert [kind_and_name(i) for i in take(flow)] == [("stats", "b"), ("stats", "b")]
    assert flow.held == 90 and flow.peak == 90


def test_nothing_running_and_no_room_opens_without_keeping(flow_of):
    """A job holding chunks of two tensors keeps the first one's bytes until the second is done;
    when the second cannot fit and nothing else can run, it goes without keeping rather than
    wait forever."""
    a = [piece("a", c, 2, 30) for c in range(2)]
    b = [piece("b", c, 2, 30) for c in range(2)]
    jobs = [job(0, a[0]), job(1, a[1], b[0]), job(2, b[1])]
    flow = flow_of(jobs, keep_bytes=80)
    items = take(flow)
    assert [i.piece.name for i in items] == ["a", "a"] and flow.held == 60
    finish_rounds(flow, items)
    finish_rounds(flow, take(flow))
    released = take(flow)
    assert [i.job.id for i in released] == [0]  # job 1 waits for b
    flow.job_done(jobs[0])
    assert flow.held == 30 and take(flow) == []  # b (60) does not fit next to a's 30
    opened = take(flow, idle=True)  # nothing is running: b goes, read again each round
    assert [i.piece.name for i in opened] == ["b", "b"] and flow.held == 30
    assert not opened[0].tensor.keep
    finish_rounds(flow, opened)
    finish_rounds(flow, take(flow))
    assert sorted(i.job.id for i in take(flow)) == [1, 2]


def test_local_inputs_keep_nothing_and_open_every_tensor_at_once(flow_of, tmp_path):
    flow = flow_of([job(0, piece("a", 0, 1, 8, rounds=0))], keep_bytes=100)
    assert flow.tensors == {}  # an unchunked tensor computes its statistics in its own job
    local = resolve(str(tmp_path))
    a = [piece("a", c, 2, 30) for c in range(2)]
    b = [piece("b", c, 2, 30) for c in range(2)]
    jobs = [job(0, *a), job(1, *b)]
    flow = Flow(jobs, jobs, (local,), 100, put=lambda value: value)
    assert [i.piece.name for i in take(flow)] == ["a", "a", "b", "b"] and flow.held == 0


def test_work_goes_first_to_where_its_kept_chunks_are(flow_of):
    """Pooled workers get no locality from Ray's scheduler: when a slot on node B is free, the
    flow hands out a round (then a merge job) whose kept chunks were read on B, if one is
    ready; with no node known, or none there, the head of the queue."""
    a = [piece("a", c, 3, 30) for c in range(3)]
    jobs = [job(0, a[0]), job(1, a[1]), job(2, a[2])]
    flow = flow_of(jobs, keep_bytes=1000)
    first = take(flow)
    assert [i.piece.chunk for i in first] == [0, 1, 2]
    for item, node in zip(first, ["node-a", "node-b", "node-a"]):
        flow.kept_pending(item, f"ref{item.piece.chunk}")
        flow.stats_done(item, done(node))
    assert flow.tensors["a"].where == {0: "node-a", 1: "node-b", 2: "node-a"}
    assert flow.next(False, "node-b").piece.chunk == 1  # round 2 of the chunk read on node-b
    assert flow.next(False, "node-c").piece.chunk == 0  # nothing there: the head
    assert flow.next(False, None).piece.chunk == 2
    for c in (1, 0, 2):
        flow.stats_done(StatsWork(flow.tensors["a"], a[c]), done("x"))
    assert flow.next(False, "node-b").job.id == 1  # the merge job of chunk 1
    assert flow.next(False, "node-b").job.id == 0  # none left there
    flow.job_done(jobs[0])
    assert flow.tensors["a"].where == {1: "node-b", 2: "node-a"}


def test_a_pool_learns_its_workers_nodes_from_their_results():
    from collections import deque

    from raymerge.execution.pool import Pool

    pool = object.__new__(Pool)
    pool.actors, pool.nodes = ["w0", "w1"], [None, None]
    pool.free, pool.busy = deque([1]), {"r0": (0, "w0")}
    assert pool.free_node() is None
    pool.release("r0", None, "node-a")
    assert pool.nodes == ["node-a", None] and list(pool.free) == [1, 0]
    pool.free.rotate(1)
    assert pool.free_node() == "node-a"
