"""Strict config: all errors at once, mergekit YAML as-is, parameter resolution rules."""

from __future__ import annotations

import pytest

from raymerge.config import load_config
from raymerge.errors import ConfigError
from raymerge.layers import find_stacks, position
from raymerge.params import evaluate, resolve_parameters


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
    assert (
        "merge_method: unknown merge method 'tiez' (did you mean 'ties'?); valid: linear, " in text
    )
    assert "dtype: unknown dtype 'fp8'; valid: float32" in text
    assert "surprise: unknown key 'surprise'; valid keys: merge_method" in text
    assert (
        "models[0].parametres: unknown key 'parametres' (did you mean 'parameters'?); valid keys: model, parameters"
        in text
    )


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
        "models[0].parameters.wieght: unknown parameter 'wieght' (did you mean 'weight'?) for task_arithmetic; valid: weight, normalize, lambda, int8_mask, density, rescale"
        in probs
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


def test_tokenizer_and_lora_keys_are_checked_naming_the_field():
    with pytest.raises(ConfigError) as ei:
        load_config(
            {
                "merge_method": "linear",
                "models": [{"model": "m+lora+more", "parameters": {"weight": 1}}, {"model": "b"}],
                "parameters": {"weight": 1},
                "tokenizer": {
                    "source": "elsewhere",
                    "tokens": {
                        "<x>": {"source": {"kind": "model_token", "model": "b"}},
                        "<y>": {"source": "c", "force": True},
                    },
                    "pad_to_multiple_of": 0,
                },
                "chat_template": "nonexistent_template",
            }
        )
    text = str(ei.value)
    assert "models[0].model: cannot parse model reference 'm+lora+more'" in text
    assert "tokenizer.tokens.<x>.source: give exactly one of 'token' or 'token_id'" in text
    assert "tokenizer.pad_to_multiple_of: Input should be greater than or equal to 1" in text
    assert "chat_template: unknown chat template 'nonexistent_template'" in text
    with pytest.raises(ConfigError) as ei:
        load_config(
            {
                "merge_method": "linear",
                "models": [{"model": "a+lora"}, {"model": "b"}],
                "parameters": {"weight": 1},
                "tokenizer": {"source": "elsewhere", "tokens": {"<y>": {"source": "c"}}},
            }
        )
    text = str(ei.value)
    assert "tokenizer.source: 'elsewhere' is not one of the models of this merge" in text
    assert "tokenizer.tokens.<y>.source: 'c' is not one of the models of this merge" in text
    with pytest.raises(ConfigError, match="give one of 'tokenizer_source' or 'tokenizer'"):
        load_config(
            {
                "merge_method": "linear",
                "models": [{"model": "a", "parameters": {"weight": 1}}],
                "tokenizer_source": "base",
                "tokenizer": {"source": "base"},
            }
        )
    with pytest.raises(ConfigError, match="at least 20 characters"):
        load_config(
            {
                "merge_method": "linear",
                "models": [{"model": "a", "parameters": {"weight": 1}}],
                "chat_template": "{{ x }}",
            }
        )


def test_tokenizer_keys_load_as_mergekit_reads_them():
    cfg = load_config(
        {
            "merge_method": "linear",
            "base_model": "a",
            "models": [{"model": "a+l", "parameters": {"weight": 1}}, {"model": "a"}],
            "parameters": {"weight": 1},
            "tokenizer_source": "union",
            "chat_template": "chatml",
        }
    )
    assert cfg.vocabulary.source == "union" and cfg.vocabulary.tokens is None
    assert cfg.input_refs() == ["a", "a+l"]
    assert load_config(
        {"merge_method": "linear", "models": [{"model": "a"}], "parameters": {"weight": 1},
         "tokenizer": {}}
    ).vocabulary.source == "union"  # fmt: skip


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
    five = find_stacks([f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)])
    assert position("model.layers.0.mlp.up_proj.weight", five) == 0.0
    assert position("model.layers.4.mlp.up_proj.weight", five) == 1.0
    assert position("model.embed_tokens.weight", five) == 0.0
    assert position("lm_head.weight", five) == 0.0
    one = find_stacks(["model.layers.0.mlp.up_proj.weight"])
    assert position("model.layers.0.mlp.up_proj.weight", one) == 1.0  # mergekit: t=1 if L == 1
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


