"""Tokenizer alignment, chat templates and LoRA inputs end to end, against mergekit 0.1.5.

Every YAML under ``tests/data/tokenizer/`` is run, on tiny local models with tokenizers and PEFT
adapters (:mod:`tests.tokfix`), by ``raymerge run`` (through Ray) and by ``mergekit-yaml``. Its
``# expect:`` line says what must happen:

- ``parity``: both succeed, with the same tensors (fp32, 1e-6), the same ``vocab_size``, and
  tokenizers that load with ``AutoTokenizer`` to the same vocabulary, added tokens (with their
  flags), encodings and rendered chat template;
- ``parity-by-token``: the same, but ids of tokens mergekit appends in hash-map order may
  differ: the vocabularies hold the same tokens, and vocabulary rows are compared by token;
- ``refused``: raymerge exits 2 naming the field (``# error:``); ``# mergekit: fails X`` says
  how mergekit fails on it;
- ``raymerge-only``: mergekit fails or depends on the hash seed there; the output is checked
  directly (:data:`CHECKS`).

Also here: the embedding rows of a union merge as mergekit defines them, and chunked runs of big
vocabularies (union + padding + LoRA on the embeddings) equal unchunked ones byte for byte.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from raymerge.cli import main
from tests.helpers import load_model, shard_bytes

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")
pytest.importorskip("peft")

DATA = Path(__file__).resolve().parents[1] / "data" / "tokenizer"
CONFIGS = sorted(DATA.glob("*.yaml"))
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": " hi "},
    {"role": "assistant", "content": "yo"},
    {"role": "user", "content": "again"},
]
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, str]:
    """Placeholder -> folder, for every name the YAMLs use."""
    from tests.tokfix import extra_models, make_gpt2, make_lora, tokenizer_models

    root = str(tmp_path_factory.mktemp("tok"))
    m = {**tokenizer_models(root), **extra_models(root)}
    out = {k.upper(): v for k, v in m.items()}
    j = lambda name: os.path.join(root, name)  # noqa: E731
    targets = ["q_proj", "v_proj", "embed_tokens", "lm_head"]
    out["LORA"] = make_lora(m["base"], j("lora"), targets)
    out["LORA_RS"] = make_lora(
        m["base"], j("lora_rs"), ["q_proj", "v_proj", "o_proj"], seed=1, use_rslora=True,
        alpha_pattern={"v_proj": 16},
    )  # fmt: skip
    out["LORA_CHATML"] = make_lora(m["chatml"], j("lora_c"), ["embed_tokens", "lm_head"], seed=2)
    out["LORA_DORA"] = make_lora(m["base"], j("lora_dora"), ["q_proj"], seed=3, use_dora=True)
    out["GPT2"] = make_gpt2(j("gpt2"))
    out["LORA_GPT2"] = make_lora(
        out["GPT2"], j("lora_gpt2"), ["c_attn", "c_proj"], seed=4, fan_in_fan_out=True,
        lora_alpha=16,
    )  # fmt: skip
    return out


def header(path: Path) -> dict[str, str]:
    found = re.findall(r"^# (expect|error|mergekit): (.*)$", path.read_text(), re.M)
    return dict(found)


def expand(path: Path, fx: dict[str, str], folder: Path) -> str:
    text = path.read_text()
    for key in sorted(fx, key=len, reverse=True):
        text = re.sub(rf"\b{key}\b", fx[key], text)
    out = folder / path.name
    out.write_text(text)
    return str(out)


@pytest.fixture(scope="module")
def mergekit_runs(fx, tmp_path_factory) -> dict[str, tuple[str, str | None]]:
    """Every config through mergekit-yaml (one process): stem -> (output, error or None)."""
    from tests.tokfix import run_mergekit

    root = tmp_path_factory.mktemp("mergekit")
    jobs = {p.stem: (expand(p, fx, root), str(root / f"out_{p.stem}")) for p in CONFIGS}
    done = run_mergekit(list(jobs.values()), str(root / "lora-cache"))
    return {stem: (out, done[out]) for stem, (_, out) in jobs.items()}


def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    if not os.path.exists(os.path.join(folder, "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(folder)


def _added(tok) -> dict[int, tuple]:
    return {
        i: (t.content, t.special, t.single_word, t.lstrip, t.rstrip, t.normalized)
        for i, t in tok.added_tokens_decoder.items()
    }


def same_output(expected: str, got: str, by_token: bool = False) -> None:
    """What parity means (see the module docstring)."""
    import json

    from raymerge.plan.vocab import is_vocab_tensor

    want, have = load_model(expected), load_model(got)
    mk, rm = _tokenizer(expected), _tokenizer(got)
    if by_token:  # vocabulary rows put in mergekit's order, by token string
        order = [rm.get_vocab()[t] for t, _ in sorted(mk.get_vocab().items(), key=lambda x: x[1])]
        have = {k: v[order] if is_vocab_tensor(k) else v for k, v in have.items()}
    assert sorted(have) == sorted(want)
    for k in want:
        assert have[k].shape == want[k].shape, k
        assert_close(have[k], want[k], atol=1e-6, rtol=0, msg=k)
    conf = [json.load(open(os.path.join(d, "config.json"))) for d in (expected, got)]
    assert conf[1].get("vocab_size") == conf[0].get("vocab_size")
    if mk is None or len(mk.get_vocab()) <= 1:  # mergekit wrote none (or transformers' empty)
        assert rm is None
        return
    assert rm is not None
    if by_token:
        assert set(rm.get_vocab()) == set(mk.get_vocab())
        return
    assert rm.get_vocab() == mk.get_vocab()
    assert _added(rm) == _added(mk)
    text = "_tok_5 _tok_7<|im_start|>hi<|im_end|> <s>"
    assert rm(text)["input_ids"] == mk(text)["input_ids"]
    assert bool(rm.chat_template) == bool(mk.chat_template)
    if mk.chat_template:
        assert rm.apply_chat_template(MESSAGES[1:], tokenize=False) == mk.apply_chat_template(
            MESSAGES[1:], tokenize=False
        )


def _new_token_source_base(out: str, fx: dict[str, str]) -> None:
    tok = _tokenizer(out)
    assert len(tok.get_vocab()) == 65 and tok.get_vocab()["<|brand_new|>"] == 64
    got, chatml = load_model(out), load_model(fx["CHATML"])
    for k in (EMBED, HEAD):  # no model has it: its source's row for every model
        assert got[k].shape[0] == 65 and torch.equal(got[k][64], chatml[k][64])


def _chat_template_auto_tie(out: str, fx: dict[str, str]) -> None:
    from tests.tokfix import TEMPLATE_B

    assert (Path(out) / "chat_template.jinja").read_text() == TEMPLATE_B.strip()


def _slices_rows_by_id(out: str, fx: dict[str, str]) -> None:
    from transformers import AutoModelForCausalLM

    got, chatml = load_model(out), load_model(fx["CHATML"])
    assert got[EMBED].shape[0] == got[HEAD].shape[0] == 64
    assert torch.equal(got[HEAD], chatml[HEAD][:64])  # the last slice's head, first 64 rows
    assert json.loads((Path(out) / "config.json").read_text())["vocab_size"] == 64
    AutoModelForCausalLM.from_pretrained(out)  # loads: every vocabulary tensor has 64 rows


CHECKS = {
    "slices_rows_by_id": _slices_rows_by_id,
    "new_token_source_base": _new_token_source_base,
    "chat_template_auto_tie": _chat_template_auto_tie,
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_tokenizer_config(path, fx, mergekit_runs, tmp_path, ray_session, capsys):
    head = header(path)
    cfg = expand(path, fx, tmp_path)
    out = str(tmp_path / "out")
    rc = main(["run", cfg, out, "--no-progress"])
    err = capsys.readouterr().err
    mk_out, mk_err = mergekit_runs[path.stem]
    expect = head["expect"]
    if expect == "refused":
        assert rc == 2 and head["error"] in err, err
        assert not os.path.exists(os.path.join(out, "_SUCCESS"))
        said = head.get("mergekit", "")
        if said.startswith("fails ") and said != "fails or ignores":  # mergekit fails so too
            assert mk_err is not None and said.removeprefix("fails ").split()[0] in mk_err, mk_err
        return
    assert rc == 0, err
    if expect.startswith("parity"):
        assert mk_err is None, mk_err
        same_output(mk_out, out, by_token=expect == "parity-by-token")
    else:
        assert expect == "raymerge-only"
        if head.get("mergekit", "").startswith("fails "):
            assert mk_err is not None and head["mergekit"].split()[1] in mk_err
        CHECKS[path.stem](out, fx)


def test_union_rows_are_mergekits_defaults(fx, tmp_path, ray_session, capsys):
    """A token one model holds keeps that row; a token all hold is merged; ids follow the
    union's order (base, then the others' added tokens)."""
    cfg = expand(DATA / "source_union.yaml", fx, tmp_path)
    assert main(["run", cfg, str(tmp_path / "out"), "--no-progress"]) == 0
    tok = _tokenizer(str(tmp_path / "out"))
    vocab = tok.get_vocab()
    assert len(vocab) == 66 and (vocab["<|im_start|>"], vocab["<|im_end|>"]) == (64, 65)
    assert not any(t.startswith("<UNUSED") for t in vocab)  # past PADDED's vocab_size
    got = load_model(str(tmp_path / "out"))
    ins = [load_model(fx[n]) for n in ("BASE", "PADDED", "CHATML")]
    for k in (EMBED, HEAD):
        assert_close(got[k][64:], ins[2][k][64:66], atol=1e-7, rtol=0)  # every input: its row
        mean = (ins[0][k][5] + ins[1][k][5] + ins[2][k][5]) / 3.0
        assert_close(got[k][5], mean, atol=1e-7, rtol=0)


BIG = """merge_method: {method}
base_model: {base}
models:
- {{model: {base}, parameters: {{weight: 0.3}}}}
- {{model: {chat}+{lora}, parameters: {{weight: 0.5, density: 0.6}}}}
- {{model: {small}, parameters: {{weight: 0.4, density: 0.8}}}}
dtype: float32
parameters: {{t: 0.4}}
tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    _tok_9: {{source: {{kind: zero}}, force: true}}
    <x>: {{source: {{kind: model_token, model: {chat}+{lora}, token: _tok_12}}}}
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, str]:
    """Vocabularies big enough to chunk: 2048 (base), 2048 + 2 added (chat, with a LoRA on its
    embeddings and head), 2000 + 1 added (small)."""
    from tests.tokfix import make_llama, make_lora, make_tokenizer

    root = tmp_path_factory.mktemp("big")
    out = {}
    for name, rows, size, added in (
        ("base", 2048, 2048, []),
        ("chat", 2050, 2048, ["<|im_start|>", "<|im_end|>"]),
        ("small", 2001, 2000, ["<x>"]),
    ):
        out[name] = make_llama(str(root / name), rows, len(out), hidden=64, layers=1)
        make_tokenizer(size, added).save_pretrained(out[name])
    out["lora"] = make_lora(out["chat"], str(root / "lora"), ["embed_tokens", "lm_head", "q_proj"])
    return out


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "slerp"])
def test_chunked_vocabulary_equals_unchunked(method, big, tmp_path, ray_session, capsys):
    import pyarrow.parquet as pq

    body = BIG.format(method=method, **big)
    if method == "slerp":  # two models
        body = "\n".join(line for line in body.splitlines() if f"{big['small']}," not in line)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(cfg), str(a), "--no-progress"]) == 0, capsys.readouterr().err
    rc = main(["run", str(cfg), str(b), "--no-progress", "--job-memory", "33MiB"])
    assert rc == 0, capsys.readouterr().err
    rows = pq.read_table(b / "manifest.parquet").to_pylist()
    chunks = {r["name"]: r["n_chunks"] for r in rows}
    assert chunks[EMBED] > 1 and chunks[HEAD] > 1
    assert shard_bytes(str(a)) == shard_bytes(str(b))
    got = load_model(str(a))
    assert got[EMBED].shape == (2112, 64) and torch.equal(got[EMBED][9], torch.zeros(64))


