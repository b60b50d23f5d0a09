"""Long-lived worker actors: a warm pool that outlives a run, or one actor per GPU.

Ray tasks start a fresh worker process per job on GPU clusters (``num_gpus`` tasks default to
``max_calls=1``) and pay torch's import in every new process. A pool of actors keeps torch (and
a CUDA context) loaded: with ``keep_workers`` it is detached and named, so the next driver of the
same code and runtime environment finds it warm; on GPU clusters it lives for one run, one actor
per GPU. Each actor runs two jobs at a time on threads and computes one at a time (a lock), so
the next job's reads and the last job's writes overlap the current compute.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import ray

from raymerge.execution.tasks import BODIES, TaskKind

SLOTS_PER_WORKER = 2  # jobs a pooled worker holds at once: one computes, one reads or writes


@ray.remote(max_concurrency=SLOTS_PER_WORKER)
class WorkerActor:
    """A pooled worker process. With ``idle_s > 0`` it exits by itself after that long without
    work (giving its CPU/GPU back to the cluster)."""

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
                    os._exit(0)  # idle for too long

    def ready(self) -> bool:
        """Answers once the actor is up (a bounded wait for its start)."""
        return True

    def run(self, kind: TaskKind, *args: Any) -> Any:
        with self.state:
            self.active += 1
        try:
            return BODIES[kind](*args, lock=self.compute)
        finally:
            with self.state:
                self.active -= 1
                self.last = time.monotonic()


def pool_tag() -> str:
    """Name prefix of pooled workers: raymerge's code and the job's runtime environment (which
    may carry credentials), so a run only ever reuses workers of identical code and settings."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    env = ray.get_runtime_context().runtime_env or {}
    h.update(json.dumps(env, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


class Pool:
    """Worker actors that outlive a run (``keep_s`` seconds idle, detached and named) or live
    for one run (GPU clusters)."""

    def __init__(
        self, size: int, num_gpus: float, keep_s: float, actors: list[Any] | None = None
    ) -> None:
        self.tag, self.num_gpus, self.keep_s = pool_tag(), num_gpus, keep_s
        # an adopted pool keeps its own idle timer: only the actors started here are killed
        self.mine = set(range(size)) if actors is None else set()
        self.actors = actors if actors is not None else [self._start(i) for i in range(size)]
        # one entry per free slot, actors interleaved, so work spreads before slots double up
        self.free = deque(i for _ in range(SLOTS_PER_WORKER) for i in range(len(self.actors)))
        self.busy: dict[Any, tuple[int, Any]] = {}
        self.nodes: list[str | None] = [None] * len(self.actors)  # learnt from results

    @staticmethod
    def name(tag: str, i: int) -> str:
        return f"raymerge-worker-{tag}-{i}"

    @classmethod
    def adopt(cls, size: int) -> Pool | None:
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
        return WorkerActor.options(**opts).remote(self.keep_s)

    def wait_ready(self, timeout_s: float | None) -> list[int]:
        """Wait (at most ``timeout_s``) for the actors to start; the ones still not up."""
        refs = {a.ready.remote(): i for i, a in enumerate(self.actors)}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        return sorted(set(refs.values()) - {refs[r] for r in done})

    def submit(self, kind: TaskKind, num_returns: int, *args: Any) -> Any:
        i = self.free.popleft()
        refs = self.actors[i].run.options(num_returns=num_returns).remote(kind, *args)
        self.busy[refs if num_returns == 1 else refs[0]] = (i, self.actors[i])
        return refs

    def release(self, ref: Any, exc: BaseException | None, node: str | None = None) -> None:
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


__all__ = ["SLOTS_PER_WORKER", "Pool", "WorkerActor", "pool_tag"]
