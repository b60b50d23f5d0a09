"""hf:// model references (mergekit's `org/repo` too) through a registered stand-in filesystem."""

from __future__ import annotations

import json
import shutil

import pytest

from raymerge.cli import main
from raymerge.storage import normalize_ref
from tests.helpers import shard_bytes
from tests.hfstandin import registered

pytestmark = pytest.mark.integration


@pytest.fixture
def standin():
    with registered():
        yield


def test_hf_refs_merge_like_local(tmp_path, family, ray_session, capsys, standin):
    root = tmp_path / "hub"
    for name, src in zip(("base", "ft1", "ft2"), family):
        shutil.copytree(src, root / "acme" / f"{name}@main")
    opts = {"hf://": {"root": str(root)}}
    models = [{"model": f"hf://acme/ft{i}@main", "parameters": {"weight": 0.5}} for i in (1, 2)]
    hf_cfg = {
        "merge_method": "task_arithmetic",
        "base_model": "hf://acme/base@main",
        "models": models,
        "storage_options": opts,
    }
    local_cfg = {
        "merge_method": "task_arithmetic",
        "base_model": family[0],
        "models": [{"model": m, "parameters": {"weight": 0.5}} for m in family[1:]],
    }
    (tmp_path / "hf.json").write_text(json.dumps(hf_cfg))
    (tmp_path / "local.json").write_text(json.dumps(local_cfg))
    assert main(["run", str(tmp_path / "hf.json"), str(tmp_path / "a"), "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    assert main(["run", str(tmp_path / "local.json"), str(tmp_path / "b"), "--no-progress"]) == 0
    assert shard_bytes(str(tmp_path / "a")) == shard_bytes(str(tmp_path / "b"))
    card = (tmp_path / "a" / "README.md").read_text()
    assert "hf://acme/ft1@main" in card


def test_mergekit_style_repo_ids_mean_hf(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_ref("meta-llama/Llama-3.1-8B") == "hf://meta-llama/Llama-3.1-8B"
    assert normalize_ref("org/name@v1.0") == "hf://org/name@v1.0"
    (tmp_path / "org" / "local").mkdir(parents=True)
    assert normalize_ref("org/local") == str(tmp_path / "org" / "local")  # an existing folder wins
    assert normalize_ref("s3://b/k") == "s3://b/k"
    assert normalize_ref("./x/y") == str(tmp_path / "x" / "y")
