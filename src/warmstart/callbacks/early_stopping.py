"""--patience: stop when the valid metric has not improved for N epochs.

The engine keeps the best epoch and saves its model (training.common.note_epoch); this subscriber
only decides when to stop, from the epoch records, with the same rule."""

from __future__ import annotations

from warmstart.callbacks.base import Callback, Control

# Metrics where a smaller value is the better one; every other metric is better larger.
LOWER_IS_BETTER = ("loss", "perplexity", "rmse", "mae", "cer", "wer")


def better(metric: str, new: float, old: float | None) -> bool:
    """Whether ``new`` improves on ``old`` (None: nothing yet) for the valid ``metric``."""
    return old is None or (new < old if metric in LOWER_IS_BETTER else new > old)


class EarlyStopping(Callback):
    """Asks the engine to stop once ``patience`` epochs in a row did not improve on the best valid
    ``metric_for_best`` (told at on_train_begin). A resumed run counts on from its earlier epochs'
    records."""

    def __init__(self, patience: int):
        self.patience = patience
        self.metric: str | None = None
        self.best: float | None = None
        self.bad_epochs = 0

    def on_train_begin(self, info: dict) -> None:
        self.metric, self.best, self.bad_epochs = info.get("metric_for_best"), None, 0
        for record in info.get("history") or []:
            self.judge(record)

    def judge(self, record: dict) -> bool:
        """Count ``record`` in; whether it has run out of patience."""
        value = record.get(f"valid_{self.metric}")
        if value is None:  # no valid split: nothing to judge
            return False
        if better(self.metric, value, self.best):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def on_epoch_end(self, record: dict, control: Control) -> None:
        if self.judge(record) and not control.stop:
            control.stop, control.reason = True, "early stop"
