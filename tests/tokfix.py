"""Tiny models with tokenizers and LoRA adapters, built with transformers / tokenizers / peft (test
extras; nothing downloaded), and a runner of mergekit 0.1.5's ``mergekit-yaml`` on many configs in
one process.

The tokenizer fixtures are mergekit 0.1.5's own (tests/test_tokenizer.py): a BPE tokenizer
``<unk>, <s>, </s>, _tok_3 ..`` without merges saved as a LlamaTokenizerFast, on a tiny Llama:
``base`` (64 rows, 64 tokens), ``chatml`` (66 rows; ``<|im_start|>``, ``<|im_end|>`` added at
64, 65), ``padded`` (64 rows; ``<UNUSED_0..3>`` at 64..67, past its rows), ``special`` (65 rows;
special ``<|existing_special|>`` at 64 with every flag set), ``notok`` (no tokenizer files);
and ``templated``, ``templated_a2`` (chat template A) and ``templated_b`` (template B).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import torch

TEMPLATE_A = "{% for m in messages %}A:{{ m['content'] }}\n{% endfor %}"
TEMPLATE_B = "{% for m in messages %}B:{{ m['content'] }}\n{% endfor %}"


def make_tokenizer(vocab_size: int, added: list[Any]):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import LlamaTokenizerFast

    tokens = (["<unk>", "<s>", "</s>"] + [f"_tok_{i}" for i in range(3, vocab_size)])[:vocab_size]
    doc = {
        "version": "1.0",
        "model": {"type": "BPE", "vocab": dict(zip(tokens, range(vocab_size))), "merges": []},
        "added_tokens": [],
    }
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tokenizer.json")
        tokenizers.Tokenizer.from_str(json.dumps(doc)).save(path)
        tok = LlamaTokenizerFast(tokenizer_file=path)
    tok.add_tokens(added)
    return tok


def make_llama(path: str, vocab: int, seed: int, hidden: int = 32, layers: int = 2) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=48,
        num_attention_heads=4,
        num_hidden_layers=layers,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def tokenizer_models(root: str) -> dict[str, str]:
    """The tokenizer fixtures (see the module docstring), by name."""
    from tokenizers import AddedToken

    out = {}
    for name, rows, tok_size, added, seed in (
        ("base", 64, 64, [], 1),
        ("chatml", 66, 64, ["<|im_start|>", "<|im_end|>"], 2),
        ("padded", 64, 64, [f"<UNUSED_{i}>" for i in range(4)], 3),
        ("special", 65, 64, [], 4),
        ("notok", 64, None, [], 5),
        ("templated", 64, 64, [], 6),
        ("templated_a2", 64, 64, [], 8),
        ("templated_b", 64, 64, [], 7),
    ):
        path = make_llama(os.path.join(root, name), rows, seed)
        if tok_size is not None:
            tok = make_tokenizer(tok_size, added)
            if name == "special":
                flags = dict(single_word=True, lstrip=True, rstrip=True, normalized=False)
                special = AddedToken("<|existing_special|>", special=True, **flags)
                tok.add_special_tokens({"additional_special_tokens": [special]})
            if name.startswith("templated"):
                tok.chat_template = TEMPLATE_B if name.endswith("_b") else TEMPLATE_A
            tok.save_pretrained(path)
        out[name] = path
    return out


def make_phi(path: str, size: int, swapped: bool = False) -> str:
    """mergekit 0.1.5's Phi fixture (tests/test_vocabulary_axis.py): ``lm_head.bias`` is
    ``arange(size)``; ``swapped``: ``_tok_3`` and ``_tok_4`` trade ids in the tokenizer."""
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(size + 10 * swapped)
    cfg = PhiConfig(
        vocab_size=size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = PhiForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.bias.copy_(torch.arange(size, dtype=torch.float32))
    model.save_pretrained(path)
    make_tokenizer(size, []).save_pretrained(path)
    if swapped:
        tj = os.path.join(path, "tokenizer.json")
        doc = json.load(open(tj))
        vocab = doc["model"]["vocab"]
        vocab["_tok_3"], vocab["_tok_4"] = vocab["_tok_4"], vocab["_tok_3"]
        json.dump(doc, open(tj, "w"))
    return path


def extra_models(root: str) -> dict[str, str]:
    """Fixtures of mergekit 0.1.5's vocabulary tests: Phi (a vocabulary bias) of 8 tokens and
    swapped twins of 8 and 10; Llamas of 10 rows / 10 tokens and 8 / 8."""
    out = {
        "phi8": make_phi(os.path.join(root, "phi8"), 8),
        "phi_other8": make_phi(os.path.join(root, "phi_other8"), 8, swapped=True),
        "phi_other10": make_phi(os.path.join(root, "phi_other10"), 10, swapped=True),
    }
    for name, size in (("large10", 10), ("small8", 8)):
        out[name] = make_llama(os.path.join(root, name), size, size)
        make_tokenizer(size, []).save_pretrained(out[name])
    return out


def make_lora(model: str, out: str, targets: list[str], seed: int = 0, **config: Any) -> str:
    """A PEFT LoRA adapter of ``model`` with random (non-zero) A and B."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lcfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": targets, **config})
    pm = peft.get_peft_model(m, lcfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    pm.save_pretrained(out)
    return out


def make_gpt2(path: str, seed: int = 0) -> str:
    """A tiny GPT-2 (Conv1D layers: LoRA with fan_in_fan_out)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32)
    cfg.bos_token_id = cfg.eos_token_id = 0
    GPT2LMHeadModel(cfg).save_pretrained(path)
    return path


MERGEKIT_FLAGS = ["--no-write-model-card", "--device", "cpu", "--quiet", "--random-seed", "0"]
_RUNNER = """
import json, sys, traceback
from mergekit.scripts.run_yaml import main
for config, out, flags in json.load(open(sys.argv[1])):
    try:
        main([config, out, *flags], standalone_mode=False)
        print(json.dumps([out, None]), flush=True)
    except BaseException as exc:
        print(json.dumps([out, f"{type(exc).__name__}: {exc}"[:2000]]), flush=True)
"""


def run_mergekit(jobs: list[tuple[str, str]], lora_cache: str) -> dict[str, str | None]:
    """Run ``mergekit-yaml`` (its command, in one process for all) on (config, out) pairs;
    per output folder, None or the error mergekit raised."""
    pytest.importorskip("mergekit")
    flags = [*MERGEKIT_FLAGS, "--lora-merge-cache", lora_cache]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([(c, o, flags) for c, o in jobs], f)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, f.name], capture_output=True, text=True, env=env,
        timeout=1200,
    )  # fmt: skip
    os.unlink(f.name)
    done = {}
    for line in proc.stdout.splitlines():
        if line.startswith("["):
            out, err = json.loads(line)
            done[out] = err
    missing = [o for _, o in jobs if o not in done]
    if missing:
        pytest.fail(f"mergekit-yaml runner died before {missing}:\n{proc.stderr[-3000:]}")
    return done
