"""`warmstart evaluate`: accuracy, per-class precision/recall/F1 and the confusion matrix of a saved model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed
from warmstart.config import EvaluateConfig, make
from warmstart.data import read_examples
from warmstart.errors import UserError
from warmstart.inference import Classifier
from warmstart.metrics import classification_metrics
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
    ex = read_examples(cfg.data, cfg.text_column, cfg.text_pair_column, cfg.label_column, limit=cfg.limit)
    clf = Classifier.load(cfg.model, cfg.max_length, cfg.cpu, cfg.backend, cfg.quantize, cfg.precision)
    y = clf.labels.encode(ex)
    t0 = time.time()
    probs = distributed.probabilities(clf, ex, cfg.batch_size, cfg.progress)  # sharded under accelerate launch
    metrics = classification_metrics(y, probs.argmax(1), clf.labels.names)
    metrics.update(model=clf.path, data=str(Path(cfg.data).resolve()), backend=clf.plan.name,
                   seconds=round(time.time() - t0, 2), texts_per_s=round(len(ex) / max(time.time() - t0, 1e-9), 2))
    out = Path(cfg.out) if cfg.out else None
    if out and distributed.is_main():
        atomic_write_json(out, metrics)
    return EvaluateResult(metrics, out)
