"""`warmstart <command>`: flags and an optional --config YAML/TOML file onto the command's
dataclass.

Flags are generated from the dataclass fields, so the CLI, the config files and the Python functions
always take the same options; the commands come from the one table in warmstart.commands. User
errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import typing
from collections.abc import Callable
from typing import Any

from warmstart import __version__, config, distributed
from warmstart.commands import COMMANDS
from warmstart.config import build, read_config_file
from warmstart.config.options import describe_bounds
from warmstart.errors import UserError


def _converter(tp: Any) -> Callable[[str], Any]:
    base = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    base = base[0]
    optional = type(None) in typing.get_args(tp)

    def convert(s: str) -> Any:
        if optional and s.lower() == "none":
            return None
        try:
            return base(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}, got '{s}'") from None

    return convert


def add_options(
    parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()
) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, meta = hints[f.name], f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = meta.get("help", "") + (
            ""
            if default in (None, "", False) or isinstance(default, bool)
            else f" (default: {default})"
        )
        if meta.get("bounds"):
            help_ += f" ({describe_bounds(meta['bounds'])})"
        # argparse %-formats help text: a literal % must be doubled.
        help_ = help_.replace("%", "%%")
        if f.name in positional:
            nargs = "*" if typing.get_origin(tp) is list else "?"
            parser.add_argument(f.name, nargs=nargs, default=argparse.SUPPRESS, help=help_)
            continue
        flag = "--" + f.name.replace("_", "-")
        if (
            tp is bool or tp == bool | None
        ):  # --normalize / --no-normalize; unset: None (the default decides)
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_
            )
        elif typing.get_origin(tp) is list:  # e.g. --stop A --stop B
            parser.add_argument(
                flag,
                action="append",
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=help_ + " (repeatable)",
            )
        else:
            parser.add_argument(
                flag,
                type=_converter(tp),
                choices=meta.get("choices"),
                default=argparse.SUPPRESS,
                metavar=f.name.upper() if not meta.get("choices") else None,
                help=help_,
            )


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (like every other user error), not usage +
    error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {self.prog.removeprefix('warmstart ')}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="warmstart",
        description="Put pre-trained transformers to work: offline first, the Hub when asked.",
    )
    p.add_argument("--version", action="version", version=f"warmstart {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sp = sub.add_parser(name, help=command.help, description=command.help)
        sp.add_argument(
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="YAML or TOML file of options; flags given here override it",
        )
        add_options(sp, getattr(config, command.config), command.positional)
    p.set_defaults(subparsers=sub.choices)
    return p


def parse(argv: list[str] | None) -> dict:
    """The flags of ``argv``; a command's texts may come before or after its options
    (`predict MODEL --backend torch "a text"`), which plain parse_args refuses."""
    p = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "tune":  # tune takes the flags of the command it tunes too
        return {"command": "tune", **_parse_tune(argv[1:])}
    if argv and argv[0] in COMMANDS:
        args = vars(p.get_default("subparsers")[argv[0]].parse_intermixed_args(argv[1:]))
        return {"command": argv[0], **args}
    args = vars(p.parse_args(argv))
    args.pop("subparsers", None)
    return args


def _parse_tune(argv: list[str]) -> dict:
    """tune's flags, and the flags of the command it tunes (--command, else its --config file's
    command, else finetune) that tune has not: `warmstart tune --data reviews.csv --epochs 2 --space
    space.yaml` tunes finetune with --data reviews.csv --epochs 2. tune's own come back under "tune"
    (apart: its --command is not the command run), the tuned command's under "options"; a flag
    neither has is one error line, exit 2."""
    tunable = next(f for f in dataclasses.fields(config.TuneConfig) if f.name == "command")
    # The tuned command decides which flags exist, so it is read first, on its own.
    pre = _Parser(prog="warmstart tune", add_help=False, allow_abbrev=False)
    pre.add_argument("--command")
    pre.add_argument("--config")
    first, _ = pre.parse_known_args(argv)
    tuned = first.command
    if tuned is None and first.config:
        try:
            tuned = read_config_file(first.config).get("command")
        except UserError:  # main() reads it again and says what is wrong
            pass
    tuned = tuned if tuned in tunable.metadata["choices"] else tunable.default
    command = COMMANDS["tune"]
    # "resolve": tune's own flags, added last, take a name both have (--out, --overwrite).
    p = _Parser(
        prog="warmstart tune",
        usage="warmstart tune --space FILE [--base FILE] [tune's options] [options of the command"
        " tuned]",
        description=command.help,
        conflict_handler="resolve",
    )
    group = p.add_argument_group(
        f"options of {tuned}, the command tuned (--command)",
        f"as for `warmstart {tuned}`; given with --base FILE, they override its values; its out,"
        " overwrite and resume are set by tune",
    )
    add_options(group, getattr(config, COMMANDS[tuned].config))
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML or TOML file of tune's options; flags given here override it",
    )
    add_options(p, getattr(config, command.config))
    args = vars(p.parse_intermixed_args(argv))
    own = {"config"} | {f.name for f in dataclasses.fields(config.TuneConfig)}
    options = {k: v for k, v in args.items() if k not in own}
    return {"tune": {k: v for k, v in args.items() if k in own}, "options": options}


def main(argv: list[str] | None = None) -> int:
    # This process is the CLI's own, so it may set its environment (the library sets none):
    # tokenizers' thread pool would otherwise warn at the first fork of a worker process.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse(argv)
    command = args.pop("command", None)
    options = args.pop("options", None)  # tune: the flags of the command it tunes (_parse_tune)
    args.update(args.pop("tune", {}))  # tune's own flags: its --command names the command tuned
    if command is None:
        parser().print_help()
        return 2
    try:
        values = read_config_file(args.pop("config")) if "config" in args else {}
        values.update(args)
        if values.get("texts") == []:
            values.pop("texts")
        cfg = build(getattr(config, COMMANDS[command].config), values, source="options")
        if (
            getattr(cfg, "num_processes", 1) > 1
        ):  # --num-processes N: this same command under accelerate launch
            code = distributed.relaunch(
                sys.argv[1:] if argv is None else argv,
                cfg.num_processes,
                getattr(cfg, "fsdp", False),
                getattr(cfg, "deepspeed", None),
                cfg,
            )
            if code is not None:
                return code
        run(command, cfg, options)
        distributed.finish()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; continue with --resume (finetune, pretrain) or by running the same"
            " command again",
            file=sys.stderr,
        )
        return 130
    return 0


def run(name: str, cfg, options: dict | None = None) -> None:
    """Call the command's function and print its report (under `accelerate launch`, the main process
    only)."""
    command = COMMANDS[name]
    module = importlib.import_module(command.where)
    # Tokens appear as they are produced only in interactive use; piped output gets the finished
    # texts.
    kwargs = {"stream_to": sys.stdout} if command.streams and sys.stdout.isatty() else {}
    if options:  # tune: the tuned command's options given as flags
        kwargs["options"] = options
    result = getattr(module, name)(cfg, **kwargs)
    if command.reports and distributed.is_main():
        sys.stdout.write(module.report(cfg, result))
