"""The output vocabulary, as mergekit 0.1.5's ``build_tokenizer`` builds it (pure).

Inputs are each model's tokenizer files, read on the driver before any tensor data. The result
says, for every input, which of its rows holds each output token (matched by token *string*, as
mergekit does), and what the configured tokens ask for; :mod:`raymerge.plan.vocab` turns that
into the rows each output piece reads.

- ``base``: the base model's tokenizer, stripped of entries past its config's ``vocab_size``.
- ``<model>``: that model's tokenizer, as it is.
- ``union``: the stripped base, then every other model's tokens it lacks, appended as added
  tokens. mergekit walks the models in hash order and each vocabulary in hash-map order, so its
  ids vary between runs; raymerge's rule is fixed: models in config order (base first), each
  one's regular tokens by id, then all models' added tokens (the first model to define a token
  sets its flags), also by id.
- ``tokenizer.tokens`` keys not in the vocabulary are appended (plain added tokens).

The base is ``base_model``, else the first model of the config (mergekit: an arbitrary one). A
model without tokenizer files is taken to have the base's vocabulary (as mergekit does). Where
mergekit fails (a new token with ``source: base``: ``KeyError``; a token whose id is past its
model's ``vocab_size``: ``KeyError``), raymerge treats the token as absent from that model.
Without any tokenizer on the base, ``tokenizer_source: base`` aligns rows by id (a raymerge
extension: row i of every model is token i; the base's rows are the output's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from raymerge.config import MergeConfig
from raymerge.config.tokenizer import ModelToken, ZeroToken
from raymerge.errors import InputError
from raymerge.io.reader import SIDE_PATTERN, TOKENIZER_FILES
from raymerge.tokenizer.vocab import AddedToken, Vocab, add_tokens, loads, parse, strip

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# files read on the driver (small): what the vocabulary and the chat template come from
SPECIAL_MAP = "special_tokens_map.json"
READ_FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_MAP, "chat_template.jinja")


def is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or bool(SIDE_PATTERN.match(name))


@dataclass(frozen=True)
class ModelTokenizer:
    """One input's tokenizer files as read at plan time (the ones in :data:`READ_FILES` it
    has), the names of all its tokenizer files, and its config's vocabulary size."""

    ref: str
    files: Mapping[str, bytes]
    names: tuple[str, ...]
    vocab_size: int | None

    def json(self, name: str) -> dict[str, Any] | None:
        data = self.files.get(name)
        return None if data is None else loads(data, f"{self.ref}/{name}")


@dataclass(frozen=True)
class TokenRule:
    """A ``tokenizer.tokens`` entry, resolved: where output token ``id``'s rows come from when
    mergekit needs a default for it (forced, or missing from a model). ``kind``: "model" (that
    input's row of this token), "row" (row ``row`` of that input), "zero", or None (no source:
    an error once needed); ``problem``: why the source cannot be used (raised once needed)."""

    token: str
    id: int
    force: bool
    kind: Literal["model", "row", "zero"] | None
    input: int | None = None
    row: int = -1
    problem: str = ""


@dataclass(frozen=True)
class OutputVocab:
    """The output vocabulary and how each input's rows map onto it.

    ``rows_of[i][r]``: input ``i``'s row of output token ``r`` (-1: it lacks the token).
    ``identity``: no tokenizer on the base; rows align by id, each tensor keeps the base's rows.
    ``prefer``: the input whose row is the default for a token several models hold (the
    configured base model; None without one). ``doc``: the output tokenizer.json when it
    differs from the donor's file; ``donor``: the input whose tokenizer files the output gets."""

    size: int
    rows: int
    rows_of: tuple[tuple[int, ...], ...]
    tokens: Mapping[int, TokenRule]
    prefer: int | None
    identity: bool
    donor: int
    doc: dict[str, Any] | None
    names: Mapping[int, str]

    def token(self, r: int) -> str:
        return self.names.get(r, f"#{r}")


