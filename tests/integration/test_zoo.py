"""Real architectures merge right, or are refused before any work.

A zoo of tiny random models built with transformers from their configs (tests/zoo.py), a base and
two fine-tunes each: every supported method against a closed-form merge, gradients on the first
and last layer of every stack, frankenmerges of one-stack models, and every output loaded with
its auto class (no missing or unexpected keys, the dtype asked for, a forward pass, logits of the
closed-form merge). FP8 inputs with differing scales are dequantised, never averaged as codes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from raymerge.config import load_config
from raymerge.errors import InputError
from raymerge.options import ExecOptions, RunOptions
from raymerge.pipeline import run_merge
from tests import zoo
from tests.helpers import load_model, reference_merge

pytestmark = pytest.mark.integration
ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "mixtral",
         "qwen2_moe", "bert", "t5"]  # fmt: skip
ONE_STACK = [a for a in ARCHS if a != "t5"]
OPTS = RunOptions(execution=ExecOptions(progress=False))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (base, ft1, ft2) folders (fp32)."""
    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for name in ARCHS:
        base = str(root / name / "base")
        zoo.build(name, base, 0)
        fts = [str(root / name / f"ft{k}") for k in (1, 2)]
        for k, ft in enumerate(fts, start=1):
            zoo.build(name, ft, k, perturb_from=base, noise=0.02)
        out[name] = (base, *fts)
    return out


def merge(tmp_path, body: dict, tag: str = "out", **opts) -> tuple[str, dict]:
    out = str(tmp_path / tag)
    summary = run_merge(load_config(body), out, RunOptions(**opts, execution=OPTS.execution))
    return out, summary


def ties_ref(base, xs, weights, density):
    """TIES in plain torch: top-k magnitudes (every tie at the cutoff kept), elected signs by
    the weighted sum, disjoint mean."""
    masked = []
    for x in xs:
        d = x - base
        k = max(1, int(density * d.numel()))
        cutoff = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        masked.append(torch.where(d.abs() >= cutoff, d, torch.zeros_like(d)))
    wd = [w * d for w, d in zip(weights, masked)]
    elected = torch.where(sum(wd) >= 0, 1.0, -1.0)
    agree = [(torch.sign(d) == elected).float() for d in wd]
    div = sum(w * a for w, a in zip(weights, agree))
    return base + sum(d * a for d, a in zip(wd, agree)) / torch.where(div == 0, 1.0, div)


CASES = {
    "linear": (
        lambda m: {"merge_method": "linear", "models": [
            {"model": m[1], "parameters": {"weight": 0.6}},
            {"model": m[2], "parameters": {"weight": 0.4}}]},
        lambda b, a, c: (0.6 * a + 0.4 * c) / 1.0,
    ),
    "task_arithmetic": (
        lambda m: {"merge_method": "task_arithmetic", "base_model": m[0], "models": [
            {"model": m[1], "parameters": {"weight": 0.5}},
            {"model": m[2], "parameters": {"weight": 0.5}}], "parameters": {"lambda": 0.9}},
        lambda b, a, c: b + 0.9 * (0.5 * (a - b) + 0.5 * (c - b)),
    ),
    "ties": (
        lambda m: {"merge_method": "ties", "base_model": m[0], "models": [
            {"model": m[1], "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": m[2], "parameters": {"weight": 1.0, "density": 0.5}}]},
        lambda b, a, c: ties_ref(b, [a, c], [1.0, 1.0], 0.5),
    ),
}  # fmt: skip


def closed_form(m, formula) -> dict[str, torch.Tensor]:
    base, a, c = (load_model(p) for p in m)
    return {n: formula(base[n], a[n], c[n]) for n in base}


