"""Every run option and its default, in one place.

:class:`RunOptions` (planning, output, resume) holds an :class:`ExecOptions` (the cluster and
scheduling). Each field carries its command-line flag, help text and parser in its metadata, so
``raymerge run --help``, ``raymerge plan --help``, the README's option table
(:func:`raymerge.cli.options.markdown_table`) and the Python defaults cannot disagree.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, fields
from typing import Any

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_SHARD_SIZE = 5_000_000_000
# Budget for a job's data. The worker process itself (Python, torch, Ray) adds ~0.35 GB, so the
# default keeps a worker's peak RSS under 2 GiB (measured: benchmarks/big_tensor.py).
DEFAULT_JOB_MEMORY = 1 * GiB
DEFAULT_JOB_BYTES = 64 * MiB
MIN_PART_BYTES = 5 * MiB  # S3's smallest multipart part (all but the last)

_SIZE = re.compile(r"^\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*$", re.I)


def parse_size(text: str) -> int:
    """'5GB' -> 5e9, '2GiB' -> 2 * 2**30, '123' -> 123."""
    m = _SIZE.match(str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 2GiB, 500MB)")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), bool(m.group(3))
    base = 1024 if binary else 1000
    return int(num * base ** "_KMGT".index(unit or "_"))


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def seconds(text: str) -> float:
    """A non-negative number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _choice(*options: str):
    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"{text!r}: one of {', '.join(options)}")
        return text

    return parse


def _opt(default: Any, help: str, *, parse: Any = None, flag: str | None = None, **kw: Any) -> Any:
    """A field with its CLI metadata. ``parse``: argparse type, or "flag" for a switch."""
    meta = {"help": help, "parse": parse, "flag": flag, **kw}
    return field(default=default, metadata=meta)


@dataclass
class ExecOptions:
    """Where and how jobs run on Ray."""

    address: str | None = _opt(
        None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray started for the run)"
    )
    executor: str = _opt(
        "auto",
        "where jobs run: ray (a cluster, or a local Ray started for the run), local (threads of "
        "this process, no Ray: fastest for small merges), auto (local when no cluster is given "
        "and the merge reads at most 8 GB, else ray)",
        parse=_choice("auto", "ray", "local"),
        metavar="{auto,ray,local}",
    )
    num_cpus: int | None = _opt(None, "CPUs of a locally started Ray (default: all)", parse=int)
    s3_reader: str = _opt(
        "s3fs",
        "client of the workers' S3 range reads: s3fs (through fsspec; its retries are counted in "
        "the summary) or obstore (Rust object_store, pip install obstore: about half the CPU "
        "per byte; its own retries are not counted)",
        parse=_choice("s3fs", "obstore"),
        metavar="{s3fs,obstore}",
    )
    in_flight: int | None = _opt(
        None, "most jobs submitted at once (default: 2 x the job slots)", parse=positive_int
    )
    num_gpus_per_job: float | None = _opt(
        None,
        "GPUs per job (default: 0.5 if the cluster has GPUs when the run starts, else 0; set it "
        "for autoscaling clusters that start without GPUs)",
        parse=float,
    )
    max_attempts: int = _opt(3, "attempts per job before the run fails", parse=positive_int)
    connect_timeout: float = _opt(
        120.0,
        "seconds to wait for connecting to the Ray cluster (or starting a local one) and for "
        "worker actors to start; 0: wait for ever",
        parse=seconds,
    )
    stall_timeout: float = _opt(
        1800.0,
        "seconds without any job or statistics task finishing before the run stops (exit 1; a "
        "stalled cluster, or tasks no node has the resources for); 0: wait for ever",
        parse=seconds,
    )
    progress: bool = _opt(True, "no progress output", parse="flag", flag="--no-progress")
    keep_workers: float = _opt(
        0.0,
        "keep a pool of warm worker processes on the cluster for SECONDS after the run, for the "
        "next runs to reuse (they hold a CPU each while idle; 0: no pool)",
        parse=seconds,
        metavar="SECONDS",
    )
    jobs_per_cpu: int | None = _opt(
        None,
        "jobs sharing one CPU, so N-1 wait on storage while one computes (default: 2 when an "
        "input or the output is remote, else 1)",
        parse=positive_int,
        metavar="N",
    )
    keep_bytes: int | None = _opt(
        None,
        "object-store memory for chunks of remote inputs kept from a tensor's first statistics "
        "round to its merge (TIES, DARE-TIES, DELLA, breadcrumbs, Model Stock), so each is read "
        "from storage once (default: half the cluster's object store; 0: read every round)",
        parse=parse_size,
        metavar="SIZE",
    )


