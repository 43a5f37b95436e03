"""`warmstart finetune`: fine-tune an encoder with a classification head on a labelled table."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate.utils import set_seed

from warmstart import distributed, models, plots
from warmstart.batching import Encoded, collator, encode
from warmstart.config import FinetuneConfig, absolute_paths, make, to_dict
from warmstart.data import Examples, LabelMap, read_examples, split_examples
from warmstart.errors import UserError
from warmstart.inference import Classifier, predict_logits
from warmstart.metrics import classification_metrics, cross_entropy, format_table
from warmstart.runs import Run, prepare_run_folder

ROLES = ("train", "valid", "test")


@dataclass
class FinetuneResult:
    run_dir: Path
    model_dir: Path
    metrics: dict

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics.get("test") or {}).get("accuracy")


def load_splits(cfg: FinetuneConfig) -> dict[str, Examples]:
    if not cfg.data:
        raise UserError("no training data: pass --data FILE")
    cols = dict(text_column=cfg.text_column, text_pair_column=cfg.text_pair_column, label_column=cfg.label_column)
    # --limit caps every split; with --split it applies after splitting so the parts keep their places.
    ex = read_examples(cfg.data, **cols, limit=None if cfg.split else cfg.limit)
    parts = dict(zip(ROLES, split_examples(ex, cfg.split, cfg.shuffle, cfg.seed))) if cfg.split else {"train": ex}
    for role, path in (("valid", cfg.valid), ("test", cfg.test)):
        if path:
            if role in parts:
                raise UserError(f"--{role} is given but --split '{cfg.split}' already makes a {role} part")
            parts[role] = read_examples(path, **cols, limit=cfg.limit)
    caps = {"train": cfg.max_train_samples, "valid": cfg.max_valid_samples, "test": cfg.max_test_samples}
    for role, part in parts.items():
        cap = caps[role] or cfg.limit
        if cap and cap < len(part):
            parts[role] = part.take(slice(0, cap))
    return parts


def resolved(cfg: FinetuneConfig) -> FinetuneConfig:
    """Absolute data paths, so config.yaml repeats the run from any folder."""
    # The model too when it is a folder (an alias or hub id does not exist as a path and stays as given).
    return absolute_paths(cfg, "data", "valid", "test", "model")


def classification_job(cfg: FinetuneConfig, tokenizer, train: Encoded, valid: Encoded | None, labels: LabelMap):
    """The native engine's view of a classification run: batches, train accuracy, valid metrics."""
    from warmstart.engines.native import Job

    collate = collator(tokenizer)

    def evaluate(model, device, autocast) -> dict:
        # Under `accelerate launch` each process scores its shard; all get every row back, once, in order.
        logits = distributed.gather_rows(len(valid), lambda idx: predict_logits(
            model, distributed.take(valid, idx), cfg.eval_batch_size, collate, device, autocast,
            progress=cfg.progress and distributed.is_main(), desc="valid"))
        m = classification_metrics(valid.labels, logits.argmax(1), labels.names)
        return {"loss": cross_entropy(logits, valid.labels), "accuracy": m["accuracy"], "f1_macro": m["f1_macro"]}

    def accuracy(out, batch) -> tuple[int, int]:
        return int((out.logits.argmax(-1) == batch["labels"]).sum()), len(batch["labels"])

    return Job(train=train, lengths=train.lengths, collate=collate,
               save=lambda model, folder, weights=None: (model.save_pretrained(folder, state_dict=weights),
                                                             tokenizer.save_pretrained(folder)),
               evaluate=evaluate if valid is not None else None, accuracy=accuracy)


def finetune(config: FinetuneConfig | None = None, **kwargs) -> FinetuneResult:
    """Fine-tune ``config.model`` on ``config.data``; returns the run folder, model folder and metrics."""
    t0 = time.time()
    cfg = resolved(make(FinetuneConfig, config, kwargs))
    run = Run(cfg.out, tensorboard_dir=cfg.logging_dir)
    if cfg.patience is not None and not (cfg.valid or (cfg.split and len(cfg.split.split(",")) > 1)):
        raise UserError("--patience needs a validation split (--valid FILE or a --split with two or more parts)")
    parts = load_splits(cfg)
    names = [n.strip() for n in cfg.label_names.split(",")] if cfg.label_names else None
    labels = LabelMap.from_examples(parts["train"], names)
    y = {role: labels.encode(part) for role, part in parts.items()}  # unknown labels fail before any work
    prepare_run_folder(run, to_dict(cfg), cfg.resume, cfg.overwrite)
    if cfg.resume and run.finished():
        run.say(f"run in '{run.dir}' has already finished; nothing to resume")
        return FinetuneResult(run.dir, run.model_dir, json.loads((run.dir / "metrics.json").read_text()))

    path = models.resolve(cfg.model)
    set_seed(cfg.seed)  # before the new head is initialised
    tokenizer = models.load_tokenizer(path)
    model = models.load_classifier(path, labels.names, labels.values, cfg.attention_dropout)
    cfg.max_length = models.max_length_of(tokenizer, model.config, cfg.max_length)
    model.config.train_max_length = cfg.max_length  # saved with the model: evaluate/predict default to it
    cfg.eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
    run.write_config({k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")})

    run.say(f"model {cfg.model} ({path}); labels {labels.names}; max length {cfg.max_length}; rows "
            + ", ".join(f"{r} {len(p)}" for r, p in parts.items()))
    data = {role: encode(tokenizer, part, cfg.max_length, y[role]) for role, part in parts.items()}
    if cfg.engine == "trainer":
        from warmstart.engines import trainer

        state = trainer.train(cfg, model, tokenizer, data["train"], data.get("valid"), labels, run)
    else:
        from warmstart.engines import native

        state = native.train(cfg, model, classification_job(cfg, tokenizer, data["train"], data.get("valid"), labels),
                             run)
    train_seconds = time.time() - t0

    metrics: dict = {"model": cfg.model, "rows": {r: len(p) for r, p in parts.items()},
                     "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
                     "epochs": state.epochs_log, "engine": cfg.engine,
                     "train_loop_seconds": round(state.train_seconds, 2),
                     "train_samples_per_second": round(state.samples / max(state.train_seconds, 1e-9), 3),
                     "train_seconds": round(train_seconds, 2)}
    if "test" in parts:
        # Reload from disk through the same path `evaluate` uses: proves the saved model is complete.
        clf = Classifier.load(str(run.model_dir), cfg.max_length, cfg.cpu)
        t1 = time.time()
        probs = distributed.gather_rows(len(parts["test"]), lambda idx: clf.probabilities(
            parts["test"].take(idx), cfg.eval_batch_size, progress=cfg.progress and distributed.is_main()))
        metrics["test"] = classification_metrics(y["test"], probs.argmax(1), labels.names)
        metrics["test_seconds"] = round(time.time() - t1, 2)
        if run.main:
            plots.confusion_matrix(metrics["test"]["confusion_matrix"], labels.names, run.dir / "confusion_matrix.png")
        run.say("test set:\n" + format_table(metrics["test"]))
    if state.epochs_log and run.main:
        plots.training_curves(state.epochs_log, run.dir / "training_curves.png")
    metrics["total_seconds"] = round(time.time() - t0, 2)
    run.write_metrics(metrics)
    if "test" in metrics:
        run.say(f"test accuracy {metrics['test']['accuracy']:.4f}, macro F1 {metrics['test']['f1_macro']:.4f} "
                f"on {metrics['test']['n']} texts; run folder {run.dir} ({metrics['total_seconds']:.0f}s)")
    return FinetuneResult(run.dir, run.model_dir, metrics)