@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize("arch", ARCHS)
def test_methods_equal_the_closed_form_merge(tmp_path, models, ray_session, arch, method):
    body, formula = CASES[method]
    m = models[arch]
    out, _ = merge(tmp_path, body(m))
    got = load_model(out)
    want = closed_form(m, formula)
    assert set(got) == set(want)
    worst = max(float((got[n] - want[n]).abs().max()) for n in want if want[n].numel())
    assert worst <= 1e-6, (arch, method, worst)
    ours = reference_merge(load_config(body(m)))  # the kernels on whole tensors: bit for bit
    assert all(torch.equal(got[n], ours[n]) for n in ours)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_gradient_runs_over_each_stack(tmp_path, models, ray_session, arch):
    """`weight: [0, 1]` on one model and `[1, 0]` on the other: the first layer of every stack is
    the second model's, the last layer the first model's (mergekit's t = i / (L - 1)); tensors
    outside the stacks get t = 0, as in mergekit."""
    from raymerge.layers import find_stacks, locate

    m = models[arch]
    body = {"merge_method": "linear", "models": [
        {"model": m[1], "parameters": {"weight": [0.0, 1.0]}},
        {"model": m[2], "parameters": {"weight": [1.0, 0.0]}}]}  # fmt: skip
    out, _ = merge(tmp_path, body)
    got, a, c = load_model(out), load_model(m[1]), load_model(m[2])
    stacks = find_stacks(got)
    assert stacks and all(s.length >= 2 for s in stacks.values())
    for name, t in got.items():
        place = locate(name, stacks)
        if place is None or place.index == 0:
            assert torch.equal(t, c[name]), name
        elif place.index == place.stack.length - 1:
            assert torch.equal(t, a[name]), name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_load_run_and_give_the_merged_logits(tmp_path, models, ray_session, arch, dtype):
    m = models[arch]
    body, formula = CASES["linear"]
    out, _ = merge(tmp_path, {**body(m), "out_dtype": dtype})
    conf = json.load(open(os.path.join(out, "config.json")))
    assert conf["dtype"] == conf["torch_dtype"] == dtype
    cls = zoo.AUTO_CLASS[arch]
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    want = {n: t.to(getattr(torch, dtype)) for n, t in closed_form(m, formula).items()}
    ref = tmp_path / "closed-form"
    ref.mkdir()
    save_file(want, str(ref / "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(out, "config.json"), ref / "config.json")
    expected = cls.from_pretrained(str(ref))  # the closed-form merge, through the same loader
    inputs = zoo.dummy_inputs(arch)
    with torch.no_grad():
        got_logits = model.eval()(**inputs).logits.float()
        want_logits = expected.eval()(**inputs).logits.float()
    tol = 1e-5 if dtype == "float32" else 2e-2
    torch.testing.assert_close(got_logits, want_logits, rtol=tol, atol=tol)


@pytest.mark.parametrize("arch", ONE_STACK)
def test_a_frankenmerge_loads_with_its_layer_lists_rewritten(tmp_path, models, ray_session, arch):
    """Stack ft1's layers and ft2's first layer: every per-layer list of config.json follows
    (layer_types, Qwen2-MoE's sparse/dense layers), and the output loads and runs."""
    from raymerge.layers import find_stacks

    m = models[arch]
    stack = next(iter(find_stacks(load_model(m[1])).values()))
    n = stack.length
    body = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": m[1], "layer_range": [0, n]}]},
        {"sources": [{"model": m[2], "layer_range": [0, 1]}]}]}  # fmt: skip
    out, _ = merge(tmp_path, body)
    got, c = load_model(out), load_model(m[2])
    new = f"{stack.prefix}.{n}."
    assert [k for k in got if k.startswith(new)]
    for k in got:
        if k.startswith(new):
            assert torch.equal(got[k], c[f"{stack.prefix}.0.{k[len(new) :]}"]), k
    conf = json.load(open(os.path.join(out, "config.json")))
    if "layer_types" in conf:
        src = json.load(open(os.path.join(m[1], "config.json")))["layer_types"]
        assert conf["layer_types"] == src + src[:1]
    if arch == "qwen2_moe":
        assert conf["mlp_only_layers"] == [1] and conf["decoder_sparse_step"] == 1
    cls = zoo.AUTO_CLASS[arch]
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert model.config.num_hidden_layers == n + 1
    with torch.no_grad():
        model.eval()(**zoo.dummy_inputs(arch))


def test_slices_over_a_model_with_two_stacks_are_refused(tmp_path, models):
    m = models["t5"]
    body = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": m[1], "layer_range": [0, 1]}]}]}  # fmt: skip
    with pytest.raises(InputError) as ei:
        merge(tmp_path, body)
    text = str(ei.value)
    assert "exactly one layer stack" in text and "encoder.block.N" in text
    assert "decoder.block.N" in text and not (tmp_path / "out").exists()


