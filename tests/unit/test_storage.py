"""raymerge.storage: references -> locations, storage options, retry counting."""

from __future__ import annotations


def test_storage_retries_are_counted_per_job_scope() -> None:
    """Two jobs overlapping in one process (a pooled worker's two slots) each count only the
    retries of their own requests, although s3fs logs them on fsspec's event-loop thread."""
    import asyncio
    import logging
    import threading

    from fsspec.asyn import get_loop, sync

    from raymerge.storage import counting_retries, storage_retries

    log = logging.getLogger("botocore.endpoint")

    async def request(retries: int) -> None:  # what a retried s3fs request does, on the loop
        for _ in range(retries):
            log.debug("Response received to retry, sleeping for %s seconds", 0.0)
            await asyncio.sleep(0.01)  # interleave with the other job's request

    got: dict[str, int] = {}
    go = threading.Barrier(2)

    def job(name: str, retries: int) -> None:
        with counting_retries() as box:
            go.wait()
            sync(get_loop(), request, retries)
            got[name] = box[0]

    before = storage_retries()
    threads = [threading.Thread(target=job, args=a) for a in (("a", 2), ("b", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {"a": 2, "b": 3}
    assert storage_retries() - before == 5  # the process total still counts both
    with counting_retries() as box:  # a later scope starts from zero
        pass
    assert box == [0]
