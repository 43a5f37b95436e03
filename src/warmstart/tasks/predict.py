"""`warmstart predict`: label and class probabilities per text, in the input's order; for a tagger
(a model from `finetune --task tokens`), each word's tag and the entity spans, with offsets into the
text; for a text-to-text model (`finetune --task seq2seq`), the text it writes for each."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from warmstart import distributed
from warmstart.config import PredictConfig, make, refuse_inapplicable
from warmstart.data.output import format_records, format_tagged
from warmstart.data.texts import read_texts, read_words
from warmstart.errors import UserError
from warmstart.files import atomic_write_text
from warmstart.inference.classifier import Classifier
from warmstart.inference.seq2seq import instruction_tuned, load_writer
from warmstart.inference.tagger import Tagged, Tagger
from warmstart.models.registry import kind, load_config, resolve
from warmstart.models.seq2seq import is_encoder_decoder


@dataclass
class Prediction:
    """One text's prediction: label, score and every class's probability (single-label); the labels
    at or above their thresholds and every label's score (multi-label); or the value(s)
    (regression)."""

    text: str
    label: str | None = None
    score: float | None = None
    probabilities: dict[str, float] | None = None
    labels: list[str] | None = None
    scores: dict[str, float] | None = None
    value: float | None = None
    values: dict[str, float] | None = None
    output: str | None = None  # a text-to-text model's

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def format_predictions(preds: list[Prediction], fmt: str) -> str:
    return format_records([p.record() for p in preds], fmt)


def predict(config: PredictConfig | None = None, **kwargs) -> list[Prediction] | list[Tagged]:
    cfg = make(PredictConfig, config, kwargs)
    model_config = load_config(resolve(cfg.model))
    if is_encoder_decoder(model_config) or instruction_tuned(model_config):
        return write(cfg)
    refuse_inapplicable(
        cfg,
        ("max_new_tokens", "num_beams"),
        "a classifier or tagger (they are for text-to-text models)",
    )
    if kind(model_config) == "tagger":
        return tag(cfg)
    if cfg.format == "conll":
        raise UserError("--format conll is for taggers (models from `finetune --task tokens`)")
    # --stride is a classifier's too, with --long-text chunk (Classifier.load refuses it otherwise).
    refuse_inapplicable(
        cfg,
        ("aggregation",),
        "a sequence classifier (it is for taggers' entity scores; "
        "--chunk-aggregation combines --long-text chunk's windows)",
    )
    ex = read_texts(cfg.texts, cfg.input, cfg.text_column, cfg.text_pair_column, cfg.limit)
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
    probs = distributed.probabilities(
        clf, ex, cfg.batch_size, cfg.progress
    )  # sharded under accelerate launch
    preds = [Prediction(text, **r) for text, r in zip(ex.texts, clf.records(probs))]
    text = format_predictions(preds, cfg.format)
    if cfg.out and distributed.is_main():
        atomic_write_text(Path(cfg.out), text)
    return preds


def write(cfg: PredictConfig) -> list[Prediction]:
    """A text-to-text model (an encoder-decoder, or a causal LM from `finetune --task causal-lm`,
    prompted as it was trained) writes an output for every text."""
    if cfg.format == "conll":
        raise UserError("--format conll is for taggers (models from `finetune --task tokens`)")
    refuse_inapplicable(
        cfg,
        ("aggregation", "long_text", "chunk_aggregation", "stride", "text_pair_column"),
        "a text-to-text model (it reads one text and writes another)",
    )
    if distributed.is_distributed():
        raise UserError("predict with a text-to-text model runs in one process")
    ex = read_texts(cfg.texts, cfg.input, cfg.text_column, limit=cfg.limit)
    t2t = load_writer(cfg.model, cfg.cpu, cfg.precision, cfg.max_length)
    written = t2t.write(ex.texts, cfg.max_new_tokens, cfg.num_beams, cfg.batch_size, cfg.progress)
    preds = [Prediction(text, output=w.text) for text, w in zip(ex.texts, written)]
    if cfg.out:
        atomic_write_text(Path(cfg.out), format_predictions(preds, cfg.format))
    return preds


def tag(cfg: PredictConfig) -> list[Tagged]:
    if cfg.text_pair_column:
        raise UserError(
            "--text-pair-column is for sequence classifiers; a tagger reads one text at a time"
        )
    refuse_inapplicable(
        cfg,
        ("long_text", "chunk_aggregation"),
        "a tagger (it always reads a long sentence in windows: --stride)",
    )
    if distributed.is_distributed():
        raise UserError("predict with a tagger runs in one process")
    words = read_words(cfg.input, cfg.limit) if cfg.input and not cfg.texts else None
    texts = (
        None
        if words is not None
        else read_texts(cfg.texts, cfg.input, cfg.text_column, limit=cfg.limit).texts
    )
    tagger = Tagger.load(
        cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision, cfg.stride
    )
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
