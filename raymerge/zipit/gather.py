"""The I/O side of ZipIt's statistics stage: calibration data, model tensors, per-shard statistics.

No Ray here. The statistics actors (:mod:`raymerge.execution.zipit_stage`) stream the models a
layer at a time (:mod:`raymerge.zipit.stream`); :func:`load_tensors` + :func:`shard_stats`, which
hold every model in memory, are the reference the tests compare them with. The calibration set is
split into a fixed number of shards (``calibration.shards``) by sample index, independent of how
many actors or nodes run them, and shard statistics are reduced in shard order by
:func:`raymerge.zipit.stats.tree_reduce`, so the statistics, and therefore the matching, do not
depend on the cluster.

Calibration files (any fsspec URL, read whole: they are small):

- safetensors holding ``inputs`` (float [N, features], MLPs) or ``input_ids`` (int [N, T],
  decoders), written e.g. with ``safetensors.torch.save_file``;
- Parquet with a column ``inputs`` (list of floats) or ``input_ids`` (list of ints, one row per
  sequence, all of one length).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from raymerge.errors import InputError
from raymerge.io.header import TensorSource
from raymerge.io.ranges import decode, fetch
from raymerge.storage import Location
from raymerge.zipit.forward import llama_forward, mlp_forward
from raymerge.zipit.stats import FeatureStats, features_of_models

KEYS = {"mlp": "inputs", "llama": "input_ids"}


def load_calibration(loc: Location, arch: str, samples: int | None) -> torch.Tensor:
    """The calibration inputs (first ``samples`` rows), validated for the architecture."""
    key = KEYS[arch]
    try:
        data = loc.fs.cat_file(loc.path)
    except FileNotFoundError:
        raise InputError(f"calibration file not found: {loc.url}") from None
    except OSError as exc:
        raise InputError(f"{loc.url}: cannot read the calibration file: {exc}") from None
    if loc.path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if key not in table.column_names:
            raise InputError(f"{loc.url}: needs a column {key!r}, has {table.column_names}")
        rows = table.column(key).to_pylist()
        dtype = torch.float32 if arch == "mlp" else torch.int64
        try:
            x = torch.tensor(rows, dtype=dtype)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{loc.url}: column {key!r} is not a rectangular array: {exc}"
            ) from None
    else:
        from safetensors.torch import load

        try:
            tensors = load(data)
        except Exception as exc:  # noqa: BLE001 - any parse error is a bad file
            raise InputError(f"{loc.url}: not a safetensors or .parquet file: {exc}") from None
        if key not in tensors:
            raise InputError(f"{loc.url}: needs a tensor {key!r}, has {sorted(tensors)}")
        x = tensors[key]
    if x.dim() != 2 or x.shape[0] == 0:
        raise InputError(f"{loc.url}: {key!r} must be a non-empty 2-D array, got {list(x.shape)}")
    if arch == "llama" and x.is_floating_point():
        raise InputError(f"{loc.url}: input_ids must be integers, got {x.dtype}")
    if samples is not None:
        x = x[:samples]
    return x.to(torch.float32) if arch == "mlp" else x.to(torch.int64)


def calibration_shape(loc: Location, arch: str, samples: int | None) -> tuple[int, int]:
    """(samples, values per sample) of a calibration file, from its header or Parquet metadata
    only (``raymerge plan`` reads no data)."""
    import json
    import struct

    key = KEYS[arch]
    try:
        if loc.path.endswith(".parquet"):
            import pyarrow.parquet as pq

            with loc.fs.open(loc.path, "rb") as f:
                pf = pq.ParquetFile(f)
                n = pf.metadata.num_rows
                first = next(pf.iter_batches(batch_size=1, columns=[key])).column(0)
                width = len(first[0].as_py())
        else:
            head = loc.fs.cat_file(loc.path, start=0, end=8)
            (size,) = struct.unpack("<Q", head)
            meta = json.loads(loc.fs.cat_file(loc.path, start=8, end=8 + size))
            n, width = meta[key]["shape"]
    except FileNotFoundError:
        raise InputError(f"calibration file not found: {loc.url}") from None
    except (OSError, KeyError, ValueError, StopIteration) as exc:
        raise InputError(f"{loc.url}: cannot read the calibration file's shape: {exc}") from None
    return (min(n, samples) if samples else n), width


def zip_figures(
    cfg: Any,
    zl: Any,
    models: Sequence[Any],
    shape: tuple[int, int] | None,
    shards_per_actor: int = 1,
):
    """The memory and time figures of a zip (:func:`raymerge.zipit.budget.zip_budget`) for
    ``models`` (their :class:`raymerge.io.reader.ModelLayout`) and calibration inputs of
    ``shape`` (None: no statistics), each actor holding ``shards_per_actor`` shards."""
    from raymerge.params import resolve_parameters
    from raymerge.zipit.budget import calibration_of, zip_budget

    params = dict(resolve_parameters(cfg, "", 0.0).method)
    cal = None
    if shape is not None and cfg.calibration is not None and params["matcher"] != "identity":
        c = cfg.calibration
        shards = [s for s in shard_ranges(shape[0], c.batch_size, c.shards) if s]
        cal = calibration_of(shape[0], shape[1] if zl.arch == "llama" else 1, shards, c.batch_size)
    first = models[0]
    return zip_budget(
        zl, first.tensors, first.config, len(models), cal, params["matcher"], shards_per_actor
    )


def plan_figures(cfg: Any, plan: Any, layouts: Sequence[Any], node_memory: int | None):
    """``raymerge plan``'s zipit figures: the budget from the headers and the calibration file's
    shape, checked against ``node_memory`` (``--node-memory``) or this machine's memory.
    Returns (budget, memory checked against, what that memory is)."""
    from raymerge.storage import resolve
    from raymerge.zipit.budget import check_budget, local_memory

    zl = plan.zip_layout
    refs = cfg.input_refs()
    models = [layouts[refs.index(m.model)] for m in cfg.models or []]
    shape = None
    if cfg.calibration is not None:
        loc = resolve(cfg.calibration.url, cfg.storage_options)
        shape = calibration_shape(loc, zl.arch, cfg.calibration.samples)
    budget = zip_figures(cfg, zl, models, shape)
    mem, where = (
        (node_memory, "--node-memory")
        if node_memory is not None
        else (local_memory(), "this machine's memory; set --node-memory for a cluster's nodes")
    )
    check_budget(budget, mem, where)
    return budget, mem, where


def check_calibration(x: torch.Tensor, arch: str, shapes: Mapping[str, tuple[int, ...]], url: str):
    """The inputs fit the models (before any model data is read)."""
    if arch == "mlp":
        want = shapes["layers.0.weight"][1]
        if x.shape[1] != want:
            raise InputError(f"{url}: inputs have {x.shape[1]} features, the models read {want}")
    else:
        vocab = shapes["model.embed_tokens.weight"][0]
        if int(x.min()) < 0 or int(x.max()) >= vocab:
            raise InputError(
                f"{url}: token ids span [{int(x.min())}, {int(x.max())}], vocabulary is {vocab}"
            )


def shard_ranges(n: int, batch_size: int, shards: int) -> list[list[tuple[int, int]]]:
    """Batches [a, b) of n samples, dealt to ``shards`` shards round-robin (fixed by n alone)."""
    batches = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    return [batches[s::shards] for s in range(shards)]


def load_tensors(loc: Location, sources: Mapping[str, TensorSource]) -> dict[str, torch.Tensor]:
    """Every tensor of one model, read in one batch of ranges (float32 copies: never views of
    the read buffers, whose alignment could change BLAS results)."""
    items = list(sources.values())
    bufs = fetch(loc, [(s.file, s.start, s.end) for s in items])
    return {
        s.name: decode(b, s.dtype, s.shape).to(torch.float32, copy=True)
        for s, b in zip(items, bufs)
    }


def features(
    arch: str,
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any] | None,
    x: torch.Tensor,
    depth: int | None = None,
) -> dict[str, torch.Tensor]:
    """Every space's features of one batch, from one all-in-memory forward pass (decoders: the
    first ``depth`` layers)."""
    if arch == "mlp":
        return mlp_forward(tensors, x, features=True)[1]
    return llama_forward(tensors, config or {}, x, features=True, layers=depth)[1]


def _stage_rows(arch: str, feats: Mapping[str, torch.Tensor], stage: int, depth: int):
    """The features stage ``stage`` of a layer-streamed pass produces, cut from one
    all-in-memory pass: (space, rows) in the order the streamed pass accumulates them."""
    if arch == "mlp":
        return [(f"h{stage}", feats[f"h{stage}"])]
    res = feats["res"]
    n = res.shape[0] // (1 + 2 * depth)  # rows per depth (the residual is depth-major)
    if stage == 0:
        return [("res", res[:n])]
    layer = stage - 1
    return [
        (f"attn.{layer}", feats[f"attn.{layer}"]),
        (f"mlp.{layer}", feats[f"mlp.{layer}"]),
        ("res", res[(2 * stage - 1) * n : (2 * stage + 1) * n]),
    ]


@torch.no_grad()
def shard_stats(
    arch: str,
    models: Sequence[Mapping[str, torch.Tensor]],
    config: Mapping[str, Any] | None,
    x: torch.Tensor,
    batches: Sequence[tuple[int, int]],
    spaces: Sequence[str],
    depth: int | None = None,
) -> dict[str, FeatureStats]:
    """Statistics of one calibration shard with every model in memory (the reference for the
    layer-streamed :func:`raymerge.zipit.stream.stream_stats`, which must equal it bit for bit).

    Every model sees the same batch; each space's features of all K models are concatenated
    (model order) and accumulated stage by stage (a layer at a time), batch by batch, as the
    streamed pass does. ``depth``: the layers the spaces need (default: all hidden layers)."""
    if depth is None:
        depth = (
            1 + max(int(s[1:]) for s in spaces)
            if arch == "mlp"
            else int((config or {})["num_hidden_layers"])
        )
    per_batch = [[features(arch, m, config, x[a:b], depth) for m in models] for a, b in batches]
    out: dict[str, FeatureStats] = {}
    for stage in range(depth if arch == "mlp" else depth + 1):
        for feats in per_batch:
            cut = [_stage_rows(arch, f, stage, depth) for f in feats]
            for pos, (space, _) in enumerate(cut[0]):
                if space not in spaces:
                    continue
                parts = [c[pos][1] for c in cut]
                if space not in out:
                    out[space] = FeatureStats.empty(tuple(p.shape[1] for p in parts))
                out[space].update(features_of_models(parts))
    return out