# --------------------------------------------------------------------------- hostile configs


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("models: [{model: a, parameters: {weight: .nan}}, {model: b, parameters: {weight: 1}}]",
         "models[0].parameters.weight"),
        ("models: [{model: a, parameters: {weight: .inf}}, {model: b, parameters: {weight: 1}}]",
         "models[0].parameters.weight"),
        ("models: [{model: a, parameters: {weight: [0, .nan]}}]", "models[0].parameters.weight"),
        ("models: [{model: a, parameters: {weight: 1, density: .nan}}]",
         "models[0].parameters.density"),
        ("models: [{model: a, parameters: {weight: 1}}]\nparameters: {lambda: .nan}",
         "parameters.lambda"),
        ("models: [{model: a, parameters: {weight: 1}}]\nparameters: {lambda: -.inf}",
         "parameters.lambda"),
    ],
)  # fmt: skip
def test_non_finite_parameters_are_refused(tmp_path, yaml_text, field):
    """NaN and Inf parameters would give an all-NaN/Inf model that verifies: refused, naming
    the field."""
    method = "ties" if "density" in yaml_text or "lambda" in yaml_text else "linear"
    base = "base_model: z\n" if method == "ties" else ""
    p = tmp_path / "m.yaml"
    p.write_text(f"merge_method: {method}\n{base}{yaml_text}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert any(pr.startswith(f"{field}: must be a finite number") for pr in ei.value.problems)


def test_slerp_t_nan_is_refused():
    with pytest.raises(ConfigError, match=r"parameters.t: must be a finite number, got nan"):
        load_config(
            {
                "merge_method": "slerp",
                "base_model": "b",
                "models": [{"model": "b"}, {"model": "a"}],
                "parameters": {"t": float("nan")},
            }
        )


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    """9 levels of nested anchors (a 484-byte file standing for 10^9 nodes) are refused from
    the expanded size, without expanding them, wherever they sit (here: storage options)."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for k in range(1, 10):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]")
    body = "\n".join(f"  {line}" for line in lines)
    p = tmp_path / "bomb.yaml"
    p.write_text(
        "merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\n"
        f"storage_options:\n  s3://x:\n{body}\n"
    )
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"more than 100000 values once YAML aliases"):
        load_config(p)
    assert time.perf_counter() - t0 < 2


def test_deep_nesting_and_huge_files_are_refused(tmp_path):
    deep = {"merge_method": "linear", "models": [{"model": "a"}], "parameters": {}}
    node = deep["parameters"]
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ConfigError, match=r"nested more than 32 levels deep"):
        load_config(deep)
    big = tmp_path / "big.yaml"
    big.write_text("merge_method: linear\n# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"a merge config is at most 1048576"):
        load_config(big)


def test_an_unknown_top_level_key_hides_no_other_problem():
    with pytest.raises(ConfigError) as ei:
        load_config(
            {
                "merge_method": "ties",
                "modles": [],
                "models": [{"model": "a", "parameters": {"densty": 0.5}}],
            }
        )
    probs = ei.value.problems
    assert any(p.startswith("modles: unknown key 'modles' (did you mean 'models'?)") for p in probs)
    assert "base_model: required by ties" in probs
    assert any(p.startswith("models[0].parameters.densty: unknown parameter") for p in probs)
    assert any("required by ties for model 'a'" in p for p in probs)  # weight


def test_what_mergekit_ignores_is_a_warning_and_an_error_with_strict():
    """mergekit 0.1.5 accepts and ignores `weight` on slerp (6 of its own test configs use
    it), a method-wide parameter on a model, and `embed_slerp`: warnings, named once."""
    body = {
        "merge_method": "slerp",
        "base_model": "b",
        "models": [
            {"model": "b", "parameters": {"weight": 0.5}},
            {"model": "a", "parameters": {"weight": 0.5, "t": 0.2}},
        ],
        "parameters": {"t": 0.5},
        "embed_slerp": True,
    }
    cfg = load_config(body)
    assert sorted(cfg.warnings) == sorted(
        [
            "embed_slerp: ignored (removed from mergekit in 2025; it has no effect)",
            "models[0].parameters.weight: ignored: slerp has no parameter 'weight' (mergekit "
            "accepts it and ignores it too)",
            "models[1].parameters.weight: ignored: slerp has no parameter 'weight' (mergekit "
            "accepts it and ignores it too)",
            "models[1].parameters.t: ignored: 't' is method-wide for slerp (mergekit ignores "
            "it on a model too); set it under the top-level (or slice) parameters",
        ]
    )
    with pytest.raises(ConfigError) as ei:
        load_config(body, strict=True)
    assert len(ei.value.problems) == 4
    assert all(p.endswith("(an error with --strict)") for p in ei.value.problems)
