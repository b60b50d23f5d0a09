"""Tests for raymerge.io.reader: model folders -> validated layouts, pickle refusal, decode.

Local folders only (fsspec's local filesystem through raymerge.storage.resolve); no Ray.
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
import xxhash
from safetensors.torch import save_file

from raymerge.errors import InputError
from raymerge.io.ranges import decode, read_ranges
from raymerge.io.reader import (
    HEADER_PROBE_BYTES,
    INDEX_FILE,
    SINGLE_FILE,
    ModelLayout,
    TensorSource,
    read_model,
)
from raymerge.storage import resolve

SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def load(path: Path) -> ModelLayout:
    return read_model(str(path), resolve(str(path)))


def expect_input_error(path: Path, *needles: str) -> str:
    with pytest.raises(InputError) as info:
        load(path)
    msg = str(info.value)
    assert str(path) in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def reference_layout(file: Path) -> dict[str, tuple[int, int, str, list[int]]]:
    """Independent parse of a safetensors file: name -> (abs start, abs end, dtype, shape)."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    obj = json.loads(raw[8 : 8 + n])
    obj.pop("__metadata__", None)
    return {
        k: (8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1], v["dtype"], v["shape"])
        for k, v in obj.items()
    }


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert torch.equal(got, want)


def check_layout(layout: ModelLayout, folder: Path, saved: dict[str, dict[str, torch.Tensor]]):
    """``saved``: file name -> tensors written to it. Check every TensorSource against the file."""
    expected_files = {name: file for file, ts in saved.items() for name in ts}
    assert set(layout.tensors) == set(expected_files)
    assert sorted(layout.order) == sorted(expected_files)
    for name, src in layout.tensors.items():
        assert isinstance(src, TensorSource)
        assert src.name == name
        assert src.file == expected_files[name]
        want = saved[src.file][name]
        start, end, dtype, shape = reference_layout(folder / src.file)[name]
        assert (src.start, src.end, src.dtype, list(src.shape)) == (start, end, dtype, shape)
        assert src.end - src.start == want.numel() * want.element_size()
        with open(folder / src.file, "rb") as f:
            f.seek(src.start)
            buf = f.read(src.end - src.start)
        assert_same(decode(buf, src.dtype, src.shape), want)
        # The worker-side range reader returns the same bytes.
        loc = layout.location.child(src.file)
        assert read_ranges(loc.fs, [loc.path], [src.start], [src.end]) == [buf]


def single_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(4, 3, generator=g).to(torch.bfloat16),
        "norm.weight": torch.randn(3, generator=g),
        "head.bias": torch.randn(2, generator=g).to(torch.float16),
        "step": torch.tensor(12345, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scale": torch.tensor([0.5, -1.0], dtype=torch.float8_e4m3fn),
        "empty": torch.zeros(0, 3),
    }


def make_single(folder: Path, tensors: dict[str, torch.Tensor] | None = None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = single_tensors() if tensors is None else tensors
    save_file(tensors, str(folder / SINGLE_FILE), metadata={"format": "pt"})
    return {SINGLE_FILE: tensors}


def sharded_tensors() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return {
        SHARDS[0]: {
            "model.embed.weight": torch.randn(5, 4, generator=g).to(torch.bfloat16),
            "model.step": torch.tensor(7, dtype=torch.int64),
        },
        SHARDS[1]: {
            "model.layers.0.w": torch.randn(4, 4, generator=g),
            "model.layers.0.b": torch.randn(4, generator=g).to(torch.float16),
            "model.layers.0.empty": torch.zeros(2, 0, dtype=torch.bfloat16),
        },
        SHARDS[2]: {
            "lm_head.weight": torch.randn(4, 5, generator=g).to(torch.bfloat16),
            "lm_head.ids": torch.arange(6, dtype=torch.int64),
        },
    }


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    (folder / INDEX_FILE).write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )


