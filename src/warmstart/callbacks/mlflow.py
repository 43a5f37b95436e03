"""MLflow (--report-to mlflow): the resolved settings (config.yaml) as the run's params, every step
and epoch record as metrics at its optimizer step, metrics.json's numbers at the end, and the run
folder's metrics.json, config.yaml, plots and model card as artifacts.

The tracking server is MLFLOW_TRACKING_URI's; without it a local SQLite store, mlflow.db, next to
the run folder (artifacts in mlartifacts/ beside it), which `mlflow ui --backend-store-uri
sqlite:///.../mlflow.db` shows. The experiment is MLFLOW_EXPERIMENT_NAME's, else "warmstart"; the
run is named after the run folder. Only the main process logs."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
from pathlib import Path

from warmstart import distributed
from warmstart.callbacks.base import Callback, Control
from warmstart.callbacks.tracking import artifacts, final_metrics, numbers, replayed
from warmstart.errors import UserError
from warmstart.runs import Run


class MLflow(Callback):
    def __init__(self, run: Run):
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError(
                "--report-to mlflow needs MLflow: pip install mlflow (or 'warmstart[mlflow]')"
            ) from None
        self.Metric, self.Param, self.Client = Metric, Param, MlflowClient
        self.run = run
        self.client = None
        self.run_id: str | None = None
        self.last_step = 0

    def store(self) -> tuple[str, Path | None]:
        """The tracking URI, and the artifact folder of a local store (None for
        MLFLOW_TRACKING_URI's)."""
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri, None
        parent = self.run.dir.resolve().parent
        return f"sqlite:///{parent / 'mlflow.db'}", parent / "mlartifacts"

    def on_train_begin(self, info: dict) -> None:
        if not distributed.is_main() or self.run_id is not None:
            return
        uri, local_artifacts = self.store()
        self.client = self.Client(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "warmstart"
        found = self.client.get_experiment_by_name(name)
        experiment = (
            found.experiment_id
            if found is not None
            else self.client.create_experiment(
                name, artifact_location=local_artifacts.as_uri() if local_artifacts else None
            )
        )
        self.run_id = self.client.create_run(experiment, run_name=self.run.dir.name).info.run_id
        atexit.register(self.end, "FAILED")  # a run that ends before on_run_end (an error) failed
        self.run.say(
            f"MLflow: run '{self.run.dir.name}' ({self.run_id}) in experiment '{name}' at {uri}"
            + (" (a local store: set MLFLOW_TRACKING_URI for a server)" if local_artifacts else "")
        )
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [
            self.Param(k, str(v)[:MAX_PARAM_VAL_LENGTH])
            for k, v in (info.get("settings") or {}).items()
        ]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        for record in replayed(info):
            self.log(record)

    def log(self, record: dict, step: int | None = None) -> None:
        if self.run_id is None:
            return
        step = record.get("step", self.last_step) if step is None else step
        self.last_step = step
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, float(v), now, step) for k, v in numbers(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_log(self, record: dict) -> None:
        self.log(record)

    def on_epoch_end(self, record: dict, control: Control) -> None:
        self.log(record)

    def on_run_end(self, metrics: dict, run_dir: Path) -> None:
        if self.run_id is None:
            return
        self.log(final_metrics(metrics), step=self.last_step)
        for path in artifacts(run_dir):
            folder = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Mark the MLflow run ended with ``status`` (FINISHED, FAILED), once."""
        if self.run_id is None:
            return
        atexit.unregister(self.end)
        run_id, self.run_id = self.run_id, None
        # MLflow prints the run's address on stdout, where the command's own report goes.
        with contextlib.redirect_stdout(sys.stderr):
            self.client.set_terminated(run_id, status)
