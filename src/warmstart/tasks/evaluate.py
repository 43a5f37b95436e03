"""`warmstart evaluate`: accuracy, per-class precision/recall/F1 and the confusion matrix of a saved classifier;
for a tagger, word accuracy and entity precision/recall/F1 per type (seqeval), counted on words."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed
from warmstart.config import EvaluateConfig, given_flags, make
from warmstart.data.tables import read_examples
from warmstart.data.tagged import check_sentences, read_sentences
from warmstart.data.targets import LabelSet, label_sets, numeric_targets
from warmstart.errors import UserError
from warmstart.inference.calibration import expected_calibration_error
from warmstart.inference.classifier import Classifier
from warmstart.inference.tagger import Tagger
from warmstart.metrics import (
    classification_metrics,
    format_table,
    format_tagging_table,
    multilabel_metrics,
    regression_metrics,
    tagging_metrics,
)
from warmstart.models.registry import kind, load_config, resolve
from warmstart.runs import atomic_write_json


@dataclass
class EvaluateResult:
    metrics: dict
    out: Path | None

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]


def evaluate(config: EvaluateConfig | None = None, **kwargs) -> EvaluateResult:
    cfg = make(EvaluateConfig, config, kwargs)
    if not cfg.data:
        raise UserError("no data to evaluate on: pass --data FILE")
    tagger = kind(load_config(resolve(cfg.model))) == "tagger"
    # --stride applies to both: a tagger's windows, and a classifier's with --long-text chunk (Classifier.load).
    sequence_only = given_flags(cfg, ("text_column", "text_pair_column", "label_column", "label_separator", "long_text",
                                      "chunk_aggregation"))
    tag_only = given_flags(cfg, ("tag_column", "base_tags"))
    if tagger and sequence_only or not tagger and tag_only:
        raise UserError(f"{', '.join(sequence_only if tagger else tag_only)} "
                        f"{'do not apply to a tagger' if tagger else 'only apply to taggers (finetune --task tokens)'}")
    if tagger:
        metrics = evaluate_tagger(cfg)
    else:
        metrics = evaluate_classifier(cfg)
    out = Path(cfg.out) if cfg.out else None
    if out and distributed.is_main():
        atomic_write_json(out, metrics)
    return EvaluateResult(metrics, out)


def evaluate_classifier(cfg: EvaluateConfig) -> dict:
    ex = read_examples(cfg.data, cfg.text_column, cfg.text_pair_column, cfg.label_column, limit=cfg.limit)
    clf = Classifier.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision,
                          cfg.long_text, cfg.stride, cfg.chunk_aggregation)
    if clf.problem != "single-label":
        return evaluate_problem(cfg, clf, ex)
    y = clf.labels.encode(ex)
    t0 = time.time()
    probs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)  # sharded under accelerate launch
    metrics = classification_metrics(y, probs.argmax(1), clf.labels.names)
    # Of the probabilities as served: after the model's calibration temperature, if it has one.
    metrics.update(ece=expected_calibration_error(probs, y), calibration_temperature=clf.temperature)
    metrics.update(model=clf.path, data=str(Path(cfg.data).resolve()), backend=clf.plan.name,
                   long_text=clf.long_text + (f" ({clf.aggregation})" if clf.long_text == "chunk" else ""),
                   seconds=round(time.time() - t0, 2), texts_per_s=round(len(ex) / max(time.time() - t0, 1e-9), 2))
    return metrics


def evaluate_problem(cfg: EvaluateConfig, clf: Classifier, ex) -> dict:
    """A multi-label model (at its tuned thresholds) or a regression model on a labelled file."""
    names = clf.labels.names
    if clf.problem == "multi-label":
        separator = cfg.label_separator or getattr(load_config(clf.path), "label_separator", None)
        y = LabelSet(names).encode(label_sets(ex, separator), ex)  # unknown labels fail before any work
    else:
        y = numeric_targets(ex)
        if y.shape[1] != len(names):
            raise UserError(f"the model predicts {len(names)} value(s) ({', '.join(names)}); --label-column names "
                            f"{y.shape[1]}")
    t0 = time.time()
    outputs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)
    if clf.problem == "multi-label":
        cut = clf.thresholds if clf.thresholds is not None else 0.5
        metrics = multilabel_metrics(y, outputs >= cut, names)
    else:
        metrics = regression_metrics(y, outputs, names)
    seconds = time.time() - t0
    metrics.update(problem=clf.problem, model=clf.path, data=str(Path(cfg.data).resolve()), backend=clf.plan.name,
                   seconds=round(seconds, 2), texts_per_s=round(len(ex) / max(seconds, 1e-9), 2))
    return metrics


def evaluate_tagger(cfg: EvaluateConfig) -> dict:
    sents = read_sentences(cfg.data, cfg.tag_column, limit=cfg.limit, base_tags=cfg.base_tags)
    check_sentences(sents)
    tagger = Tagger.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision, cfg.stride)
    known = set(tagger.tags)
    for i, tags in enumerate(sents.tags):
        for j, t in enumerate(tags):
            if t not in known:
                raise UserError(f"{sents.where_word(i, j)}: the tag '{t}' is not one the model knows "
                                f"({', '.join(tagger.tags)})")
    t0 = time.time()
    words = tagger.word_probabilities(sents.tokens, cfg.batch_size, cfg.progress)
    metrics = tagging_metrics(sents.tags, [[tagger.tags[k] for k in w.argmax(-1)] for w in words], tagger.scheme)
    seconds = time.time() - t0
    metrics.update(model=tagger.path, data=str(Path(cfg.data).resolve()), backend=tagger.plan.name,
                   windowed_sentences=tagger.last_windowed, seconds=round(seconds, 2),
                   sentences_per_s=round(len(sents) / max(seconds, 1e-9), 2))
    return metrics


def report(cfg: EvaluateConfig, result: EvaluateResult) -> str:
    m = result.metrics
    if "problem" in m:  # multi-label or regression: the headline figures, one per line
        keys = ("f1_micro", "f1_macro", "subset_accuracy") if m["problem"] == "multi-label" else \
            ("rmse", "mae", "pearson", "spearman")
        table = "\n".join(f"{k:<16}{m[k]:.4f}" for k in keys) + f"\n{'texts':<16}{m['n']}"
    else:
        table = (format_tagging_table if "scheme" in m else format_table)(m)
    return table + "\n" + (f"metrics written to {result.out}\n" if result.out else "")
