"""Subscribers to the training engines' events (base.Callback): the run log, progress, early
stopping, trackers (TensorBoard, MLflow, Weights & Biases) and tune's pruning.

``for_training(cfg, run)`` builds the list a training command's options ask for; a task builds it
once, before any work (a tracker that is not installed is refused there), hands it to the engine and
tells it ``on_run_end`` once metrics.json is written."""

from __future__ import annotations

from typing import Any

from warmstart.callbacks.base import Callback, CallbackList, Control
from warmstart.errors import UserError
from warmstart.runs import Run

__all__ = ["TRACKERS", "Callback", "CallbackList", "Control", "for_training", "trackers"]

TRACKERS = ("tensorboard", "mlflow", "wandb")


def trackers(report_to: str | None, logging_dir: str | None = None) -> list[str]:
    """The trackers of ``--report-to`` (a comma list of none, tensorboard, mlflow, wandb), in its
    order; TensorBoard also where ``--logging-dir`` is given (its folder)."""
    names = [n.strip().lower() for n in (report_to or "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in ("none", *TRACKERS)]
    if unknown or ("none" in names and len(set(names)) > 1):
        raise UserError(
            f"--report-to {report_to}: "
            + (f"unknown {', '.join(repr(n) for n in unknown)}; " if unknown else "")
            + "give none or a comma list of tensorboard, mlflow, wandb"
        )
    chosen = [n for n in dict.fromkeys(names) if n != "none"]
    if logging_dir and "tensorboard" not in chosen:
        chosen.insert(0, "tensorboard")
    return chosen


def for_training(cfg: Any, run: Run) -> CallbackList:
    """The subscribers a training run's options ask for, in the order they hear each event:
    early stopping (--patience) and tune's pruning decide first, then the run log (history.jsonl and
    its lines, which say a stop), the progress bar, then the trackers of --report-to and
    --logging-dir. Every tracker's package is imported here: one that is missing is a UserError
    before any training work."""
    from warmstart.callbacks.bar import ProgressBar
    from warmstart.callbacks.early_stopping import EarlyStopping
    from warmstart.callbacks.runlog import RunLog

    found: list[Callback] = []
    if cfg.patience is not None:
        found.append(EarlyStopping(cfg.patience))
    pruning = tune_pruning()
    if pruning is not None:
        found.append(pruning)
    found += [RunLog(run), ProgressBar(cfg.progress)]
    for name in trackers(cfg.report_to, cfg.logging_dir):
        if name == "tensorboard":
            from warmstart.callbacks.tensorboard import TensorBoard

            found.append(TensorBoard(cfg.logging_dir or run.dir / "tensorboard"))
        elif name == "mlflow":
            from warmstart.callbacks.mlflow import MLflow

            found.append(MLflow(run))
        else:
            from warmstart.callbacks.wandb import WandB

            found.append(WandB(run))
    return CallbackList(found)


def tune_pruning() -> Callback | None:
    """A `warmstart tune` trial's channel to its parent (callbacks.pipe), when this process is
    one."""
    from warmstart.callbacks import pipe

    return pipe.from_environment()
