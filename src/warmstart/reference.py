"""The CLI and Python API reference pages of the docs site, generated from the command table and the
config dataclasses, so a new option or command appears in the docs without anybody writing it down.

    python -m warmstart.reference docs/reference      # writes cli.md and python-api.md there

Each command's options are grouped by the option group (``config/options.py``) that declares them,
its own options first; every option shows its flag, type, default, choices or range, and help, read
from the same field metadata the CLI's --help is built from. Reading them imports no torch."""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from pathlib import Path
from typing import Any

from warmstart import config
from warmstart.commands import COMMANDS, Command
from warmstart.config.options import describe_bounds

# Names of option groups as they are written.
_SPELLED = {"lora": "LoRA", "seq2seq": "seq2seq"}


def _owner(cls: type, name: str) -> type:
    """The class in ``cls``'s hierarchy that declares field ``name``: the command's own dataclass or
    the option group it comes from."""
    for klass in reversed(cls.__mro__):
        if name in klass.__dict__.get("__annotations__", {}):
            owner = klass
    return owner


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if args and typing.get_origin(tp) is not None:  # X | None
        return " or ".join(_type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return f"`{value}`" if value else "none"
    value = f.default
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`"


def _flag(f: dataclasses.Field, tp: Any, positional: tuple[str, ...]) -> str:
    if f.name in positional:
        return f"`{f.name.upper()}` (positional)"
    flag = "--" + f.name.replace("_", "-")
    if tp is bool or tp == bool | None:
        return f"`{flag}` / `--no-{flag[2:]}`"
    return f"`{flag} {f.name.upper()}`"


def _group_title(cls: type, command: Command) -> str:
    if cls is getattr(config, command.config):
        return f"Options of {command.name}"
    # "ModelSourceOptions" -> "Model source options", "QAOptions" -> "QA options"
    words = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", cls.__name__).split()
    words = [w if w.isupper() else w.lower() for w in words]
    title = " ".join(_SPELLED.get(w, w) for w in words)
    return title[0].upper() + title[1:]


def _first_sentence(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def options(command: Command) -> list[tuple[type, list[dataclasses.Field]]]:
    """The command's option fields, grouped by the class declaring them: its own first, then its
    option groups in the order the dataclass lists them."""
    cls = getattr(config, command.config)
    groups: dict[type, list[dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        groups.setdefault(_owner(cls, f.name), []).append(f)
    order = [cls, *cls.__mro__[1:]]
    return [(k, groups[k]) for k in order if k in groups]


def command_markdown(command: Command) -> str:
    cls = getattr(config, command.config)
    hints = typing.get_type_hints(cls)
    positional = " ".join(
        f"[{p.upper()}...]" if typing.get_origin(hints[p]) is list else f"[{p.upper()}]"
        for p in command.positional
    )
    lines = [
        f"## {command.name}",
        "",
        command.help[0].upper() + command.help[1:] + ".",
        "",
        "```",
        f"warmstart {command.name} {positional + ' ' if positional else ''}[OPTIONS]",
        "```",
        "",
        f"Python: `warmstart.{command.name}(cfg: warmstart.{command.config} | None = None,"
        f" **options)`" + (f" returns `warmstart.{command.result}`." if command.result else "."),
        "Every option below is also a keyword argument and a key of a `--config` YAML/TOML file"
        " (with underscores).",
        "",
        "- `--config FILE`: YAML or TOML file of options; flags given on the command line"
        " override it",
    ]
    for group, fields in options(command):
        lines += ["", f"### {_group_title(group, command)}", ""]
        if group is not cls and group.__doc__:
            lines += [_first_sentence(group.__doc__), ""]
        for f in fields:
            meta, tp = f.metadata, hints[f.name]
            facts = [_type_name(tp), f"default {_default(f)}"]
            if meta.get("choices"):
                facts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
            if meta.get("bounds"):
                facts.append(describe_bounds(meta["bounds"]))
            if typing.get_origin(tp) is list and f.name not in command.positional:
                facts.append("repeatable")
            help_ = " ".join(meta.get("help", "").split())
            lines.append(f"- {_flag(f, tp, command.positional)} ({'; '.join(facts)}): {help_}")
    return "\n".join(lines) + "\n"


def cli_markdown() -> str:
    toc = "\n".join(f"- [`{c.name}`](#{c.name}): {c.help}" for c in COMMANDS.values())
    body = "\n".join(command_markdown(c) for c in COMMANDS.values())
    return (
        "# CLI reference\n\n"
        "<!-- Generated by `python -m warmstart.reference docs/reference` (run by `make docs`)"
        " from src/warmstart/commands.py and the config dataclasses: do not edit. -->\n\n"
        "Every command, every option, its type, default, choices or range, and help, generated"
        " from the command table and the option dataclasses that `warmstart COMMAND --help` is"
        " built from. `warmstart tune` also takes the options of the command it tunes"
        " (`--command`).\n\n"
        f"{toc}\n\n{body}"
    )


def api_markdown() -> str:
    """The Python API page: mkdocstrings renders each command's function and result class from
    their docstrings; the config classes' fields are the CLI reference's options."""
    parts = [
        "# Python API reference",
        "",
        "<!-- Generated by `python -m warmstart.reference docs/reference`: do not edit. -->",
        "",
        "Every command is a function of `warmstart` taking its config dataclass and/or keyword"
        " arguments with the option names of the [CLI reference](cli.md) (underscores for hyphens),"
        " and returning a result object. Keyword arguments override the dataclass:",
        "",
        "```python",
        "import warmstart",
        "",
        'cfg = warmstart.FinetuneConfig(data="reviews.csv", split="0.8,0.1,0.1", epochs=1)',
        'run = warmstart.finetune(cfg, lr=1e-4, out="runs/x")',
        "print(run.test_accuracy, run.model_dir)",
        "```",
        "",
        "A mistake in the input raises `warmstart.UserError` (the CLI prints its one line and"
        " exits with code 2).",
        "",
        "::: warmstart.errors.UserError",
        "",
    ]
    # A result's fields and properties are what a caller reads, documented or not.
    members = ["    options:", "      show_if_no_docstring: true", "      show_bases: false"]
    for c in COMMANDS.values():
        parts += [
            f"## {c.name}",
            "",
            f"`warmstart.{c.name}`: {c.help}. Its options: [`{c.config}`](cli.md#{c.name}).",
            "",
            f"::: {c.where}.{c.name}",
        ]
        if c.result:
            parts += ["", f"::: {c.where}.{c.result}", *members]
        parts += [""]
    return "\n".join(parts)


def write(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (("cli.md", cli_markdown()), ("python-api.md", api_markdown())):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write(sys.argv[1] if len(sys.argv) > 1 else "docs/reference"):
        print(f"wrote {p}")
