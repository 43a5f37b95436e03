"""The shape every task kind has: the steps of `finetune` that depend on what is being predicted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from warmstart.config import FinetuneConfig
from warmstart.data.batching import Encoded
from warmstart.runs import Run
from warmstart.training.common import Job


class TaskKind(Protocol):
    name: str
    parts: dict[str, Any]  # train/valid/test examples, read and checked by __init__

    def __init__(self, cfg: FinetuneConfig) -> None:
        """Read the data and its labels; bad input fails here, before any run folder is written."""

    def describe(self) -> str:
        """What the run learns, for its first log line (e.g. the labels)."""

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        """The pre-trained model at ``path`` with this kind's head, ready to train."""

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        """One part, tokenised once (unpadded), with its targets."""

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        """What either engine needs: batches, train accuracy, valid metrics, saving."""

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """Metrics of the saved model on the test part (and the files that show them)."""

    def summary(self, metrics: dict) -> str:
        """One line on the test metrics, for the run's last log line."""
