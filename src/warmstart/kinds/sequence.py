"""Sequence classification: one label per text (or text pair), a classification head on the first
token."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from warmstart import distributed, plots
from warmstart.config import FinetuneConfig, given_flags
from warmstart.data.batching import Encoded, collator, encode, pad_multiple
from warmstart.data.tables import LabelMap, load_splits
from warmstart.data.targets import class_weights, oversampled
from warmstart.errors import UserError
from warmstart.inference.batched import predict_logits
from warmstart.inference.classifier import Classifier
from warmstart.metrics import classification_metrics, cross_entropy, format_table
from warmstart.models.classifier import load_classifier
from warmstart.models.registry import dropout_of
from warmstart.runs import Run
from warmstart.training.common import Job, smoothed_loss

METRICS = (
    "accuracy",
    "f1_macro",
    "balanced_accuracy",
)  # valid metrics besides the loss, for --metric-for-best
# Classes this uneven (largest / smallest in the training data) are "skewed": the metrics that mean
# something then (balanced accuracy, macro F1, per-class recall) come first and pick the best epoch.
SKEW = 3.0


class StreamingMetrics:
    """The Trainer's `compute_metrics` with `batch_eval_metrics=True`: keeps one predicted id per
    row, never all logits."""

    def __init__(self, names: list[str], metrics: tuple[str, ...] = METRICS):
        self.names, self.metrics = names, metrics
        self.y: list[np.ndarray] = []
        self.p: list[np.ndarray] = []

    def __call__(self, pred, compute_result: bool) -> dict | None:
        self.p.append(pred.predictions.argmax(-1).cpu().numpy())
        self.y.append(pred.label_ids.cpu().numpy())
        if not compute_result:
            return None
        m = classification_metrics(np.concatenate(self.y), np.concatenate(self.p), self.names)
        self.y, self.p = [], []
        return {k: m[k] for k in self.metrics}


def check_options(cfg: FinetuneConfig) -> None:
    """Options of another task, refused before any file is read."""
    given = given_flags(cfg, ("tag_column", "base_tags", "label_all_subtokens"))
    if given:
        raise UserError(f"{', '.join(given)} only apply to --task tokens")
    check_long_text(cfg)


def check_long_text(cfg: FinetuneConfig) -> None:
    """--stride and --chunk-aggregation shape chunk's windows: refused with another --long-text.
    head+tail and chunk cut one text; a text pair is truncated longest-first by the tokenizer. The
    default is then made concrete, so that config.yaml records how the run read its texts."""
    mode = cfg.long_text or "truncate"
    given = given_flags(cfg, ("stride", "chunk_aggregation"))
    if mode != "chunk" and given:
        raise UserError(
            f"{', '.join(given)} only apply to --long-text chunk (a sequence classifier's long"
            " texts are read with --long-text"
            f" {mode}{' by default' if cfg.long_text is None else ''})"
        )
    if mode != "truncate" and cfg.text_pair_column:
        raise UserError(
            f"--long-text {mode} reads one text per row; text pairs (--text-pair-column) are"
            " truncated longest-first: use --long-text truncate"
        )
    cfg.long_text = mode


def training_cut(cfg: FinetuneConfig | None) -> str:
    """How training (and the valid metric each epoch) reads a long text: as inference will, except
    that chunk trains on truncated texts (one window a text: the first, a contiguous run of tokens
    like every window chunk reads) and only changes evaluate, predict, serve and the test part."""
    mode = (cfg.long_text if cfg is not None else None) or "truncate"
    return "truncate" if mode == "chunk" else mode


def remember_long_text(config, cfg: FinetuneConfig) -> None:
    """Save how the model reads long texts in its config.json, next to train_max_length: evaluate,
    predict and serve default to it (plain transformers ignores these keys and truncates from the
    right)."""
    config.long_text = cfg.long_text or "truncate"
    if config.long_text == "chunk":
        config.long_text_stride = cfg.stride
        config.chunk_aggregation = cfg.chunk_aggregation or "mean"


class SequenceClassification:
    """Single-label classification; multi-label and regression (kinds.problems) change the targets,
    head, loss and metrics and keep the rest."""

    name = "sequence"
    problem = "single-label"
    problem_note = "single-label"  # how the problem type was decided, for the run's first log line
    metrics = METRICS  # valid metrics besides the loss, for --metric-for-best

    def __init__(self, cfg: FinetuneConfig, parts: dict | None = None):
        check_options(cfg)
        if cfg.metric_for_best not in (None, "loss", *self.metrics):
            raise UserError(
                f"--metric-for-best {cfg.metric_for_best} does not apply to {self.problem} "
                f"classification; choose one of loss, {', '.join(self.metrics)}"
            )
        cfg.epochs = 3.0 if cfg.epochs is None else cfg.epochs
        cfg.lr = 5e-5 if cfg.lr is None else cfg.lr
        self.parts = load_splits(cfg) if parts is None else parts
        self.read_targets(cfg)
        cfg.metric_for_best = cfg.metric_for_best or self.default_metric()

    def read_targets(self, cfg: FinetuneConfig) -> None:
        names = [n.strip() for n in cfg.label_names.split(",")] if cfg.label_names else None
        self.labels = LabelMap.from_examples(self.parts["train"], names)
        self.y = {
            role: self.labels.encode(part) for role, part in self.parts.items()
        }  # unknown labels fail now
        self.weights = class_weights(
            cfg.class_weights, self.labels.names, self.y["train"]
        )  # bad spec: fails now
        counts = np.bincount(self.y["train"], minlength=len(self.labels.names))
        self.skewed = counts.min() == 0 or counts.max() / counts.min() >= SKEW
        self.counts = dict(zip(self.labels.names, counts.tolist()))

    def default_metric(self) -> str:
        return "balanced_accuracy" if self.skewed else "accuracy"

    def describe(self) -> str:
        skew = (
            f" (skewed: {self.counts}; best epoch by {self.default_metric()})"
            if self.skewed
            else ""
        )
        return f"labels {self.labels.names}{skew}"

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        return load_classifier(path, self.labels.names, self.labels.values, dropout_of(cfg))

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        return encode(
            tokenizer, self.parts[role], max_length, self.y[role], long_text=training_cut(cfg)
        )

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        collate = collator(tokenizer, pad_multiple(cfg.cpu))
        valid = data.get("valid")
        train = data["train"]
        if cfg.sampler == "balanced":
            train = train.take(oversampled(self.y["train"], cfg.seed))
            if distributed.is_main():
                rows = {n: int(c) for n, c in zip(self.labels.names, np.bincount(train.labels))}
                print(f"balanced sampler: training rows per class {rows}", file=sys.stderr)

        def evaluate(model, device, autocast) -> dict:
            # Under `accelerate launch` each process scores its shard; all get every row back, once,
            # in order.
            logits = distributed.gather_rows(
                len(valid),
                lambda idx: predict_logits(
                    model,
                    valid.take(idx),
                    cfg.eval_batch_size,
                    collate,
                    device,
                    autocast,
                    progress=cfg.progress and distributed.is_main(),
                    desc="valid",
                ),
            )
            return self.valid_metrics(logits, valid.labels)

        def save(model, folder: Path, weights: dict | None = None) -> None:
            # Here rather than in load_model: every problem type and both engines save the model
            # through this.
            remember_long_text(model.config, cfg)
            model.save_pretrained(folder, state_dict=weights)
            tokenizer.save_pretrained(folder)

        return Job(
            train=train,
            lengths=train.lengths,
            collate=collate,
            save=save,
            loss=self.loss(cfg),
            evaluate=evaluate if valid is not None else None,
            accuracy=self.train_counts,
            valid=valid,
            trainer_metrics=self.trainer_metrics,
            metric_names=self.metrics,
            batch_loss=self.batch_loss,
            tokenizer=tokenizer,
        )

    # What changes with the problem type (kinds.problems overrides these)
    # -------------------------------------
    def valid_metrics(self, logits: np.ndarray, y: np.ndarray) -> dict:
        m = classification_metrics(y, logits.argmax(1), self.labels.names)
        return {"loss": cross_entropy(logits, y), **{k: m[k] for k in self.metrics}}

    def train_counts(self, out, batch) -> tuple[int, int]:
        """(right, counted) of a training batch, for the train accuracy logged each epoch."""
        return int((out.logits.argmax(-1) == batch["labels"]).sum()), len(batch["labels"])

    def batch_loss(self, out, batch) -> float:
        return torch.nn.functional.cross_entropy(
            out.logits.detach().float(), batch["labels"]
        ).item()

    def loss(self, cfg: FinetuneConfig):
        """The training loss when it is not the model's own: cross-entropy weighted by
        --class-weights, smoothed by --label-smoothing."""
        return smoothed_loss(
            cfg.label_smoothing, None if self.weights is None else torch.from_numpy(self.weights)
        )

    def trainer_metrics(self) -> StreamingMetrics:
        return StreamingMetrics(self.labels.names, self.metrics)

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        # Reload from disk through the same path `evaluate` uses: proves the saved model is
        # complete.
        clf = Classifier.load(str(model_dir), cfg.max_length, cfg.cpu)
        test = self.parts["test"]
        t = time.time()
        probs = distributed.gather_rows(
            len(test),
            lambda idx: clf.probabilities(
                test.take(idx), cfg.eval_batch_size, progress=cfg.progress and distributed.is_main()
            ),
        )
        metrics = classification_metrics(self.y["test"], probs.argmax(1), self.labels.names)
        seconds = round(time.time() - t, 2)
        if run.main:
            plots.confusion_matrix(
                metrics["confusion_matrix"], self.labels.names, run.dir / "confusion_matrix.png"
            )
        run.say("test set:\n" + format_table(metrics))
        return {"test": metrics, "test_seconds": seconds}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        if self.skewed:
            return (
                f"test balanced accuracy {m['balanced_accuracy']:.4f}, macro F1"
                f" {m['f1_macro']:.4f}, accuracy {m['accuracy']:.4f} on {m['n']} texts"
            )
        return f"test accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f} on {m['n']} texts"
