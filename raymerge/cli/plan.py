"""``raymerge plan CONFIG``: what a run would do, from headers only."""

from __future__ import annotations

import argparse
import json

from raymerge.cli.run import load
from raymerge.options import add_run_arguments, options_from
from raymerge.summary import fmt_bytes


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="show what a run would do (reads headers only)",
        description="Read every input's headers and print the plan: tensors, jobs, bytes, "
        "output shards and peak job memory. No tensor data is read.",
    )
    add_run_arguments(p, out=False, execution=False)
    p.add_argument(
        "--out",
        default=None,
        help="the output the run will write (jobs are packed differently for S3, whose "
        "multipart parts are >= 5 MiB; default: a local folder)",
    )


def main(args: argparse.Namespace) -> int:
    from raymerge.options import MIN_PART_BYTES
    from raymerge.pipeline import build_plan
    from raymerge.storage import resolve

    cfg, opts = load(args), options_from(args)
    local = args.out is None or resolve(args.out, cfg.storage_options, output=True).is_local
    plan, layouts = build_plan(cfg, opts, 0 if local else MIN_PART_BYTES)
    s = plan.summary()
    zip_lines = []
    if plan.zip_layout is not None:  # statistics and matching figures, checked (exit 2)
        from raymerge.zipit.gather import plan_figures

        budget, mem, where = plan_figures(cfg, plan, layouts, opts.node_memory)
        s["zipit"] = {**budget.as_json(), "node_memory": {"bytes": mem, "source": where}}
        zip_lines = budget.lines() + [f"  (fits: checked against {fmt_bytes(mem)}, {where})"]
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(
        f"method {s['method']}: {s['tensors']} tensors ({s['chunked_tensors']} chunked) in "
        f"{s['jobs']} jobs; read {fmt_bytes(s['bytes_read'])}, write "
        f"{fmt_bytes(s['bytes_written'])} in {len(s['output_shards'])} shards; peak job "
        f"memory {fmt_bytes(s['peak_job_memory_bytes'])}"
    )
    for sh in s["output_shards"]:
        print(f"  {sh['name']}: {fmt_bytes(sh['bytes'])}, {sh['tensors']} tensors")
    for line in zip_lines:
        print(line)
    return 0
