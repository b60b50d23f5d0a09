"""The config's pydantic models: strict (``extra="forbid"``), frozen, one field per mergekit key
raymerge supports, plus raymerge's extensions (``random_seed``, ``storage_options``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from raymerge.config.tokenizer import TEMPLATE_NAMES, TokenizerConfig, check_ref
from raymerge.methods import REGISTRY, MergeMethod
from raymerge.redaction import redact

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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputModel(_Strict):
    model: str = Field(
        description="local folder, file://, s3://, hf://org/repo@rev or org/repo; "
        "'model+lora' applies a PEFT LoRA adapter"
    )
    parameters: dict[str, Any] | None = Field(default=None, description="per-model parameters")

    _ref = field_validator("model")(check_ref)


class SliceSource(_Strict):
    model: str = Field(description="model reference")
    layer_range: tuple[int, int] = Field(description="[start, end) layer indices of this model")
    parameters: dict[str, Any] | None = Field(default=None, description="per-source parameters")

    _ref = field_validator("model")(check_ref)


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
        description="'base', 'union' or a model reference: the output vocabulary (embedding "
        "and lm_head rows follow it); short for tokenizer: {source: ...}",
    )
    tokenizer: TokenizerConfig | None = Field(
        default=None, description="output vocabulary, per-token rows and padding"
    )
    chat_template: str | None = Field(
        default=None,
        description=f"'auto' (the models' most common), a name ({', '.join(TEMPLATE_NAMES)}) "
        "or a Jinja template; written to chat_template.jinja",
    )
    calibration: Calibration | None = Field(
        default=None, description="calibration data (zipit, permute)"
    )
    random_seed: int = Field(default=0, description="seed for randomised methods")
    non_float_tensors: Literal["identical", "from_base"] = Field(
        default="identical",
        description="non-float tensors (position ids, masks) are copied, not merged: "
        "'identical' requires every model's copy to be the same bytes; 'from_base' takes "
        "the base model's",
    )
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fsspec options per URL prefix"
    )

    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the config sets that mergekit accepts and ignores (see ``load_config``)."""
        return self._warnings

    def with_warnings(self, warnings: tuple[str, ...]) -> MergeConfig:
        out = self.model_copy()
        out._warnings = warnings
        return out

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in REGISTRY:
            import difflib

            close = difflib.get_close_matches(v, list(REGISTRY), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown merge method {v!r}{hint}; valid: {', '.join(REGISTRY)}")
        return v

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        if v is not None and v not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {v!r}; valid: {', '.join(DTYPE_NAMES)}")
        return v

    _base_ref = field_validator("base_model")(lambda v: v if v is None else check_ref(v))

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None or v == "auto" or v in TEMPLATE_NAMES:
            return v
        if "{" not in v:
            raise ValueError(
                f"unknown chat template {v!r}; give 'auto', one of {', '.join(TEMPLATE_NAMES)}, "
                "or a Jinja template (it contains '{')"
            )
        if len(v) < 20:
            raise ValueError(
                f"a literal chat template is at least 20 characters (mergekit's rule); got {len(v)}"
            )
        return v

    @property
    def vocabulary(self) -> TokenizerConfig | None:
        """The tokenizer settings, whichever key gave them (``tokenizer_source: X`` is
        ``tokenizer: {source: X}``); None: embeddings are merged as they are."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.tokenizer_source is not None:
            return TokenizerConfig(source=self.tokenizer_source)
        return None

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
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError(
                "give one of 'tokenizer_source' or 'tokenizer' (tokenizer_source: X is "
                "tokenizer: {source: X})"
            )
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
        """Of a ``models`` list or a slice's ``sources``: the ones the kernel combines.

        A base the kernel gets as its base is not among them. For methods taking the base as
        one more input (``base="input"``) a ``models`` list without it gets it appended, as
        mergekit appends an unlisted base model to the sources."""
        method = self.method
        if method.uses_base(self.base_model):
            return [m for m in entries if m.model != self.base_model]
        out = list(entries)
        if (
            method.base == "input"
            and self.base_model
            and self.models is not None
            and all(m.model != self.base_model for m in out)
        ):
            out.append(InputModel(model=self.base_model))
        return out

    def hash(self) -> str:
        """Stable hash of everything that determines output bytes (not storage options)."""
        body = self.model_dump(mode="json", exclude={"storage_options"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def public_dict(self) -> dict[str, Any]:
        """The config as it may be shown or stored: secrets in storage options redacted."""
        return redact(self.model_dump(mode="json", exclude_defaults=True))