def config_vocab_size(conf: Mapping[str, Any] | None) -> int | None:
    """A config.json's vocabulary size (``vocab_size``, or a VLM's ``text_config``'s)."""
    if not conf:
        return None
    for c in (conf, conf.get("text_config")):
        if isinstance(c, Mapping) and isinstance(c.get("vocab_size"), int):
            return int(c["vocab_size"])
    return None


def output_vocabulary(cfg: MergeConfig, toks: Sequence[ModelTokenizer]) -> OutputVocab | None:
    """The output vocabulary of ``cfg`` (None: no tokenizer configured).

    Args:
        cfg: the config.
        toks: per input reference (``cfg.input_refs()``), its tokenizer files.

    Raises:
        InputError: a tokenizer that cannot be used, naming the model and the file.
    """
    voc = cfg.vocabulary
    if voc is None:
        return None
    refs = cfg.input_refs()
    base = refs.index(cfg.base_model) if cfg.base_model else 0
    prefer = base if cfg.base_model else None
    base_doc = toks[base].json(TOKENIZER_JSON)
    if base_doc is None:
        _no_base_tokenizer(cfg, toks[base])
        return OutputVocab(0, 0, (), {}, prefer, True, base, None, {})
    where = f"{refs[base]}/{TOKENIZER_JSON}"
    stripped = strip(base_doc, toks[base].vocab_size or len(parse(base_doc, where)), where)
    vocabs = _model_vocabs(toks, base, parse(stripped, where))
    donor, doc = base, stripped
    if voc.source == "union":
        doc = union(stripped, vocabs, toks, base)
    elif voc.source != "base":
        donor = refs.index(voc.source)
        doc = toks[donor].json(TOKENIZER_JSON) or _need_json(toks[donor], "tokenizer.source")
    have = parse(doc, f"{refs[donor]}/{TOKENIZER_JSON}").ids
    new = [AddedToken(t) for t in voc.tokens or {} if t not in have]  # mergekit skips known ones
    doc, out = add_tokens(doc, new, f"{refs[donor]}/{TOKENIZER_JSON}")
    size = len(out.ids)
    if size and max(out.ids.values()) >= size:
        raise InputError(
            f"{refs[donor]}/{TOKENIZER_JSON}: token ids are not 0..{size - 1} (the largest is "
            f"{max(out.ids.values())}); the embedding rows cannot follow such a vocabulary"
        )
    pad = voc.pad_to_multiple_of or 1
    rows = -(-size // pad) * pad
    names = {i: t for t, i in out.ids.items()}
    rows_of = tuple(_rows(out, v, _limit(t, v)) for v, t in zip(vocabs, toks))
    rules = _rules(cfg, out, vocabs, refs)
    before = parse(base_doc if donor == base else toks[donor].json(TOKENIZER_JSON) or {}, where)
    changed = (dict(before.ids), dict(before.added)) != (dict(out.ids), dict(out.added))
    return OutputVocab(
        size, rows, rows_of, rules, prefer, False, donor, doc if changed else None, names
    )


def _no_base_tokenizer(cfg: MergeConfig, base: ModelTokenizer) -> None:
    voc = cfg.vocabulary
    assert voc is not None
    if voc.source == "base" and not voc.tokens and not voc.pad_to_multiple_of:
        return  # rows by id
    raise InputError(
        f"{base.ref}: the base model has no {TOKENIZER_JSON}, which tokenizer source "
        f"{voc.source!r}{' with tokens/pad_to_multiple_of' if voc.source == 'base' else ''} "
        "needs (without one, only `tokenizer_source: base` works: rows align by id)"
    )


def _need_json(tok: ModelTokenizer, field: str) -> dict[str, Any]:
    have = [n for n in tok.names if is_tokenizer_file(n)]
    raise InputError(
        f"{tok.ref}: {field} needs its {TOKENIZER_JSON}"
        + (
            f" (it has only {have}; save it once with transformers' "
            "AutoTokenizer.from_pretrained(...).save_pretrained(...) to get one)"
            if have
            else " (it has no tokenizer files)"
        )
    )


def _model_vocabs(toks: Sequence[ModelTokenizer], base: int, base_vocab: Vocab) -> list[Vocab]:
    """Each input's vocabulary: the base's stripped one; the others' own; the base's for a
    model without tokenizer files (mergekit: "assuming same as base")."""
    out = []
    for i, tok in enumerate(toks):
        doc = None if i == base else tok.json(TOKENIZER_JSON)
        if i != base and doc is None and any(is_tokenizer_file(n) for n in tok.names):
            _need_json(tok, "vocabulary alignment")
        out.append(base_vocab if doc is None else parse(doc, f"{tok.ref}/{TOKENIZER_JSON}"))
    return out


def _limit(tok: ModelTokenizer, vocab: Vocab) -> int:
    """Rows of a model that hold tokens: its config's vocab_size, else its vocabulary's size."""
    return tok.vocab_size if tok.vocab_size is not None else len(vocab)


def _rows(out: Vocab, vocab: Vocab, limit: int) -> tuple[int, ...]:
    rows = [-1] * len(out.ids)
    for token, r in out.ids.items():
        i = vocab.ids.get(token)
        if i is not None and i < limit:
            rows[r] = i
    return tuple(rows)


def union(
    stripped: dict[str, Any], vocabs: Sequence[Vocab], toks: Sequence[ModelTokenizer], base: int
) -> dict[str, Any]:
    """The stripped base with every other model's tokens appended (see the module docstring
    for the order)."""
    order = [base] + [i for i in range(len(vocabs)) if i != base]
    base_vocab = vocabs[base]
    regular: dict[str, None] = {}
    added: dict[str, AddedToken] = {}
    for i in order:
        v, limit = vocabs[i], _limit(toks[i], vocabs[i])
        added_here = {t.content for t in v.added.values()}
        for idx, tok in v.regular():
            if idx < limit and tok not in added_here:
                regular.setdefault(tok, None)
        for idx in sorted(v.added):
            if idx < limit:
                added.setdefault(v.added[idx].content, v.added[idx])
    new = [AddedToken(t) for t in regular if t not in added and t not in base_vocab.ids]
    doc, _ = add_tokens(stripped, new + list(added.values()), f"{toks[base].ref}/union")
    return doc


def _rules(
    cfg: MergeConfig, out: Vocab, vocabs: Sequence[Vocab], refs: list[str]
) -> dict[int, TokenRule]:
    """The configured tokens, by output id."""
    voc = cfg.vocabulary
    assert voc is not None
    rules: dict[int, TokenRule] = {}
    for token, emb in (voc.tokens or {}).items():
        r, src = out.ids[token], emb.source
        if src is None:
            rules[r] = TokenRule(token, r, emb.force, None)
        elif isinstance(src, ZeroToken):
            rules[r] = TokenRule(token, r, emb.force, "zero")
        elif isinstance(src, str):
            rules[r] = TokenRule(token, r, emb.force, "model", refs.index(src))
        else:
            rules[r] = _model_token(token, r, emb.force, src, vocabs, refs)
    return rules


def _model_token(
    token: str, r: int, force: bool, src: ModelToken, vocabs: Sequence[Vocab], refs: list[str]
) -> TokenRule:
    i = refs.index(src.model)
    if src.token_id is not None:
        return TokenRule(token, r, force, "row", i, src.token_id)
    row = vocabs[i].ids.get(src.token or "", -1)
    problem = "" if row >= 0 else f"token {src.token!r} is not in {src.model}'s vocabulary"
    return TokenRule(token, r, force, "row", i, row, problem)


__all__ = [
    "READ_FILES",
    "TOKENIZER_FILES",
    "ModelTokenizer",
    "OutputVocab",
    "TokenRule",
    "config_vocab_size",
    "is_tokenizer_file",
    "output_vocabulary",
    "union",
]
