"""`warmstart predict`: label and class probabilities per text, in the input's order; for a tagger (a model from
`finetune --task tokens`), each word's tag and the entity spans, with offsets into the text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed
from warmstart.config import PredictConfig, make
from warmstart.data.output import format_records, format_tagged
from warmstart.data.texts import read_texts, read_words
from warmstart.errors import UserError
from warmstart.inference.classifier import Classifier
from warmstart.inference.tagger import Tagged, Tagger
from warmstart.models.registry import kind, load_config, resolve
from warmstart.runs import atomic_write_text


@dataclass
class Prediction:
    text: str
    label: str
    score: float
    probabilities: dict[str, float]


def format_predictions(preds: list[Prediction], fmt: str) -> str:
    return format_records([{"text": p.text, "label": p.label, "score": p.score, "probabilities": p.probabilities}
                           for p in preds], fmt)


def predict(config: PredictConfig | None = None, **kwargs) -> list[Prediction] | list[Tagged]:
    cfg = make(PredictConfig, config, kwargs)
    if kind(load_config(resolve(cfg.model))) == "tagger":
        return tag(cfg)
    if cfg.format == "conll" or cfg.stride is not None:
        raise UserError(f"{'--format conll' if cfg.format == 'conll' else '--stride'} is for taggers (models from "
                        "`finetune --task tokens`)")
    ex = read_texts(cfg.texts, cfg.input, cfg.text_column, cfg.text_pair_column, cfg.limit)
    clf = Classifier.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision)
    probs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)  # sharded under accelerate launch
    names = clf.labels.names
    preds = [Prediction(text, names[int(p.argmax())], float(p.max()), {n: float(v) for n, v in zip(names, p)})
             for text, p in zip(ex.texts, probs)]
    text = format_predictions(preds, cfg.format)
    if cfg.out and distributed.is_main():
        atomic_write_text(Path(cfg.out), text)
    return preds


def tag(cfg: PredictConfig) -> list[Tagged]:
    if cfg.text_pair_column:
        raise UserError("--text-pair-column is for sequence classifiers; a tagger reads one text at a time")
    if distributed.is_distributed():
        raise UserError("predict with a tagger runs in one process")
    words = read_words(cfg.input, cfg.limit) if cfg.input and not cfg.texts else None
    texts = None if words is not None else read_texts(cfg.texts, cfg.input, cfg.text_column, limit=cfg.limit).texts
    tagger = Tagger.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision, cfg.stride)
    tagged = tagger.tag(texts, words, cfg.batch_size, cfg.aggregation, cfg.progress)
    if cfg.out:
        atomic_write_text(Path(cfg.out), format_tagged([t.record() for t in tagged], cfg.format))
    return tagged


def report(cfg: PredictConfig, preds: list[Prediction] | list[Tagged]) -> str:
    if cfg.out:
        return ""
    if preds and isinstance(preds[0], Tagged):
        return format_tagged([t.record() for t in preds], cfg.format)
    return format_predictions(preds, cfg.format)
