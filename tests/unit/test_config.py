"""Strict config: all errors at once, mergekit YAML as-is, parameter resolution rules."""

from __future__ import annotations

import pytest

from raymerge.config import load_config
from raymerge.errors import ConfigError
from raymerge.params import evaluate, layer_position, resolve_parameters


def _split(params):
    return dict(params.method), list(params.models)


MERGEKIT_YAML = """
models:
  - model: ./a
    parameters:
      weight: [0.2, 0.8]
  - model: ./b
    parameters:
      weight:
        - filter: mlp
          value: 0.9
        - value: 0.1
merge_method: task_arithmetic
base_model: ./base
parameters:
  normalize: true
  lambda: 0.5
dtype: bfloat16
"""


def test_mergekit_yaml_loads_as_is(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text(MERGEKIT_YAML)
    cfg = load_config(p)
    assert cfg.merge_method == "task_arithmetic"
    assert cfg.input_refs() == ["./base", "./a", "./b"]
    assert [m.model for m in cfg.merged_models()] == ["./a", "./b"]


def test_all_errors_at_once_name_field_value_and_options():
    with pytest.raises(ConfigError) as ei:
        load_config(
            {
                "merge_method": "tiez",
                "models": [{"model": "a", "parametres": {}}],
                "dtype": "fp8",
                "surprise": 1,
            }
        )
    text = str(ei.value)
    assert len(ei.value.problems) == 4
    assert "merge_method: unknown merge method 'tiez'; valid: linear, task_arithmetic, ties" in text
    assert "dtype: unknown dtype 'fp8'; valid: float32" in text
    assert "surprise: unknown key; valid keys: merge_method" in text
    assert "models[0].parametres: unknown key; valid keys: model, parameters" in text


def test_method_parameter_errors_at_once():
    with pytest.raises(ConfigError) as ei:
        load_config(
            {
                "merge_method": "task_arithmetic",
                "models": [
                    {"model": "a", "parameters": {"wieght": 1}},
                    {"model": "b", "parameters": {"normalize": True, "weight": [1, "x"]}},
                ],
                "parameters": {"lambda": "big"},
            }
        )
    probs = ei.value.problems
    assert (
        "models[0].parameters.wieght: unknown parameter for task_arithmetic; valid: weight, normalize, lambda, int8_mask, density, rescale"
        in probs
    )
    assert any(
        p.startswith("models[1].parameters.normalize: 'normalize' is method-wide") for p in probs
    )
    assert any(p.startswith("models[1].parameters.weight: a parameter is a scalar") for p in probs)
    assert "parameters.lambda: must be a number, got 'big'" in probs
    assert "base_model: required by task_arithmetic" in probs
    assert any(
        p.startswith("models[0].parameters.weight: required by task_arithmetic") for p in probs
    )


def test_missing_weight_is_fine_when_global():
    cfg = load_config(
        {
            "merge_method": "linear",
            "models": [{"model": "a"}, {"model": "b"}],
            "parameters": {"weight": 1.0},
        }
    )
    wide, per = _split(resolve_parameters(cfg, "model.layers.0.mlp.up_proj.weight", 0.0))
    assert wide == {"normalize": True}
    assert per == [{"weight": 1.0}, {"weight": 1.0}]


def test_lora_and_bad_tokenizer_source_refused():
    with pytest.raises(ConfigError) as ei:
        load_config(
            {
                "merge_method": "linear",
                "models": [{"model": "m+lora", "parameters": {"weight": 1}}],
                "tokenizer_source": "union",
            }
        )
    text = str(ei.value)
    assert (
        "LoRA references" in text
        and "tokenizer_source 'union' is not supported yet; valid: base" in text
    )


def test_yaml_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("merge_method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    p.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


@pytest.mark.parametrize(
    ("value", "name", "t", "expected"),
    [
        (0.3, "x", 0.7, 0.3),
        ([0.0, 1.0], "x", 0.25, 0.25),
        ([0.0, 1.0, 0.0], "x", 0.5, 1.0),
        ([0.0, 1.0, 0.0], "x", 0.75, 0.5),
        ([0.0, 1.0, 0.0], "x", 1.0, 0.0),
        ([{"filter": "mlp", "value": 2.0}, {"value": 3.0}], "layers.1.mlp.up", 0.0, 2.0),
        ([{"filter": "mlp", "value": 2.0}, {"value": 3.0}], "layers.1.self_attn.q", 0.0, 3.0),
        ([{"filter": "mlp", "value": [0.0, 4.0]}], "layers.1.mlp.up", 0.5, 2.0),
        ([{"filter": "mlp", "value": 2.0}], "attn", 0.0, None),
        ([{"filter": "*", "value": 2.0}], "attn", 0.0, 2.0),
        ([True, False], "x", 0.9, True),
    ],
)
def test_evaluate(value, name, t, expected):
    assert (
        evaluate(value, name, t) == pytest.approx(expected)
        if expected is not None
        else evaluate(value, name, t) is None
    )


def test_layer_position_and_precedence():
    assert layer_position("model.layers.0.mlp.up_proj.weight", 5) == 0.0
    assert layer_position("model.layers.4.mlp.up_proj.weight", 5) == 1.0
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert layer_position("lm_head.weight", 5) == 0.0
    assert layer_position("model.layers.0.mlp.up_proj.weight", 1) == 1.0  # mergekit: t=1 if L == 1
    cfg = load_config(
        {
            "merge_method": "task_arithmetic",
            "base_model": "base",
            "models": [{"model": "a", "parameters": {"weight": [0.0, 1.0]}}, {"model": "b"}],
            "parameters": {"weight": 0.5, "lambda": [1.0, 2.0]},
        }
    )
    wide, per = _split(resolve_parameters(cfg, "model.layers.2.mlp.up_proj.weight", 0.5))
    assert wide == {"normalize": False, "lambda": 1.5, "int8_mask": False, "rescale": False}
    assert per == [{"weight": 0.5, "density": 1.0}, {"weight": 0.5, "density": 1.0}]
    wide, per = _split(resolve_parameters(cfg, "lm_head.weight", 0.0))
    assert wide["lambda"] == 1.0 and per[0]["weight"] == 0.0


def test_hash_ignores_storage_options_and_redacts():
    a = load_config(
        {"merge_method": "linear", "models": [{"model": "s3://b/a", "parameters": {"weight": 1}}]}
    )
    b = load_config(
        {
            "merge_method": "linear",
            "models": [{"model": "s3://b/a", "parameters": {"weight": 1}}],
            "storage_options": {"s3://b": {"key": "AK", "secret": "S3CR3T-VALUE"}},
        }
    )
    assert a.hash() == b.hash()
    assert "S3CR3T-VALUE" not in str(b.public_dict())
