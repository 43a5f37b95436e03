"""`warmstart finetune`: fine-tune a model for a task kind (kinds/): a label per text, a tag per
word, or a target text per source text."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import set_seed

from warmstart import kinds, plots
from warmstart.callbacks import for_training
from warmstart.config import (
    Choice,
    FinetuneConfig,
    absolute_paths,
    make,
    notes,
    refuse_inapplicable,
    settle,
    to_dict,
)
from warmstart.errors import UserError
from warmstart.hub import card, publish
from warmstart.inference import calibration
from warmstart.models import lora, max_length_of, pin
from warmstart.runs import Run, prepare_run_folder
from warmstart.training.common import choose_precision


@dataclass
class FinetuneResult:
    run_dir: Path
    model_dir: Path
    metrics: dict

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics.get("test") or {}).get("accuracy")


def finetune(config: FinetuneConfig | None = None, **kwargs) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data``; returns the run folder, model folder and
    metrics. Reads like the notebook cell it replaces: resolve → load → prepare → train → test."""
    t0 = time.time()
    # Absolute data paths (and the model's when it is a folder), so config.yaml repeats the run
    # from any folder.
    given = absolute_paths(make(FinetuneConfig, config, kwargs), "data", "valid", "test", "model")
    if given.patience is not None and not (
        given.valid or (given.split and len(given.split.split(",")) > 1)
    ):
        raise UserError(
            "--patience needs a validation split (--valid FILE or a --split with two or more parts)"
        )
    if not given.lora_r:
        refuse_inapplicable(
            given,
            ("lora_alpha", "lora_dropout", "lora_target_modules", "lora_save"),
            "full fine-tuning: give --lora-r N for LoRA",
        )
    if given.push_to_hub:  # a bad repo id, no token, offline: refused before any training
        publish.check_ready(given.push_to_hub, offline=given.offline)
    kind_class = kinds.for_task(given.task)
    kind_class.refuse_others(given)
    kind = kind_class.start(given)  # reads and checks the data: bad input fails before any work
    # A Hugging Face --model: fetched now if it must be, and pinned to its commit (config.yaml's
    # revision), so the model, its tokenizer and the test pass all read that one snapshot.
    given = settle(given, pin(given))
    # The options the task decides (epochs, learning rates, the best-epoch metric...), frozen.
    cfg = settle(given, kind.choices(given))
    run = Run(cfg.out)
    # The engine's subscribers: run log, bar, early stopping, trackers (one not installed fails here).
    callbacks = for_training(cfg, run)
    prepare_run_folder(run, to_dict(cfg), cfg.resume, cfg.overwrite)
    if cfg.resume and run.finished():
        run.say(f"run in '{run.dir}' has already finished; nothing to resume")
        return FinetuneResult(
            run.dir, run.model_dir, json.loads((run.dir / "metrics.json").read_text())
        )

    set_seed(cfg.seed)  # before the new head is initialised
    where, model, tokenizer = kind.load(cfg)
    # A calibrated starting model's T belonged to its old weights.
    calibration.forget_temperature(model.config)
    # What the model decides: its length limit, and the evaluation batch.
    cfg = settle(
        cfg,
        max_length=Choice(
            max_length_of(tokenizer, model.config, cfg.max_length),
            "" if cfg.max_length else "the model's limit (its tokenizer's and position table's)",
        ),
        eval_batch_size=cfg.eval_batch_size
        or Choice(2 * cfg.batch_size, "twice the training batch"),
    )
    # Saved with the model: evaluate/predict default to it, and plain transformers (pipeline,
    # truncation=True) cuts there too.
    model.config.train_max_length = cfg.max_length
    tokenizer.model_max_length = cfg.max_length

    adapters = None
    if cfg.lora_r:
        # Any kind: the body gets adapters, a new head trains in full.
        model, adapters = lora.wrap(model, cfg)
    # Each tensor once (tied embeddings are one), as peft counts them.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    data = {role: kind.encode(tokenizer, role, cfg.max_length, cfg) for role in kind.parts}
    run.say(
        f"model {where}; {kind.describe()}; max length {cfg.max_length}; rows "
        + ", ".join(f"{r} {len(p)}" for r, p in kind.parts.items())
    )
    job = kind.job(cfg, tokenizer, data)
    if adapters is not None:
        run.say(adapters.describe())
        job.save = lora.saver(job.save, cfg.lora_save)
    # What the machine decides: precision and attention kernel, measured on this run's batches.
    chosen = choose_precision(cfg, model, job.lengths, run)
    cfg = settle(cfg, chosen.choices(cfg))
    head = [chosen.measured.describe()] if chosen.measured else []
    run.write_config(
        {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")},
        notes=head + notes(cfg, skip=("precision", "attn_implementation") if head else ()),
    )
    if cfg.engine == "trainer":
        from warmstart.training import trainer as engine
    else:
        from warmstart.training import native as engine
    state = engine.train(cfg, model, job, run, callbacks)
    train_seconds = time.time() - t0
    finished = kind.finish(cfg, run.model_dir, run)  # calibration, multi-label thresholds

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
    if chosen.measured is not None:
        metrics["precision_auto"] = chosen.measured.record()
    metrics.update(finished)
    if "test" in kind.parts:
        metrics.update(kind.test(cfg, run.model_dir, run))
    if state.epochs_log and run.main:
        plots.training_curves(state.epochs_log, run.dir / "training_curves.png")
    metrics["total_seconds"] = round(time.time() - t0, 2)
    run.write_metrics(metrics)
    card.write_run_card(run)  # model/README.md, before on_run_end: the trackers upload it
    callbacks.on_run_end(metrics, run.dir)
    if "test" in metrics:
        run.say(f"{kind.summary(metrics)}; run folder {run.dir} ({metrics['total_seconds']:.0f}s)")
    if cfg.push_to_hub and run.main:  # --push-to-hub: the finished run's model, card included
        pushed = publish.push(run.dir, cfg.push_to_hub, say=run.say)
        run.say(f"pushed {run.model_dir} to {pushed.url} (commit {pushed.commit[:12]})")
    return FinetuneResult(run.dir, run.model_dir, metrics)


def report(cfg: FinetuneConfig, result: FinetuneResult) -> str:
    return kinds.for_task(cfg.task).report(result.run_dir, result.metrics)
