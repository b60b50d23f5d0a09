"""``raymerge verify OUT``: re-read every output byte range and compare with the manifest."""

from __future__ import annotations

import argparse
import json

from raymerge.summary import fmt_bytes


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check OUT against its manifest",
        description="Check a finished output: _SUCCESS, the index, every shard header and every "
        "tensor's bytes against the checksums in manifest.parquet.",
    )
    p.add_argument("out", help="the output folder or s3:// URL")
    p.add_argument(
        "--storage-options",
        default=None,
        metavar="JSON",
        help='fsspec options for OUT, as JSON (e.g. \'{"endpoint_url": "http://..."}\')',
    )


def main(args: argparse.Namespace) -> int:
    from raymerge.storage import resolve
    from raymerge.verify import verify_output

    opts = json.loads(args.storage_options) if args.storage_options else None
    out = resolve(args.out, {args.out: opts} if opts else None)
    r = verify_output(out)
    print(
        f"raymerge: {args.out} OK: {r['pieces']} tensors/chunks, {fmt_bytes(r['bytes'])} "
        f"in {r['shards']} shards match the manifest"
    )
    return 0
