"""A stand-in for huggingface_hub's ``hf://`` filesystem (no network here): repo paths
``org/repo@rev/file`` map to folders under a local root. Registered for the tests only; it goes
through raymerge's remote-read path (it is not a LocalFileSystem)."""

from __future__ import annotations

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


def register() -> None:
    fsspec.register_implementation("hf", StandInHfFileSystem, clobber=True)
