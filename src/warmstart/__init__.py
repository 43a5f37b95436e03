"""warmstart: put pre-trained transformers to work — offline, fast on a laptop CPU, one command per job.

Every CLI command is a function here, taking a config dataclass and/or keyword arguments:

    >>> import warmstart
    >>> result = warmstart.finetune(data="reviews.csv", split="0.8,0.1,0.1", model="minilm", out="runs/x")
    >>> warmstart.evaluate(model="runs/x/model", data="more_reviews.csv").accuracy
    >>> warmstart.predict(model="runs/x/model", texts=["A wonderful, moving film."])[0].label
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Imported on first use, so `warmstart --help` does not wait for torch and transformers.
_LAZY = {
    "finetune": "warmstart.tasks.finetune", "FinetuneResult": "warmstart.tasks.finetune",
    "evaluate": "warmstart.tasks.evaluate", "EvaluateResult": "warmstart.tasks.evaluate",
    "predict": "warmstart.tasks.predict", "Prediction": "warmstart.tasks.predict",
    "generate": "warmstart.tasks.generate", "Generation": "warmstart.tasks.generate",
    "pretrain": "warmstart.tasks.pretrain", "PretrainResult": "warmstart.tasks.pretrain",
    "GenerateConfig": "warmstart.config", "PretrainConfig": "warmstart.config",
    "FinetuneConfig": "warmstart.config", "EvaluateConfig": "warmstart.config", "PredictConfig": "warmstart.config",
    "serve": "warmstart.serving", "ServeConfig": "warmstart.config",
    "export": "warmstart.tasks.export", "ExportResult": "warmstart.tasks.export", "ExportConfig": "warmstart.config",
    "embed": "warmstart.tasks.embed", "EmbedResult": "warmstart.tasks.embed", "EmbedConfig": "warmstart.config",
    "probe": "warmstart.tasks.probe", "ProbeResult": "warmstart.tasks.probe", "ProbeConfig": "warmstart.config",
    "zeroshot": "warmstart.tasks.zeroshot", "ZeroshotResult": "warmstart.tasks.zeroshot",
    "ZeroshotConfig": "warmstart.config",
    "fewshot": "warmstart.tasks.fewshot", "FewshotResult": "warmstart.tasks.fewshot",
    "FewshotConfig": "warmstart.config",
    "UserError": "warmstart.errors",
}

if TYPE_CHECKING:
    from warmstart.config import EvaluateConfig, FinetuneConfig, GenerateConfig, PredictConfig, PretrainConfig
    from warmstart.errors import UserError
    from warmstart.tasks.evaluate import EvaluateResult, evaluate
    from warmstart.tasks.finetune import FinetuneResult, finetune
    from warmstart.tasks.generate import Generation, generate
    from warmstart.tasks.predict import Prediction, predict
    from warmstart.tasks.pretrain import PretrainResult, pretrain


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'warmstart' has no attribute '{name}'")


__all__ = [
    "EvaluateConfig", "EvaluateResult", "FinetuneConfig", "FinetuneResult", "GenerateConfig", "Generation",
    "PredictConfig", "Prediction", "PretrainConfig", "PretrainResult", "UserError", "__version__", "evaluate",
    "finetune", "generate", "predict", "pretrain", "serve", "ServeConfig",
    "export", "ExportResult", "ExportConfig",
    "embed", "EmbedResult", "EmbedConfig", "probe", "ProbeResult", "ProbeConfig",
    "zeroshot", "ZeroshotResult", "ZeroshotConfig", "fewshot", "FewshotResult", "FewshotConfig",
]
assert set(__all__) == {*_LAZY, "__version__"}
