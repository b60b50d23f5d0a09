"""Method-specific checks of a config: unknown or misplaced parameters, missing required ones,
ranges, input counts, layer ranges (all problems collected, none raised here)."""

from __future__ import annotations

from typing import Any

from raymerge.config.models import MergeConfig
from raymerge.methods import REGISTRY

# every parameter name some merge method of mergekit 0.1.5 reads (a YAML key of another
# method's parameter is ignored by mergekit, so it is a warning here, not an error)
MERGEKIT_PARAMETERS = frozenset(
    {
        "weight", "density", "epsilon", "lambda", "gamma", "normalize", "rescale", "int8_mask",
        "t", "filter_wise", "scale", "nuslerp_row_wise", "nuslerp_flatten",
        "normalize_weights", "eps", "max_iter", "tol", "select_topk", "r", "alpha",
    }
)  # fmt: skip


def did_you_mean(word: str, options: list[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest of ``options``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _leaves(value: Any, where: str, problems: list[str]) -> list[Any]:
    """The scalar leaves of a parameter value; records shape errors."""
    if isinstance(value, (bool, int, float, str)):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return list(value)  # gradient
        if all(isinstance(v, dict) for v in value):
            out: list[Any] = []
            for i, cond in enumerate(value):
                extra = set(cond) - {"filter", "value"}
                if extra or "value" not in cond:
                    problems.append(
                        f"{where}[{i}]: a filter entry is {{filter: substring, value: ...}}, "
                        f"got keys {sorted(cond)}"
                    )
                    continue
                if "filter" in cond and not isinstance(cond["filter"], str):
                    problems.append(
                        f"{where}[{i}].filter: must be a string, got {cond['filter']!r}"
                    )
                out.extend(_leaves(cond["value"], f"{where}[{i}].value", problems))
            return out
    problems.append(
        f"{where}: a parameter is a scalar, a list of numbers (gradient) or a list of "
        f"{{filter, value}} entries; got {value!r}"
    )
    return []


def groups(cfg: MergeConfig) -> list[tuple[str, list[Any], dict[str, Any] | None]]:
    """(where, entries, slice parameters) for the models list or for each slice."""
    if cfg.models is not None:
        return [("models", list(cfg.models), None)]
    return [
        (f"slices[{k}].sources", list(sl.sources), sl.parameters)
        for k, sl in enumerate(cfg.slices or [])
    ]


def validate_parameters(cfg: MergeConfig) -> tuple[list[str], list[str]]:
    """Method-specific checks: unknown or misplaced parameters, missing required ones, ranges,
    input counts, layer ranges.

    Returns:
        Every problem found and every warning (parameters mergekit accepts and ignores), each
        naming the field.
    """
    problems: list[str] = []
    warnings: list[str] = []
    glob = cfg.parameters or {}
    _check_block(cfg, glob, "parameters", False, problems, warnings)
    _check_whole_config(cfg, problems)
    _check_tokenizer(cfg, problems)
    for where, entries, slice_params in groups(cfg):
        if slice_params:
            where_sl = where.removesuffix(".sources") + ".parameters"
            _check_block(cfg, slice_params, where_sl, False, problems, warnings)
        for i, m in enumerate(entries):
            where_m = f"{where}[{i}].parameters"
            _check_block(cfg, m.parameters or {}, where_m, True, problems, warnings)
        _check_inputs(cfg, where, entries, problems)
        if where.startswith("slices"):
            _check_ranges(where, entries, problems)
        _check_required(cfg, where, entries, slice_params or {}, problems)
    return list(dict.fromkeys(problems)), list(dict.fromkeys(warnings))


def _check_block(
    cfg: MergeConfig,
    block: dict[str, Any],
    where: str,
    per_model: bool,
    problems: list[str],
    warnings: list[str],
) -> None:
    """One parameters block: every key known, in its place, every value in range. A key that
    is some mergekit method's parameter but not this method's (``weight`` on slerp), or a
    method-wide parameter set on a model, is what mergekit silently ignores: a warning."""
    method = cfg.method
    names = [p.name for p in method.params]
    valid = ", ".join(names) or "(none)"
    for key, value in block.items():
        spec = method.param(key)
        if spec is None and key in MERGEKIT_PARAMETERS:
            warnings.append(
                f"{where}.{key}: ignored: {method.name} has no parameter {key!r} (mergekit "
                "accepts it and ignores it too)"
            )
            continue
        if spec is None:
            hint = did_you_mean(key, names)
            problems.append(
                f"{where}.{key}: unknown parameter {key!r}{hint} for {method.name}; valid: {valid}"
            )
            continue
        if per_model and spec.scope == "global":
            warnings.append(
                f"{where}.{key}: ignored: {key!r} is method-wide for {method.name} (mergekit "
                "ignores it on a model too); set it under the top-level (or slice) parameters"
            )
            continue
        for leaf in _leaves(value, f"{where}.{key}", problems):
            issue = spec.check(leaf)
            if issue:
                problems.append(f"{where}.{key}: {issue}")


def _check_whole_config(cfg: MergeConfig, problems: list[str]) -> None:
    """Calibration and base model, as the method needs them."""
    method = cfg.method
    if method.calibration:
        if cfg.slices is not None:
            problems.append(f"slices: {method.name} merges whole models; use 'models'")
        if cfg.base_model:
            problems.append(f"base_model: {method.name} does not use a base model; remove it")
        if cfg.calibration is None and (cfg.parameters or {}).get("matcher", "") != "identity":
            problems.append(
                f"calibration: required by {method.name} (a file of inputs or input_ids, "
                "see raymerge/zipit/gather.py); only matcher: identity works without it"
            )
        loras = [r for r in cfg.input_refs() if "+" in r]
        if loras:
            problems.append(
                f"models: {method.name} computes activations of the models as stored; LoRA "
                f"references {loras} are not supported with it (merge the adapters first)"
            )
    elif cfg.calibration is not None:
        users = ", ".join(m.name for m in REGISTRY.values() if m.calibration)
        problems.append(f"calibration: only used by {users}; remove it for {method.name}")
    if method.base == "required" and not cfg.base_model:
        problems.append(f"base_model: required by {method.name}")
    if cfg.non_float_tensors == "from_base" and not cfg.base_model:
        problems.append("non_float_tensors: 'from_base' needs a base_model to copy them from")


def _check_tokenizer(cfg: MergeConfig, problems: list[str]) -> None:
    """The models the tokenizer keys name are models of the merge."""
    voc = cfg.vocabulary
    if voc is None:
        return
    key = "tokenizer.source" if cfg.tokenizer is not None else "tokenizer_source"
    refs = cfg.input_refs()
    if cfg.method.calibration:
        problems.append(
            f"{key}: {cfg.merge_method} permutes hidden features; vocabulary alignment is not "
            "supported with it (merge models of one vocabulary, or use another method)"
        )
    if voc.source not in ("union", "base") and voc.source not in refs:
        problems.append(
            f"{key}: {voc.source!r} is not one of the models of this merge; valid: 'union', "
            f"'base' or one of {refs} (raymerge reads the tokenizers of merged models only)"
        )
    for tok, emb in (voc.tokens or {}).items():
        src = emb.source
        model = src if isinstance(src, str) else getattr(src, "model", None)
        if model is not None and model not in refs:
            problems.append(
                f"tokenizer.tokens.{tok}.source: {model!r} is not one of the models of this "
                f"merge{did_you_mean(model, refs)}; valid: {refs}"
            )


def _check_inputs(cfg: MergeConfig, where: str, entries: list[Any], problems: list[str]) -> None:
    """The number of merged models, and the base model among a slice's sources."""
    method = cfg.method
    lo, hi = method.inputs
    merged = cfg.merged_of(entries)
    if len(merged) < lo or (hi is not None and len(merged) > hi):
        want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        besides = " besides base_model" if method.uses_base(cfg.base_model) else ""
        problems.append(
            f"{where}: {method.name} takes {want} model(s){besides}, got {len(merged)}: "
            f"{[m.model for m in merged]}"
        )
    if method.uses_base(cfg.base_model) and cfg.base_model and where.startswith("slices"):
        if not any(m.model == cfg.base_model for m in entries):
            problems.append(f"{where}: no source is base_model {cfg.base_model!r}")


def _check_ranges(where: str, entries: list[Any], problems: list[str]) -> None:
    """A slice's layer ranges: non-empty, and all of one length."""
    lengths = {m.layer_range[1] - m.layer_range[0] for m in entries}
    for i, m in enumerate(entries):
        a, b = m.layer_range
        if a < 0 or b <= a:
            problems.append(f"{where}[{i}].layer_range: [{a}, {b}] is not a non-empty range")
    if len(lengths) > 1:
        problems.append(
            f"{where}: layer ranges have different lengths {[list(m.layer_range) for m in entries]}"
        )


def _check_required(
    cfg: MergeConfig,
    where: str,
    entries: list[Any],
    slice_params: dict[str, Any],
    problems: list[str],
) -> None:
    """Every required parameter has a value for every merged model."""
    method = cfg.method
    glob = cfg.parameters or {}
    merged = cfg.merged_of(entries)
    for spec in method.params:
        if not spec.required or spec.name in glob or spec.name in slice_params:
            continue
        if spec.scope == "global":
            problems.append(f"parameters.{spec.name}: required by {method.name}")
            continue
        for i, m in enumerate(entries):
            if m in merged and spec.name not in (m.parameters or {}):
                problems.append(
                    f"{where}[{i}].parameters.{spec.name}: required by {method.name} "
                    f"for model {m.model!r} (set it per model or in the global parameters)"
                )


__all__ = ["groups", "validate_parameters"]
