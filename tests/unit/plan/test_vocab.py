"""Vocabulary rows: mergekit 0.1.5's defaults per token, as typed row runs; each piece reads only
its rows, and assembling pieces gives the rows of the whole."""

from __future__ import annotations

import pytest
import torch

from raymerge.errors import InputError
from raymerge.io.header import TensorSource
from raymerge.plan.records import RowMean, RowOrigin, RowRun, SlotRows, VocabPiece
from raymerge.plan.vocab import is_vocab_tensor, rows_of_piece, vocab_tensor
from raymerge.reading import assemble
from raymerge.tokenizer import OutputVocab, TokenRule

ROWS = {0: 3, 1: 4, 2: 4}  # rows of each input's tensor
ROWS_OF = ((0, 1, 2, -1, -1), (2, 1, 0, 3, -1), (0, -1, 1, 2, 3))
READS = [(0, "e"), (1, "e"), (2, "e")]


def vocab(tokens=(), prefer=0, rows=5) -> OutputVocab:
    rules = {t.id: t for t in tokens}
    return OutputVocab(5, rows, ROWS_OF, rules, prefer, False, 0, None, {})


def origin(i: int, name: str) -> RowOrigin:
    return RowOrigin(
        i, TensorSource(name, f"f{i}", "F32", (ROWS[i], 2), 100 * i, 100 * i + 8 * ROWS[i])
    )


def test_defaults_are_mergekits():
    vt = vocab_tensor("e", READS, vocab(), origin, 4)
    # token 1: base holds it (preferred); 3: two non-base holders (mean); 4: one holder
    assert vt.slots[0] == SlotRows(
        (RowRun(0, 0, 0, 3), RowRun(4, 2, 3, 1)), (RowMean(3, ((1, 3), (2, 2))),)
    )
    assert vt.slots[1].runs == (
        RowRun(0, 1, 2, 1), RowRun(1, 1, 1, 1), RowRun(2, 1, 0, 1), RowRun(3, 1, 3, 1),
        RowRun(4, 2, 3, 1),
    )  # fmt: skip
    assert vt.slots[2].runs == (RowRun(0, 2, 0, 1), RowRun(1, 0, 1, 1), RowRun(2, 2, 1, 3))
    no_base = vocab_tensor("e", READS, vocab(prefer=None), origin, 4)  # no base_model
    assert no_base.slots[2].means == (RowMean(1, ((0, 1), (1, 1))),)
    assert (vt.real, vt.rows, vt.row_shape) == (5, 5, (2,))


def term(slot: SlotRows, r: int):
    """(source, row) of output row ``r`` of a slot, or None (zero)."""
    for run in slot.runs:
        if run.out <= r < run.out + run.n:
            return run.src, run.row + r - run.out
    return None


def test_configured_tokens_and_their_errors():
    tokens = [
        TokenRule("t0", 0, True, "zero"),
        TokenRule("t2", 2, True, "model", 1),
        TokenRule("t4", 4, False, "row", 0, 2),  # not forced: fills the models lacking it
    ]
    vt = vocab_tensor("e", READS, vocab(tokens), origin, 4)
    for slot in vt.slots:
        assert term(slot, 0) is None  # forced zero
        assert term(slot, 2) == (1, 0)  # forced: model 1's row of the token, in every model
    assert [term(slot, 4) for slot in vt.slots] == [(0, 2), (0, 2), (2, 3)]
    bad = [
        (TokenRule("t1", 1, True, None), "tokenizer.tokens.t1: has no source"),
        (TokenRule("t3", 3, False, "model", 0), "the token is not in that model's vocabulary"),
        (TokenRule("t4", 4, True, "row", 0, 3), "row 3 is past that model's 3 rows"),
        (TokenRule("t4", 4, True, "row", 1, -1, "no such token"), "no such token"),
    ]
    for rule, message in bad:
        with pytest.raises(InputError, match=message):
            vocab_tensor("e", READS, vocab([rule]), origin, 4)


def test_a_piece_reads_only_its_rows_and_pieces_assemble_the_whole():
    vt = vocab_tensor("e", READS, vocab(), origin, 4)
    sources, slots = rows_of_piece(vt, 3, 5)
    # rows 3 and 4 of the output need: input 1 row 3, input 2 rows 2-3 (one range)
    assert [(s.input, s.start, s.end) for s in sources] == [(1, 100 + 24, 100 + 32), (2, 216, 232)]
    assert slots[0] == SlotRows((RowRun(1, 1, 1, 1),), (RowMean(0, ((0, 0), (1, 0))),))
    data = {i: torch.randn(ROWS[i], 2) for i in ROWS}

    def rows(r0, r1):
        srcs, sl = rows_of_piece(vt, r0, r1)
        got = [
            data[s.input][(s.start - 100 * s.input) // 8 : (s.end - 100 * s.input) // 8]
            for s in srcs
        ]
        return assemble(VocabPiece(r1 - r0, (2,), "F32", sl, r1 - r0), got, None)

    whole = rows(0, 5)
    for cut in range(1, 5):
        parts = [torch.cat(pair) for pair in zip(rows(0, cut), rows(cut, 5))]
        assert all(torch.equal(p, w) for p, w in zip(parts, whole))
    assert torch.equal(whole[0][3], data[1][3] + data[2][2]) is False  # a mean, not a sum
    assert torch.equal(whole[0][3], (torch.zeros(2) + data[1][3] + data[2][2]) / 2)


def test_vocabulary_tensors_by_name():
    for name in ["model.embed_tokens.weight", "lm_head.weight", "lm_head.bias", "transformer.wte.weight",
                 "model.language_model.embed_tokens.weight", "output.weight", "gpt_neox.embed_in.weight"]:  # fmt: skip
        assert is_vocab_tensor(name), name
    for name in [
        "transformer.wpe.weight",
        "model.norm.weight",
        "score.weight",
        "embed_positions.weight",
    ]:
        assert not is_vocab_tensor(name), name
