"""`warmstart evaluate`: a saved model scored on a labelled file, by the task kind that reads it
(kinds/): accuracy, per-class precision/recall/F1 and the confusion matrix of a classifier; word
accuracy and entity precision/recall/F1 per type (seqeval) of a tagger; BLEU, chrF, exact match and
CER/WER of the texts a text-to-text model writes (each pair's output in a JSON Lines file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from warmstart import distributed, kinds
from warmstart.config import Choice, EvaluateConfig, make, settle
from warmstart.errors import UserError
from warmstart.files import atomic_write_json
from warmstart.inference import ray_engine
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
    """Score a saved model on labelled data (``config.data``) as plain transformers would: the saved
    model in the precision it was saved in, unless ``quantize="int8"`` asks to score the quantised
    deployment. Classifiers, taggers, text-to-text, QA, retrieval (a BEIR folder) and preference
    pairs are scored by their task kind; returns the metrics."""
    cfg = make(EvaluateConfig, config, kwargs)
    ray_engine.refuse_ray_options(cfg)
    if not cfg.data:
        raise UserError("no data to evaluate on: pass --data FILE")
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    path = resolve(cfg.model, hub=cfg)
    model_config = load_config(path)
    kind, found = kinds.for_model(model_config)
    cfg = settle(cfg, as_saved(cfg, model_config))
    # --engine ray: the kind reads and scores the file as always; its rows are scored by Ray actors.
    ray = cfg.engine == "ray"
    scorer = ray_engine.scorer(cfg.ray_address, cfg.actors, cfg.batch_tokens, path) if ray else None
    with distributed.scored_by(scorer):
        metrics = kind.evaluate(cfg, path, found)
    out = Path(cfg.out) if cfg.out else None
    if out and distributed.is_main():
        atomic_write_json(out, metrics)
    return EvaluateResult(metrics, out, kind)


def as_saved(cfg: EvaluateConfig, model_config: object) -> dict[str, Choice]:
    """Evaluate scores the saved model as it is, unlike predict and serve (which run the measured
    fastest way, ONNX int8 on CPUs): int8 flipped one IMDb review in a hundred of a weak model
    against transformers' pipeline. --quantize int8 scores the int8 deployment, --backend onnx the
    fp32 export."""
    why = "evaluate scores the saved model as it is (--quantize int8 scores the int8 deployment)"
    choices = {}
    if cfg.quantize == "auto":
        choices["quantize"] = Choice("none", why)
        if cfg.backend == "auto":
            choices["backend"] = Choice("torch", why)
    onnx = cfg.backend == "onnx" or (cfg.backend == "auto" and cfg.quantize == "int8")
    if cfg.precision == "auto" and not onnx:
        saved = str(
            getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", "")
        )
        dtype = "bf16" if "bfloat16" in saved else "fp32"
        choices["precision"] = Choice(dtype, f"the dtype the model was saved in; {why}")
    return choices


def report(cfg: EvaluateConfig, result: EvaluateResult) -> str:
    written = f"metrics written to {result.out}\n" if result.out else ""
    return result.kind.evaluate_report(result.metrics) + "\n" + written
