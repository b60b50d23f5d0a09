"""The output vocabulary (mergekit 0.1.5's rules, raymerge's fixed union order) and the side
files the output gets, from in-memory tokenizer files."""

from __future__ import annotations

import json

import pytest

from raymerge.config import load_config
from raymerge.errors import InputError
from raymerge.tokenizer import ModelTokenizer, output_vocabulary, side_files

CFG = "tokenizer_config.json"


def tok(ref, tokens, added=(), vocab_size=None, conf=None, names=None, files=None):
    doc = {
        "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
        "added_tokens": [
            {"id": i, "content": c, "special": False, "normalized": True} for i, c in added
        ],
    }
    have = {"tokenizer.json": json.dumps(doc).encode(), **(files or {})}
    if conf is not None:
        have[CFG] = json.dumps(conf).encode()
    listed = names if names is not None else ("config.json", *have)
    return ModelTokenizer(ref, have, tuple(listed), vocab_size)


def config(source, models=("a", "b", "c"), **extra):
    body = {
        "merge_method": "linear",
        "base_model": models[0],
        "models": [{"model": m, "parameters": {"weight": 1}} for m in models],
        **({"tokenizer": source} if isinstance(source, dict) else {"tokenizer_source": source}),
        **extra,
    }
    return load_config(body)


A = tok("a", ["x", "y", "z"])
B = tok("b", ["z", "y", "x", "w"], [(4, "<im>")], vocab_size=5)  # other ids, a new token
C = tok("c", ["x", "y", "z"], [(3, "<pad0>"), (4, "<pad1>")], vocab_size=3)  # padding tokens


def test_union_order_is_fixed_and_rows_follow_token_strings():
    v = output_vocabulary(config("union"), [A, B, C])
    assert [v.token(i) for i in range(v.size)] == ["x", "y", "z", "w", "<im>"]
    assert v.rows_of == ((0, 1, 2, -1, -1), (2, 1, 0, 3, 4), (0, 1, 2, -1, -1))
    assert (v.prefer, v.donor, v.identity) == (0, 0, False)
    assert [e["content"] for e in v.doc["added_tokens"]] == ["w", "<im>"]  # ids 3, 4


def test_base_model_and_source_vocabularies():
    v = output_vocabulary(config("base"), [A, B, C])
    assert (v.size, v.doc, v.rows_of[1]) == (3, None, (2, 1, 0))  # unchanged: the files copied
    v = output_vocabulary(config("b"), [A, B, C])
    assert (v.size, v.donor, v.rows_of[2]) == (5, 1, (2, 1, 0, -1, -1))
    padded = tok("a", ["x", "y", "z"], [(3, "<u>")], vocab_size=3)  # stripped as the base
    v = output_vocabulary(config("base"), [padded, B, C])
    assert v.size == 3 and v.doc is not None and v.doc["added_tokens"] == []


def test_configured_tokens_are_added_and_resolved():
    tokens = {
        "new": {"source": {"kind": "model_token", "model": "b", "token": "w"}},
        "y": {"source": {"kind": "zero"}, "force": True},
        "z": {"source": "c", "force": True},
        "q": {"source": {"kind": "model_token", "model": "b", "token": "nope"}},
    }
    v = output_vocabulary(
        config({"source": "base", "tokens": tokens, "pad_to_multiple_of": 4}), [A, B, C]
    )
    assert (v.size, v.rows) == (5, 8) and v.token(3) == "new" and v.token(4) == "q"
    rules = {r.token: (r.kind, r.input, r.row, r.force, bool(r.problem)) for r in v.tokens.values()}
    assert rules == {
        "new": ("row", 1, 3, False, False),
        "y": ("zero", None, -1, True, False),
        "z": ("model", 2, -1, True, False),
        "q": ("row", 1, -1, False, True),  # refused only if mergekit would need it
    }


def test_models_without_a_tokenizer():
    none = ModelTokenizer("b", {}, ("config.json",), 2)
    v = output_vocabulary(config("union", ("a", "b")), [A, none])
    assert v.rows_of[1] == (0, 1, -1)  # the base's vocabulary, up to its own vocab_size
    v = output_vocabulary(config("base", ("b", "a")), [none, A])
    assert v.identity  # rows by id
    with pytest.raises(
        InputError, match="b: the base model has no tokenizer.json, which tokenizer source 'union'"
    ):
        output_vocabulary(config("union", ("b", "a")), [none, A])
    sp = ModelTokenizer("b", {}, ("config.json", "tokenizer.model"), None)
    with pytest.raises(
        InputError, match="b: vocabulary alignment needs its tokenizer.json .it has only"
    ):
        output_vocabulary(config("union", ("a", "b")), [A, sp])


def test_side_files_follow_the_vocabulary_and_the_chat_template():
    conf = {"added_tokens_decoder": {"3": {"content": "<u>"}}, "chat_template": "old",
            "extra_special_tokens": ["<u>", "x"]}  # fmt: skip
    a = tok("a", ["x", "y", "z"], [(3, "<u>")], 3, conf, files={"tokenizer.model": b"sp"})
    names = [list(a.names) + ["generation_config.json"], list(B.names)]
    sf = side_files(names, [a, B], output_vocabulary(config("base", ("a", "b")), [a, B]), None)
    assert sorted(sf.made) == ["tokenizer.json", CFG] and sf.vocab_size == 3
    assert sf.copied == {"config.json": 0, "generation_config.json": 0}  # no tokenizer.model
    made = json.loads(sf.made[CFG])
    assert made["added_tokens_decoder"] == {} and made["extra_special_tokens"] == ["x"]
    sf = side_files(names, [a, B], None, "{{ messages }} template text")
    assert sf.made["chat_template.jinja"] == b"{{ messages }} template text"
    assert "chat_template" not in json.loads(sf.made[CFG]) and CFG not in sf.copied
    sf = side_files(names, [a, B], output_vocabulary(config("b", ("a", "b")), [a, B]), None)
    assert sf.made == {} and sf.copied == {
        "config.json": 0, "generation_config.json": 0, "tokenizer.json": 1
    }  # fmt: skip


def test_a_special_token_stripped_past_vocab_size_is_dropped_everywhere():
    """A pad token added past the model's vocab_size is stripped from tokenizer.json; its
    name must go from tokenizer_config.json and special_tokens_map.json too, or transformers
    re-adds it at an id past the embedding rows (an IndexError at the first padded batch)."""
    conf = {"pad_token": "<u>", "eos_token": "z"}
    special = {
        "pad_token": {"content": "<u>"},
        "eos_token": "z",
        "additional_special_tokens": ["<u>"],
    }
    files = {"special_tokens_map.json": json.dumps(special).encode()}
    a = tok("a", ["x", "y", "z"], [(3, "<u>")], 3, conf, files=files)
    sf = side_files([list(a.names)], [a], output_vocabulary(config("base", ("a",)), [a]), None)
    made_conf = json.loads(sf.made[CFG])
    made_map = json.loads(sf.made["special_tokens_map.json"])
    assert made_conf["pad_token"] is None and made_conf["eos_token"] == "z"
    assert made_map == {"pad_token": None, "eos_token": "z", "additional_special_tokens": []}
    assert "special_tokens_map.json" not in sf.copied  # never the donor's stale copy
