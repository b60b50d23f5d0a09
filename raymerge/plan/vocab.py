"""Vocabulary tensors (embeddings, lm_head) aligned to the output vocabulary (pure).

mergekit 0.1.5's ``PermutedVocabulary``, planned from the output vocabulary
(:mod:`raymerge.tokenizer`) and the headers: every method input of an embedding / lm_head tensor
becomes that model's tensor with its rows moved to the output token ids. For output token ``r``
and model ``m``:

- ``m``'s own row of the token, if it has the token (matched by string) and it is not forced;
- else the token's default: its ``tokenizer.tokens`` source when configured; otherwise the
  only holder's row, zeros when no model has it, the base model's row when the base holds it
  (``base_model`` set), else the mean of the holders' rows;
- rows past the vocabulary (``pad_to_multiple_of``) are the mean of the model's aligned rows.

The holders are the tensor's inputs and the base model (mergekit always reads the base in a
``models:`` merge; here its rows are read where it is not merged, e.g. by linear). The mapping is
a :class:`~raymerge.plan.records.VocabTensor` of row runs; a piece reads only the row ranges its
rows need (:func:`rows_of_piece`), which the job gathers into the method's inputs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from raymerge.errors import InputError
from raymerge.io.header import itemsize
from raymerge.plan.records import (
    LoraUse,
    Piece,
    RowMean,
    RowOrigin,
    RowRun,
    SlotRows,
    Source,
    VocabPiece,
    VocabTensor,
)
from raymerge.tokenizer import OutputVocab, TokenRule

VOCAB_SUFFIXES = (
    "embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
    "embed_out.weight", "tok_embeddings.weight", "output_layer.weight", "lm_head.weight",
    "lm_head.bias", "lm_head.linear.weight", "lm_head.linear.bias", "lm_head.decoder.weight",
    "vocab_projector.weight", "vocab_projector.bias", "cls.predictions.decoder.weight",
    "cls.predictions.bias",
)  # fmt: skip
VOCAB_NAMES = ("output.weight", "shared.weight", "backbone.embeddings.weight")
BLOCK_BYTES = 32 << 20  # padding means are summed over blocks of about this many bytes

Term = tuple[int, int] | tuple[tuple[int, int], ...] | None  # (origin, row) | mean | zero


def is_vocab_tensor(name: str) -> bool:
    """A token-indexed tensor (rows = vocabulary), by its name, as mergekit's architectures
    mark them (``vocabulary_axis: 0``)."""
    return name in VOCAB_NAMES or any(name == s or name.endswith("." + s) for s in VOCAB_SUFFIXES)


def vocab_tensor(
    name: str,
    reads: Sequence[tuple[int, str]],
    vocab: OutputVocab,
    origin: Callable[[int, str], RowOrigin],
    math_item: int,
) -> VocabTensor:
    """The row mapping of output tensor ``name`` whose method inputs are ``reads``.

    Args:
        name: the output tensor.
        reads: (input, tensor name) per method input (the base first when it has one).
        vocab: the output vocabulary.
        origin: where input i's tensor ``n`` is stored.
        math_item: bytes per element of the math dtype (sizes the padding blocks).

    Raises:
        InputError: a configured token source that cannot give this tensor a row.
    """
    models = list(dict.fromkeys(i for i, _ in reads))
    tensor_of = {i: n for i, n in reversed(reads)}
    # the model whose rows are the default: the base; rows by id without a base model: the
    # first model (the donor), the same one for every vocabulary tensor (slices read others)
    anchor = vocab.prefer if vocab.prefer is not None else vocab.donor if vocab.identity else None
    if anchor is not None and anchor not in models:
        models.append(anchor)
        tensor_of[anchor] = name
    origins = [origin(i, tensor_of[i]) for i in models]
    shapes = {o.tensor.shape[1:] for o in origins}
    if len(shapes) > 1:
        raise InputError(
            f"tensor {name!r}: the models' vocabulary rows have different shapes "
            f"({sorted(map(list, shapes))}); only the number of rows may differ"
        )
    real, rows = vocab.size, vocab.rows
    if vocab.identity:  # no tokenizer on the base: rows align by id; the anchor's rows
        real = rows = origins[models.index(anchor)].tensor.shape[0]
    own = [_own_rows(vocab, i, o.tensor.shape[0], real) for i, o in zip(models, origins)]
    where = lambda r: f"tensor {name!r}, token {vocab.token(r)!r}"  # noqa: E731
    sizes = [o.tensor.shape[0] for o in origins]
    defaults = _defaults(vocab, real, own, sizes, models, where)
    slots = tuple(
        _slot(own[models.index(i)], models.index(i), defaults, vocab.tokens, real) for i, _ in reads
    )
    row = math.prod(origins[0].tensor.shape[1:])
    per_row = row * (sum(itemsize(o.tensor.dtype) for o in origins) + len(reads) * math_item)
    block = max(1, min(real, BLOCK_BYTES // max(1, per_row)))
    return VocabTensor(
        name, real, rows, tuple(origins[0].tensor.shape[1:]), block, tuple(origins), slots
    )


def _own_rows(vocab: OutputVocab, i: int, rows: int, real: int) -> list[int]:
    """Input ``i``'s row of each output token (-1: it lacks it, or its tensor is too short)."""
    if vocab.identity:
        return [r if r < rows else -1 for r in range(real)]
    return [s if 0 <= s < rows else -1 for s in vocab.rows_of[i]]


