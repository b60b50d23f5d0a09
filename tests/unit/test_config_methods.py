"""Configs of the methods added for the mergekit 0.1.5 surface (and TSV-M / Iso): parameter
errors name the field, the value and the options; base models as each method uses them."""

from __future__ import annotations

import pytest

from raymerge.config import load_config
from raymerge.errors import ConfigError
from raymerge.params import resolve_parameters


def problems(d) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        load_config(d)
    return ei.value.problems


def two(method, extra=None, base="base", **params):
    d = {
        "merge_method": method,
        "models": [{"model": "a", "parameters": extra or {}}, {"model": "b"}],
        "parameters": params,
    }
    if base:
        d["base_model"] = base
    return d


def test_parameter_errors_name_field_value_and_options():
    probs = problems(two("sce", select_topk=1.5, int8_mask="maybe"))
    assert "parameters.select_topk: must be in [0, 1], got 1.5" in probs
    assert "parameters.int8_mask: must be true or false, got 'maybe'" in probs
    probs = problems(two("karcher", max_iter=7.5, tol=-1.0))
    assert "parameters.max_iter: must be a whole number, got 7.5" in probs
    assert "parameters.tol: must be in [0, inf], got -1.0" in probs
    # a parameter of another mergekit method, or a method-wide one on a model, is what mergekit
    # accepts and ignores: a warning (an error with strict); an unknown key names the valid ones
    warned = load_config(two("sce", {"weight": 0.6})).warnings
    assert any(
        w.startswith("models[0].parameters.weight: ignored: sce has no parameter") for w in warned
    )
    probs = problems(two("arcee_fusion", {"wieght": 0.6}, base="a"))
    assert any(
        p.startswith("models[0].parameters.wieght: unknown parameter 'wieght'")
        and p.endswith("for arcee_fusion; valid: (none)")
        for p in probs
    )
    warned = load_config(
        two("nuslerp", {"nuslerp_flatten": False, "weight": 1.0}, base=None, weight=1.0)
    ).warnings
    assert any("'nuslerp_flatten' is method-wide" in w for w in warned)
    probs = problems(two("iso_cts", common_space_fraction="most"))
    assert "parameters.common_space_fraction: must be a number, got 'most'" in probs


def test_required_parameters_and_model_counts():
    probs = problems(two("nearswap", base="a"))
    assert "parameters.t: required by nearswap" in probs
    probs = problems(two("nuslerp", base=None))
    assert any(p.startswith("models[0].parameters.weight: required by nuslerp") for p in probs)
    d = two("nuslerp", {"weight": 1.0}, base="base", weight=1.0)
    d["models"].append({"model": "c"})
    probs = problems(d)
    assert any(
        p.startswith("models: nuslerp takes exactly 2 model(s) besides base_model, got 3")
        for p in probs
    )
    probs = problems(two("arcee_fusion"))  # base + 2 others: arcee_fusion takes one
    assert any(
        p.startswith("models: arcee_fusion takes exactly 1 model(s) besides base_model")
        for p in probs
    )
    for method in ("sce", "ram", "ramplus_tl", "arcee_fusion", "nearswap", "tsv_m", "iso_c"):
        assert f"base_model: required by {method}" in problems(two(method, base=None, t=1.0))


def test_optional_base_is_a_base_only_when_configured():
    with_base = load_config(two("multislerp", weight=1.0))
    assert [m.model for m in with_base.merged_models()] == ["a", "b"]
    assert with_base.input_refs() == ["base", "a", "b"]
    without = load_config(two("multislerp", base=None, weight=1.0))
    assert [m.model for m in without.merged_models()] == ["a", "b"]
    assert without.input_refs() == ["a", "b"]
    # one model is enough for multislerp (it is returned as it is), not for nuslerp
    one = {"merge_method": "multislerp", "models": [{"model": "a"}], "parameters": {"weight": 1}}
    assert load_config(one).merged_models()[0].model == "a"


def test_karcher_averages_the_base_model_as_one_more_input():
    """mergekit's karcher ignores the base designation but, in the models form, appends an
    unlisted base model to the inputs: three models averaged, the base last."""
    cfg = load_config(two("karcher"))
    assert [m.model for m in cfg.merged_models()] == ["a", "b", "base"]
    listed = load_config(
        {"merge_method": "karcher", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}]}
    )
    assert [m.model for m in listed.merged_models()] == ["a", "b"]
    assert resolve_parameters(cfg, "model.layers.0.mlp.up_proj.weight", 0.0).models == ({}, {}, {})


def test_multislerp_weights_summing_to_zero_are_refused_per_tensor():
    cfg = load_config(
        {
            "merge_method": "multislerp",
            "models": [
                {"model": "a", "parameters": {"weight": [1.0, 0.5]}},
                {"model": "b", "parameters": {"weight": -1.0}},
            ],
        }
    )
    params = resolve_parameters(cfg, "model.layers.0.mlp.up_proj.weight", 0.0)
    assert cfg.method.check(params.method, params.models) == [
        "multislerp: the weights sum to 0, so normalize_weights cannot divide by them"
    ]
    params = resolve_parameters(cfg, "model.layers.1.mlp.up_proj.weight", 1.0)
    assert cfg.method.check(params.method, params.models) == []


def test_an_integer_parameter_gradient_must_give_whole_numbers():
    """mergekit validates the interpolated value: max_iter [5, 10] at t = 0.5 is 7.5, an error
    (it used to be truncated to 7 here)."""
    cfg = load_config(two("karcher", max_iter=[5, 10]))
    assert resolve_parameters(cfg, "model.layers.0.mlp.up_proj.weight", 0.0).method["max_iter"] == 5
    with pytest.raises(ConfigError, match="'max_iter' evaluates to 7.5 for tensor 'model.layers.1"):
        resolve_parameters(cfg, "model.layers.1.mlp.up_proj.weight", 0.5)
    cfg = load_config(two("karcher", max_iter=[5, 11]))
    assert resolve_parameters(cfg, "model.layers.1.mlp.up_proj.weight", 0.5).method["max_iter"] == 8
