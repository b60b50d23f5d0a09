"""The output lease: one run at a time on an OUT, taken over when its owner is gone."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from raymerge.errors import OutputError
from raymerge.io.lease import LEASE_FILE, Lease
from raymerge.storage import resolve


def write_lease(out, *, pid: int, host: str | None = None, expires_in: float = 60.0) -> None:
    path = os.path.join(out, LEASE_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    now = time.time()
    owner = {"host": host or socket.gethostname(), "pid": pid, "run": "other"}
    with open(path, "w") as f:
        json.dump({"owner": owner, "heartbeat": now, "expires": now + expires_in}, f)


def test_a_second_run_is_refused_naming_the_owner(tmp_path):
    first = Lease(resolve(str(tmp_path), output=True))
    first.acquire()
    try:
        with pytest.raises(OutputError) as ei:
            Lease(resolve(str(tmp_path), output=True)).acquire()
        text = str(ei.value)
        assert "in use by another raymerge run" in text
        assert f"pid {os.getpid()}" in text and first.token in text
    finally:
        first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    again = Lease(resolve(str(tmp_path), output=True))
    again.acquire()  # released: free again
    again.release()


def test_an_expired_lease_or_a_dead_owner_is_taken_over(tmp_path):
    write_lease(tmp_path, pid=os.getpid(), host="elsewhere", expires_in=-1)  # crashed, expired
    lease = Lease(resolve(str(tmp_path), output=True))
    lease.acquire()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["owner"]["run"] == lease.token
    lease.release()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    write_lease(tmp_path, pid=dead, expires_in=600)  # this host, a pid that no longer exists
    lease = Lease(resolve(str(tmp_path), output=True))
    lease.acquire()
    lease.release()


def test_a_live_lease_of_another_host_is_respected(tmp_path):
    write_lease(tmp_path, pid=1, host="other-host", expires_in=600)
    with pytest.raises(OutputError, match=r"host other-host, pid 1"):
        Lease(resolve(str(tmp_path), output=True)).acquire()


def test_the_heartbeat_renews_and_a_lost_lease_blocks_the_commit(tmp_path):
    lease = Lease(resolve(str(tmp_path), output=True), ttl_s=0.4)
    lease.acquire()
    first = json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"]
    time.sleep(0.35)
    assert json.loads((tmp_path / LEASE_FILE).read_text())["heartbeat"] > first
    lease.check()
    write_lease(tmp_path, pid=1, host="thief", expires_in=600)  # another run took it over
    time.sleep(0.3)
    with pytest.raises(OutputError, match=r"lost its lease"):
        lease.check()
    lease.release()
    assert (tmp_path / LEASE_FILE).exists()  # not ours to delete