def _defaults(
    vocab: OutputVocab,
    real: int,
    own: list[list[int]],
    sizes: list[int],
    models: list[int],
    where: Callable[[int], str],
) -> dict[int, Term]:
    """Each token's default row, for the tokens that need one (forced, or missing from a
    model): mergekit's ``assign_embedding_sources`` and ``compute_default_embedding``."""
    out: dict[int, Term] = {}
    base = models.index(vocab.prefer) if vocab.prefer is not None else None
    for r in range(real):
        rule = vocab.tokens.get(r)
        present = [m for m in range(len(models)) if own[m][r] >= 0]
        if len(present) == len(models) and not (rule is not None and rule.force):
            continue
        if rule is not None:
            out[r] = _configured(rule, own, sizes, models, where(r))
        elif len(present) == 1:
            out[r] = (present[0], own[present[0]][r])
        elif not present:
            out[r] = None
        elif base is not None and own[base][r] >= 0:
            out[r] = (base, own[base][r])
        else:
            out[r] = tuple((m, own[m][r]) for m in present)
    return out


def _configured(
    rule: TokenRule, own: list[list[int]], sizes: list[int], models: list[int], where: str
) -> Term:
    """The default a ``tokenizer.tokens`` entry gives (mergekit raises where this does)."""
    if rule.kind == "zero":
        return None
    if rule.kind is None:
        raise InputError(
            f"tokenizer.tokens.{rule.token}: has no source, and {where} needs one (the token is "
            "forced or missing from a model); give source: a model, {kind: model_token, ...} "
            "or {kind: zero}"
        )
    if rule.input not in models:
        raise InputError(
            f"tokenizer.tokens.{rule.token}.source: that model is not an input of {where}"
        )
    m = models.index(rule.input)
    row = own[m][rule.id] if rule.kind == "model" else rule.row
    if rule.problem or not 0 <= row < sizes[m]:
        why = rule.problem or (
            "the token is not in that model's vocabulary"
            if rule.kind == "model"
            else f"row {rule.row} is past that model's {sizes[m]} rows"
        )
        raise InputError(f"tokenizer.tokens.{rule.token}.source: {why} ({where})")
    return (m, row)


def _slot(own: list[int], m: int, defaults: Mapping[int, Term], rules, real: int) -> SlotRows:
    """One method input (model ``m``'s tensor) aligned, as row runs and mean rows."""
    runs: list[RowRun] = []
    means: list[RowMean] = []
    for r in range(real):
        rule = rules.get(r)
        if own[r] >= 0 and not (rule is not None and rule.force):
            term: Term = (m, own[r])
        else:
            term = defaults.get(r)
        if term is None:
            continue
        if isinstance(term[0], tuple):
            means.append(RowMean(r, term))  # type: ignore[arg-type]
            continue
        o, s = term  # type: ignore[misc]
        last = runs[-1] if runs else None
        if last is not None and (last.src, last.out + last.n, last.row + last.n) == (o, r, s):
            runs[-1] = RowRun(last.out, o, last.row, last.n + 1)
        else:
            runs.append(RowRun(r, o, s, 1))  # type: ignore[arg-type]
    return SlotRows(tuple(runs), tuple(means))


