"""`warmstart predict`: what a saved model says of each text, in the input's order, by the task kind
that reads it (kinds/): label and class probabilities (a classifier); each word's tag and the entity
spans, with offsets into the text (a tagger); the text it writes (a text-to-text model)."""

from __future__ import annotations

from pathlib import Path

from warmstart import distributed, kinds
from warmstart.config import PredictConfig, make, settle
from warmstart.files import atomic_write_text
from warmstart.inference import ray_engine
from warmstart.inference.tagger import Tagged
from warmstart.kinds import Prediction
from warmstart.models.download import pin
from warmstart.models.registry import load_config, resolve

__all__ = ["Prediction", "format_predictions", "predict", "report"]


def format_predictions(preds: list, cfg: PredictConfig) -> str:
    kind, _ = kinds.for_model(load_config(resolve(cfg.model, hub=cfg)))
    return kind.predict_report(cfg, preds)


def predict(
    config: PredictConfig | None = None, **kwargs
) -> list[Prediction] | list[Tagged] | ray_engine.RayOutput:
    """Predict for texts given as arguments, a file or stdin: labels with scores, tags, answers or
    generated text, as the saved model's task kind does; with ``engine="ray"`` the rows are scored on
    a Ray cluster and written as Parquet shards."""
    cfg = make(PredictConfig, config, kwargs)
    ray_engine.refuse_ray_options(cfg)
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    if cfg.engine == "ray":  # the records as Parquet shards in --out, not a list in memory
        return ray_engine.predict(cfg)
    path = resolve(cfg.model, hub=cfg)
    kind, found = kinds.for_model(load_config(path))
    preds = kind.predict(cfg, path, found)
    if cfg.out and distributed.is_main():
        atomic_write_text(Path(cfg.out), kind.predict_report(cfg, preds))
    return preds


def report(
    cfg: PredictConfig, preds: list[Prediction] | list[Tagged] | ray_engine.RayOutput
) -> str:
    if isinstance(preds, ray_engine.RayOutput):
        return ray_report(preds)
    return "" if cfg.out else format_predictions(preds, cfg)


def ray_report(r: ray_engine.RayOutput) -> str:
    return (
        f"{r.rows} rows -> {len(r.shards)} Parquet shard(s) in {r.out} ({r.actors} actors,"
        f" {r.rows_per_s} rows/s)\n"
    )
