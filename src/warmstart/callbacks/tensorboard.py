"""TensorBoard (--report-to tensorboard, or --logging-dir alone): every number of a step record as a
scalar under train/, of an epoch record under epoch/, at its optimizer step."""

from __future__ import annotations

from pathlib import Path

from warmstart import distributed
from warmstart.callbacks.base import Callback, Control
from warmstart.errors import UserError


class TensorBoard(Callback):
    def __init__(self, folder: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "--report-to tensorboard (or --logging-dir) needs TensorBoard: "
                "pip install tensorboard"
            ) from None
        self.folder, self.writer_class, self.writer = Path(folder), SummaryWriter, None

    def on_train_begin(self, info: dict) -> None:
        if distributed.is_main() and self.writer is None:
            self.writer = self.writer_class(log_dir=str(self.folder))

    def write(self, group: str, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{group}/{key}", value, record["step"])
        self.writer.flush()

    def on_log(self, record: dict) -> None:
        self.write("train", record)

    def on_epoch_end(self, record: dict, control: Control) -> None:
        self.write("epoch", record)

    def on_train_end(self, summary: dict) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
