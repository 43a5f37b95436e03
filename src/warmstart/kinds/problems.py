"""Sequence classification beyond one class per text: multi-label (a set of classes per text:
sigmoid outputs, binary cross-entropy, a threshold per label tuned on the valid split) and
regression (numbers: mean squared error). Each is `SequenceClassification` with other targets, head,
loss and metrics; the engines, run folder, resume and encoding are the same. The head is
transformers' own for ``config.problem_type``, so a saved model computes the same outputs and loss
in plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from warmstart import distributed
from warmstart.config import EvaluateConfig, FinetuneConfig, given_flags
from warmstart.data.tables import Examples
from warmstart.data.targets import HF_PROBLEM, LabelSet, label_sets, numeric_targets
from warmstart.errors import UserError
from warmstart.inference.classifier import Classifier
from warmstart.kinds.sequence import PROBLEMS, SequenceClassification
from warmstart.metrics import best_thresholds, multilabel_metrics, regression_metrics, sigmoid
from warmstart.models.classifier import load_classifier
from warmstart.models.registry import dropout_of, load_config
from warmstart.runs import Run


class StreamingLogits:
    """The Trainer's `compute_metrics` with `batch_eval_metrics=True` for these problems: keeps the
    logits (a few numbers a row) and scores them with the kind's own valid metrics at the end."""

    def __init__(self, kind: SequenceClassification):
        self.kind = kind
        self.logits: list[np.ndarray] = []
        self.y: list[np.ndarray] = []

    def __call__(self, pred, compute_result: bool) -> dict | None:
        self.logits.append(pred.predictions.float().cpu().numpy())
        self.y.append(pred.label_ids.float().cpu().numpy())
        if not compute_result:
            return None
        m = self.kind.valid_metrics(np.concatenate(self.logits), np.concatenate(self.y))
        self.logits, self.y = [], []
        return {k: m[k] for k in self.kind.metrics}


def refuse_class_options(cfg: FinetuneConfig, problem: str) -> None:
    """Options of single-label classification that mean nothing for this problem."""
    names = ("class_weights", "sampler", "label_smoothing")
    names = ("label_names", *names) if problem == "regression" else names
    given = given_flags(cfg, names)
    if given:
        raise UserError(
            f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {problem}"
        )


