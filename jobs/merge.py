"""Ray job entry point: merge, verify, exit 0 only for a verified output.

    ray job submit --working-dir . -- python jobs/merge.py CONFIG OUT [raymerge run options]

Connects to the job's cluster (RAY_ADDRESS, set by Ray inside a job, becomes --address), runs
``raymerge run`` through the Python API with plain progress lines on stdout, then ``raymerge
verify``. Exit codes: 0 merged and verified; 2 user error (config, inputs, output; one
paragraph on stderr); 1 anything else (including a failed verify).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `jobs` and the repo's raymerge importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import (  # noqa: E402
    guarded,
    load_job_config,
    merge_and_verify,
    parse_run_args,
    run_options,
)

PROG = "merge"


def main(argv: list[str] | None = None) -> int:
    args = parse_run_args(sys.argv[1:] if argv is None else argv, prog="jobs/merge.py")

    def go() -> int:
        cfg = load_job_config(args)
        merge_and_verify(PROG, cfg, args.out, run_options(args), as_json=args.json)
        return 0

    return guarded(PROG, go)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
