"""Strict, mergekit-compatible merge configuration.

A mergekit YAML (``merge_method``, ``base_model``, ``models: [{model, parameters}]``, global
``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source``) loads as-is for what raymerge
supports. Everything else is an error, and :func:`load_config` reports every problem at once, each
naming the field, the bad value and the valid options.

raymerge extensions: ``random_seed`` (for randomised methods) and ``storage_options`` (fsspec
options per URL prefix, e.g. an S3 endpoint; secrets there are never printed).

Parameter values follow mergekit's rules (:func:`evaluate`): a scalar; a list of numbers is a
gradient interpolated over the layer position t = i / (L - 1) (embeddings, final norm and lm_head
use t = 0); a list of ``{filter: substring, value: ...}`` picks the first entry whose filter is a
substring of the tensor name (an entry without filter matches everything). Per-model values take
precedence over global ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from raymerge.errors import ConfigError
from raymerge.methods import REGISTRY, MergeMethod
from raymerge.storage import redact

# config dtype names -> safetensors dtype codes (raymerge.io.header.ST_DTYPES)
DTYPE_NAMES: dict[str, str] = {
    "float32": "F32",
    "fp32": "F32",
    "float": "F32",
    "float16": "F16",
    "fp16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float64": "F64",
    "fp64": "F64",
    "double": "F64",
}
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputModel(_Strict):
    model: str = Field(description="local folder, file://, s3://, hf://org/repo@rev or org/repo")
    parameters: dict[str, Any] | None = Field(default=None, description="per-model parameters")

    @field_validator("model")
    @classmethod
    def _no_lora(cls, v: str) -> str:
        if "+" in v and "://" not in v:
            raise ValueError(
                f"LoRA references ('model+lora') are not supported: {v!r}; merge the adapter "
                "into the model first"
            )
        if not v.strip():
            raise ValueError("model reference is empty")
        return v


class SliceSource(_Strict):
    model: str = Field(description="model reference")
    layer_range: tuple[int, int] = Field(description="[start, end) layer indices of this model")
    parameters: dict[str, Any] | None = Field(default=None, description="per-source parameters")


class Slice(_Strict):
    sources: list[SliceSource] = Field(min_length=1, description="models contributing these layers")
    parameters: dict[str, Any] | None = Field(default=None, description="parameters for this slice")


class Calibration(_Strict):
    """Calibration data for methods that need activations (ZipIt)."""

    url: str = Field(
        description="safetensors (inputs / input_ids) or .parquet file, any fsspec URL"
    )
    samples: int | None = Field(default=None, ge=1, description="use the first N samples")
    batch_size: int = Field(default=64, ge=1, description="samples per forward batch")
    shards: int = Field(
        default=4,
        ge=1,
        description="statistics shards (fixed, so results do not depend on the number of actors)",
    )


class MergeConfig(_Strict):
    merge_method: str = Field(description="one of the registered merge methods")
    base_model: str | None = Field(default=None, description="base model reference")
    models: list[InputModel] | None = Field(default=None, description="models to merge")
    slices: list[Slice] | None = Field(
        default=None, description="output layer ranges (frankenmerges / per-slice merges)"
    )
    parameters: dict[str, Any] | None = Field(default=None, description="global parameters")
    dtype: str | None = Field(default=None, description="math dtype (fp32 or wider is used)")
    out_dtype: str | None = Field(
        default=None, description="output dtype; default: dtype, else the input's"
    )
    tokenizer_source: str | None = Field(
        default=None,
        description="'base': output rows follow the base vocabulary (missing rows from the base)",
    )
    calibration: Calibration | None = Field(
        default=None, description="calibration data (zipit, permute)"
    )
    random_seed: int = Field(default=0, description="seed for randomised methods")
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fsspec options per URL prefix"
    )

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in REGISTRY:
            raise ValueError(f"unknown merge method {v!r}; valid: {', '.join(REGISTRY)}")
        return v

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        if v is not None and v not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {v!r}; valid: {', '.join(DTYPE_NAMES)}")
        return v

    @field_validator("tokenizer_source")
    @classmethod
    def _tok(cls, v: str | None) -> str | None:
        if v not in (None, "base"):
            raise ValueError(f"tokenizer_source {v!r} is not supported yet; valid: base")
        return v

    @property
    def method(self) -> MergeMethod:
        return REGISTRY[self.merge_method]

    @model_validator(mode="after")
    def _models_or_slices(self) -> MergeConfig:
        if (self.models is None) == (self.slices is None):
            raise ValueError("give exactly one of 'models' or 'slices'")
        if self.models is not None and not self.models:
            raise ValueError("'models' is empty")
        if self.slices is not None and not self.slices:
            raise ValueError("'slices' is empty")
        return self

    def input_refs(self) -> list[str]:
        """Unique model references: base first (if any), then the others in order of appearance."""
        refs: list[str] = [self.base_model] if self.base_model else []
        if self.models is not None:
            refs += [m.model for m in self.models]
        for sl in self.slices or ():
            refs += [src.model for src in sl.sources]
        return list(dict.fromkeys(refs))

    def merged_models(self) -> list[InputModel]:
        """The models whose tensors the kernel combines (the base is excluded where it is base)."""
        return self.merged_of(self.models or [])

    def merged_of(self, entries: list[Any]) -> list[Any]:
        """Of a ``models`` list or a slice's ``sources``: the ones the kernel combines."""
        if self.method.base == "required":
            return [m for m in entries if m.model != self.base_model]
        return list(entries)

    def hash(self) -> str:
        """Stable hash of everything that determines output bytes (not storage options)."""
        body = self.model_dump(mode="json", exclude={"storage_options"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """The config as it may be shown or stored: secrets in storage options redacted."""
        return redact(self.model_dump(mode="json", exclude_defaults=True))


# --------------------------------------------------------------------------- loading


def load_config(source: str | Path | dict[str, Any]) -> MergeConfig:
    """Load and validate a config from a YAML path or a mapping; all problems reported at once."""
    name = "config"
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            raw = yaml.safe_load(Path(source).read_text())
        except FileNotFoundError:
            raise ConfigError([f"file not found: {source}"], name) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], name) from None
    else:
        raw = source
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], name)
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc, raw), name) from None
    problems = validate_parameters(cfg)
    if problems:
        raise ConfigError(problems, name)
    return cfg


