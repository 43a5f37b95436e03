"""`warmstart evaluate`: a saved model scored on a labelled file, by the task kind that reads it
(kinds/): accuracy, per-class precision/recall/F1 and the confusion matrix of a classifier; word
accuracy and entity precision/recall/F1 per type (seqeval) of a tagger; BLEU, chrF, exact match and
CER/WER of the texts a text-to-text model writes (each pair's output in a JSON Lines file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed, kinds
from warmstart.config import EvaluateConfig, make, settle
from warmstart.errors import UserError
from warmstart.files import atomic_write_json
from warmstart.models.download import pin
from warmstart.models.registry import load_config, resolve


@dataclass
class EvaluateResult:
    metrics: dict
    out: Path | None
    kind: type[kinds.TaskKind] | None = None

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]


def evaluate(config: EvaluateConfig | None = None, **kwargs) -> EvaluateResult:
    cfg = make(EvaluateConfig, config, kwargs)
    if not cfg.data:
        raise UserError("no data to evaluate on: pass --data FILE")
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    path = resolve(cfg.model, hub=cfg)
    kind, found = kinds.for_model(load_config(path))
    metrics = kind.evaluate(cfg, path, found)
    out = Path(cfg.out) if cfg.out else None
    if out and distributed.is_main():
        atomic_write_json(out, metrics)
    return EvaluateResult(metrics, out, kind)


def report(cfg: EvaluateConfig, result: EvaluateResult) -> str:
    written = f"metrics written to {result.out}\n" if result.out else ""
    return result.kind.evaluate_report(result.metrics) + "\n" + written
