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
    p.add_argument(
        "--inputs",
        action="store_true",
        help="also check that every input file is still the version OUT was merged from",
    )
    p.add_argument(
        "--input-storage-options",
        default=None,
        metavar="JSON",
        help="fsspec options for the inputs, as JSON by URL prefix (a config's storage_options)",
    )


def main(args: argparse.Namespace) -> int:
    from raymerge.storage import resolve
    from raymerge.verify import verify_output

    opts = _json_arg(args.storage_options, "--storage-options")
    out = resolve(args.out, {args.out: opts} if opts else None, output=True)
    input_opts = _json_arg(args.input_storage_options, "--input-storage-options")
    r = verify_output(out, inputs=args.inputs, storage_options=input_opts)
    checked = f", {r['inputs']} input files unchanged" if args.inputs else ""
    print(
        f"raymerge: {args.out} OK: {r['pieces']} tensors/chunks, {fmt_bytes(r['bytes'])} "
        f"in {r['shards']} shards and {r['files']} side files match the manifest{checked}"
    )
    return 0


def _json_arg(text: str | None, flag: str) -> dict | None:
    from raymerge.errors import RaymergeError

    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RaymergeError(f"{flag}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RaymergeError(f"{flag}: expected a JSON object")
    return value
