"""Weights & Biases (--report-to wandb): the resolved settings (config.yaml) as the run's config,
every step and epoch record through ``wandb.log`` at its optimizer step, metrics.json's numbers in
the run's summary, and the run folder's metrics.json, config.yaml, plots and model card saved with
it.

``wandb.init(project=WANDB_PROJECT or "warmstart", dir=<run folder>, name=<run folder's name>)``;
wandb's own settings hold (WANDB_MODE=offline keeps the run in <run folder>/wandb/ for `wandb sync`,
WANDB_ENTITY, an API key from `wandb login`...). Only the main process logs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from warmstart import distributed
from warmstart.callbacks.base import Callback, Control
from warmstart.callbacks.tracking import artifacts, final_metrics, numbers, replayed
from warmstart.errors import UserError
from warmstart.runs import Run


class WandB(Callback):
    def __init__(self, run: Run):
        try:
            import wandb
        except ImportError:
            raise UserError(
                "--report-to wandb needs Weights & Biases: "
                "pip install wandb (or 'warmstart[wandb]')"
            ) from None
        self.wandb, self.run, self.tracked = wandb, run, None

    def on_train_begin(self, info: dict) -> None:
        if not distributed.is_main() or self.tracked is not None:
            return
        self.tracked = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "warmstart",
            dir=str(self.run.dir),
            name=self.run.dir.name,
            config=info.get("settings") or {},
            # Our own log lines stay ours (wandb would otherwise capture the console), and a second
            # run in the same process (the API called twice) is a run of its own.
            settings=self.wandb.Settings(console="off"),
            reinit="create_new",
        )
        self.run.say(
            f"Weights & Biases: run '{self.tracked.name}' in project '{self.tracked.project}'"
            + (
                f" (offline, in {self.run.dir / 'wandb'}: `wandb sync` uploads it)"
                if self.tracked.settings.mode == "offline"
                else ""
            )
        )
        for record in replayed(info):
            self.log(record)

    def log(self, record: dict) -> None:
        if self.tracked is not None:
            self.tracked.log(numbers(record), step=record["step"])

    def on_log(self, record: dict) -> None:
        self.log(record)

    def on_epoch_end(self, record: dict, control: Control) -> None:
        self.log(record)

    def on_run_end(self, metrics: dict, run_dir: Path) -> None:
        if self.tracked is None:
            return
        self.tracked.summary.update(final_metrics(metrics))
        for path in artifacts(run_dir):
            # A copy in the run's own files/ (wandb would link to ours, and warn about each link).
            copy = Path(self.tracked.dir) / path.relative_to(run_dir)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)
            self.tracked.save(str(copy), base_path=self.tracked.dir, policy="now")
        self.tracked.finish()
        self.tracked = None