def make_sharded(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    folder.mkdir(parents=True, exist_ok=True)
    saved = sharded_tensors()
    for shard, ts in saved.items():
        save_file(ts, str(folder / shard), metadata={"format": "pt"})
    write_index(folder, {name: shard for shard, ts in saved.items() for name in ts})
    return saved


# --------------------------------------------------------------------------------------------
# Valid models
# --------------------------------------------------------------------------------------------


def test_single_file_model(tmp_path: Path) -> None:
    folder = tmp_path / "single"
    saved = make_single(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 3}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("hi")

    layout = load(folder)
    assert layout.ref == str(folder)
    assert layout.location.url == str(folder)
    check_layout(layout, folder, saved)
    ref = reference_layout(folder / SINGLE_FILE)
    assert layout.order == sorted(ref, key=lambda k: (ref[k][0], ref[k][1], k))
    assert layout.config == {"model_type": "llama", "hidden_size": 3}
    assert layout.side_files == ["config.json", "tokenizer.json"]
    assert set(layout.files) == {SINGLE_FILE, "config.json", "tokenizer.json"}  # all fingerprinted
    st = (folder / SINGLE_FILE).stat()
    shard = layout.files[SINGLE_FILE]
    assert (shard.size, shard.mtime_ns, shard.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
    raw = (folder / SINGLE_FILE).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert shard.header_xxh == xxhash.xxh64(raw[: 8 + n]).hexdigest()  # the header's identity
    assert layout.files["config.json"].header_xxh is None
    fp = layout.fingerprint()
    assert fp["model"] == str(folder)
    assert fp["files"][SINGLE_FILE] == shard.as_record()


def test_single_file_without_config(tmp_path: Path) -> None:
    folder = tmp_path / "bare"
    make_single(folder, {"w": torch.ones(2)})
    layout = load(folder)
    assert layout.config is None
    assert layout.side_files == []
    assert layout.order == ["w"]


def test_sharded_model(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    saved = make_sharded(folder)
    (folder / "notes.txt").write_text("ignored")
    layout = load(folder)
    check_layout(layout, folder, saved)
    assert set(layout.files) == set(SHARDS)
    for shard in SHARDS:
        assert layout.files[shard].size == (folder / shard).stat().st_size
    # Order: shards by name, tensors by offset within a shard.
    expected_order = []
    for shard in SHARDS:
        ref = reference_layout(folder / shard)
        expected_order += sorted(ref, key=lambda k: (ref[k][0], ref[k][1], k))
    assert layout.order == expected_order
    assert layout.tensors["lm_head.weight"].file == SHARDS[2]
    assert layout.tensors["model.layers.0.w"].file == SHARDS[1]
    assert layout.tensors["model.step"].shape == ()


def test_sharded_model_ignores_single_file_when_index_present(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    saved = make_sharded(folder)
    save_file({"stray": torch.ones(1)}, str(folder / SINGLE_FILE))
    layout = load(folder)
    check_layout(layout, folder, saved)
    assert SINGLE_FILE not in layout.files


def test_header_larger_than_probe_needs_second_read(tmp_path: Path) -> None:
    folder = tmp_path / "bigheader"
    folder.mkdir()
    tensors = {"a": torch.arange(5, dtype=torch.float32), "b": torch.tensor(2.5)}
    save_file(
        tensors, str(folder / SINGLE_FILE), metadata={"blob": "x" * (HEADER_PROBE_BYTES + 10)}
    )
    (n,) = struct.unpack("<Q", (folder / SINGLE_FILE).read_bytes()[:8])
    assert 8 + n > HEADER_PROBE_BYTES
    check_layout(load(folder), folder, {SINGLE_FILE: tensors})


def test_read_ranges_short_read(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(bytes(range(10)))
    loc = resolve(str(f))
    assert read_ranges(loc.fs, [loc.path, loc.path], [0, 7], [3, 10]) == [b"\0\1\2", b"\7\x08\x09"]
    assert read_ranges(loc.fs, [], [], []) == []
    with pytest.raises(OSError, match=r"short read of range \[8, 12\): got 2 bytes"):
        read_ranges(loc.fs, [loc.path], [8], [12])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    msg = expect_input_error(tmp_path / "nope", "model folder not found")
    assert msg == f"{tmp_path / 'nope'}: model folder not found"


def test_path_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "model.safetensors"
    save_file({"a": torch.ones(1)}, str(f))
    expect_input_error(f, "is a file", SINGLE_FILE, INDEX_FILE)


def test_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    expect_input_error(
        folder, "no safetensors checkpoint", SINGLE_FILE, INDEX_FILE, "['config.json']"
    )


def test_index_names_missing_shard(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    (folder / SHARDS[1]).unlink()
    expect_input_error(folder, f"{folder}/{INDEX_FILE}", SHARDS[1], "do not exist")


def test_index_maps_tensor_to_wrong_shard(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    saved = make_sharded(folder)
    wm = {name: shard for shard, ts in saved.items() for name in ts}
    wm["lm_head.ids"] = SHARDS[0]
    write_index(folder, wm)
    msg = expect_input_error(
        folder,
        "inconsistent checkpoint",
        f"index maps 'lm_head.ids' to {SHARDS[0]} but it is in {SHARDS[2]}",
    )
    assert msg.count("\n  - ") == 1


def test_index_maps_tensor_no_shard_holds(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    saved = make_sharded(folder)
    wm = {name: shard for shard, ts in saved.items() for name in ts}
    wm["ghost.weight"] = SHARDS[1]
    write_index(folder, wm)
    expect_input_error(folder, f"index maps 'ghost.weight' to {SHARDS[1]}, which does not hold it")


def test_tensor_missing_from_index(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    saved = make_sharded(folder)
    wm = {name: shard for shard, ts in saved.items() for name in ts}
    del wm["model.layers.0.b"]
    write_index(folder, wm)
    expect_input_error(
        folder, f"tensor 'model.layers.0.b' in {SHARDS[1]} is missing from the index"
    )


def test_whole_shard_missing_from_index(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    saved = make_sharded(folder)
    write_index(folder, {n: s for s, ts in saved.items() for n in ts if s != SHARDS[2]})
    expect_input_error(folder, SHARDS[2], "not referenced by")


def test_empty_weight_map(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    write_index(folder, {})
    expect_input_error(folder, INDEX_FILE)


def test_same_tensor_in_two_shards(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    saved = make_sharded(folder)
    save_file(
        {**saved[SHARDS[2]], "model.step": torch.tensor(8, dtype=torch.int64)},
        str(folder / SHARDS[2]),
    )
    expect_input_error(folder, f"tensor 'model.step' in both {SHARDS[0]} and {SHARDS[2]}")


def test_several_inconsistencies_listed_together(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    saved = make_sharded(folder)
    wm = {name: shard for shard, ts in saved.items() for name in ts}
    wm["model.step"] = SHARDS[1]
    del wm["lm_head.ids"]
    write_index(folder, wm)
    msg = expect_input_error(
        folder,
        f"index maps 'model.step' to {SHARDS[1]} but it is in {SHARDS[0]}",
        f"tensor 'lm_head.ids' in {SHARDS[2]} is missing from the index",
    )
    assert msg.count("\n  - ") == 2


@pytest.mark.parametrize("text", ["{not json", '{"weight_map": {', "\xff"])
def test_index_not_valid_json(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    (folder / INDEX_FILE).write_bytes(text.encode("latin-1"))
    expect_input_error(folder, f"{folder}/{INDEX_FILE}: not valid JSON")


@pytest.mark.parametrize(
    "obj, needle",
    [
        ([1, 2], "expected a JSON object"),
        ({"metadata": {}}, "'weight_map' must map tensor names to shard file names"),
        ({"weight_map": {"a": 3}}, "'weight_map' must map tensor names to shard file names"),
        ({"weight_map": {"a": "../x.safetensors"}}, "'weight_map' must map"),
    ],
)
def test_index_wrong_structure(tmp_path: Path, obj, needle: str) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    (folder / INDEX_FILE).write_text(json.dumps(obj))
    expect_input_error(folder, f"{folder}/{INDEX_FILE}", needle)


def test_corrupt_shard_header(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    shard = folder / SHARDS[1]
    raw = bytearray(shard.read_bytes())
    raw[8] = ord("[")  # the JSON header no longer starts with '{'
    shard.write_bytes(bytes(raw))
    expect_input_error(
        folder, f"{folder}/{SHARDS[1]}: invalid safetensors file", "not a JSON object"
    )


def test_truncated_shard(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    shard = folder / SHARDS[2]
    shard.write_bytes(shard.read_bytes()[:-5])
    expect_input_error(folder, f"{folder}/{SHARDS[2]}: invalid safetensors file", "truncated file?")


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03"])
def test_shard_shorter_than_length_prefix(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "m"
    make_sharded(folder)
    (folder / SHARDS[0]).write_bytes(content)
    expect_input_error(
        folder, f"{folder}/{SHARDS[0]}", f"file is {len(content)} bytes, shorter than the 8-byte"
    )


def test_corrupt_single_file(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    text = b'{"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}}'
    (folder / SINGLE_FILE).write_bytes(struct.pack("<Q", len(text)) + text + b"\0\0")
    expect_input_error(folder, f"{folder}/{SINGLE_FILE}", "tensor 'w'", "unknown dtype 'Q7'")


# --------------------------------------------------------------------------------------------
# Pickle checkpoints are never opened
# --------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (open(marker, "w")): a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _Payload(marker)})


def test_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload really does run code when unpickled."""
    marker = tmp_path / "control-marker"
    obj = pickle.loads(malicious_pickle(marker))
    obj["weight"].close()
    assert marker.exists()


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt"])
def test_pickle_checkpoint_is_refused_unopened(tmp_path: Path, filename: str) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    (folder / filename).write_bytes(malicious_pickle(marker))
    (folder / "config.json").write_text("{}")
    msg = expect_input_error(
        folder,
        "pickle",
        "safetensors",
        f"only pickle files ['{filename}']",
        "never unpickles",
        SINGLE_FILE,
    )
    assert "PWNED" not in msg
    assert not marker.exists()


def test_pickle_next_to_safetensors_is_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    saved = make_single(folder, {"w": torch.ones(3)})
    marker = tmp_path / "PWNED"
    (folder / "pytorch_model.bin").write_bytes(malicious_pickle(marker))
    layout = load(folder)
    check_layout(layout, folder, saved)
    assert set(layout.files) == {SINGLE_FILE}
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------


def test_adapter_folder_header_config_and_fingerprints(tmp_path: Path) -> None:
    from raymerge.io.reader import read_adapter

    key = "base_model.model.q.lora_A.weight"
    save_file({key: torch.ones(2, 3)}, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    lay = read_adapter("L", resolve(str(tmp_path)))
    assert lay.adapter and lay.config == {"r": 2, "lora_alpha": 4}
    assert lay.tensors[key].shape == (2, 3) and lay.tensors[key].dtype == "F32"
    assert set(lay.files) == {"adapter_model.safetensors", "adapter_config.json"}
    assert lay.files["adapter_model.safetensors"].header_xxh  # proved like a shard
    assert lay.fingerprint()["kind"] == "lora"
    (tmp_path / "adapter_model.safetensors").unlink()
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps({}))
    with pytest.raises(InputError, match=r"not a LoRA adapter folder.*pickle weights"):
        read_adapter("L", resolve(str(tmp_path)))
