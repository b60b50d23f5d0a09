"""Merge methods: pure torch kernels behind one explicit registry.

- :mod:`~raymerge.methods.base`: the method contract (parameters, kernels, statistics rounds);
- :mod:`~raymerge.methods.registry`: the table of methods;
- :mod:`~raymerge.methods.engine`: runs a method over a piece, block by block;
- one file per method family (linear, task_arithmetic + sparsify, slerp, nuslerp,
  multislerp, karcher, model_stock, sce, arcee_fusion, nearswap, ram (+ ramplus_tl), svd
  (tsv_m, iso_c, iso_cts), passthrough, zipit); :mod:`~raymerge.methods.selection` and
  :mod:`~raymerge.methods.rng` hold the exact order statistics and the chunk-invariant random
  streams they use.
"""

from raymerge.methods.base import MergeMethod, ParamSpec, PieceInfo
from raymerge.methods.engine import BLOCK_ELEMENTS, merge_piece, merge_whole, piece_stats
from raymerge.methods.registry import REGISTRY, get_method

__all__ = [
    "BLOCK_ELEMENTS",
    "REGISTRY",
    "MergeMethod",
    "ParamSpec",
    "PieceInfo",
    "get_method",
    "merge_piece",
    "merge_whole",
    "piece_stats",
]
