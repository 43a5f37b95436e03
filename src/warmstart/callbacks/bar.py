"""The training progress bar: one bar over the optimizer steps, on a terminal only
(warmstart.progress), drawn by the main process."""

from __future__ import annotations

from warmstart import distributed
from warmstart.callbacks.base import Callback
from warmstart.progress import progress_bar


class ProgressBar(Callback):
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, info: dict) -> None:
        self.bar = progress_bar(
            total=info["total_steps"],
            initial=info.get("resumed_step") or 0,
            desc="train",
            unit="step",
            enabled=self.enabled and distributed.is_main(),
        )

    def on_step(self, record: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if record.get("loss") is not None:
                self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)

    def on_train_end(self, summary: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
