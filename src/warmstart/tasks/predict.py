"""`warmstart predict`: label and class probabilities per text, in the input's order."""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed
from warmstart.config import PredictConfig, make
from warmstart.data import Examples, read_examples
from warmstart.errors import UserError
from warmstart.inference import Classifier
from warmstart.runs import atomic_write_text


@dataclass
class Prediction:
    text: str
    label: str
    score: float
    probabilities: dict[str, float]


def _inputs(cfg: PredictConfig) -> Examples:
    if cfg.texts and cfg.input:
        raise UserError("give texts as arguments or with --input, not both")
    if cfg.input:  # a .txt file is one text per line; a table has a text column
        return read_examples(cfg.input, cfg.text_column, cfg.text_pair_column, labelled=False, limit=cfg.limit)
    texts = list(cfg.texts)
    source = "arguments"
    if not texts:
        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no texts: pass them as arguments, with --input FILE, or on standard input")
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        source = "<stdin>"
    if not texts:
        raise UserError(f"no texts to predict on {source}")
    for i, t in enumerate(texts):
        if not t.strip():
            raise UserError(f"text {i + 1} of the {source} is empty")
    return Examples(source=source, texts=texts, pairs=None, labels=None, rows=list(range(1, len(texts) + 1)))


def format_predictions(preds: list[Prediction], fmt: str, names: list[str]) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps({"text": p.text, "label": p.label, "score": round(p.score, 6),
                                   "probabilities": {k: round(v, 6) for k, v in p.probabilities.items()}},
                                  ensure_ascii=False) + "\n" for p in preds)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text", "label", "score", *(f"p_{n}" for n in names)])
    for p in preds:
        w.writerow([p.text, p.label, f"{p.score:.6f}", *(f"{p.probabilities[n]:.6f}" for n in names)])
    return buf.getvalue()


def predict(config: PredictConfig | None = None, **kwargs) -> list[Prediction]:
    cfg = make(PredictConfig, config, kwargs)
    ex = _inputs(cfg)
    clf = Classifier.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision)
    probs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)  # sharded under accelerate launch
    names = clf.labels.names
    preds = [Prediction(text, names[int(p.argmax())], float(p.max()), {n: float(v) for n, v in zip(names, p)})
             for text, p in zip(ex.texts, probs)]
    text = format_predictions(preds, cfg.format, names)
    if cfg.out and distributed.is_main():
        atomic_write_text(Path(cfg.out), text)
    return preds
