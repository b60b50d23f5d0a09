"""Strict, mergekit-compatible merge configuration.

A mergekit YAML (``merge_method``, ``base_model``, ``models: [{model, parameters}]`` or
``slices``, global ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source`` or the
``tokenizer:`` block, ``chat_template``, ``model+lora`` references) loads as-is for what raymerge
supports. Everything else is an error, and :func:`load_config` reports every problem at once, each
naming the field, the bad value and the valid options.

raymerge extensions: ``random_seed`` (for randomised methods) and ``storage_options`` (fsspec
options per URL prefix, e.g. an S3 endpoint; secrets there are never printed).

Parameter values follow mergekit's rules (resolved per tensor by :mod:`raymerge.params`); this
module checks their shape, ranges and placement.
"""

from raymerge.config.checks import groups
from raymerge.config.load import load_config
from raymerge.config.models import (
    DTYPE_NAMES,
    Calibration,
    InputModel,
    MergeConfig,
    Slice,
    SliceSource,
)

__all__ = [
    "DTYPE_NAMES",
    "Calibration",
    "InputModel",
    "MergeConfig",
    "Slice",
    "SliceSource",
    "groups",
    "load_config",
]
