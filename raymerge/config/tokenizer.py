"""The tokenizer keys of a config (mergekit 0.1.5's ``tokenizer_source``, ``tokenizer:`` block and
``chat_template``), and model references with a LoRA adapter (``model+lora``).

Only the schema lives here; what the keys do is :mod:`raymerge.tokenizer` (the output
vocabulary and its files) and :mod:`raymerge.plan.vocab` (which rows feed each output row).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# what a chat_template name may be (mergekit ships these names; raymerge writes its own
# templates of the same formats: raymerge.tokenizer.chat.TEMPLATES, which has exactly these keys)
TEMPLATE_NAMES = ("alpaca", "chatml", "exaone", "llama3", "mistral")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_lora(ref: str) -> tuple[str, str | None]:
    """``"model+lora"`` -> ``("model", "lora")``; a plain reference -> ``(ref, None)``.

    Raises:
        ValueError: more than one ``+``, or an empty side.
    """
    if "+" not in ref:
        return ref, None
    parts = ref.split("+")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(
            f"cannot parse model reference {ref!r}: the form is 'model+lora' (one '+', a model "
            "and a LoRA adapter, each a path, URL or org/name[@revision])"
        )
    return parts[0].strip(), parts[1].strip()


def check_ref(v: str) -> str:
    """A model reference: not empty, at most one ``+`` (``model+lora``)."""
    if not v.strip():
        raise ValueError("model reference is empty")
    split_lora(v)
    return v


class ModelToken(_Strict):
    """A token's row taken from a model: by the token's string in that model's vocabulary
    (``token``) or by row number (``token_id``)."""

    kind: Literal["model_token"]
    model: str = Field(description="model reference (one of the merged models)")
    token_id: int | None = Field(default=None, ge=0, description="row of that model's tensor")
    token: str | None = Field(default=None, description="token string in that model's vocab")

    @model_validator(mode="after")
    def _one_of(self) -> ModelToken:
        if (self.token is None) == (self.token_id is None):
            raise ValueError("give exactly one of 'token' or 'token_id'")
        return self


class ZeroToken(_Strict):
    """A row of zeros."""

    kind: Literal["zero"]


TokenSource = Annotated[ModelToken | ZeroToken, Field(discriminator="kind")]


class TokenEmbedding(_Strict):
    """Where one token's embedding / lm_head rows come from."""

    source: TokenSource | str | None = Field(
        default=None,
        description="a model reference (its row of this token), {kind: model_token, model, "
        "token | token_id} or {kind: zero}",
    )
    force: bool = Field(
        default=False,
        description="every model gets this row (else it only fills models lacking the token)",
    )


class TokenizerConfig(_Strict):
    """mergekit's ``tokenizer:`` block."""

    source: str = Field(
        default="union", description="'union', 'base' or a model reference: the vocabulary"
    )
    tokens: dict[str, TokenEmbedding] | None = Field(
        default=None, description="per token: where its rows come from (new tokens are added)"
    )
    pad_to_multiple_of: int | None = Field(
        default=None, ge=1, description="round the number of rows up to a multiple of this"
    )


__all__ = [
    "TEMPLATE_NAMES",
    "ModelToken",
    "TokenEmbedding",
    "TokenizerConfig",
    "ZeroToken",
    "check_ref",
    "split_lora",
]
