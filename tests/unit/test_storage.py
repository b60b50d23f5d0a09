"""raymerge.storage: references -> locations, storage options, retry counting."""

from __future__ import annotations

import pytest


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


def test_outputs_are_never_repo_ids_and_inputs_only_when_no_path_exists(tmp_path, monkeypatch):
    from raymerge.storage import normalize_ref

    monkeypatch.chdir(tmp_path)
    assert normalize_ref("out/ok", output=True) == str(tmp_path / "out" / "ok")
    assert normalize_ref("org/name") == "hf://org/name"  # no such folder: mergekit's repo id
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert normalize_ref("org/name") == str(tmp_path / "org" / "name")
    assert normalize_ref("hf://org/name") == "hf://org/name"
    assert normalize_ref("a/b/c") == str(tmp_path / "a" / "b" / "c")  # not id-shaped: a path


def test_a_missing_relative_path_is_a_local_not_found_that_says_how_to_name_a_repo(
    tmp_path, monkeypatch
):
    """`m/ft1_typo` looks like a repo id; offline (or with no such repo) the user sees the local
    path's error, relative to which folder, and how to name a Hub repo."""
    from raymerge.errors import InputError
    from raymerge.io.reader import read_model
    from raymerge.storage import resolve

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loc = resolve("m/ft1_typo")
    assert loc.hub_guess == "m/ft1_typo"
    with pytest.raises(InputError) as ei:
        read_model("m/ft1_typo", loc)
    text = str(ei.value)
    assert text.startswith("m/ft1_typo: model folder not found: no such path relative to ")
    assert str(tmp_path) in text and "hf://m/ft1_typo" in text
    with pytest.raises(InputError, match=r"model folder not found"):
        read_model("./nope", resolve("./nope"))
