"""Sequence classification: one label per text (or text pair), a classification head on the first
token."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from warmstart import distributed, plots
from warmstart.config import (
    Choice,
    EvaluateConfig,
    FinetuneConfig,
    PredictConfig,
    given_flags,
    refuse_inapplicable,
)
from warmstart.data.batching import Encoded, collator, encode, pad_multiple
from warmstart.data.hub import evaluated
from warmstart.data.tables import Examples, LabelMap, load_splits, read_examples
from warmstart.data.targets import class_weights, detect_problem, oversampled, problem_of
from warmstart.data.texts import read_texts
from warmstart.errors import UserError
from warmstart.inference import calibration
from warmstart.inference.calibration import expected_calibration_error
from warmstart.inference.classifier import Classifier
from warmstart.kinds.base import (
    FOR_CAUSAL_LM,
    FOR_TEXT_TO_TEXT,
    ModelKind,
    Prediction,
    TaskKind,
    valid_logits,
)
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
    head+tail and chunk cut one text; a text pair is truncated longest-first by the tokenizer."""
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


# Options of evaluate/predict that only text-to-text models or taggers read (refused here).
PAIR_ONLY = (
    "source_column",
    "target_column",
    "metrics",
    "max_new_tokens",
    "num_beams",
    "predictions",
)
TAG_ONLY = ("tag_column", "base_tags")
# evaluate's options that only a sequence classifier reads (--stride is a tagger's too).
SEQUENCE_ONLY = (
    "text_column",
    "text_pair_column",
    "label_column",
    "label_separator",
    "long_text",
    "chunk_aggregation",
)


def refuse_pair_options(cfg: EvaluateConfig) -> None:
    """evaluate's text-to-text options, given for a classifier or a tagger."""
    pair_only = given_flags(cfg, PAIR_ONLY)
    if pair_only:
        raise UserError(
            f"{', '.join(pair_only)} only apply to text-to-text models (finetune --task seq2seq or"
            " causal-lm)"
        )


# Problem type -> kind: single-label here, multi-label and regression added by kinds.problems.
PROBLEMS: dict[str, type[SequenceClassification]] = {}