def _pydantic_problems(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    out = []
    for err in exc.errors():
        loc = _loc_text(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = _parent_fields(err["loc"])
            out.append(f"{loc}: unknown key; valid keys: {', '.join(parent)}")
        elif err["type"] == "missing":
            out.append(f"{loc}: required field is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(f"{loc}: {msg} (got {redact(err.get('input'))!r})")
    return out


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "config"


def _parent_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = MergeConfig
    for part in loc[:-1]:
        model = {
            "models": InputModel,
            "slices": Slice,
            "sources": SliceSource,
            "calibration": Calibration,
        }.get(part, model)
    return list(model.model_fields)


# --------------------------------------------------------------------------- parameters


def _leaves(value: Any, where: str, problems: list[str]) -> list[Any]:
    """The scalar leaves of a parameter value; records shape errors."""
    if isinstance(value, (bool, int, float, str)):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return list(value)  # gradient
        if all(isinstance(v, dict) for v in value):
            out: list[Any] = []
            for i, cond in enumerate(value):
                extra = set(cond) - {"filter", "value"}
                if extra or "value" not in cond:
                    problems.append(
                        f"{where}[{i}]: a filter entry is {{filter: substring, value: ...}}, "
                        f"got keys {sorted(cond)}"
                    )
                    continue
                if "filter" in cond and not isinstance(cond["filter"], str):
                    problems.append(
                        f"{where}[{i}].filter: must be a string, got {cond['filter']!r}"
                    )
                out.extend(_leaves(cond["value"], f"{where}[{i}].value", problems))
            return out
    problems.append(
        f"{where}: a parameter is a scalar, a list of numbers (gradient) or a list of "
        f"{{filter, value}} entries; got {value!r}"
    )
    return []


def groups(cfg: MergeConfig) -> list[tuple[str, list[Any], dict[str, Any] | None]]:
    """(where, entries, slice parameters) for the models list or for each slice."""
    if cfg.models is not None:
        return [("models", list(cfg.models), None)]
    return [
        (f"slices[{k}].sources", list(sl.sources), sl.parameters)
        for k, sl in enumerate(cfg.slices or [])
    ]


def validate_parameters(cfg: MergeConfig) -> list[str]:
    """Method-specific checks: unknown or misplaced parameters, missing required ones, ranges,
    input counts, layer ranges."""
    method = cfg.method
    problems: list[str] = []
    valid = ", ".join(p.name for p in method.params) or "(none)"
    glob = cfg.parameters or {}

    def check_block(block: dict[str, Any], where: str, per_model: bool) -> None:
        for key, value in block.items():
            spec = method.param(key)
            if spec is None:
                problems.append(
                    f"{where}.{key}: unknown parameter for {method.name}; valid: {valid}"
                )
                continue
            if per_model and spec.scope == "global":
                problems.append(
                    f"{where}.{key}: {key!r} is method-wide for {method.name}; set it under the "
                    "top-level (or slice) parameters"
                )
                continue
            for leaf in _leaves(value, f"{where}.{key}", problems):
                issue = spec.check(leaf)
                if issue:
                    problems.append(f"{where}.{key}: {issue}")

    check_block(glob, "parameters", per_model=False)
    if method.calibration:
        if cfg.slices is not None:
            problems.append(f"slices: {method.name} merges whole models; use 'models'")
        if cfg.base_model:
            problems.append(f"base_model: {method.name} does not use a base model; remove it")
        if cfg.calibration is None and glob.get("matcher", "") != "identity":
            problems.append(
                f"calibration: required by {method.name} (a file of inputs or input_ids, "
                "see raymerge/zipit/gather.py); only matcher: identity works without it"
            )
    elif cfg.calibration is not None:
        users = ", ".join(m.name for m in REGISTRY.values() if m.calibration)
        problems.append(f"calibration: only used by {users}; remove it for {method.name}")
    if method.base == "required" and not cfg.base_model:
        problems.append(f"base_model: required by {method.name}")
    lo, hi = method.inputs
    for where, entries, slice_params in groups(cfg):
        if slice_params:
            check_block(slice_params, where.removesuffix(".sources") + ".parameters", False)
        for i, m in enumerate(entries):
            check_block(m.parameters or {}, f"{where}[{i}].parameters", per_model=True)
        merged = cfg.merged_of(entries)
        if len(merged) < lo or (hi is not None and len(merged) > hi):
            want = (
                f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            )
            besides = " besides base_model" if method.base == "required" else ""
            problems.append(
                f"{where}: {method.name} takes {want} model(s){besides}, got {len(merged)}: "
                f"{[m.model for m in merged]}"
            )
        if method.base == "required" and cfg.base_model and where.startswith("slices"):
            if not any(m.model == cfg.base_model for m in entries):
                problems.append(f"{where}: no source is base_model {cfg.base_model!r}")
        if where.startswith("slices"):
            lengths = {m.layer_range[1] - m.layer_range[0] for m in entries}
            for i, m in enumerate(entries):
                a, b = m.layer_range
                if a < 0 or b <= a:
                    problems.append(
                        f"{where}[{i}].layer_range: [{a}, {b}] is not a non-empty range"
                    )
            if len(lengths) > 1:
                problems.append(
                    f"{where}: layer ranges have different lengths "
                    f"{[list(m.layer_range) for m in entries]}"
                )
        sp = slice_params or {}
        for spec in method.params:
            if not spec.required:
                continue
            if spec.scope == "global" and spec.name not in glob and spec.name not in sp:
                problems.append(f"parameters.{spec.name}: required by {method.name}")
            if spec.scope == "model" and spec.name not in glob and spec.name not in sp:
                for i, m in enumerate(entries):
                    if m in merged and spec.name not in (m.parameters or {}):
                        problems.append(
                            f"{where}[{i}].parameters.{spec.name}: required by {method.name} "
                            f"for model {m.model!r} (set it per model or in the global parameters)"
                        )
    return list(dict.fromkeys(problems))


def evaluate(value: Any, tensor_name: str, t: float) -> Any:
    """Evaluate a parameter value for one tensor (mergekit semantics); None if no filter matched."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if all(isinstance(v, (bool, int, float, str)) for v in value):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return value[int(t * (len(value) - 1))]
        scaled = t * (len(value) - 1)
        i0 = int(scaled)
        i1 = min(len(value) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * value[i0] + frac * value[i1]
    for cond in value:
        filt = cond.get("filter")
        if filt is None or filt == "*" or filt in tensor_name:
            return evaluate(cond["value"], tensor_name, t)
    return None


def layer_position(tensor_name: str, num_layers: int) -> float:
    """mergekit's t for the models form: i / (L - 1) for layer tensors (1 when L == 1); 0 for
    embeddings, final norm and lm_head."""
    m = LAYER_RE.search(tensor_name)
    if not m:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return int(m.group(1)) / (num_layers - 1)


def resolve_parameters(
    cfg: MergeConfig,
    tensor_name: str,
    t: float,
    entries: list[Any] | None = None,
    slice_params: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Parameters of one tensor at layer position ``t``: (method-wide values, one dict per merged
    entry). Precedence: the entry's own > the slice's > the global parameters > the default."""
    method = cfg.method
    merged = cfg.merged_of(entries if entries is not None else (cfg.models or []))
    layers = [slice_params or {}, cfg.parameters or {}]

    def shared(name: str) -> Any:
        for block in layers:
            if name in block:
                val = evaluate(block[name], tensor_name, t)
                if val is not None:
                    return val
        return None

    wide: dict[str, Any] = {}
    per_model: list[dict[str, Any]] = [{} for _ in merged]
    for spec in method.params:
        fallback = shared(spec.name)
        if spec.scope == "global":
            wide[spec.name] = _typed(spec.type, spec.default if fallback is None else fallback)
            continue
        for i, m in enumerate(merged):
            own = (m.parameters or {}).get(spec.name)
            val = evaluate(own, tensor_name, t) if own is not None else None
            if val is None:
                val = fallback
            if val is None:
                val = spec.default
            if val is None and spec.required:
                raise ConfigError(
                    [
                        f"parameter {spec.name!r} of model {m.model!r} has no value for tensor "
                        f"{tensor_name!r} (no filter matched and no fallback is given)"
                    ]
                )
            per_model[i][spec.name] = _typed(spec.type, val)
    return wide, per_model


def _typed(kind: type, v: Any) -> Any:
    if v is None:
        return None
    if kind is float:
        return float(v)
    if kind is int:
        return int(v)
    return v


__all__ = [
    "DTYPE_NAMES",
    "InputModel",
    "MergeConfig",
    "evaluate",
    "layer_position",
    "load_config",
    "resolve_parameters",
]
