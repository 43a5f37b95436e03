"""Building a command's dataclass from a dict (YAML/TOML file, flags or keyword arguments), with one
clear sentence for an unknown option or a value of the wrong type."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml

from warmstart.config.options import describe_bounds, within_bounds
from warmstart.errors import UserError


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check a YAML/keyword value against the field's type, converting ints to floats etc."""
    if value is None:
        return None
    args = (
        [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is not list
        else []
    )
    base = (args or [tp])[0]
    if typing.get_origin(base) is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
    elif base is bool and isinstance(value, bool):
        return value
    elif base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UserError(f"option '{name}' must be a finite number, got {value!r}")
        return float(value)
    elif base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    raise UserError(f"option '{name}' must be {getattr(base, '__name__', base)}, got {shown}")


def build(cls: type, values: dict[str, Any], source: str = "arguments") -> Any:
    """Build config ``cls`` from a dict, rejecting unknown keys and wrong types with one
    sentence."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} in {source} (known: {', '.join(fields)})"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(name, value, hints[name])
        choices = fields[name].metadata.get("choices")
        if choices and kwargs[name] is not None and kwargs[name] not in choices:
            raise UserError(f"option '{name}' must be one of {', '.join(choices)}, got {value!r}")
        bounds = fields[name].metadata.get("bounds")
        if bounds and kwargs[name] is not None and not within_bounds(kwargs[name], bounds):
            raise UserError(f"option '{name}' must be {describe_bounds(bounds)}, got {value!r}")
    return cls(**kwargs)


def read_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or TOML file of options (the same keys as the command's flags, with
    underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' does not exist")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        else:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"config file '{path}' is not valid YAML/TOML: {str(e).splitlines()[0]}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def absolute_paths(cfg: Any, *names: str) -> Any:
    """A copy of ``cfg`` with the existing paths among ``names`` made absolute, so config.yaml
    repeats a run from any folder."""
    changed = {}
    for name in names:
        value = getattr(cfg, name)
        if value and Path(value).expanduser().exists():
            changed[name] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(cfg, **changed) if changed else cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def make(cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """The config a task function runs with: a dataclass, keyword arguments, or both (kwargs
    win)."""
    if config is None:
        return build(cls, kwargs)
    if not isinstance(config, cls):
        raise UserError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return build(cls, {**dataclasses.asdict(config), **kwargs})


def given_flags(cfg: Any, names: tuple[str, ...]) -> list[str]:
    """The --flags among the fields ``names`` that ``cfg`` sets to something other than their
    default: to name the options that do not apply to what was asked."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}

    def default(name: str) -> Any:
        f = fields[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    return [f"--{k.replace('_', '-')}" for k in names if getattr(cfg, k) != default(k)]


def refuse_inapplicable(cfg: Any, names: tuple[str, ...], what: str) -> None:
    """One clear error when options among ``names`` are set although they do nothing for
    ``what``."""
    flags = given_flags(cfg, names)
    if flags:
        raise UserError(
            f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply to {what}"
        )
