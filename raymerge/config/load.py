"""Loading a config: YAML (or a mapping) -> :class:`MergeConfig`, every problem at once.

Hostile configs are bounded before anything looks at them: the file size, the nesting depth and
the number of nodes *after* alias expansion (a few nested YAML anchors can stand for billions of
nodes; PyYAML builds them as shared references, so the expanded size is counted without
expanding). Unknown keys are reported with the keys that are valid there and the nearest one
("did you mean"), together with every other problem, in one error. Keys and parameters that
mergekit 0.1.5 accepts and ignores are warnings (:attr:`MergeConfig.warnings`); ``strict``
turns them into errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raymerge.config.checks import did_you_mean, validate_parameters
from raymerge.config.models import Calibration, InputModel, MergeConfig, Slice, SliceSource
from raymerge.config.tokenizer import ModelToken, TokenEmbedding, TokenizerConfig, ZeroToken
from raymerge.errors import ConfigError
from raymerge.redaction import redact

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000  # after alias expansion; mergekit configs have tens to hundreds
# keys mergekit 0.1.5 reads nowhere (it ignores them silently): warnings here
IGNORED_TOP = {"embed_slerp": "removed from mergekit in 2025; it has no effect"}
IGNORED_SLICE = {"residual_weight": "mergekit 0.1.5 accepts it and never reads it"}
_MODELS = {
    "models": InputModel,
    "slices": Slice,
    "sources": SliceSource,
    "calibration": Calibration,
    "tokenizer": TokenizerConfig,
    "tokens": TokenEmbedding,
    "source": ModelToken,
    "model_token": ModelToken,
    "zero": ZeroToken,
}


def load_config(source: str | Path | dict[str, Any], *, strict: bool = False) -> MergeConfig:
    """Load and validate a config from a YAML path or URL, or a mapping.

    Args:
        source: a path or fsspec URL of a YAML file, or the parsed mapping.
        strict: treat warnings (what mergekit accepts and ignores) as errors.

    Returns:
        The config; its :attr:`MergeConfig.warnings` lists what was accepted and ignored.

    Raises:
        ConfigError: every problem found, each naming the field, the value and the options.
    """
    name = str(source) if isinstance(source, (str, Path)) else "config"
    raw = _read(source, name) if isinstance(source, (str, Path)) else source
    _check_size(raw, name)
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], name)
    raw, warnings = _drop_ignored(raw)
    problems: list[str] = []
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = _pydantic_problems(exc)
        cfg = _without_unknown_keys(raw, exc)  # so the other checks still run
        if cfg is None:
            raise ConfigError(problems, name) from None
    found, more_warnings = validate_parameters(cfg)
    problems += [p for p in found if p not in problems]
    warnings += more_warnings
    if strict:
        problems += [f"{w} (an error with --strict)" for w in warnings]
    if problems:
        raise ConfigError(problems, name)
    return cfg.with_warnings(tuple(dict.fromkeys(warnings)))


def _read(path: str | Path, name: str) -> Any:
    if isinstance(path, str) and "://" in path:
        return _read_url(path, name)
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise ConfigError([f"{path} is not a regular file"], name)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"the file is {size} bytes; a merge config is at most {MAX_CONFIG_BYTES}"], name
            )
        return yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], name) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError([f"not valid YAML: {str(exc)[:500]}"], name) from None


def _read_url(url: str, name: str) -> Any:
    """A config at any fsspec URL (storage options from the environment)."""
    from raymerge.io.files import read_small
    from raymerge.storage import resolve

    try:
        data = read_small(resolve(url), MAX_CONFIG_BYTES)
        return yaml.safe_load(data.decode())
    except FileNotFoundError:
        raise ConfigError([f"file not found: {url}"], name) from None
    except (OSError, ValueError, yaml.YAMLError, RecursionError) as exc:
        raise ConfigError([f"cannot read: {str(exc)[:500]}"], name) from None


def _check_size(raw: Any, name: str) -> None:
    """Refuse configs too deep or too large once aliases are expanded (counted per distinct
    object, so a DAG of shared references is measured without being expanded)."""
    sizes: dict[int, int] = {}

    def size(obj: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ConfigError([f"nested more than {MAX_DEPTH} levels deep"], name)
        if not isinstance(obj, (dict, list)):
            return 1
        if id(obj) in sizes:
            return sizes[id(obj)]
        children = obj.values() if isinstance(obj, dict) else obj
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                break
        sizes[id(obj)] = total
        return total

    n = size(raw, 0)
    if n > MAX_NODES:
        raise ConfigError(
            [
                f"more than {MAX_NODES} values once YAML aliases are expanded; a merge config has "
                "a few hundred (are anchors/aliases nested?)"
            ],  # fmt: skip
            name,
        )


def _drop_ignored(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keys mergekit accepts and ignores: removed, with a warning each."""
    warnings: list[str] = []
    out = dict(raw)
    for key, why in IGNORED_TOP.items():
        if key in out:
            out.pop(key)
            warnings.append(f"{key}: ignored ({why})")
    slices = out.get("slices")
    if isinstance(slices, list):
        kept = []
        for k, sl in enumerate(slices):
            if isinstance(sl, dict):
                sl = dict(sl)
                for key, why in IGNORED_SLICE.items():
                    if key in sl:
                        sl.pop(key)
                        warnings.append(f"slices[{k}].{key}: ignored ({why})")
            kept.append(sl)
        out["slices"] = kept
    return out, warnings


