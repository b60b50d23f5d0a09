"""A tokenizer's vocabulary from its ``tokenizer.json`` (pure: JSON in, JSON out).

What transformers' ``get_vocab()`` returns, computed from the file instead of a loaded tokenizer
(``tokenizers`` and ``transformers`` are not dependencies of raymerge): the model's own vocabulary
plus the added tokens, an added token's id winning over the model's. Editing follows the
``tokenizers`` library's rules, so the edited file loads exactly as if the library had made the
change: a new added token gets the next id after the largest added id, or the model vocabulary's
size when no added id reaches it; adding a token that exists marks it added at its id.

``strip`` is mergekit 0.1.5's ``get_stripped_tokenizer``: every entry whose id is at least the
model's vocabulary size (its config) is removed, and the BPE merges that use one; only BPE
tokenizers can be stripped (as in mergekit).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raymerge.errors import InputError

FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")
VOCAB_MODELS = ("BPE", "WordLevel", "WordPiece", "Unigram")


@dataclass(frozen=True)
class AddedToken:
    """An added token and its matching flags (the ``tokenizers`` library's defaults)."""

    content: str
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True
    special: bool = False

    def record(self, token_id: int) -> dict[str, Any]:
        """The entry of ``tokenizer.json``'s ``added_tokens``."""
        return {"id": token_id, "content": self.content, **{f: getattr(self, f) for f in FLAGS}}

    def decoder_entry(self) -> dict[str, Any]:
        """The entry of ``tokenizer_config.json``'s ``added_tokens_decoder``."""
        return {"content": self.content, **{f: getattr(self, f) for f in sorted(FLAGS)}}


@dataclass(frozen=True)
class Vocab:
    """A vocabulary: every token -> id (the model's own entries and the added tokens), the
    added tokens by id, and how many entries the model's own vocabulary has."""

    ids: Mapping[str, int]
    added: Mapping[int, AddedToken]
    model_size: int

    def __len__(self) -> int:
        return len(self.ids)

    def regular(self) -> list[tuple[int, str]]:
        """(id, token) of the entries that are not added tokens, by id."""
        added = {t.content for t in self.added.values()}
        return sorted((i, t) for t, i in self.ids.items() if t not in added)


def parse(doc: Mapping[str, Any], where: str) -> Vocab:
    """The vocabulary of a parsed ``tokenizer.json``.

    Raises:
        InputError: not a tokenizer.json raymerge can read (naming the file and what it holds).
    """
    model = doc.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind not in VOCAB_MODELS:
        raise InputError(
            f"{where}: tokenizer model type {kind!r} is not one raymerge reads "
            f"({', '.join(VOCAB_MODELS)}); vocabulary alignment needs its token -> id table"
        )
    own = _model_vocab(model, where)
    ids = dict(own)
    added: dict[int, AddedToken] = {}
    for entry in doc.get("added_tokens") or []:
        try:
            tok = AddedToken(entry["content"], **{f: bool(entry.get(f, False)) for f in FLAGS})
            added[int(entry["id"])] = tok
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: malformed added_tokens entry {entry!r:.200}") from None
        ids[tok.content] = int(entry["id"])
    return Vocab(ids, added, len(own))


def _model_vocab(model: Mapping[str, Any], where: str) -> dict[str, int]:
    vocab = model.get("vocab")
    if model["type"] == "Unigram":
        if not isinstance(vocab, list):
            raise InputError(f"{where}: Unigram 'vocab' must be a list of [piece, score]")
        return {str(entry[0]): i for i, entry in enumerate(vocab)}
    if not isinstance(vocab, dict):
        raise InputError(f"{where}: model 'vocab' must map tokens to ids")
    return {str(t): int(i) for t, i in vocab.items()}


def strip(doc: Mapping[str, Any], vocab_size: int, where: str) -> dict[str, Any]:
    """``doc`` without the entries whose id is ``vocab_size`` or more (mergekit's stripped base
    tokenizer); ``doc`` itself (a copy) when there are none."""
    out = copy.deepcopy(dict(doc))
    unused = {t for t, i in parse(doc, where).ids.items() if i >= vocab_size}
    if not unused:
        return out
    if out["model"]["type"] != "BPE":
        raise InputError(
            f"{where}: tokens {sorted(unused)[:5]} have ids beyond the model's vocab_size "
            f"{vocab_size} and must be removed, which works for BPE tokenizers only (this one is "
            f"{out['model']['type']}); use another tokenizer source, or pad_to_multiple_of"
        )
    out["added_tokens"] = [e for e in out.get("added_tokens") or [] if e["id"] < vocab_size]
    for tok in unused:
        out["model"]["vocab"].pop(tok, None)
    out["model"]["merges"] = [
        m for m in out["model"].get("merges") or [] if not unused & set(_merge_pair(m, where))
    ]
    return out


def _merge_pair(m: Any, where: str) -> list[str]:
    if isinstance(m, str) and m.count(" ") == 1:
        return m.split(" ")
    if isinstance(m, list):
        return [str(x) for x in m]
    raise InputError(f"{where}: unexpected BPE merge {m!r:.100}")


def add_tokens(
    doc: Mapping[str, Any], tokens: Iterable[AddedToken], where: str
) -> tuple[dict[str, Any], Vocab]:
    """``doc`` with ``tokens`` added in order (``tokenizers``' ``add_tokens``), and its
    vocabulary. A token already there keeps its id and takes the new flags, unless it is an
    added token with the same flags (then nothing changes)."""
    out = copy.deepcopy(dict(doc))
    vocab = parse(out, where)
    ids, added = dict(vocab.ids), dict(vocab.added)
    for tok in tokens:
        if not tok.content or tok in added.values():
            continue
        if tok.content in ids:
            new_id = ids[tok.content]
        elif not added or (max(added) < vocab.model_size and vocab.model_size):
            new_id = vocab.model_size
        else:
            new_id = max(added) + 1
        ids[tok.content] = new_id
        added[new_id] = tok
    out["added_tokens"] = [added[i].record(i) for i in sorted(added)]
    return out, Vocab(ids, added, vocab.model_size)


def dumps(doc: Mapping[str, Any]) -> bytes:
    """A tokenizer.json as the ``tokenizers`` library writes one (indented, UTF-8)."""
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()


def loads(data: bytes, where: str) -> dict[str, Any]:
    """A JSON object from a small file's bytes."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{where}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object")
    return obj


__all__ = ["AddedToken", "Vocab", "add_tokens", "dumps", "loads", "parse", "strip"]
