"""Loading a config: YAML (or a mapping) -> :class:`MergeConfig`, every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raymerge.config.checks import validate_parameters
from raymerge.config.models import Calibration, InputModel, MergeConfig, Slice, SliceSource
from raymerge.errors import ConfigError
from raymerge.redaction import redact


def load_config(source: str | Path | dict[str, Any]) -> MergeConfig:
    """Load and validate a config from a YAML path or a mapping; all problems reported at once."""
    name = "config"
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            raw = yaml.safe_load(Path(source).read_text())
        except FileNotFoundError:
            raise ConfigError([f"file not found: {source}"], name) from None
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], name) from None
    else:
        raw = source
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping, got {type(raw).__name__}"], name)
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc, raw), name) from None
    problems = validate_parameters(cfg)
    if problems:
        raise ConfigError(problems, name)
    return cfg


def _pydantic_problems(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    out = []
    for err in exc.errors():
        loc = _loc_text(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = _parent_fields(err["loc"])
            out.append(f"{loc}: unknown key; valid keys: {', '.join(parent)}")
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
        model = {
            "models": InputModel,
            "slices": Slice,
            "sources": SliceSource,
            "calibration": Calibration,
        }.get(part, model)
    return list(model.model_fields)
