"""The model card (``README.md``) of a merged model: the config, the inputs, the run."""

from __future__ import annotations

from typing import Any

from raymerge import __version__
from raymerge.redaction import redact
from raymerge.summary import fmt_bytes


def model_card(
    config: dict[str, Any], inputs: list[dict[str, Any]], summary: dict[str, Any]
) -> str:
    import yaml

    base = config.get("base_model")
    lines = ["---", "library_name: transformers", "tags:", "- merge", "- raymerge"]
    if base and "://" not in str(base):
        lines.append(f"base_model: {base}")
    lines += [
        "---",
        "",
        "# Merged model",
        "",
        f"Produced by raymerge {__version__} with the `{config.get('merge_method')}` method.",
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
        "## Inputs",
        "",
    ]
    for fp in inputs:
        files = ", ".join(
            f"{name} ({info.get('size')} B"
            + (f", etag {info['etag']}" if "etag" in info else "")
            + ")"
            for name, info in fp["files"].items()
        )
        lines.append(f"- `{redact(fp['model'])}`: {files}")
    lines += [
        "",
        "## Run",
        "",
        f"{summary['tensors']} tensors, {fmt_bytes(summary['bytes_written'])} written in "
        f"{summary['merge_s']:.1f} s ({summary['jobs']} jobs, {summary['retries']} retries).",
        "",
    ]
    return "\n".join(lines)


__all__ = ["model_card"]
