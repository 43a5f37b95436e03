"""warmstart: put pre-trained transformers to work — offline, fast on a laptop CPU, one command per
job.

Every CLI command is a function here, taking a config dataclass and/or keyword arguments:

>>> import warmstart >>> result = warmstart.finetune(data="reviews.csv", split="0.8,0.1,0.1",
model="minilm", out="runs/x") >>> warmstart.evaluate(model="runs/x/model",
data="more_reviews.csv").accuracy >>> warmstart.predict(model="runs/x/model", texts=["A wonderful,
moving film."])[0].label"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from warmstart.commands import COMMANDS

__version__ = "0.1.0"

# No environment variable is set here: a library must not switch the Hub off (or anything else)
# for the program that imports it. The CLI, a process of its own, sets TOKENIZERS_PARALLELISM.

# Built from the command table and imported on first use, so `warmstart --help` does not wait for
# torch.
_LAZY: dict[str, str] = {"UserError": "warmstart.errors"}
for _c in COMMANDS.values():
    _LAZY[_c.name] = _c.where
    _LAZY[_c.config] = "warmstart.config"
    if _c.result:
        _LAZY[_c.result] = _c.where

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from warmstart.config import (
        CalibrateConfig,
        DownloadConfig,
        EmbedConfig,
        EvaluateConfig,
        ExportConfig,
        FewshotConfig,
        FinetuneConfig,
        GenerateConfig,
        PredictConfig,
        PretrainConfig,
        ProbeConfig,
        PushConfig,
        ServeConfig,
        TuneConfig,
        ZeroshotConfig,
    )
    from warmstart.errors import UserError
    from warmstart.serving import serve
    from warmstart.tasks.calibrate import CalibrateResult, calibrate
    from warmstart.tasks.download import DownloadResult, download
    from warmstart.tasks.embed import EmbedResult, embed
    from warmstart.tasks.evaluate import EvaluateResult, evaluate
    from warmstart.tasks.export import ExportResult, export
    from warmstart.tasks.fewshot import FewshotResult, fewshot
    from warmstart.tasks.finetune import FinetuneResult, finetune
    from warmstart.tasks.generate import Generation, generate
    from warmstart.tasks.predict import Prediction, predict
    from warmstart.tasks.pretrain import PretrainResult, pretrain
    from warmstart.tasks.probe import ProbeResult, probe
    from warmstart.tasks.push import Pushed, push
    from warmstart.tasks.tune import TuneResult, tune
    from warmstart.tasks.zeroshot import ZeroshotResult, zeroshot


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'warmstart' has no attribute '{name}'")


__all__ = [
    "CalibrateConfig",
    "CalibrateResult",
    "calibrate",
    "DownloadConfig",
    "DownloadResult",
    "download",
    "EmbedConfig",
    "EmbedResult",
    "EvaluateConfig",
    "EvaluateResult",
    "ExportConfig",
    "ExportResult",
    "FewshotConfig",
    "FewshotResult",
    "FinetuneConfig",
    "FinetuneResult",
    "GenerateConfig",
    "Generation",
    "PredictConfig",
    "Prediction",
    "PretrainConfig",
    "PretrainResult",
    "ProbeConfig",
    "ProbeResult",
    "PushConfig",
    "Pushed",
    "ServeConfig",
    "UserError",
    "TuneConfig",
    "TuneResult",
    "ZeroshotConfig",
    "ZeroshotResult",
    "__version__",
    "embed",
    "evaluate",
    "export",
    "fewshot",
    "finetune",
    "generate",
    "predict",
    "pretrain",
    "probe",
    "push",
    "serve",
    "tune",
    "zeroshot",
]
# Spelled out for type checkers; the table is what counts.
assert set(__all__) == {*_LAZY, "__version__"}, sorted(set(__all__) ^ {*_LAZY, "__version__"})
