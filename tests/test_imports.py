"""The driver's import graph: planning and scheduling never import torch (1-2 s of every run's
fixed cost); pure modules import no Ray, fsspec or boto."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_driver_imports_no_torch():
    mods = loaded_after(
        "import raymerge.cli, raymerge.runner, raymerge.plan, raymerge.config, raymerge.verify; "
        "from raymerge.config import load_config; "
        "load_config({'merge_method': 'ties', 'base_model': 'b', 'models': "
        "[{'model': 'm', 'parameters': {'weight': 1, 'density': 0.5}}]})"
    )
    assert "torch" not in mods
    assert "ray" in mods  # the runner does schedule


def test_planning_a_real_checkpoint_imports_no_torch(family, capsys):
    """Header parsing, validation and planning of real files stay torch-free too."""
    base, ft1, ft2 = family
    cfg = repr(
        {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 1, "density": 0.5}},
                {"model": ft2, "parameters": {"weight": 1}},
            ],
        }
    )
    mods = loaded_after(
        "from raymerge.config import load_config; from raymerge.runner import RunOptions, "
        f"build_plan; plan, _ = build_plan(load_config({cfg}), RunOptions()); "
        "assert plan.jobs"
    )
    assert "torch" not in mods


@pytest.mark.parametrize(
    "module",
    [
        "raymerge.methods",
        "raymerge.plan",
        "raymerge.io.header",
        "raymerge.zipit.matching",
        "raymerge.zipit.stats",
        "raymerge.zipit.spaces",
        "raymerge.zipit.apply",
    ],
)
def test_pure_modules_import_no_io_or_scheduling(module):
    mods = loaded_after(f"import {module}")
    assert not {"ray", "fsspec", "s3fs", "boto3", "botocore"} & mods, module