@dataclass
class RunOptions:
    """What to plan and how to treat the output."""

    shard_size: int = _opt(
        DEFAULT_SHARD_SIZE,
        "most bytes of tensor data per output shard",
        parse=parse_size,
        plan=True,
    )
    job_memory: int = _opt(
        DEFAULT_JOB_MEMORY,
        "memory budget per job; larger tensors are split by rows (a worker adds ~0.4 GB)",
        parse=parse_size,
        plan=True,
    )
    job_bytes: int = _opt(
        DEFAULT_JOB_BYTES, "output bytes per job (and per S3 part)", parse=parse_size, plan=True
    )
    overwrite: bool = _opt(
        False, "replace an earlier raymerge output of another config in OUT", parse="flag"
    )
    allow_nonfinite: bool = _opt(
        False, "merge inputs holding NaN/Inf, and keep non-finite results", parse="flag"
    )
    node_memory: int | None = _opt(
        None,
        "memory of the largest node, to check a zipit run's statistics actors and matchers "
        "against (default: the connected cluster's, else this machine's)",
        parse=parse_size,
        plan=True,
    )
    ledger_interval: float = _opt(
        2.0, "seconds between resume records; a resumed run redoes at most this much", parse=seconds
    )
    execution: ExecOptions = field(default_factory=ExecOptions)


def option_fields(cls: type) -> list[Any]:
    """The fields of ``cls`` that are command-line options."""
    return [f for f in fields(cls) if "help" in f.metadata]


def default_text(f: Any) -> str:
    """A field's default as the help text and the README show it."""
    d = f.default
    if d is None:
        return "see text"
    if isinstance(d, bool):
        return "off" if d is False or f.metadata.get("flag") else "on"
    if f.metadata.get("parse") is parse_size:
        from raymerge.summary import fmt_size

        return fmt_size(d)
    return f"{d:g}" if isinstance(d, float) else str(d)


# --------------------------------------------------------------------------- command line


def _flag(f: Any) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _metavar(f: Any) -> str:
    parse = f.metadata["parse"]
    named = {parse_size: "SIZE", seconds: "SECONDS", positive_int: "N", int: "N", float: "X"}
    return f.metadata.get("metavar") or named.get(parse) or f.name.upper()


def _help(f: Any) -> str:
    text = f.metadata["help"]
    if f.metadata["parse"] == "flag":
        return text
    shown = default_text(f)
    return text if shown == "see text" or "default" in text else f"{text} (default {shown})"


def add_flags(p: argparse.ArgumentParser, cls: type, *, plan_only: bool = False) -> None:
    """Add a flag per option field of ``cls`` (``plan_only``: just those planning uses)."""
    for f in option_fields(cls):
        if plan_only and not f.metadata.get("plan"):
            continue
        kw: dict[str, Any] = {"dest": f.name, "help": _help(f)}
        if f.metadata["parse"] == "flag":
            kw["action"] = "store_false" if f.default is True else "store_true"
        else:
            kw["type"] = f.metadata["parse"] or str
            kw["default"] = f.default
            kw["metavar"] = _metavar(f)
        p.add_argument(_flag(f), **kw)


def _values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in option_fields(cls) if hasattr(args, f.name)}


def options_from(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` parsed ``run`` / ``plan`` arguments describe (also used by the
    ``jobs/`` entry points)."""
    return RunOptions(
        **_values(RunOptions, args), execution=ExecOptions(**_values(ExecOptions, args))
    )


def markdown_table() -> str:
    """The README's table of ``raymerge run`` options, from the options model."""
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for cls in (RunOptions, ExecOptions):
        for f in option_fields(cls):
            meta = f.metadata
            value = "" if meta["parse"] == "flag" else f" {_metavar(f)}"
            shown = "" if meta["parse"] == "flag" else default_text(f)
            rows.append(f"| `{_flag(f)}{value}` | {shown} | {meta['help']} |")
    return "\n".join(rows)


def add_run_arguments(
    p: argparse.ArgumentParser, *, out: bool = True, execution: bool = True
) -> None:
    """CONFIG (and OUT), every planning option, ``--random-seed``, and with ``execution`` the
    cluster options and ``--json``: what ``raymerge run`` (and ``jobs/merge.py``) accept."""
    p.add_argument("config", help="mergekit-style merge YAML")
    if out:
        p.add_argument("out", help="output folder or s3:// URL")
    add_flags(p, RunOptions, plan_only=not execution)
    p.add_argument("--random-seed", type=int, default=None, help="override random_seed")
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (config keys and parameters mergekit accepts and ignores) as errors",
    )
    if execution:
        add_flags(p, ExecOptions)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


__all__ = [
    "DEFAULT_JOB_BYTES",
    "DEFAULT_JOB_MEMORY",
    "DEFAULT_SHARD_SIZE",
    "MIN_PART_BYTES",
    "ExecOptions",
    "RunOptions",
    "add_run_arguments",
    "markdown_table",
    "options_from",
    "parse_size",
    "positive_int",
]


if __name__ == "__main__":  # python -m raymerge.options: the README's option table
    print(markdown_table())