def _without_unknown_keys(raw: dict[str, Any], exc: ValidationError) -> MergeConfig | None:
    """The config with its unknown keys removed, if that alone makes it valid (then the
    method-specific checks can report their problems too); else None."""
    if any(e["type"] != "extra_forbidden" for e in exc.errors()):
        return None
    stripped: Any = _copy(raw)
    for err in exc.errors():
        node = stripped
        for part in err["loc"][:-1]:
            node = node[part]
        node.pop(err["loc"][-1], None)
    try:
        return MergeConfig.model_validate(stripped)
    except ValidationError:
        return None


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj


_BRANCH_TYPES = {"str", "int", "float", "bool", "none", "dict", "list"}


def _branchless(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's union-branch parts (``tagged-union[...]`` and its tag,
    ``str``, ``function-after[...]``): the field as the user wrote it."""
    out: list[Any] = []
    skip_tag = False
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in _BRANCH_TYPES or skip_tag):
            skip_tag = part.startswith("tagged-union[")
            continue
        out.append(part)
    return tuple(out)


def _union_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the errors a union field collects (one per branch), the ones that say something:
    "should be a valid string" for a mapping is dropped when a mapping branch explains more."""
    by_loc: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in errors:
        by_loc.setdefault(_branchless(err["loc"]), []).append({**err, "raw": err["loc"]})
    out = []
    for loc, errs in by_loc.items():
        deeper = any(other[: len(loc)] == loc and other != loc for other in by_loc)
        useful = [e for e in errs if not e["type"].endswith("_type")]
        if not useful and not deeper:  # only type errors: one, naming every accepted type
            msg = " or ".join(e["msg"].removeprefix("Input should be ") for e in errs)
            useful = [{**errs[0], "msg": f"Input should be {msg}"}]
        out += [{**e, "loc": loc} for e in useful]
    return out


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for err in _union_errors(exc.errors()):
        loc = _loc_text(err["loc"])
        if err["type"] == "extra_forbidden":
            key, valid = str(err["loc"][-1]), _parent_fields(err["raw"])
            out.append(
                f"{loc}: unknown key {key!r}{did_you_mean(key, valid)}; valid keys: "
                f"{', '.join(valid)}"
            )
        elif err["type"] == "missing":
            out.append(f"{loc}: required field is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(f"{loc}: {msg} (got {redact(err.get('input'))!r})")
    return out


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "config"


def _parent_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = MergeConfig
    for part in loc[:-1]:
        model = _MODELS.get(part, model)
    return list(model.model_fields)
