"""A lease on an output location: one run at a time writes to OUT.

The lease is ``OUT/.raymerge/lease.json`` (owner: host, pid and a run token; heartbeat; expiry),
created atomically (``O_EXCL`` locally, a conditional ``If-None-Match: *`` PUT on S3) and
renewed every ``ttl / 4`` seconds by a heartbeat thread. A second run finds it and is refused
with a message naming the owner, unless it has expired (the owner stopped renewing it: a crashed
driver) or its owner is a process of this host that no longer exists; then the lease is taken
over and the run resumes. Expiry is judged by the reader's clock against the writer's heartbeat
time, so hosts need clocks within a fraction of the TTL of each other. The lease is released
(deleted) when the run ends, successfully or not.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from raymerge.errors import OutputError
from raymerge.storage import Location

LEASE_FILE = ".raymerge/lease.json"
DEFAULT_TTL_S = 60.0


def _owner_alive(owner: dict[str, Any]) -> bool:
    """False only when the owner is known dead: a process of this host that does not exist."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    return True


class Lease:
    """Hold OUT for one run (see the module docstring)."""

    def __init__(self, out: Location, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.out, self.ttl = out, ttl_s
        self.loc = out.child(LEASE_FILE)
        self.token = uuid.uuid4().hex[:12]
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "run": self.token}
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        record = {"owner": self.owner, "heartbeat": now, "expires": now + self.ttl}
        return (json.dumps(record, sort_keys=True) + "\n").encode()

    def _create(self) -> bool:
        """Create the lease file if none exists; False if one does."""
        if self.out.is_local:
            os.makedirs(os.path.dirname(self.loc.path), exist_ok=True)
            try:
                fd = os.open(self.loc.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._body())
            return True
        bucket, key, _ = self.out.fs.split_path(self.loc.path)
        try:
            self.out.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=self._body(), IfNoneMatch="*"
            )
        except FileExistsError:
            return False
        return True

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.out.fs.cat_file(self.loc.path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except ValueError:  # torn or garbage: treat as expired
            return {"owner": {}, "expires": 0}

    def _remove_stale(self) -> None:
        """Drop an expired lease (locally by an atomic rename, so only one taker wins)."""
        if self.out.is_local:
            try:
                os.rename(self.loc.path, f"{self.loc.path}.stale-{self.token}")
                os.remove(f"{self.loc.path}.stale-{self.token}")
            except FileNotFoundError:
                pass
        else:
            try:
                self.out.fs.rm(self.loc.path)
            except FileNotFoundError:
                pass

    def acquire(self) -> None:
        """Take the lease, or raise :class:`OutputError` naming the run that holds it."""
        try:
            self._acquire()
        except OSError as exc:
            if isinstance(exc, OutputError):
                raise
            why = exc.strerror or type(exc).__name__
            raise OutputError(f"{self.out.url}: not writable ({why})") from None

    def _acquire(self) -> None:
        for _ in range(5):
            if self._create():
                break
            held = self._read()
            if held is None:
                continue  # released meanwhile
            owner, expires = held.get("owner", {}), float(held.get("expires", 0))
            if time.time() < expires and _owner_alive(owner):
                age = time.time() - float(held.get("heartbeat", 0))
                raise OutputError(
                    f"{self.out.url}: in use by another raymerge run (host "
                    f"{owner.get('host')}, pid {owner.get('pid')}, run {owner.get('run')}; last "
                    f"heartbeat {age:.0f} s ago, its lease expires in {expires - time.time():.0f}"
                    " s). Wait for it to finish; if it crashed, rerun once the lease expires"
                )
            self._remove_stale()
        else:
            raise OutputError(f"{self.out.url}: could not take the output lease (contended)")
        self._thread = threading.Thread(target=self._beat, daemon=True, name="raymerge-lease")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            held = self._read()
            if held is None or held.get("owner") != self.owner:
                self.lost.set()  # taken over (we stalled past the TTL): stop before committing
                return
            try:
                from raymerge.io.files import write_small

                write_small(self.out, LEASE_FILE, self._body())
            except OSError:
                pass  # a missed heartbeat; the next one may succeed before expiry

    def check(self) -> None:
        """Raise if the lease was lost (never commit an output another run now owns)."""
        if self.lost.is_set():
            raise OutputError(
                f"{self.out.url}: this run lost its lease on the output (it stalled for longer "
                f"than {self.ttl:.0f} s and another run took over); nothing was committed"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is None:
            return  # never acquired
        self._thread.join(timeout=5)
        held = self._read()
        if held is not None and held.get("owner") == self.owner:
            try:
                self.out.fs.rm(self.loc.path)
            except FileNotFoundError:
                pass


__all__ = ["DEFAULT_TTL_S", "LEASE_FILE", "Lease"]
