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
from warmstart.errors import UserError
from warmstart.inference.classifier import Classifier
from warmstart.inference.tagger import Tagger
from warmstart.metrics import classification_metrics, format_table, format_tagging_table, tagging_metrics
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
    sequence_only = given_flags(cfg, ("text_column", "text_pair_column", "label_column"))
    tag_only = given_flags(cfg, ("tag_column", "base_tags", "stride"))
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
    clf = Classifier.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision)
    y = clf.labels.encode(ex)
    t0 = time.time()
    probs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)  # sharded under accelerate launch
    metrics = classification_metrics(y, probs.argmax(1), clf.labels.names)
    metrics.update(model=clf.path, data=str(Path(cfg.data).resolve()), backend=clf.plan.name,
                   seconds=round(time.time() - t0, 2), texts_per_s=round(len(ex) / max(time.time() - t0, 1e-9), 2))
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
    table = format_tagging_table if "scheme" in result.metrics else format_table
    return table(result.metrics) + "\n" + (f"metrics written to {result.out}\n" if result.out else "")
