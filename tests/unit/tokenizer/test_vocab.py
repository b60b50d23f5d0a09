"""tokenizer.json editing as the ``tokenizers`` library would do it, and mergekit's stripping."""

from __future__ import annotations

import pytest

from raymerge.errors import InputError
from raymerge.tokenizer.vocab import AddedToken, add_tokens, parse, strip


def bpe(tokens: list[str], added: list[tuple[int, str]] = (), merges=()) -> dict:
    return {
        "model": {
            "type": "BPE",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": list(merges),
        },
        "added_tokens": [
            {"id": i, "content": c, "special": True, "normalized": False} for i, c in added
        ],
    }


def test_vocabulary_is_the_models_plus_added_tokens_added_ids_winning():
    v = parse(bpe(["a", "b", "c"], [(1, "<s>"), (5, "c")]), "t")
    assert dict(v.ids) == {"a": 0, "b": 1, "<s>": 1, "c": 5}
    assert v.model_size == 3 and v.added[5] == AddedToken("c", normalized=False, special=True)
    assert v.regular() == [(0, "a"), (1, "b")]
    uni = parse({"model": {"type": "Unigram", "vocab": [["x", -1.0], ["y", -2.0]]}}, "t")
    assert dict(uni.ids) == {"x": 0, "y": 1}
    with pytest.raises(InputError, match="t: tokenizer model type 'WordPieceX'"):
        parse({"model": {"type": "WordPieceX"}}, "t")


def test_new_tokens_get_the_ids_the_tokenizers_library_gives():
    doc = bpe(["a", "b", "c"])
    _, v = add_tokens(doc, [AddedToken("x"), AddedToken("y")], "t")
    assert (v.ids["x"], v.ids["y"]) == (3, 4)  # the model's size, then the largest added + 1
    _, v = add_tokens(bpe(["a", "b", "c"], [(0, "a")]), [AddedToken("x")], "t")
    assert v.ids["x"] == 3  # an added id below the model's size does not count
    _, v = add_tokens(bpe(["a", "b", "c"], [(7, "<pad>")]), [AddedToken("x")], "t")
    assert v.ids["x"] == 8
    out, v = add_tokens(doc, [AddedToken("b", special=True)], "t")
    assert v.ids["b"] == 1 and v.added[1].special  # an existing token is marked, same id
    assert out["added_tokens"] == [
        {"id": 1, "content": "b", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": True}
    ]  # fmt: skip
    same = bpe(["a"], [(1, "<s>")])
    out, _ = add_tokens(same, [AddedToken("<s>", normalized=False, special=True)], "t")
    assert out["added_tokens"] == [AddedToken("<s>", normalized=False, special=True).record(1)]


def test_strip_removes_entries_past_the_vocab_size_and_their_merges():
    doc = bpe(["a", "b", "ab", "c"], [(3, "c"), (4, "<u>")], merges=["a b", ["ab", "c"]])
    out = strip(doc, 3, "t")
    assert out["model"]["vocab"] == {"a": 0, "b": 1, "ab": 2}
    assert out["added_tokens"] == [] and out["model"]["merges"] == ["a b"]
    assert strip(doc, 5, "t") == doc
    wp = {"model": {"type": "WordPiece", "vocab": {"a": 0, "b": 1}}, "added_tokens": []}
    with pytest.raises(InputError, match="works for BPE tokenizers only"):
        strip(wp, 1, "t")
