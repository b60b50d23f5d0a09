"""Claiming OUT: never an input, never someone's files, resume only from the same inputs."""

from __future__ import annotations

import json
import shutil

import pytest

from raymerge.errors import OutputError
from raymerge.output import (
    SUCCESS,
    check_not_an_input,
    claim_output,
    inspect_output,
    unmark_checkpoints,
)
from raymerge.storage import resolve

INPUTS = [{"model": "/m/a", "files": {"model.safetensors": {"size": 10, "header_xxh": "aa"}}}]
CHANGED = [{"model": "/m/a", "files": {"model.safetensors": {"size": 10, "header_xxh": "bb"}}}]


def out_at(path):
    return resolve(str(path), output=True)


@pytest.mark.parametrize("where", ["same", "parent", "child"])
def test_out_is_never_an_input_folder_its_parent_or_inside_it(tmp_path, where):
    model = tmp_path / "models" / "a"
    model.mkdir(parents=True)
    out = {"same": model, "parent": tmp_path / "models", "child": model / "merged"}[where]
    with pytest.raises(OutputError, match=r"the input model folder .* \(even with --overwrite\)"):
        check_not_an_input(out_at(out), [resolve(str(model))])
    check_not_an_input(out_at(tmp_path / "elsewhere"), [resolve(str(model))])


def test_overwrite_replaces_only_a_model_output(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OutputError, match=r"holds no raymerge run; choose an empty folder"):
        inspect_output(out_at(tmp_path), overwrite=False)
    with pytest.raises(OutputError, match=r"not part of a model output \(\['notes.txt'\]\)"):
        inspect_output(out_at(tmp_path), overwrite=True)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"old")
    inspect_output(out_at(tmp_path), overwrite=True)  # a mergekit-style output: replaceable


def test_overwrite_replaces_partial_zip_checkpoint_folders_but_no_other_folder(tmp_path):
    from raymerge.commit import remove_stale

    for j in (0, 1, 2):
        (tmp_path / f"model_{j}").mkdir()
        (tmp_path / f"model_{j}" / "model.safetensors").write_bytes(b"old")
        (tmp_path / f"model_{j}" / "config.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        OutputError, match=r"not part of a model output \(\['model_0', 'model_1', 'model_2'\]\)"
    ):
        inspect_output(out_at(tmp_path), overwrite=True)  # downloaded models: not ours
    for j in (0, 1):
        (tmp_path / f"model_{j}" / "manifest.parquet").write_bytes(b"m")
        (tmp_path / f"model_{j}" / SUCCESS).write_text("{}")
    shutil.rmtree(tmp_path / "model_2")
    inspect_output(out_at(tmp_path), overwrite=True)  # a partial zip's output: replaceable
    unmark_checkpoints(out_at(tmp_path))
    assert not any((tmp_path / f"model_{j}" / SUCCESS).exists() for j in (0, 1))
    (tmp_path / "model_1" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"not part of a model output \(\['model_1'\]\)"):
        inspect_output(out_at(tmp_path), overwrite=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "model.safetensors").write_bytes(b"x")
    assert remove_stale(out_at(tmp_path), {"config.json"}) == ["model_0"]  # mine: kept
    assert (tmp_path / "model_1" / "notes.txt").exists() and (tmp_path / "data").exists()


def test_resume_and_complete_only_from_the_same_inputs(tmp_path):
    out = out_at(tmp_path)
    first = claim_output(out, "cfg1", "lay1", False, INPUTS, "d1")
    assert not first.resume and first.complete is None
    again = claim_output(out, "cfg1", "lay1", False, INPUTS, "d1")
    assert again.resume  # interrupted, same inputs: keep its work
    with pytest.raises(OutputError) as ei:
        claim_output(out, "cfg1", "lay1", False, CHANGED, "d2")
    assert "an interrupted run of this config made from other versions of the inputs" in str(
        ei.value
    )
    assert "/m/a/model.safetensors (header_xxh aa -> bb)" in str(ei.value)
    (tmp_path / SUCCESS).write_text(json.dumps({"summary": {"jobs": 3}}))
    done = claim_output(out, "cfg1", "lay1", False, INPUTS, "d1")
    assert done.complete == {"summary": {"jobs": 3}}
    with pytest.raises(OutputError, match=r"holds a finished merge of this config made from other"):
        claim_output(out, "cfg1", "lay1", False, CHANGED, "d2")
    fresh = claim_output(out, "cfg1", "lay1", True, CHANGED, "d2")  # --overwrite
    assert fresh.complete is None and not fresh.resume and not (tmp_path / SUCCESS).exists()


def test_another_config_is_refused_without_overwrite(tmp_path):
    out = out_at(tmp_path)
    claim_output(out, "cfg1", "lay1", False, INPUTS, "d1")
    with pytest.raises(OutputError, match=r"holds a run of a different config"):
        claim_output(out, "cfg2", "lay1", False, INPUTS, "d1")
