"""The engines report through callbacks (warmstart.callbacks): both engines send every event, in
order, with the same records, and a callback may end training (early stopping, tune's pruning)."""

from __future__ import annotations

import json
import re

import pytest

import warmstart
from warmstart.callbacks import Callback, CallbackList, Control, for_training, trackers
from warmstart.callbacks.early_stopping import EarlyStopping
from warmstart.errors import UserError
from warmstart.tasks import finetune as finetune_task


class Recorder(Callback):
    """Every event with what it carried; asks training to stop after epoch ``stop_after``."""

    def __init__(self, stop_after: int | None = None):
        self.events: list[tuple[str, object]] = []
        self.stop_after = stop_after

    def on_train_begin(self, info):
        self.events.append(("train_begin", dict(info)))

    def on_step(self, record):
        self.events.append(("step", dict(record)))

    def on_log(self, record):
        self.events.append(("log", dict(record)))

    def on_evaluate(self, metrics):
        self.events.append(("evaluate", dict(metrics)))

    def on_epoch_end(self, record, control):
        self.events.append(("epoch_end", dict(record)))
        if record["epoch"] == self.stop_after:
            control.stop, control.reason = True, "asked by the test"

    def on_save(self, what, folder):
        self.events.append(("save", (what, folder)))

    def on_train_end(self, summary):
        self.events.append(("train_end", dict(summary)))

    def on_run_end(self, metrics, run_dir):
        self.events.append(("run_end", (metrics, run_dir)))

    def of(self, name: str) -> list:
        return [payload for event, payload in self.events if event == name]


def finetune_recorded(monkeypatch, engine: str, out, **options) -> tuple[Recorder, object]:
    """A finetune whose engine also reports to a Recorder, after the subscribers its options ask for
    (the task's own for_training, with one more subscriber)."""
    recorder = Recorder(stop_after=2)

    def with_recorder(cfg, run) -> CallbackList:
        found = for_training(cfg, run)
        found.callbacks.append(recorder)
        return found

    monkeypatch.setattr(finetune_task, "for_training", with_recorder)
    return recorder, warmstart.finetune(engine=engine, out=str(out), progress=False, **options)


def test_both_engines_send_every_event_in_order_with_the_same_records_and_stop_when_asked(
    monkeypatch, tiny_models, imdb_head, tmp_path
):
    keys = {}
    for engine in ("native", "trainer"):
        recorded, result = finetune_recorded(
            monkeypatch,
            engine,
            tmp_path / engine,
            data=str(imdb_head),
            split="64,32,32",
            model=str(tiny_models["bert"]),
            epochs=3,
            batch_size=16,
            lr=1e-3,
            logging_steps=2,
        )
        names = " ".join(event for event, _ in recorded.events)
        # begin; each epoch: its steps (a log line every 2), the valid metrics, the record, the best
        # model if it is one, the checkpoint; the end of training; the end of the run, after
        # metrics.json
        epoch = r"(step( log)? )+evaluate epoch_end (save )?save"
        assert re.fullmatch(rf"train_begin {epoch} {epoch} train_end run_end", names), (
            engine,
            names,
        )
        # the recorder asked to stop after epoch 2 of 3: training ended there
        assert result.metrics["stopped_early"] and len(result.metrics["epochs"]) == 2

        begin = recorded.of("train_begin")[0]
        assert begin["engine"] == engine and begin["resumed_step"] == 0 and begin["history"] == []
        assert (begin["total_steps"], begin["epochs"], begin["steps_per_epoch"]) == (12, 3, 4)
        assert begin["settings"]["model"] == str(tiny_models["bert"])
        assert begin["metric_for_best"] == begin["settings"]["metric_for_best"] == "accuracy"
        assert begin["run_dir"] == result.run_dir and begin["rows"] == 64
        assert [r["step"] for r in recorded.of("step")] == list(range(1, 9))
        # the records are those of history.jsonl and metrics.json
        history = [
            json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().splitlines()
        ]
        assert recorded.of("log") == [r for r in history if "loss" in r]
        assert recorded.of("epoch_end") == [r for r in history if "train_loss" in r]
        assert recorded.of("epoch_end") == result.metrics["epochs"]
        assert [r["step"] for r in recorded.of("log")] == [2, 4, 6, 8]
        for valid, record in zip(recorded.of("evaluate"), recorded.of("epoch_end"), strict=True):
            assert valid == {
                k: v for k, v in record.items() if k.startswith("valid_") or k in ("step", "epoch")
            }
        saves = recorded.of("save")
        assert ("checkpoint", result.run_dir / "checkpoints" / "checkpoint-8") in saves
        assert ("model", result.run_dir / "model") in saves
        summary = recorded.of("train_end")[0]
        assert summary["stopped_early"] and summary["epochs"] == 2 and summary["step"] == 8
        assert summary["best_epoch"] == result.metrics["best_epoch"]
        metrics, run_dir = recorded.of("run_end")[0]
        assert metrics == json.loads((result.run_dir / "metrics.json").read_text())
        assert run_dir == result.run_dir
        keys[engine] = {
            name: [sorted(p) for p in recorded.of(name)]
            for name in ("train_begin", "step", "log", "evaluate", "epoch_end", "train_end")
        }
    # Both engines tell the same things: the same keys in every event's record.
    assert keys["native"] == keys["trainer"]


def test_early_stopping_counts_epochs_without_improvement_and_on_from_a_resumed_history():
    def run(patience: int, metric: str, values: list[float], history: list[float] = ()) -> int:
        """The epoch after which training stops (0: it does not)."""
        stopper = EarlyStopping(patience)
        records = [{"epoch": i + 1, f"valid_{metric}": v} for i, v in enumerate(values)]
        stopper.on_train_begin({"metric_for_best": metric, "history": records[: len(history)]})
        for record in records[len(history) :]:
            control = Control()
            stopper.on_epoch_end(record, control)
            if control.stop:
                assert control.reason == "early stop"
                return record["epoch"]
        return 0

    assert run(2, "accuracy", [0.5, 0.5, 0.5, 0.9]) == 3
    assert run(2, "accuracy", [0.5, 0.6, 0.5, 0.7, 0.6]) == 0
    assert run(1, "loss", [1.0, 0.9, 0.95]) == 3  # lower is better for a loss
    # resumed after epoch 2: the epochs before count as they did
    assert run(2, "accuracy", [0.5, 0.4, 0.4], history=[0.5, 0.4]) == 3
    # no valid metric: nothing to judge
    stopper = EarlyStopping(1)
    stopper.on_train_begin({"metric_for_best": "accuracy", "history": []})
    control = Control()
    for epoch in (1, 2, 3):
        stopper.on_epoch_end({"epoch": epoch, "train_loss": 1.0}, control)
    assert not control.stop


def test_report_to_names_the_trackers_and_refuses_others():
    assert trackers("none") == [] and trackers(None) == []
    assert trackers("mlflow, wandb") == ["mlflow", "wandb"]
    assert trackers("none", logging_dir="tb") == ["tensorboard"]  # --logging-dir alone
    assert trackers("mlflow", logging_dir="tb") == ["tensorboard", "mlflow"]
    assert trackers("wandb,tensorboard,wandb") == ["wandb", "tensorboard"]
    for bad in ("bogus", "mlflow,comet", "none,mlflow"):
        with pytest.raises(UserError, match="--report-to") as e:
            trackers(bad)
        assert "\n" not in str(e.value)
