"""The search space: a YAML file of option name -> distribution, each option checked against the
tuned command's options before any trial runs.

    lr: {type: float, low: 2.0e-5, high: 3.0e-4, log: true}
    epochs: {type: int, low: 1, high: 3}
    batch_size: {type: categorical, choices: [8, 16, 32]}

A bad entry is one error naming the file and the key: a typo in the space must not cost a search."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmstart.config import build
from warmstart.errors import UserError

# Set by tune for every trial, so neither the tuned options nor the space may choose them.
OWNED = ("out", "overwrite", "resume")
SPEC_KEYS = {
    "float": ("low", "high", "log", "step"),
    "int": ("low", "high", "log", "step"),
    "categorical": ("choices",),
}


@dataclass
class Param:
    """One searched option and its distribution, as the space file gives it."""

    name: str
    type: str  # float, int or categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def values_to_check(self) -> list[Any]:
        """Values whose acceptance by the option shows every sampled value is accepted (bounds are
        intervals)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_categorical(self.name, self.choices)


def read_space(
    path: str, cls: type, base: dict[str, Any], command: str
) -> tuple[list[Param], dict]:
    """The searched options of ``path``, each checked against ``cls``: a known option not set by
    tune, a valid distribution, and every value it can take accepted by the option (type, choices,
    declared range) when set over the tuned options ``base``. Returns the parameters and the space
    as read (underscored names), which a resumed search must match."""
    where = f"space file '{path}'"
    raw = _read_file(path)
    if not raw:
        raise UserError(f"{where} names no option to search")
    fields = [f.name for f in dataclasses.fields(cls)]
    params = []
    for key, spec in raw.items():
        name = str(key).replace("-", "_")

        def bad(msg: str, key: Any = key) -> UserError:
            return UserError(f"{where}, key '{key}': {msg}")

        if name not in fields:
            raise bad(f"unknown option of {command} (known: {', '.join(fields)})")
        if name in (*OWNED, "metric_for_best"):
            raise bad(
                "is set by tune, not searched (the metric trials are compared on is tune's"
                " --metric)"
            )
        if not isinstance(spec, dict):
            raise bad("must be a mapping such as {type: float, low: 1e-5, high: 1e-3, log: true}")
        param = _parse_param(name, spec, bad)
        for value in param.values_to_check():
            try:
                build(cls, {**base, name: value}, source=where)
            except UserError as e:
                raise bad(f"{value!r} is not a valid value: {e}") from None
        params.append(param)
    return params, {str(k).replace("-", "_"): v for k, v in raw.items()}


def _read_file(path: str) -> dict:
    """The mapping in the space file ({} for an empty file)."""
    if not path:
        raise UserError("tune needs a space file: --space FILE")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"space file '{path}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(
            f"space file '{path}' is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"space file '{path}' must hold a mapping of option: distribution")
    return data or {}


def _parse_param(name: str, spec: dict, bad) -> Param:
    """One entry's distribution, checked the way Optuna will use it; ``bad(msg)`` makes the
    error."""
    kind = spec.get("type")
    if kind not in SPEC_KEYS:
        raise bad(f"type must be float, int or categorical, got {kind!r}")
    unknown = sorted(str(k) for k in spec if k != "type" and k not in SPEC_KEYS[kind])
    if unknown:
        raise bad(
            f"unknown key(s) {', '.join(unknown)} for type {kind} (known: type,"
            f" {', '.join(SPEC_KEYS[kind])})"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("choices must be a non-empty list, e.g. choices: [8, 16]")
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise bad("each choice must be a single value (number, string, true/false or null)")
        return Param(name, kind, choices=choices)
    integral = kind == "int"
    low, high = (_number(spec.get(k), integral) for k in ("low", "high"))
    for key, value in (("low", low), ("high", high)):
        if value is None:
            raise bad(
                f"{key} must be {'an integer' if integral else 'a number'}, got {spec.get(key)!r}"
            )
    if not low < high:
        raise bad(f"low ({spec['low']}) must be below high ({spec['high']})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise bad(f"log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, integral)
        if step is None or step <= 0:
            raise bad(
                f"step must be a positive {'integer' if integral else 'number'}, got"
                f" {spec.get('step')!r}"
            )
        if log and step != 1:
            raise bad("log and step cannot be combined (Optuna samples a log scale without steps)")
    if log and low <= 0:
        raise bad(f"a log scale needs low > 0, got {spec['low']}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _number(value: Any, integral: bool) -> float | int | None:
    """A bound as a number, or None. Strings are read too: YAML 1.1 (PyYAML) reads 1e-5 as the
    string '1e-5'."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value) if integral else float(value)
        except ValueError:
            return None
    if integral:
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
