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
import math
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raymerge.errors import ConfigError
from raymerge.methods import REGISTRY, MergeMethod
from raymerge.storage import redact

DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
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


class MergeConfig(_Strict):
    merge_method: str = Field(description="one of the registered merge methods")
    base_model: str | None = Field(default=None, description="base model reference")
    models: list[InputModel] = Field(min_length=1, description="models to merge")
    parameters: dict[str, Any] | None = Field(default=None, description="global parameters")
    dtype: str | None = Field(default=None, description="math dtype (fp32 or wider is used)")
    out_dtype: str | None = Field(
        default=None, description="output dtype; default: dtype, else the input's"
    )
    tokenizer_source: str | None = Field(default=None, description="only 'base' is supported")
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

    def input_refs(self) -> list[str]:
        """Unique model references: base first (if any), then models in order."""
        refs: list[str] = []
        for r in ([self.base_model] if self.base_model else []) + [m.model for m in self.models]:
            if r not in refs:
                refs.append(r)
        return refs

    def merged_models(self) -> list[InputModel]:
        """The models whose tensors the kernel combines (the base is excluded where it is base)."""
        if self.method.base == "required":
            return [m for m in self.models if m.model != self.base_model]
        return list(self.models)

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
        if part == "models":
            model = InputModel
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


def validate_parameters(cfg: MergeConfig) -> list[str]:
    """Method-specific checks: unknown or misplaced parameters, missing required ones, ranges."""
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
                    "top-level parameters"
                )
                continue
            for leaf in _leaves(value, f"{where}.{key}", problems):
                issue = spec.check(leaf)
                if issue:
                    problems.append(f"{where}.{key}: {issue}")

    check_block(glob, "parameters", per_model=False)
    for i, m in enumerate(cfg.models):
        check_block(m.parameters or {}, f"models[{i}].parameters", per_model=True)

    if method.base == "required" and not cfg.base_model:
        problems.append(f"base_model: required by {method.name}")
    if method.base == "required" and not cfg.merged_models():
        problems.append(f"models: {method.name} needs at least one model besides base_model")
    for spec in method.params:
        if not spec.required:
            continue
        if spec.scope == "global" and spec.name not in glob:
            problems.append(f"parameters.{spec.name}: required by {method.name}")
        if spec.scope == "model" and spec.name not in glob:
            for i, m in enumerate(cfg.models):
                if m in cfg.merged_models() and spec.name not in (m.parameters or {}):
                    problems.append(
                        f"models[{i}].parameters.{spec.name}: required by {method.name} for "
                        f"model {m.model!r} (set it per model or in the global parameters)"
                    )
    return problems


def evaluate(value: Any, tensor_name: str, t: float) -> Any:
    """Evaluate a parameter value for one tensor (mergekit semantics); None if no filter matched."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if len(value) == 1:
            return value[0]
        scaled = t * (len(value) - 1)
        i0 = min(int(math.floor(scaled)), len(value) - 1)
        i1 = min(i0 + 1, len(value) - 1)
        frac = scaled - i0
        return (1 - frac) * value[i0] + frac * value[i1]
    for cond in value:
        if "filter" not in cond or cond["filter"] in tensor_name:
            return evaluate(cond["value"], tensor_name, t)
    return None


def layer_position(tensor_name: str, num_layers: int) -> float:
    """t in [0, 1] for layer tensors; 0 for embeddings, final norm and lm_head (as mergekit)."""
    m = LAYER_RE.search(tensor_name)
    if not m or num_layers <= 1:
        return 0.0
    return int(m.group(1)) / (num_layers - 1)


def resolve_parameters(
    cfg: MergeConfig, tensor_name: str, num_layers: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Parameters of one tensor: (method-wide values, one dict per merged model)."""
    method = cfg.method
    t = layer_position(tensor_name, num_layers)
    glob = cfg.parameters or {}
    wide: dict[str, Any] = {}
    per_model: list[dict[str, Any]] = [{} for _ in cfg.merged_models()]
    for spec in method.params:
        gval = evaluate(glob[spec.name], tensor_name, t) if spec.name in glob else None
        if spec.scope == "global":
            wide[spec.name] = _typed(spec.type, spec.default if gval is None else gval)
            continue
        for i, m in enumerate(cfg.merged_models()):
            own = (m.parameters or {}).get(spec.name)
            val = evaluate(own, tensor_name, t) if own is not None else None
            if val is None:
                val = gval
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