class ProblemKind(SequenceClassification):
    """What multi-label and regression share: raw outputs of the saved model scored by their own
    metrics."""

    def raw_outputs(self, cfg: FinetuneConfig, model_dir: Path, role: str) -> np.ndarray:
        """Logits of the saved model on a part, through the path `evaluate` uses (fp32 PyTorch)."""
        clf = Classifier.load(str(model_dir), cfg.max_length, cfg.cpu)
        part = self.parts[role]
        return distributed.gather_rows(
            len(part),
            lambda idx: clf.logits(
                part.take(idx), cfg.eval_batch_size, progress=cfg.progress and distributed.is_main()
            ),
        )

    def finish(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        return {}  # no temperature: calibration is single-label's

    def show_test(self, metrics: dict, run: Run) -> None:
        numbers = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        run.say("test set: " + json.dumps(numbers))

    @classmethod
    def calibration_figures(cls, clf: Classifier, probs: np.ndarray, y: np.ndarray) -> dict:
        return {}  # no temperature: calibration is single-label's

    @classmethod
    def reading(cls, clf: Classifier) -> dict:
        return {"problem": cls.problem}

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        """The headline figures, one per line."""
        return (
            "\n".join(f"{k:<16}{metrics[k]:.4f}" for k in cls.headline)
            + f"\n{'texts':<16}{metrics['n']}"
        )


class MultiLabelClassification(ProblemKind):
    problem = "multi-label"
    metrics = ("f1_micro", "f1_macro", "subset_accuracy")
    headline = ("f1_micro", "f1_macro", "subset_accuracy")

    @classmethod
    def output_metrics(cls, clf: Classifier, outputs: np.ndarray, y: np.ndarray) -> dict:
        cut = clf.thresholds if clf.thresholds is not None else 0.5  # tuned at the end of training
        return multilabel_metrics(y, outputs >= cut, clf.labels.names)

    @classmethod
    def file_targets(cls, cfg: EvaluateConfig, clf: Classifier, ex: Examples) -> np.ndarray:
        separator = cfg.label_separator or getattr(load_config(clf.path), "label_separator", None)
        # Unknown labels fail before any work.
        return LabelSet(clf.labels.names).encode(label_sets(ex, separator), ex)

    def read_targets(self, cfg: FinetuneConfig) -> None:
        refuse_class_options(cfg, self.problem)
        self.separator = cfg.label_separator
        sets = {role: label_sets(part, cfg.label_separator) for role, part in self.parts.items()}
        self.labels = LabelSet.from_sets(sets["train"], self.parts["train"].source)
        if cfg.label_names:
            raise UserError(
                "--label-names names the integer classes of single-label data; multi-label labels "
                "are named by their values"
            )
        self.y = {role: self.labels.encode(sets[role], part) for role, part in self.parts.items()}
        self.skewed, self.weights = False, None

    def default_metric(self) -> str:
        return "f1_micro"

    def describe(self) -> str:
        counts = dict(zip(self.labels.names, self.y["train"].sum(0).astype(int).tolist()))
        return (
            f"{self.problem_note()}, multi-label: {len(self.labels.names)} labels, rows per label"
            f" {counts}"
        )

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        model = load_classifier(path, self.labels.names, self.labels.names, dropout_of(cfg))
        model.config.problem_type = HF_PROBLEM[
            self.problem
        ]  # BCE-with-logits in the model's own forward
        model.config.label_separator = self.separator  # evaluate reads labelled files the same way
        return model

    def valid_metrics(
        self, logits: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None
    ) -> dict:
        """The loss and the headline metrics (numbers only: they are logged each epoch)."""
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).float(), torch.from_numpy(y).float()
        ).item()
        m = self.test_metrics(logits, y, thresholds)
        return {"loss": loss, **{k: m[k] for k in self.metrics}}

    def train_counts(self, out, batch) -> tuple[int, int]:
        right = ((out.logits.detach() > 0) == (batch["labels"] > 0.5)).all(
            -1
        )  # every label of the row right
        return int(right.sum()), len(right)

    def batch_loss(self, out, batch) -> float:
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out.logits.detach().float(), batch["labels"].float()
        ).item()

    def trainer_metrics(self) -> StreamingLogits:
        return StreamingLogits(self)

    def finish(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """Per-label thresholds with the best F1 on the valid split, saved in the model's
        config.json."""
        if "valid" not in self.parts:
            return {}
        logits = self.raw_outputs(cfg, model_dir, "valid")
        thresholds = best_thresholds(sigmoid(logits), self.y["valid"])
        at_half = self.valid_metrics(logits, self.y["valid"])["f1_micro"]
        tuned = self.valid_metrics(logits, self.y["valid"], thresholds)["f1_micro"]
        if run.main:
            update_model_config(model_dir, thresholds=[float(t) for t in thresholds])
        run.say(
            f"thresholds tuned on the valid split: micro F1 {at_half:.4f} at 0.5 → {tuned:.4f} "
            f"({', '.join(f'{n} {t:.2f}' for n, t in zip(self.labels.names, thresholds))})"
        )
        return {
            "thresholds": dict(zip(self.labels.names, thresholds.tolist())),
            "valid_f1_micro_at_0.5": at_half,
            "valid_f1_micro_tuned": tuned,
        }

    def test_metrics(
        self, logits: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None
    ) -> dict:
        return multilabel_metrics(
            y, sigmoid(logits) >= (0.5 if thresholds is None else thresholds), self.labels.names
        )

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return (
            f"test micro F1 {m['f1_micro']:.4f}, macro F1 {m['f1_macro']:.4f}, subset accuracy "
            f"{m['subset_accuracy']:.4f} on {m['n']} texts"
        )


class Regression(ProblemKind):
    problem = "regression"
    metrics = ("rmse", "mae", "pearson", "spearman")
    headline = ("rmse", "mae", "pearson", "spearman")

    @classmethod
    def output_metrics(cls, clf: Classifier, outputs: np.ndarray, y: np.ndarray) -> dict:
        return regression_metrics(y, outputs, clf.labels.names)

    @classmethod
    def file_targets(cls, cfg: EvaluateConfig, clf: Classifier, ex: Examples) -> np.ndarray:
        y = numeric_targets(ex)
        names = clf.labels.names
        if y.shape[1] != len(names):
            raise UserError(
                f"the model predicts {len(names)} value(s) ({', '.join(names)}); --label-column"
                f" names {y.shape[1]}"
            )
        return y

    def read_targets(self, cfg: FinetuneConfig) -> None:
        refuse_class_options(cfg, self.problem)
        train = self.parts["train"]
        self.names = (train.label_column or "value").split(",")
        self.y = {role: numeric_targets(part) for role, part in self.parts.items()}
        self.skewed, self.weights = False, None

    def default_metric(self) -> str:
        return "rmse"

    def describe(self) -> str:
        y = self.y["train"]
        return f"{self.problem_note()}, regression on " + ", ".join(
            f"{n} (mean {y[:, k].mean():.3g}, sd {y[:, k].std():.3g})"
            for k, n in enumerate(self.names)
        )

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        model = load_classifier(path, self.names, self.names, dropout_of(cfg))
        model.config.problem_type = HF_PROBLEM[self.problem]  # MSE in the model's own forward
        if not cfg.resume:
            start_at_the_mean(model, self.y["train"].mean(0))
        return model

    def valid_metrics(self, logits: np.ndarray, y: np.ndarray) -> dict:
        loss = float(np.mean((logits.astype(np.float64) - y) ** 2))
        m = regression_metrics(y, logits, self.names)
        return {"loss": loss, **{k: m[k] for k in self.metrics}}

    train_counts = None  # no accuracy for numbers: the engines log the loss alone

    def batch_loss(self, out, batch) -> float:
        return torch.nn.functional.mse_loss(
            out.logits.detach().float().view(len(batch["labels"]), -1),
            batch["labels"].float().view(len(batch["labels"]), -1),
        ).item()

    def trainer_metrics(self) -> StreamingLogits:
        return StreamingLogits(self)

    def test_metrics(
        self, logits: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None
    ) -> dict:
        return regression_metrics(y, logits, self.names)

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return (
            f"test RMSE {m['rmse']:.4f}, MAE {m['mae']:.4f}, Pearson {m['pearson']:.4f}, Spearman "
            f"{m['spearman']:.4f} on {m['n']} texts"
        )


def start_at_the_mean(model: torch.nn.Module, mean: np.ndarray) -> None:
    """A new regression head answers the training mean from the first step: its output bias is set
    to it (a fresh head's bias is 0, so targets around 50 would spend the first epochs just finding
    their level). The model is unchanged otherwise, and plain transformers computes the same
    outputs."""
    heads = [
        m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == len(mean)
    ]
    if heads and heads[-1].bias is not None:
        with torch.no_grad():
            heads[-1].bias.copy_(torch.as_tensor(mean, dtype=heads[-1].bias.dtype))


def update_model_config(model_dir: Path, **values) -> None:
    """Add ``values`` to a saved model's config.json, atomically (the model folder stays loadable
    throughout)."""
    from warmstart.files import atomic_write_json

    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(values)
    atomic_write_json(path, config)


PROBLEMS[MultiLabelClassification.problem] = MultiLabelClassification
PROBLEMS[Regression.problem] = Regression
