"""Layer-streamed statistics (no Ray): equal to the all-in-memory reference bit for bit, and they
never hold more than one layer of each model."""

from __future__ import annotations

import pytest
import torch

import raymerge.zipit.stream as stream
from raymerge.io.reader import read_model
from raymerge.storage import resolve
from raymerge.synth import llama_config, random_weights, save_checkpoint
from raymerge.zipit.gather import load_tensors, shard_ranges, shard_stats
from raymerge.zipit.spaces import describe
from raymerge.zipit.stats import tree_reduce
from raymerge.zipit.stream import Streamer, stream_stats


def _mlp(seed: int, widths=(6, 10, 8, 4)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(len(widths) - 1):
        out[f"layers.{i}.weight"] = torch.randn(widths[i + 1], widths[i], generator=g)
        out[f"layers.{i}.bias"] = torch.randn(widths[i + 1], generator=g)
    return out


def _models(tmp_path, weights: list[dict], cfg=None, dtype=torch.float32):
    out = []
    for k, w in enumerate(weights):
        p = save_checkpoint(str(tmp_path / f"m{k}"), w, cfg, n_shards=1 + k, dtype=dtype)
        lay = read_model(p, resolve(p))
        out.append((lay.location, lay.tensors))
    return out


def _equal(a, b) -> None:
    assert sorted(a) == sorted(b)
    for s in a:
        assert a[s].count == b[s].count and a[s].sizes == b[s].sizes, s
        assert torch.equal(a[s].sum, b[s].sum) and torch.equal(a[s].outer, b[s].outer), s


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    cfg = llama_config(hidden=32, intermediate=48, layers=3, vocab=64, heads=4, kv_heads=2)
    models = _models(
        tmp_path_factory.mktemp("ll"),
        [random_weights(cfg, s) for s in (1, 2)],
        cfg,
        dtype=torch.bfloat16,
    )
    ids = torch.randint(0, 64, (14, 9), generator=torch.Generator().manual_seed(3))
    return cfg, models, ids


def test_mlp_streamed_equals_all_in_memory(tmp_path):
    models = _models(tmp_path, [_mlp(1), _mlp(2), _mlp(3)])
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(4))
    batches = shard_ranges(50, 7, 2)[1]
    for spaces, depth in ((["h0", "h1"], 2), (["h0"], 1)):
        ref = shard_stats("mlp", [load_tensors(*m) for m in models], None, x, batches, spaces)
        _equal(stream_stats("mlp", models, None, x, batches, spaces, depth), ref)


@pytest.mark.parametrize("depth", [3, 1])
def test_llama_streamed_equals_all_in_memory(llama, depth):
    cfg, models, ids = llama
    layout = describe(
        {n: t.shape for n, t in models[0][1].items()}, cfg, 2, None if depth == 3 else depth
    )
    spaces = [s.name for s in layout.spaces]
    assert layout.depth == depth and len(spaces) == 1 + 2 * depth
    batches = shard_ranges(len(ids), 4, 1)[0]
    loaded = [load_tensors(*m) for m in models]
    ref = shard_stats("llama", loaded, cfg, ids, batches, spaces, depth)
    _equal(stream_stats("llama", models, cfg, ids, batches, spaces, depth), ref)


def test_one_streamer_with_several_shards_equals_per_shard_reference(llama):
    cfg, models, ids = llama
    spaces = ["res", "attn.0", "mlp.0", "attn.1", "mlp.1", "attn.2", "mlp.2"]
    shards = shard_ranges(len(ids), 3, 3)
    s = Streamer("llama", models, cfg, spaces, 3)
    s.begin(ids, [(i, b) for i, b in enumerate(shards)])
    got = [dict() for _ in shards]
    for stage in range(s.stages):
        per_shard, _ = s.step(stage)
        done = stream.finished_at("llama", stage, 3, spaces)
        for i, stats in enumerate(per_shard):
            got[i].update(zip(done, stats))
    loaded = [load_tensors(*m) for m in models]
    for i, b in enumerate(shards):
        _equal(got[i], shard_stats("llama", loaded, cfg, ids, b, spaces))
    whole = tree_reduce([g["res"] for g in got])
    assert whole.count == len(ids) * ids.shape[1] * 7  # the embedding + 2 blocks x 3 layers
    with pytest.raises(ValueError, match="in order"):
        s.step(0)


def test_an_actor_holds_one_layer_per_model(llama, monkeypatch):
    """Counts the bytes read through fetch: by the time the first layer's statistics are done,
    only the embedding and layer 0 of each model were read, and after each stage its weights are
    gone. Fails if a streamer loads more than one layer (or the whole model) up front."""
    cfg, models, ids = llama
    reads: list[int] = []
    real = stream.fetch

    def counting(loc, ranges, expect=None):
        reads.append(sum(e - s for _, s, e in ranges))
        return real(loc, ranges, expect)

    monkeypatch.setattr(stream, "fetch", counting)
    srcs = models[0][1]

    def nbytes(prefix: str) -> int:
        return sum(t.end - t.start for n, t in srcs.items() if n.startswith(prefix))

    s = Streamer("llama", models, cfg, ["res", "attn.0", "mlp.0"], 3)
    s.begin(ids, [(0, shard_ranges(len(ids), 5, 1)[0])])
    s.step(0)
    assert sum(reads) == 2 * nbytes("model.embed_tokens.")
    assert s.weights is None
    per_shard, info = s.step(1)  # layer 0: attn.0 and mlp.0 are finished now
    assert [st.count for st in per_shard[0]] == [len(ids) * ids.shape[1]] * 2
    assert sum(reads) == 2 * (nbytes("model.embed_tokens.") + nbytes("model.layers.0."))
    assert info.bytes_read == 2 * nbytes("model.layers.0.")
    assert info.weight_bytes == 2 * 2 * nbytes("model.layers.0.")  # float32 copies of bf16
    assert len(reads) == 4 and s.weights is None
    before = sum(reads)
    s.step(2)
    assert sum(reads) - before == 2 * nbytes("model.layers.1.")
    total = sum(t.end - t.start for t in srcs.values())
    assert sum(reads) < 2 * total  # layer 2, the final norm and lm_head not read yet


def test_a_model_rewritten_during_the_statistics_fails_naming_it(tmp_path):
    """The statistics read the planned file versions, as every job does: a shard rewritten
    after planning (same size) fails before its layer is used."""
    import os
    import time

    from raymerge.io.fingerprint import InputChangedError

    cfg = llama_config(hidden=32, intermediate=48, layers=2, vocab=64, heads=4, kv_heads=2)
    paths = [save_checkpoint(str(tmp_path / f"m{k}"), random_weights(cfg, k), cfg) for k in (1, 2)]
    lays = [read_model(p, resolve(p)) for p in paths]
    models = [(lay.location, lay.tensors, lay.files) for lay in lays]
    s = Streamer("llama", models, cfg, ["res", "attn.0", "mlp.0", "attn.1", "mlp.1"], 2)
    s.begin(torch.randint(0, 64, (4, 5)), [(0, [(0, 4)])])
    s.step(0)
    shard = next(f for f in os.listdir(paths[1]) if f.endswith(".safetensors"))
    data = bytearray(open(os.path.join(paths[1], shard), "rb").read())
    data[-1] ^= 0xFF
    time.sleep(0.01)
    with open(os.path.join(paths[1], shard), "r+b") as f:
        f.write(data)
    with pytest.raises(InputChangedError, match="changed since planning") as ei:
        s.step(1)
    assert shard in str(ei.value)
