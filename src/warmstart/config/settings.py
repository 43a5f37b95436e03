"""Resolved settings: a command's options once every automatic choice is made, frozen.

A task resolves its options in one place (tasks/<command>.py): the user's values, then the defaults a
task kind, the model or the machine decide (an epoch count per task, the model's length limit, a
measured precision), each with the reason it was made. Every layer below reads the frozen settings and
none assigns to them; config.yaml is written from them, the reasons as its header, so anybody can say
where a value was decided. A choice is made by ``settle``, which returns a new frozen copy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class Settings:
    """Base of every command's options dataclass: mutable while it is being built, frozen by
    ``settle``. An assignment to a frozen one is a programming error, refused at once."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(
                f"'{name}' of resolved {type(self).__name__} cannot change: options are resolved "
                "once, in the task (config.settle)"
            )
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Choice:
    """A value decided for the user, and why: said in the log and in config.yaml's header."""

    value: Any
    reason: str = ""


def values(cfg: Any) -> dict[str, Any]:
    """The fields of ``cfg`` as they are (no copy of lists, unlike dataclasses.asdict)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def reasons(cfg: Any) -> dict[str, str]:
    """Option name -> why its value was chosen, for every automatic choice made so far."""
    return dict(cfg.__dict__.get("_reasons", {}))


def is_frozen(cfg: Any) -> bool:
    return bool(cfg.__dict__.get("_frozen"))


def settle(cfg: T, choices: dict[str, Choice | Any] | None = None, **more: Choice | Any) -> T:
    """A frozen copy of ``cfg`` with ``choices`` made (a ``Choice``, or a plain value needing no
    reason): the one way options change once a task has begun resolving them."""
    made = {**(choices or {}), **more}
    unknown = sorted(set(made) - set(values(cfg)))
    if unknown:
        raise AttributeError(f"{type(cfg).__name__} has no option(s) {', '.join(unknown)}")
    plain = {k: c.value if isinstance(c, Choice) else c for k, c in made.items()}
    new = type(cfg)(**{**values(cfg), **plain})
    why = reasons(cfg)
    why.update({k: c.reason for k, c in made.items() if isinstance(c, Choice) and c.reason})
    object.__setattr__(new, "_reasons", why)
    object.__setattr__(new, "_frozen", True)
    return new


def notes(cfg: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """config.yaml's header lines: each automatic choice (but ``skip``), its value and why."""
    return [f"{k} {getattr(cfg, k)!r}: {why}" for k, why in reasons(cfg).items() if k not in skip]
