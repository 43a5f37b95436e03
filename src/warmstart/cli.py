"""`warmstart <command>`: flags and an optional --config YAML/TOML file onto the command's dataclass.

Flags are generated from the dataclass fields, so the CLI, the config files and the Python functions
always take the same options. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable
from typing import Any

from warmstart import __version__
from warmstart.config import (
    EmbedConfig,
    EvaluateConfig,
    ExportConfig,
    FewshotConfig,
    FinetuneConfig,
    GenerateConfig,
    PredictConfig,
    PretrainConfig,
    ProbeConfig,
    ServeConfig,
    ZeroshotConfig,
    build,
    read_config_file,
)
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


def add_options(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, meta = hints[f.name], f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = meta.get("help", "") + ("" if default in (None, "", False) or isinstance(default, bool)
                                        else f" (default: {default})")
        if f.name in positional:
            nargs = "*" if typing.get_origin(tp) is list else "?"
            parser.add_argument(f.name, nargs=nargs, default=argparse.SUPPRESS, help=help_)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif typing.get_origin(tp) is list:  # e.g. --stop A --stop B
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, metavar=f.name.upper(),
                                help=help_ + " (repeatable)")
        else:
            parser.add_argument(flag, type=_converter(tp), choices=meta.get("choices"), default=argparse.SUPPRESS,
                                metavar=f.name.upper() if not meta.get("choices") else None, help=help_)


def is_main() -> bool:
    from warmstart.distributed import is_main

    return is_main()


def _finetune(cfg: FinetuneConfig) -> None:
    from warmstart.tasks.finetune import finetune

    result = finetune(cfg)
    if not is_main():  # under accelerate launch the main process reports
        return
    print(f"run folder: {result.run_dir}")
    if result.test_accuracy is not None:
        print(f"test accuracy: {result.test_accuracy:.4f}")


def _evaluate(cfg: EvaluateConfig) -> None:
    from warmstart.metrics import format_table
    from warmstart.tasks.evaluate import evaluate

    result = evaluate(cfg)
    if not is_main():  # under accelerate launch the main process reports
        return
    print(format_table(result.metrics))
    if result.out:
        print(f"metrics written to {result.out}")


def _predict(cfg: PredictConfig) -> None:
    from warmstart.tasks.predict import format_predictions, predict

    preds = predict(cfg)
    if not is_main():  # under accelerate launch the main process reports
        return
    if not cfg.out and preds:
        sys.stdout.write(format_predictions(preds, cfg.format, list(preds[0].probabilities)))


def _generate(cfg: GenerateConfig) -> None:
    from warmstart.tasks.generate import format_generations, generate, streamable

    # Tokens appear as they are produced only in interactive use; piped output gets the finished texts.
    stream = streamable(cfg) and sys.stdout.isatty()
    gens = generate(cfg, stream_to=sys.stdout if stream else None)
    if not stream and not cfg.out:
        sys.stdout.write(format_generations(gens, cfg.format, cfg.chat))


def _pretrain(cfg: PretrainConfig) -> None:
    from warmstart.tasks.pretrain import pretrain

    result = pretrain(cfg)
    if not is_main():  # under accelerate launch the main process reports
        return
    print(f"run folder: {result.run_dir}")
    for when in ("valid_before", "valid_after"):
        if when in result.metrics:
            print(f"held-out {when[6:]}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics[when].items()))


def _serve(cfg: ServeConfig) -> None:
    from warmstart.serving import serve

    serve(cfg)


def _export(cfg: ExportConfig) -> None:
    from warmstart.tasks.export import export

    result = export(cfg)
    print(("up to date: " if result.reused else "exported: ") + ", ".join(str(f) for f in result.files))


def _embed(cfg: EmbedConfig) -> None:
    from warmstart.tasks.embed import embed

    r = embed(cfg)
    if not is_main():  # under accelerate launch the main process reports
        return
    print(f"{r.rows} texts -> {r.dim} features each, written to {r.out} ({r.texts_per_s} texts/s)")


def _probe(cfg: ProbeConfig) -> None:
    from warmstart.tasks.probe import probe

    r = probe(cfg)
    print(f"run folder: {r.run_dir}")
    if r.test_accuracy is not None:
        print(f"test accuracy: {r.test_accuracy:.4f} (C = {r.metrics['c']})")


def _zeroshot(cfg: ZeroshotConfig) -> None:
    from warmstart.metrics import format_table
    from warmstart.tasks.zeroshot import format_predictions, zeroshot

    r = zeroshot(cfg)
    if r.metrics is not None:
        print(format_table(r.metrics))
        print(f"{cfg.method}: accuracy {r.accuracy:.4f}, {r.texts_per_s} texts/s")
    elif not cfg.out:
        sys.stdout.write(format_predictions(r, "jsonl"))


def _fewshot(cfg: FewshotConfig) -> None:
    from warmstart.tasks.fewshot import fewshot

    r = fewshot(cfg)
    m = r.metrics
    print(f"{m['method']}, {m['k']} per class: accuracy {m['accuracy_mean']:.4f} ± {m['accuracy_std']:.4f} "
          f"over {len(m['repeats'])} draw(s); run folder {r.run_dir}")


COMMANDS: dict[str, tuple[type, Callable, tuple[str, ...], str]] = {
    "finetune": (FinetuneConfig, _finetune, (), "fine-tune an encoder with a classification head on a labelled table"),
    "evaluate": (EvaluateConfig, _evaluate, ("model",), "accuracy, per-class F1 and confusion matrix of a saved model"),
    "predict": (PredictConfig, _predict, ("model", "texts"), "label and class probabilities for texts"),
    "generate": (GenerateConfig, _generate, ("prompts",), "continue prompts with a causal language model"),
    "pretrain": (PretrainConfig, _pretrain, (), "self-supervised pre-training on raw text: clm, mlm, mlm+nsp, denoise"),
    "embed": (EmbedConfig, _embed, (), "hidden-state features of texts from any encoder or decoder, to a file"),
    "probe": (ProbeConfig, _probe, (), "logistic-regression probe on frozen features; same run folder as finetune"),
    "zeroshot": (ZeroshotConfig, _zeroshot, ("texts",), "classify into unseen labels: nli, similarity or prompt"),
    "fewshot": (FewshotConfig, _fewshot, (), "learn from k examples per class: setfit or in-context examples"),
    "serve": (ServeConfig, _serve, ("model",), "serve a model over HTTP: predict, embed, zeroshot, generate"),
    "export": (ExportConfig, _export, ("model",), "export a fine-tuned classifier to ONNX (fp32 and int8)"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmstart", description="Put pre-trained transformers to work, offline.")
    p.add_argument("--version", action="version", version=f"warmstart {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, _, positional, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML or TOML file of options; flags given here override it")
        add_options(sp, cls, positional)
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    command = args.pop("command", None)
    if command is None:
        parser().print_help()
        return 2
    cls, run, _, _ = COMMANDS[command]
    try:
        values = read_config_file(args.pop("config")) if "config" in args else {}
        values.update(args)
        if values.get("texts") == []:
            values.pop("texts")
        cfg = build(cls, values, source="options")
        if getattr(cfg, "num_processes", 1) > 1:  # --num-processes N: this same command under accelerate launch
            from warmstart.launch import relaunch

            code = relaunch(sys.argv[1:] if argv is None else argv, cfg.num_processes)
            if code is not None:
                return code
        run(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; continue a finetune run with --resume", file=sys.stderr)
        return 130
    return 0
