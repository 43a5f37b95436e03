"""The run log: history.jsonl (one JSON object per logged step and per epoch, as metrics.json's
epochs) and the lines said on stderr, one every --logging-steps and one per epoch."""

from __future__ import annotations

from warmstart.callbacks.base import Callback, Control
from warmstart.runs import Run


class RunLog(Callback):
    def __init__(self, run: Run):
        self.run = run
        self.total_steps: int | None = None

    def on_train_begin(self, info: dict) -> None:
        self.total_steps = info.get("total_steps")

    def on_log(self, record: dict) -> None:
        self.run.log(record)
        lr = record.get("lr")
        self.run.say(
            f"step {record['step']}/{self.total_steps}  loss {record['loss']:.4f}"
            + (f"  lr {lr:.2e}" if lr is not None else "")
            + f"  {record['samples_per_s']:.1f} samples/s"
        )

    def on_epoch_end(self, record: dict, control: Control) -> None:
        self.run.log(record)
        self.run.say(
            f"epoch {record['epoch']}: "
            + "  ".join(
                f"{k.replace('_', ' ')} {v:.4f}"
                for k, v in record.items()
                if k.startswith(("train_", "valid_")) and isinstance(v, (int, float))
            )
            + f" | {record.get('epoch_seconds', 0):.0f}s"
            + (f"  ({control.reason or 'stop'})" if control.stop else "")
        )
