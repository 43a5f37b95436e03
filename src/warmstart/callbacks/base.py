"""What an engine tells the world while it trains: one ``Callback`` class whose methods are the events,
in this order for a run:

    on_train_begin                  once, before the first step (also after a resume)
    (on_step)*                      every optimizer step: step, loss (for a progress bar)
    (on_log)*                       every --logging-steps optimizer steps: step, epoch, loss, lr, samples/s
    per epoch: on_evaluate?         the valid metrics, when there is a valid split
               on_epoch_end         the epoch's record (as in history.jsonl); may ask training to stop
               on_save              each checkpoint and each new best model written
    on_train_end                    once, when the loop ends (finished, stopped early or pruned)
    on_run_end                      once, from the task, after the test metrics and metrics.json

Both engines send the same events with the same records (the Trainer engine translates its
``TrainerCallback`` events), so a subscriber — the run log, the progress bar, early stopping,
TensorBoard, MLflow, Weights & Biases, tune's pruning — is written once. The model is the Trainer's
``TrainerCallback`` and setfit's callbacks; the loop that reports out is spaCy's
``train_while_improving``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Control:
    """What subscribers may ask of the engine at an epoch's end."""

    stop: bool = False  # end training after this epoch (early stopping, a pruned tune trial)
    reason: str = ""  # why, for the run's log


class Callback:
    """A subscriber: override the events it needs; every other event does nothing."""

    def on_train_begin(self, info: dict) -> None:
        """``info``: engine, total_steps, epochs, steps_per_epoch, unit, rows, resumed_step,
        history (the epoch records so far: a resumed run's earlier epochs), metric_for_best,
        settings (the resolved options as config.yaml has them; {} in other processes than the
        main one), run_dir."""

    def on_step(self, record: dict) -> None:
        """After every optimizer step: step, loss (the last micro-batch's mean)."""

    def on_log(self, record: dict) -> None:
        """A step record: step, epoch (fractional), loss, lr, samples_per_s."""

    def on_evaluate(self, metrics: dict) -> None:
        """The valid metrics of an epoch, named valid_<metric>, with step and epoch."""

    def on_epoch_end(self, record: dict, control: Control) -> None:
        """The epoch's record (step, epoch, train_loss, train_accuracy?, valid_*, seconds), as
        history.jsonl holds it; set ``control.stop`` to end training after this epoch."""

    def on_save(self, what: str, folder: Path) -> None:
        """``what``: "checkpoint" or "model" (a new best model in model/)."""

    def on_train_end(self, summary: dict) -> None:
        """``summary``: step, epochs (how many finished), best_epoch, stopped_early, train_seconds,
        samples."""

    def on_run_end(self, metrics: dict, run_dir: Path) -> None:
        """The run's final metrics (metrics.json is written) and its folder."""


class CallbackList(Callback):
    """Sends every event to each subscriber in order; a stop asked by one holds for all."""

    def __init__(self, callbacks: list[Callback] | None = None):
        self.callbacks = list(callbacks or [])

    def on_train_begin(self, info: dict) -> None:
        for c in self.callbacks:
            c.on_train_begin(info)

    def on_step(self, record: dict) -> None:
        for c in self.callbacks:
            c.on_step(record)

    def on_log(self, record: dict) -> None:
        for c in self.callbacks:
            c.on_log(record)

    def on_evaluate(self, metrics: dict) -> None:
        for c in self.callbacks:
            c.on_evaluate(metrics)

    def on_epoch_end(self, record: dict, control: Control) -> None:
        for c in self.callbacks:
            c.on_epoch_end(record, control)

    def on_save(self, what: str, folder: Path) -> None:
        for c in self.callbacks:
            c.on_save(what, folder)

    def on_train_end(self, summary: dict) -> None:
        for c in self.callbacks:
            c.on_train_end(summary)

    def on_run_end(self, metrics: dict, run_dir: Path) -> None:
        for c in self.callbacks:
            c.on_run_end(metrics, run_dir)
