"""The CLI as a newcomer meets it: --version, help texts, and a README that agrees with them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from raymerge import __version__
from raymerge.cli import build_parser, main
from raymerge.options import ExecOptions, RunOptions, markdown_table, option_fields

README = Path(__file__).resolve().parents[2] / "README.md"


def test_version_and_top_level_help(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and capsys.readouterr().out.strip() == f"raymerge {__version__}"
    text = build_parser().format_help()
    assert "Thin" not in text and "verify" in text


def test_every_subcommand_has_help_and_every_option_its_default():
    sub = build_parser()._subparsers._group_actions[0]
    for name, parser in sub.choices.items():
        assert parser.description, name
    run = " ".join(sub.choices["run"].format_help().split())  # unwrapped
    for cls in (RunOptions, ExecOptions):
        for f in option_fields(cls):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            assert flag in run, flag
    assert "(default 3)" in run  # --max-attempts
    assert "default: 2 x the job slots" in run  # --in-flight


def test_the_readme_option_table_is_the_options_model():
    text = README.read_text()
    found = re.search(r"<!-- options-table -->\n(.*?)\n<!-- /options-table -->", text, re.S)
    assert found and found.group(1) == markdown_table()


def test_options_parse_into_the_options_model():
    args = build_parser().parse_args(
        ["run", "c.yaml", "out", "--job-memory", "2GiB", "--no-progress", "--stall-timeout", "5"]
    )
    from raymerge.options import options_from

    opts = options_from(args)
    assert opts.job_memory == 2 << 30 and opts.execution.progress is False
    assert opts.execution.stall_timeout == 5.0 and opts.shard_size == RunOptions().shard_size
