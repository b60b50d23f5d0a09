"""A stand-in for huggingface_hub's ``hf://`` filesystem (no network here): repo paths
``org/repo@rev/file`` map to folders under a local root. Registered for the tests only; it goes
through raymerge's remote-read path (it is not a LocalFileSystem)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


class StandInHfFileSystem(DirFileSystem):
    protocol = "hf"

    def __init__(self, root: str, **kwargs):
        super().__init__(path=root, fs=LocalFileSystem(), **kwargs)
        self.root = root

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("hf://") :] if str(path).startswith("hf://") else path
        return str(path).rstrip("/")


@contextmanager
def registered() -> Iterator[None]:
    """The stand-in answers ``hf://`` inside the block; afterwards ``hf://`` is what it was
    (tests that run later must see the real protocol)."""
    table = sys.modules["fsspec.registry"]._registry
    before = table.get("hf")
    fsspec.register_implementation("hf", StandInHfFileSystem, clobber=True)
    try:
        yield
    finally:
        StandInHfFileSystem.clear_instance_cache()
        if before is None:
            table.pop("hf", None)
        else:
            table["hf"] = before
