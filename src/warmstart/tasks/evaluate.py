"""`warmstart evaluate`: accuracy, per-class precision/recall/F1 and the confusion matrix of a saved
classifier; for a tagger, word accuracy and entity precision/recall/F1 per type (seqeval), counted
on words; for a text-to-text model, BLEU, chrF, exact match and CER/WER of the texts it writes (with
each pair's output in a JSON Lines file)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed
from warmstart.config import EvaluateConfig, given_flags, make
from warmstart.data.pairs import prediction_lines, read_pairs
from warmstart.data.tables import read_examples
from warmstart.data.tagged import check_sentences, read_sentences
from warmstart.data.targets import LabelSet, label_sets, numeric_targets
from warmstart.errors import UserError
from warmstart.files import atomic_write_json, atomic_write_text
from warmstart.inference.calibration import expected_calibration_error
from warmstart.inference.classifier import Classifier
from warmstart.inference.seq2seq import instruction_tuned, load_writer
from warmstart.inference.tagger import Tagger
from warmstart.metrics import (
    classification_metrics,
    format_table,
    format_tagging_table,
    format_text_metrics,
    multilabel_metrics,
    regression_metrics,
    tagging_metrics,
    text_metric_names,
    text_metrics,
)
from warmstart.models.registry import kind, load_config, resolve
from warmstart.models.seq2seq import is_encoder_decoder


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
    config = load_config(resolve(cfg.model))
    pair_only = given_flags(
        cfg,
        ("source_column", "target_column", "metrics", "max_new_tokens", "num_beams", "predictions"),
    )
    if is_encoder_decoder(config) or instruction_tuned(config):
        return evaluate_text_to_text(cfg)
    if pair_only:
        raise UserError(
            f"{', '.join(pair_only)} only apply to text-to-text models (finetune --task seq2seq or "
            "causal-lm)"
        )
    tagger = kind(config) == "tagger"
    # --stride applies to both: a tagger's windows, and a classifier's with --long-text chunk
    # (Classifier.load).
    sequence_only = given_flags(
        cfg,
        (
            "text_column",
            "text_pair_column",
            "label_column",
            "label_separator",
            "long_text",
            "chunk_aggregation",
        ),
    )
    tag_only = given_flags(cfg, ("tag_column", "base_tags"))
    if tagger and sequence_only or not tagger and tag_only:
        raise UserError(
            f"{', '.join(sequence_only if tagger else tag_only)} "
            f"{'do not apply to a tagger' if tagger else 'only apply to taggers (finetune --task tokens)'}"
        )
    if tagger:
        metrics = evaluate_tagger(cfg)
    else:
        metrics = evaluate_classifier(cfg)
    out = Path(cfg.out) if cfg.out else None
    if out and distributed.is_main():
        atomic_write_json(out, metrics)
    return EvaluateResult(metrics, out)


def evaluate_text_to_text(cfg: EvaluateConfig) -> EvaluateResult:
    """The model writes a target for every source of --data; the metrics of those texts, and each
    pair with its output in --predictions (default: beside --out, as <name>.predictions.jsonl)."""
    refuse = given_flags(
        cfg,
        (
            "text_column",
            "text_pair_column",
            "label_column",
            "label_separator",
            "long_text",
            "chunk_aggregation",
            "stride",
            "tag_column",
            "base_tags",
        ),
    )
    if refuse:
        raise UserError(
            f"{', '.join(refuse)} do not apply to a text-to-text model: it reads --source-column"
            " and --target-column"
        )
    if distributed.is_distributed():
        raise UserError("evaluate with a text-to-text model runs in one process")
    names = text_metric_names(cfg.metrics)
    # A source given twice (a word with two pronunciations) is written once and right when it is
    # either target.
    pairs, refs = read_pairs(
        cfg.data, cfg.source_column, cfg.target_column, limit=cfg.limit
    ).distinct()
    t2t = load_writer(cfg.model, cfg.cpu, cfg.precision, cfg.max_length)
    t0 = time.time()
    written = t2t.write(
        pairs.sources, cfg.max_new_tokens, cfg.num_beams, cfg.batch_size, cfg.progress
    )
    seconds = time.time() - t0
    metrics = {
        **text_metrics([w.text for w in written], refs, names),
        "n": len(pairs),
        "cut_at_limit": sum(w.finish_reason == "length" for w in written),
        "max_new_tokens": cfg.max_new_tokens or t2t.max_new_tokens,
        "num_beams": cfg.num_beams,
        "model": t2t.path,
        "data": str(Path(cfg.data).resolve()),
        "seconds": round(seconds, 2),
        "pairs_per_s": round(len(pairs) / max(seconds, 1e-9), 2),
    }
    out = Path(cfg.out) if cfg.out else None
    where = (
        Path(cfg.predictions)
        if cfg.predictions
        else (out.with_suffix(".predictions.jsonl") if out else None)
    )
    if where is not None:
        atomic_write_text(
            where,
            prediction_lines(
                pairs, [w.text for w in written], [w.finish_reason for w in written], refs
            ),
        )
        metrics["predictions"] = str(where)
    if out:
        atomic_write_json(out, metrics)
    return EvaluateResult(metrics, out)


def evaluate_classifier(cfg: EvaluateConfig) -> dict:
    ex = read_examples(
        cfg.data, cfg.text_column, cfg.text_pair_column, cfg.label_column, limit=cfg.limit
    )
    clf = Classifier.load(
        cfg.model,
        cfg.max_length,
        cfg.cpu,
        cfg.backend,
        cfg.quantize,
        cfg.precision,
        cfg.long_text,
        cfg.stride,
        cfg.chunk_aggregation,
    )
    if clf.problem != "single-label":
        return evaluate_problem(cfg, clf, ex)
    y = clf.labels.encode(ex)
    t0 = time.time()
    probs = distributed.probabilities(
        clf, ex, cfg.batch_size, cfg.progress
    )  # sharded under accelerate launch
    metrics = classification_metrics(y, probs.argmax(1), clf.labels.names)
    # Of the probabilities as served: after the model's calibration temperature, if it has one.
    metrics.update(
        ece=expected_calibration_error(probs, y), calibration_temperature=clf.temperature
    )
    metrics.update(
        model=clf.path,
        data=str(Path(cfg.data).resolve()),
        backend=clf.plan.name,
        long_text=clf.long_text + (f" ({clf.aggregation})" if clf.long_text == "chunk" else ""),
        seconds=round(time.time() - t0, 2),
        texts_per_s=round(len(ex) / max(time.time() - t0, 1e-9), 2),
    )
    return metrics


def evaluate_problem(cfg: EvaluateConfig, clf: Classifier, ex) -> dict:
    """A multi-label model (at its tuned thresholds) or a regression model on a labelled file."""
    names = clf.labels.names
    if clf.problem == "multi-label":
        separator = cfg.label_separator or getattr(load_config(clf.path), "label_separator", None)
        y = LabelSet(names).encode(
            label_sets(ex, separator), ex
        )  # unknown labels fail before any work
    else:
        y = numeric_targets(ex)
        if y.shape[1] != len(names):
            raise UserError(
                f"the model predicts {len(names)} value(s) ({', '.join(names)}); --label-column"
                f" names {y.shape[1]}"
            )
    t0 = time.time()
    outputs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)
    if clf.problem == "multi-label":
        cut = clf.thresholds if clf.thresholds is not None else 0.5
        metrics = multilabel_metrics(y, outputs >= cut, names)
    else:
        metrics = regression_metrics(y, outputs, names)
    seconds = time.time() - t0
    metrics.update(
        problem=clf.problem,
        model=clf.path,
        data=str(Path(cfg.data).resolve()),
        backend=clf.plan.name,
        seconds=round(seconds, 2),
        texts_per_s=round(len(ex) / max(seconds, 1e-9), 2),
    )
    return metrics


def evaluate_tagger(cfg: EvaluateConfig) -> dict:
    sents = read_sentences(cfg.data, cfg.tag_column, limit=cfg.limit, base_tags=cfg.base_tags)
    check_sentences(sents)
    tagger = Tagger.load(
        cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision, cfg.stride
    )
    known = set(tagger.tags)
    for i, tags in enumerate(sents.tags):
        for j, t in enumerate(tags):
            if t not in known:
                raise UserError(
                    f"{sents.where_word(i, j)}: the tag '{t}' is not one the model knows "
                    f"({', '.join(tagger.tags)})"
                )
    t0 = time.time()
    words = tagger.word_probabilities(sents.tokens, cfg.batch_size, cfg.progress)
    metrics = tagging_metrics(
        sents.tags, [[tagger.tags[k] for k in w.argmax(-1)] for w in words], tagger.scheme
    )
    seconds = time.time() - t0
    metrics.update(
        model=tagger.path,
        data=str(Path(cfg.data).resolve()),
        backend=tagger.plan.name,
        windowed_sentences=tagger.last_windowed,
        seconds=round(seconds, 2),
        sentences_per_s=round(len(sents) / max(seconds, 1e-9), 2),
    )
    return metrics


def report(cfg: EvaluateConfig, result: EvaluateResult) -> str:
    m = result.metrics
    if "cut_at_limit" in m:  # a text-to-text model
        return (
            format_text_metrics(m)
            + f"\n{m['cut_at_limit']} output(s) stopped at {m['max_new_tokens']} new tokens"
            + (f"\npredictions written to {m['predictions']}" if "predictions" in m else "")
            + "\n"
            + (f"metrics written to {result.out}\n" if result.out else "")
        )
    if "problem" in m:  # multi-label or regression: the headline figures, one per line
        keys = (
            ("f1_micro", "f1_macro", "subset_accuracy")
            if m["problem"] == "multi-label"
            else ("rmse", "mae", "pearson", "spearman")
        )
        table = "\n".join(f"{k:<16}{m[k]:.4f}" for k in keys) + f"\n{'texts':<16}{m['n']}"
    else:
        table = (format_tagging_table if "scheme" in m else format_table)(m)
    return table + "\n" + (f"metrics written to {result.out}\n" if result.out else "")
