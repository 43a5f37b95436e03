"""`warmstart finetune`: fine-tune a model for a task kind (kinds/): a label per text, a tag per
word, or a target text per source text."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import set_seed

from warmstart import distributed, plots
from warmstart.config import FinetuneConfig, absolute_paths, make, refuse_inapplicable, to_dict
from warmstart.errors import UserError
from warmstart.inference import calibration
from warmstart.inference.classifier import Classifier
from warmstart.kinds import KINDS
from warmstart.metrics import format_text_metrics
from warmstart.models import load_tokenizer, lora, max_length_of, resolve
from warmstart.runs import Run, prepare_run_folder
from warmstart.training.common import choose_precision

# The options of text-to-text fine-tuning (config.options: PairOptions, DecodeOptions,
# Seq2SeqOptions).
TEXT_TO_TEXT_OPTIONS = (
    "source_column",
    "target_column",
    "metrics",
    "max_new_tokens",
    "num_beams",
    "from_scratch",
    "tokenizer",
    "size",
    "vocab_size",
    "eval_samples",
)


@dataclass
class FinetuneResult:
    run_dir: Path
    model_dir: Path
    metrics: dict

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics.get("test") or {}).get("accuracy")


def resolved(cfg: FinetuneConfig) -> FinetuneConfig:
    """Absolute data paths, so config.yaml repeats the run from any folder."""
    # The model too when it is a folder (an alias or hub id does not exist as a path and stays as
    # given).
    return absolute_paths(cfg, "data", "valid", "test", "model")


def finetune(config: FinetuneConfig | None = None, **kwargs) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data``; returns the run folder, model folder and
    metrics."""
    t0 = time.time()
    cfg = resolved(make(FinetuneConfig, config, kwargs))
    run = Run(cfg.out, tensorboard_dir=cfg.logging_dir)
    if cfg.patience is not None and not (
        cfg.valid or (cfg.split and len(cfg.split.split(",")) > 1)
    ):
        raise UserError(
            "--patience needs a validation split (--valid FILE or a --split with two or more parts)"
        )
    if not cfg.lora_r:
        refuse_inapplicable(
            cfg,
            ("lora_alpha", "lora_dropout", "lora_target_modules", "lora_save"),
            "full fine-tuning: give --lora-r N for LoRA",
        )
    if cfg.task != "causal-lm":
        refuse_inapplicable(
            cfg,
            ("template", "chat", "system", "packing"),
            f"--task {cfg.task} (they are for --task causal-lm)",
        )
    if cfg.task in ("sequence", "tokens"):
        refuse_inapplicable(
            cfg,
            TEXT_TO_TEXT_OPTIONS,
            f"--task {cfg.task} (they are for text to text: --task seq2seq or causal-lm)",
        )
    kind = KINDS[cfg.task](cfg)  # reads and checks the data: bad input fails before any work
    prepare_run_folder(run, to_dict(cfg), cfg.resume, cfg.overwrite)
    if cfg.resume and run.finished():
        run.say(f"run in '{run.dir}' has already finished; nothing to resume")
        return FinetuneResult(
            run.dir, run.model_dir, json.loads((run.dir / "metrics.json").read_text())
        )

    set_seed(cfg.seed)  # before the new head is initialised
    if hasattr(
        kind, "load_model_and_tokenizer"
    ):  # a kind that may build both (seq2seq --from-scratch)
        path, model, tokenizer = kind.load_model_and_tokenizer(cfg)
    else:
        path = resolve(cfg.model)
        tokenizer = load_tokenizer(path)
        model = kind.load_model(path, cfg)
    calibration.forget_temperature(
        model.config
    )  # a calibrated starting model's T belonged to its old weights
    cfg.max_length = max_length_of(tokenizer, model.config, cfg.max_length)
    model.config.train_max_length = (
        cfg.max_length
    )  # saved with the model: evaluate/predict default to it
    tokenizer.model_max_length = (
        cfg.max_length
    )  # and plain transformers (pipeline, truncation=True) cuts there too
    cfg.eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size

    adapters = None
    if cfg.lora_r:
        model, adapters = lora.wrap(
            model, cfg
        )  # any kind: the body gets adapters, a new head trains in full
    # Each tensor once (tied embeddings are one), as peft counts them.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    data = {role: kind.encode(tokenizer, role, cfg.max_length, cfg) for role in kind.parts}
    problem = f"{kind.problem_note}, " if cfg.task == "sequence" else ""
    model_name = path if cfg.from_scratch else f"{cfg.model} ({path})"
    run.say(
        f"model {model_name}; {problem}{kind.describe()}; max length {cfg.max_length}; rows "
        + ", ".join(f"{r} {len(p)}" for r, p in kind.parts.items())
    )
    job = kind.job(cfg, tokenizer, data)
    if adapters is not None:
        run.say(adapters.describe())
        job.save = lora.saver(job.save, cfg.lora_save)
    choice = choose_precision(cfg, model, job.lengths, run)
    run.write_config(
        {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")},
        notes=[choice.describe()] if choice else (),
    )
    if cfg.engine == "trainer":
        from warmstart.training import trainer as engine
    else:
        from warmstart.training import native as engine
    state = engine.train(cfg, model, job, run)
    train_seconds = time.time() - t0
    calibrated = calibrate_model(cfg, kind, run)
    finished = (
        kind.finish(cfg, run.model_dir, run) if hasattr(kind, "finish") else {}
    )  # multi-label thresholds

    metrics: dict = {
        "model": cfg.model,
        "rows": {r: len(p) for r, p in kind.parts.items()},
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "epochs": state.epochs_log,
        "engine": cfg.engine,
        "train_loop_seconds": round(state.train_seconds, 2),
        "train_samples": state.samples,
        "train_samples_per_second": round(state.samples / max(state.train_seconds, 1e-9), 3),
        "train_seconds": round(train_seconds, 2),
        "precision": cfg.precision,
    }
    metrics["parameters"] = {"trainable": trainable, "total": total}
    if adapters is not None:
        metrics["lora"] = {**asdict(adapters), "save": cfg.lora_save}
    if choice is not None:
        metrics["precision_auto"] = choice.record()
    if calibrated is not None:
        metrics["calibration"] = calibrated
    metrics.update(finished)
    if "test" in kind.parts:
        metrics.update(kind.test(cfg, run.model_dir, run))
    if state.epochs_log and run.main:
        plots.training_curves(state.epochs_log, run.dir / "training_curves.png")
    metrics["total_seconds"] = round(time.time() - t0, 2)
    run.write_metrics(metrics)
    if "test" in metrics:
        run.say(f"{kind.summary(metrics)}; run folder {run.dir} ({metrics['total_seconds']:.0f}s)")
    return FinetuneResult(run.dir, run.model_dir, metrics)


def calibrate_model(cfg: FinetuneConfig, kind, run: Run) -> dict | None:
    """Temperature scaling of the saved (best) model on the valid split, for single-label
    classification: T in model/config.json, calibration.json and reliability.png in the run folder;
    the figures for metrics.json.

    The valid logits come from one more pass of the saved model, fp32 PyTorch as the test pass,
    rather than from training's last evaluation: that one may have run under bf16 autocast, the
    Trainer engine keeps only each row's argmax, and a resumed run may have evaluated its best epoch
    in an earlier process. So both engines, and a run resumed at any point, fit T on the same logits
    of the same saved model."""
    single_label = (
        cfg.task == "sequence" and getattr(kind, "problem", "single-label") == "single-label"
    )
    if not (cfg.calibrate and single_label and "valid" in kind.parts):
        if run.main and (run.model_dir / "config.json").is_file():
            calibration.save_temperature(
                run.model_dir, None
            )  # one an interrupted earlier attempt may have saved
        return None
    t = time.time()
    clf = Classifier.load(str(run.model_dir), cfg.max_length, cfg.cpu)
    valid = kind.parts["valid"]
    logits = distributed.gather_rows(
        len(valid),
        lambda idx: clf.logits(
            valid.take(idx), cfg.eval_batch_size, progress=cfg.progress and distributed.is_main()
        ),
    )
    cal = calibration.calibrate(logits, kind.y["valid"])
    if run.main:
        calibration.write_report(cal, run.dir)
        calibration.save_temperature(run.model_dir, cal.temperature)
    distributed.barrier()  # the test pass of every process reads the calibrated config.json
    run.say(cal.describe())
    return {**cal.summary(), "seconds": round(time.time() - t, 2)}


def report(cfg: FinetuneConfig, result: FinetuneResult) -> str:
    if cfg.task in ("seq2seq", "causal-lm"):  # text to text
        test = result.metrics.get("test") or result.metrics.get("valid_best")
        return f"run folder: {result.run_dir}\n" + (
            f"{'test' if 'test' in result.metrics else 'valid'} {format_text_metrics(test)}\n"
            if test
            else ""
        )
    f1 = (result.metrics.get("test") or {}).get("f1") if cfg.task == "tokens" else None
    return (
        f"run folder: {result.run_dir}\n"
        + (f"test entity F1: {f1:.4f}\n" if f1 is not None else "")
        + (
            f"test {'word ' if cfg.task == 'tokens' else ''}accuracy: {result.test_accuracy:.4f}\n"
            if result.test_accuracy is not None
            else ""
        )
        + "".join(
            f"test {k.replace('_', ' ')}: {(result.metrics.get('test') or {})[k]:.4f}\n"
            for k in ("f1_micro", "rmse", "pearson")
            if k in (result.metrics.get("test") or {})
        )
    )