def test_an_adapter_rewritten_mid_run_fails_before_commit(fx, tmp_path, ray_session):
    """The adapter's files are inputs like the model's: fingerprinted at plan time, proved at
    every read; changed mid-run, nothing is committed."""
    import shutil

    import tests.chaos
    from raymerge.config import load_config
    from raymerge.errors import InputError
    from raymerge.options import ExecOptions, RunOptions
    from raymerge.pipeline import RunHooks, run_merge

    lora = tmp_path / "lora"
    shutil.copytree(fx["LORA"], lora)
    weights = lora / "adapter_model.safetensors"
    cfg = load_config(
        {"merge_method": "passthrough", "models": [{"model": f"{fx['BASE']}+{lora}"}]}
    )
    hook = tests.chaos.RewriteOnce(str(tmp_path / "marker"), str(weights))
    opts = RunOptions(job_bytes=4 << 10, execution=ExecOptions(progress=False))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="changed since planning") as ei:
        run_merge(cfg, str(out), opts, RunHooks(job_fault=hook))
    assert "adapter_model.safetensors" in str(ei.value)
    assert not (out / "_SUCCESS").exists()


def test_a_non_finite_lora_update_is_refused(fx, tmp_path, ray_session):
    """NaN in an adapter's B matrix: the updated weight is checked, not only the base weight
    (TIES masks by magnitude, so a NaN could otherwise vanish into a finite wrong model)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from raymerge.config import load_config
    from raymerge.errors import InputError
    from raymerge.options import ExecOptions, RunOptions
    from raymerge.pipeline import run_merge

    lora = tmp_path / "lora"
    shutil.copytree(fx["LORA"], lora)
    weights = lora / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = sorted(n for n in tensors if "lora_B" in n)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, weights)
    cfg = load_config(
        {
            "merge_method": "ties",
            "base_model": fx["BASE"],
            "models": [
                {"model": f"{fx['BASE']}+{lora}", "parameters": {"weight": 1, "density": 0.5}}
            ],
        }
    )
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"the LoRA update of tensor .* holds NaN or Inf"):
        run_merge(cfg, str(out), RunOptions(execution=ExecOptions(progress=False)))
    assert not (out / "_SUCCESS").exists()


def test_a_per_token_tensor_of_an_unknown_name_is_refused_when_rows_move(fx, tmp_path):
    """pad_to_multiple_of grows the vocabulary rows: a tensor with one row per token under a
    name raymerge does not know as a vocabulary tensor would keep its old rows (a model that
    does not load, or rows of other tokens): refused before any data is read."""
    import shutil

    from safetensors.torch import load_file, save_file

    from raymerge.config import load_config
    from raymerge.errors import InputError
    from raymerge.options import ExecOptions, RunOptions
    from raymerge.pipeline import run_merge

    copies = []
    for k in (0, 1):
        dst = tmp_path / f"m{k}"
        shutil.copytree(fx["BASE"], dst)
        w = next(dst.glob("*.safetensors"))
        tensors = load_file(w)
        tensors["extra_head.weight"] = torch.zeros(64, tensors[EMBED].shape[1])
        save_file(tensors, str(w), metadata={"format": "pt"})
        copies.append(str(dst))
    body = {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": 1}} for m in copies],
        "tokenizer": {"source": "base", "pad_to_multiple_of": 128},
        "base_model": copies[0],
    }
    with pytest.raises(InputError, match=r"\['extra_head.weight'\] have one row per token"):
        run_merge(
            load_config(body),
            str(tmp_path / "out"),
            RunOptions(execution=ExecOptions(progress=False)),
        )
    body["tokenizer"] = {"source": "base"}  # rows stay: nothing to refuse
    run_merge(
        load_config(body), str(tmp_path / "out2"), RunOptions(execution=ExecOptions(progress=False))
    )