def test_fp8_inputs_with_differing_scales_are_dequantised_not_averaged(tmp_path, ray_session):
    """A block-scaled fp8 Llama and a re-quantised fine-tune (other scales): the merge is of the
    real weights (codes x scales), written bf16, without scales or quantization_config."""
    a, b = str(tmp_path / "fp8a"), str(tmp_path / "fp8b")
    real_a = zoo.build_fp8_llama(a, 0)
    real_b = zoo.build_fp8_llama(b, 1, base_seed=0, scale_perturb=0.5)
    body = {"merge_method": "linear", "models": [
        {"model": a, "parameters": {"weight": 0.5}},
        {"model": b, "parameters": {"weight": 0.5}}]}  # fmt: skip
    out, _ = merge(tmp_path, body)
    got = load_model(out)
    assert not [n for n in got if n.endswith("_scale_inv")]
    for name, t in got.items():
        want = ((0.5 * real_a[name] + 0.5 * real_b[name]) / 1.0).to(torch.bfloat16)
        assert t.dtype == torch.bfloat16 and torch.equal(t, want), name
    conf = json.load(open(os.path.join(out, "config.json")))
    assert "quantization_config" not in conf and conf["dtype"] == "bfloat16"
    model, info = zoo.AUTO_CLASS["llama"].from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_other_quantisation_formats_are_refused_naming_them(tmp_path, models):
    q = tmp_path / "gptq"
    shutil.copytree(models["llama"][1], q)
    conf = json.load(open(q / "config.json"))
    conf["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (q / "config.json").write_text(json.dumps(conf))
    body = {"merge_method": "linear", "models": [
        {"model": str(q), "parameters": {"weight": 0.5}},
        {"model": models["llama"][2], "parameters": {"weight": 0.5}}]}  # fmt: skip
    with pytest.raises(InputError, match=r"quantised with 'gptq'; raymerge dequantises fp8"):
        merge(tmp_path, body)


def _with_buffers(src: str, dst: str, ids: torch.Tensor, mask: torch.Tensor) -> str:
    shutil.copytree(src, dst)
    f = os.path.join(dst, "model.safetensors")
    tensors = load_file(f)
    tensors["bert.embeddings.position_ids"] = ids
    tensors["bert.encoder.layer.0.attention.self.mask"] = mask
    save_file(tensors, f, metadata={"format": "pt"})
    return dst


def test_non_float_tensors_are_copied_once_or_refused_when_they_differ(
    tmp_path, models, ray_session
):
    m = models["bert"]
    ids, mask = torch.arange(16).reshape(1, 16), torch.ones(4, 4, dtype=torch.bool)
    base = _with_buffers(m[0], str(tmp_path / "b"), ids, mask)
    one = _with_buffers(m[1], str(tmp_path / "f1"), ids, mask)
    other = _with_buffers(m[2], str(tmp_path / "f2"), ids + 1, mask)
    body = {"merge_method": "task_arithmetic", "base_model": base, "models": [
        {"model": one, "parameters": {"weight": 1.0}}]}  # fmt: skip
    out, _ = merge(tmp_path, {**body, "out_dtype": "bfloat16"})
    got = load_model(out)
    assert torch.equal(got["bert.embeddings.position_ids"], ids)
    assert got["bert.encoder.layer.0.attention.self.mask"].dtype == torch.bool
    body["models"].append({"model": other, "parameters": {"weight": 1.0}})
    with pytest.raises(InputError, match=r"non-float tensors \['bert.embeddings.position_ids'\]"):
        merge(tmp_path, body, tag="o2")
    out3, _ = merge(tmp_path, {**body, "non_float_tensors": "from_base"}, tag="o3")
    assert torch.equal(load_model(out3)["bert.embeddings.position_ids"], ids)


def test_side_files_of_every_kind_are_copied(tmp_path, models, ray_session):
    m = models["llama"]
    base = tmp_path / "base"
    shutil.copytree(m[0], base)
    side = {"chat_template.json": '{"chat_template": "{{ x }}"}', "vocab.txt": "a\nb\n",
            "spiece.model": "sp", "preprocessor_config.json": "{}",
            "processor_config.json": "{}", "video_preprocessor_config.json": "{}",
            "qwen.tiktoken": "YQ== 0\n"}  # fmt: skip
    for name, text in side.items():
        (base / name).write_text(text)
    (base / "optimizer.pt").write_bytes(b"never copied")
    body = {"merge_method": "task_arithmetic", "base_model": str(base), "models": [
        {"model": m[1], "parameters": {"weight": 1.0}}]}  # fmt: skip
    out, _ = merge(tmp_path, body)
    for name, text in side.items():
        assert open(os.path.join(out, name)).read() == text, name
    assert not os.path.exists(os.path.join(out, "optimizer.pt"))


MERGEKIT_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt2", "t5"]


@pytest.mark.parametrize("arch", MERGEKIT_ARCHS)
def test_linear_equals_mergekit_where_mergekit_merges_it(tmp_path, models, ray_session, arch):
    mergekit = shutil.which("mergekit-yaml") or os.path.join(
        os.path.dirname(sys.executable), "mergekit-yaml"
    )
    if not os.path.exists(mergekit):
        pytest.skip("mergekit 0.1.5 is not installed (the parity extra)")
    body, _ = CASES["linear"]
    cfg = {**body(models[arch]), "dtype": "float32"}
    out, _ = merge(tmp_path, cfg)
    (tmp_path / "mk.yaml").write_text(json.dumps(cfg))
    r = subprocess.run([mergekit, str(tmp_path / "mk.yaml"), str(tmp_path / "mk"), "--quiet"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ours, theirs = load_model(out), load_model(str(tmp_path / "mk"))
    assert set(theirs) <= set(ours)
    worst = max(float((ours[n] - theirs[n]).abs().max()) for n in theirs if theirs[n].numel())
    assert worst <= 1e-6, worst
