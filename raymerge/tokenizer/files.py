"""Which small files the output gets besides its shards, decided at plan time (pure).

By default: the reference model's side files (config, generation config, tokenizer, ...), copied.
With a tokenizer configured, the tokenizer files are the tokenizer donor's (the base for
``base``/``union``, else the source model): copied as they are when the vocabulary is the donor's
own, else a new ``tokenizer.json`` (the donor's with entries stripped or tokens added, edited as
JSON), the donor's ``tokenizer_config.json`` with its added-token table and special-token lists
brought in line, and the donor's ``special_tokens_map.json`` and chat template; files that would
contradict the new vocabulary (``tokenizer.model``, ``vocab.json``, ``merges.txt``, ...) are left
out, so transformers loads the fast tokenizer from ``tokenizer.json``. mergekit 0.1.5 re-saves
the tokenizer with transformers instead (same vocabulary, ids and added-token flags) and drops
``generation_config.json``; raymerge keeps it. A ``chat_template`` goes to
``chat_template.jinja``, and the donor's other templates (``chat_template`` in
tokenizer_config.json, ``chat_template.json``) are removed so that it is the one transformers
reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from raymerge.tokenizer.build import (
    SPECIAL_MAP,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    ModelTokenizer,
    OutputVocab,
    is_tokenizer_file,
)
from raymerge.tokenizer.vocab import dumps, parse

KEPT_WITH_NEW_VOCAB = ("chat_template.jinja", "chat_template.json")
_SPECIAL_LISTS = ("additional_special_tokens", "extra_special_tokens")
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                   "mask_token")  # fmt: skip


@dataclass(frozen=True)
class SideFiles:
    """The output's side files: ``made`` (bytes fixed at plan time) and ``copied`` (file name
    -> the input whose file of that name is copied at commit); ``vocab_size``: config.json's
    vocabulary size becomes this (a tokenizer is configured)."""

    made: Mapping[str, bytes]
    copied: Mapping[str, int]
    vocab_size: int | None = None

    @property
    def names(self) -> list[str]:
        return sorted({*self.made, *self.copied})


def side_files(
    names: Sequence[Sequence[str]],
    toks: Sequence[ModelTokenizer],
    vocab: OutputVocab | None,
    template: str | None,
) -> SideFiles:
    """The output's side files.

    Args:
        names: per input, the side files it has (input 0 is the reference).
        toks: per input, its tokenizer files as read at plan time.
        vocab: the output vocabulary (None: no tokenizer configured).
        template: the chat template to write (None: keep the donor's).
    """
    copied = {n: 0 for n in names[0]}
    made: dict[str, bytes] = {}
    vocab_size = None
    if vocab is not None and not vocab.identity:
        d = vocab.donor
        copied = {n: i for n, i in copied.items() if not is_tokenizer_file(n)}
        vocab_size = vocab.rows
        if vocab.doc is None:  # the donor's own vocabulary: its files as they are
            copied.update({n: d for n in names[d] if is_tokenizer_file(n)})
        else:
            made[TOKENIZER_JSON] = dumps(vocab.doc)
            for name in (TOKENIZER_CONFIG, SPECIAL_MAP):  # both name the special tokens
                conf = toks[d].json(name)
                if conf is not None:
                    made[name] = _json(_sync_config(conf, vocab.doc))
            copied.update({n: d for n in names[d] if n in KEPT_WITH_NEW_VOCAB})
    if template is not None:
        copied.pop("chat_template.json", None)
        made.pop("chat_template.json", None)
        copied.pop("chat_template.jinja", None)
        made["chat_template.jinja"] = template.encode()
        src = copied.get(TOKENIZER_CONFIG)
        conf = toks[src].json(TOKENIZER_CONFIG) if src is not None else None
        if TOKENIZER_CONFIG in made:
            conf = json.loads(made[TOKENIZER_CONFIG])
        if conf is not None and "chat_template" in conf:
            conf.pop("chat_template")
            copied.pop(TOKENIZER_CONFIG, None)
            made[TOKENIZER_CONFIG] = _json(conf)
    return SideFiles(made, copied, vocab_size)


def _sync_config(conf: dict[str, Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    """The donor's tokenizer_config.json (or special_tokens_map.json) for the new
    tokenizer.json: its added-token table (if it has one) lists the new file's added tokens,
    its special tokens and special-token lists only tokens that still exist."""
    out = dict(conf)
    vocab = parse(doc, TOKENIZER_JSON)
    if isinstance(out.get("added_tokens_decoder"), dict):
        out["added_tokens_decoder"] = {
            str(i): vocab.added[i].decoder_entry() for i in sorted(vocab.added)
        }
    for key in _SPECIAL_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [t for t in out[key] if _content(t) in vocab.ids]
    for key in _SPECIAL_TOKENS:  # a pad token stripped past vocab_size: transformers would
        if out.get(key) is not None and _content(out[key]) not in vocab.ids:  # re-add it at a
            out[key] = None  # new id past the embedding rows
    return out


def _content(tok: Any) -> Any:
    return tok.get("content") if isinstance(tok, dict) else tok


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


__all__ = ["SideFiles", "side_files"]