def row_source(origin: RowOrigin, a: int, b: int) -> Source:
    """Rows [a, b) of an origin's tensor, as a source (with their LoRA update)."""
    t, n = origin.tensor, origin.row_elems
    item = itemsize(t.dtype)
    lora = LoraUse(origin.lora, a * n, b * n) if origin.lora is not None else None
    return Source(
        origin.input, t.name, t.file, t.start + a * n * item, t.start + b * n * item, t.dtype,
        None, lora,
    )  # fmt: skip


def rows_of_piece(
    vt: VocabTensor, r0: int, r1: int
) -> tuple[tuple[Source, ...], tuple[SlotRows, ...]]:
    """The sources rows [r0, r1) (< ``vt.real``) of the aligned inputs read, one per range of
    adjacent rows of one origin, and each input's rows in terms of them (rows relative to r0)."""
    picked = []
    need: dict[int, list[tuple[int, int]]] = {}
    for slot in vt.slots:
        lo = max(0, bisect.bisect_right([run.out for run in slot.runs], r0) - 1)
        runs = []
        for run in slot.runs[lo:]:
            if run.out >= r1:
                break
            a, b = max(run.out, r0), min(run.out + run.n, r1)
            if a < b:
                runs.append(RowRun(a - r0, run.src, run.row + a - run.out, b - a))
                need.setdefault(run.src, []).append((run.row + a - run.out, run.row + b - run.out))
        keys = [m.out for m in slot.means]
        means = slot.means[bisect.bisect_left(keys, r0) : bisect.bisect_left(keys, r1)]
        for mean in means:
            for o, s in mean.terms:
                need.setdefault(o, []).append((s, s + 1))
        picked.append((runs, means))
    sources: list[Source] = []
    where: dict[int, list[tuple[int, int, int]]] = {}  # origin -> (start row, end row, source)
    for o in sorted(need):
        for a, b in _merged(need[o]):
            where.setdefault(o, []).append((a, b, len(sources)))
            sources.append(row_source(vt.origins[o], a, b))

    def locate(o: int, s: int) -> tuple[int, int]:
        spans = where[o]
        a, _, k = spans[bisect.bisect_right([sp[0] for sp in spans], s) - 1]
        return k, s - a

    slots = []
    for runs, means in picked:
        new_runs = tuple(RowRun(run.out, *locate(run.src, run.row), run.n) for run in runs)
        new_means = tuple(
            RowMean(m.out - r0, tuple(locate(o, s) for o, s in m.terms)) for m in means
        )
        slots.append(SlotRows(new_runs, new_means))
    return tuple(sources), tuple(slots)


def vocab_pieces(
    pieces: Sequence[Piece], vt: VocabTensor, dtype: str, math_item: int
) -> list[Piece]:
    """The pieces of an aligned tensor: each reads the row ranges of its rows
    (:func:`rows_of_piece`); a piece with padding rows also streams the real rows (its
    memory counts one block of them)."""
    row = max(1, math.prod(vt.row_shape))
    per_row = row * (sum(itemsize(o.tensor.dtype) for o in vt.origins) + len(vt.slots) * math_item)
    out = []
    for p in pieces:
        r0, r1 = p.elem_start // row, p.elem_end // row
        end = min(r1, vt.real)
        if r0 < end:
            sources, slots = rows_of_piece(vt, r0, end)
        else:
            sources, slots = (), tuple(SlotRows((), ()) for _ in vt.slots)
        padded = r1 > vt.real
        vp = VocabPiece(
            r1 - r0, vt.row_shape, dtype, slots, max(0, end - r0), vt if padded else None
        )
        extra = sum(s.end - s.start for s in sources) + (vt.block_rows * per_row if padded else 0)
        out.append(replace(p, sources=sources, vocab=vp, memory_bytes=p.memory_bytes + extra))
    return out


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or adjacent [a, b) ranges joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


__all__ = [
    "VOCAB_NAMES",
    "VOCAB_SUFFIXES",
    "is_vocab_tensor",
    "row_source",
    "rows_of_piece",
    "vocab_pieces",
    "vocab_tensor",
]