class SequenceClassification(TaskKind):
    """Single-label classification; multi-label and regression (kinds.problems) change the targets,
    head, loss and metrics and keep the rest."""

    task = "sequence"
    not_mine = (FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT)
    reads = {
        "classifier": ModelKind("a text classifier", ("predict", "embed")),
        "nli": ModelKind("an NLI classifier", ("predict", "embed", "zeroshot"), "nli"),
    }
    problem = "single-label"
    metrics = METRICS  # valid metrics besides the loss, for --metric-for-best

    @classmethod
    def start(cls, cfg: FinetuneConfig) -> SequenceClassification:
        """`--task sequence`: the problem type given, or detected from the training labels (and
        said so: the choice goes into the run's settings with its reason)."""
        check_options(cfg)
        if cfg.problem not in ("auto", "multi-label"):
            given = given_flags(cfg, ("label_separator",))
            if given:
                raise UserError(
                    f"{given[0]} is for multi-label labels, not --problem {cfg.problem}"
                )
        parts = load_splits(cfg)
        if cfg.problem != "auto":
            return PROBLEMS[cfg.problem](cfg, parts)
        problem, why = detect_problem(parts["train"], cfg.label_separator)
        return PROBLEMS[problem](cfg, parts, detected=f"{why}; --problem to choose")

    def __init__(self, cfg: FinetuneConfig, parts: dict | None = None, detected: str | None = None):
        check_options(cfg)
        if cfg.metric_for_best not in (None, "loss", *self.metrics):
            raise UserError(
                f"--metric-for-best {cfg.metric_for_best} does not apply to {self.problem} "
                f"classification; choose one of loss, {', '.join(self.metrics)}"
            )
        self.detected = detected  # why the problem type is what it is, when it was detected
        self.parts = load_splits(cfg) if parts is None else parts
        self.read_targets(cfg)

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        made = {
            "epochs": Choice(3.0, "sequence classification's default"),
            "lr": Choice(5e-5, "fine-tuning's usual rate (BERT's recipe)"),
            "metric_for_best": Choice(
                self.default_metric(),
                "classes skewed, so the metric that means something picks the best epoch"
                if self.skewed
                else f"{self.problem}'s headline metric",
            ),
            "long_text": Choice("truncate", "the default: texts cut at --max-length"),
        }
        made = {k: c for k, c in made.items() if getattr(cfg, k) is None}
        if cfg.problem == "auto":
            made["problem"] = Choice(self.problem, f"detected: {self.detected}")
        return made

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
        return f"{self.problem_note()}, labels {self.labels.names}{skew}"

    def problem_note(self) -> str:
        """How the problem type was decided, for the run's first log line."""
        return f"{self.problem} ({self.detected})" if self.detected else self.problem

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
            logits = valid_logits(model, valid, cfg, collate, device, autocast)
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

    def finish(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """Temperature scaling of the saved (best) model on the valid split: T in
        model/config.json, calibration.json and reliability.png in the run folder.

        The valid logits come from one more pass of the saved model, fp32 PyTorch as the test pass,
        rather than from training's last evaluation: that one may have run under bf16 autocast, the
        Trainer engine keeps only each row's argmax, and a resumed run may have evaluated its best
        epoch in an earlier process. So both engines, and a run resumed at any point, fit T on the
        same logits of the same saved model."""
        if not (cfg.calibrate and "valid" in self.parts):
            if run.main and (model_dir / "config.json").is_file():
                # One an interrupted earlier attempt may have saved.
                calibration.save_temperature(model_dir, None)
            return {}
        t = time.time()
        clf = Classifier.load(str(model_dir), cfg.max_length, cfg.cpu)
        valid = self.parts["valid"]
        logits = distributed.gather_rows(
            len(valid),
            lambda idx: clf.logits(
                valid.take(idx),
                cfg.eval_batch_size,
                progress=cfg.progress and distributed.is_main(),
            ),
        )
        cal = calibration.calibrate(logits, self.y["valid"])
        if run.main:
            calibration.write_report(cal, run.dir)
            calibration.save_temperature(model_dir, cal.temperature)
        distributed.barrier()  # the test pass of every process reads the calibrated config.json
        run.say(cal.describe())
        return {"calibration": {**cal.summary(), "seconds": round(time.time() - t, 2)}}

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        # Reload from disk through the same path `evaluate` uses: proves the saved model is
        # complete.
        clf = Classifier.load(str(model_dir), cfg.max_length, cfg.cpu)
        t = time.time()
        metrics = self.score(
            clf, self.parts["test"], self.y["test"], cfg.eval_batch_size, cfg.progress
        )
        seconds = round(time.time() - t, 2)
        self.show_test(metrics, run)
        return {"test": metrics, "test_seconds": seconds}

    def show_test(self, metrics: dict, run: Run) -> None:
        if run.main:
            plots.confusion_matrix(
                metrics["confusion_matrix"], self.labels.names, run.dir / "confusion_matrix.png"
            )
        run.say("test set:\n" + format_table(metrics))

    @classmethod
    def score(
        cls, clf: Classifier, ex: Examples, y: np.ndarray, batch_size: int, progress: bool
    ) -> dict:
        """The metrics of a saved classifier on labelled rows: the test part of a run and
        `evaluate` alike (each process scores its shard under `accelerate launch`)."""
        return cls.output_metrics(clf, distributed.probabilities(clf, ex, batch_size, progress), y)

    @classmethod
    def output_metrics(cls, clf: Classifier, probs: np.ndarray, y: np.ndarray) -> dict:
        return classification_metrics(y, probs.argmax(1), clf.labels.names)

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        if self.skewed:
            return (
                f"test balanced accuracy {m['balanced_accuracy']:.4f}, macro F1"
                f" {m['f1_macro']:.4f}, accuracy {m['accuracy']:.4f} on {m['n']} texts"
            )
        return f"test accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f} on {m['n']} texts"

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        test = metrics.get("test") or {}
        return f"run folder: {result_dir}\n" + "".join(
            f"test {k.replace('_', ' ')}: {test[k]:.4f}\n"
            for k in ("accuracy", "f1_micro", "rmse", "pearson")
            if k in test
        )

    # -- a saved model read back --------------------------------------------------------------------
    @classmethod
    def variant(cls, config) -> type[SequenceClassification]:
        return PROBLEMS[problem_of(config)]

    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        refuse_pair_options(cfg)
        tag_only = given_flags(cfg, TAG_ONLY)
        if tag_only:
            raise UserError(f"{', '.join(tag_only)} only apply to taggers (finetune --task tokens)")
        ex = read_examples(
            evaluated(cfg, cfg.data),  # a file, or a dataset's test split
            cfg.text_column,
            cfg.text_pair_column,
            cfg.label_column,
            limit=cfg.limit,
        )
        clf = cls.load_saved(cfg)
        y = cls.file_targets(cfg, clf, ex)
        t0 = time.time()
        outputs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)
        metrics = cls.output_metrics(clf, outputs, y)
        metrics.update(cls.calibration_figures(clf, outputs, y))
        seconds = time.time() - t0
        metrics.update(model=clf.path, data=str(Path(cfg.data).resolve()), backend=clf.plan.name)
        metrics.update(cls.reading(clf))
        metrics.update(
            seconds=round(seconds, 2), texts_per_s=round(len(ex) / max(seconds, 1e-9), 2)
        )
        return metrics

    @classmethod
    def load_saved(cls, cfg: EvaluateConfig | PredictConfig) -> Classifier:
        """The saved classifier as evaluate and predict run it (backend, precision, long texts)."""
        return Classifier.load(
            cfg.model,
            cfg.max_length,
            cfg.cpu,
            cfg.backend,
            cfg.quantize,
            cfg.precision,
            cfg.long_text,
            cfg.stride,
            cfg.chunk_aggregation,
            hub=cfg,
        )

    @classmethod
    def file_targets(cls, cfg: EvaluateConfig, clf: Classifier, ex: Examples) -> np.ndarray:
        """The targets of a labelled file, in the model's label space (unknown labels fail)."""
        return clf.labels.encode(ex)

    @classmethod
    def calibration_figures(cls, clf: Classifier, probs: np.ndarray, y: np.ndarray) -> dict:
        """Of the probabilities as served: after the model's calibration temperature, if any."""
        return {
            "ece": expected_calibration_error(probs, y),
            "calibration_temperature": clf.temperature,
        }

    @classmethod
    def reading(cls, clf: Classifier) -> dict:
        """How the model read long texts, for evaluate's metrics."""
        chunk = f" ({clf.aggregation})" if clf.long_text == "chunk" else ""
        return {"long_text": clf.long_text + chunk}

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        return format_table(metrics)

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list[Prediction]:
        refuse_inapplicable(
            cfg,
            ("max_new_tokens", "num_beams"),
            "a classifier or tagger (they are for text-to-text models)",
        )
        if cfg.format == "conll":
            raise UserError("--format conll is for taggers (models from `finetune --task tokens`)")
        # --stride is a classifier's too, with --long-text chunk (Classifier.load refuses it
        # otherwise).
        refuse_inapplicable(
            cfg,
            ("aggregation",),
            "a sequence classifier (it is for taggers' entity scores; --chunk-aggregation combines"
            " --long-text chunk's windows)",
        )
        ex = read_texts(
            cfg.texts, evaluated(cfg, cfg.input), cfg.text_column, cfg.text_pair_column, cfg.limit
        )
        clf = cls.load_saved(cfg)
        # Sharded under accelerate launch.
        probs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)
        return [Prediction(text, **r) for text, r in zip(ex.texts, clf.records(probs))]

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict:
        return {
            "classifier": Classifier.load(
                path,
                max_length=options.get("max_length"),
                cpu=options.get("cpu", False),
                backend=options.get("backend", "torch"),
                quantize=options.get("quantize", "none"),
                long_text=options.get("long_text"),
                stride=options.get("stride"),
                aggregation=options.get("chunk_aggregation"),
            )
        }

    @classmethod
    def serve_refuses(cls, options: dict) -> list[str]:
        return []  # a classifier reads long texts by every --long-text mode


PROBLEMS[SequenceClassification.problem] = SequenceClassification
