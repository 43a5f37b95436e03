"""`--report-to`: experiment trackers get a run's settings, every logged step and epoch and its
final metrics, by the names of metrics.json and history.jsonl: a real MLflow server on loopback,
MLflow's local default store, an offline Weights & Biases run read back with wandb's own reader,
TensorBoard; a tracker that is not installed, or not known, is one clear line before any
training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

import warmstart
from warmstart.callbacks.tracking import numbers
from warmstart.cli import main


def records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """history.jsonl's step records and epoch records."""
    history = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
    return [r for r in history if "loss" in r], [r for r in history if "train_loss" in r]


def settings(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port, SQLite backend and artifacts in a temporary folder;
    its tracking URI once it answers."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        # its job runner (a dozen consumer processes) is not needed to log runs
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,  # its workers with it, ended together below
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()
            assert time.time() < deadline, "mlflow server did not answer within 180 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def check_mlflow_run(client, experiment: str, run_dir: Path, metrics: dict) -> set[str]:
    """The MLflow run named after ``run_dir`` holds its settings as params, its history as
    metrics at their steps, metrics.json's final numbers and its files (their names returned)."""
    exp = client.get_experiment_by_name(experiment)
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.run_name == run_dir.name and found.info.status == "FINISHED"
    assert found.data.params == {k: str(v) for k, v in settings(run_dir).items()}
    steps, epochs = records(run_dir)
    assert epochs == metrics["epochs"]
    for key in [k for k in epochs[0] if k not in ("step", "epoch")]:
        assert metric_history(client, found.info.run_id, key) == [
            (r["step"], r[key]) for r in epochs
        ], key
    for key in ("loss", "lr", "samples_per_s"):
        assert metric_history(client, found.info.run_id, key) == [
            (r["step"], r[key]) for r in steps
        ], key
    # the epoch, a step record's (fractional) and an epoch record's
    assert metric_history(client, found.info.run_id, "epoch") == sorted(
        (r["step"], r["epoch"]) for r in steps + epochs
    )
    for group in ("test", "valid_after"):
        for name, value in (metrics.get(group) or {}).items():
            if isinstance(value, (int, float)):
                assert found.data.metrics[f"{group}_{name}"] == value
    assert found.data.metrics["best_epoch"] == metrics["best_epoch"]
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.json", "config.yaml", "training_curves.png"} <= names, names
    saved = client.download_artifacts(found.info.run_id, "metrics.json", str(run_dir.parent))
    assert json.loads(Path(saved).read_text()) == metrics
    return names


def test_mlflow_server_receives_a_finetunes_settings_metrics_and_files(
    mlflow_server, tiny_models, imdb_head, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    result = warmstart.finetune(
        data=str(imdb_head),
        split="64,32,32",
        model=str(tiny_models["bert"]),
        epochs=2,
        batch_size=16,
        lr=1e-3,
        logging_steps=2,
        report_to="mlflow",
        out=str(tmp_path / "tiny-run"),
        progress=False,
    )
    client = MlflowClient(mlflow_server)
    artifacts = check_mlflow_run(client, "trackers-test", result.run_dir, result.metrics)
    assert "confusion_matrix.png" in artifacts


def test_pretrain_reports_to_mlflows_local_store_and_tensorboard_by_default(
    imdb, tmp_path, monkeypatch
):
    """Without MLFLOW_TRACKING_URI, a SQLite store next to the run folder; TensorBoard's events in
    the run folder without --logging-dir."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    docs = pd.read_csv(imdb, nrows=40)["review"].str.split().str[:60].str.join(" ")
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n".join(docs) + "\n")
    result = warmstart.pretrain(
        data=str(corpus),
        objective="clm",
        from_scratch=True,
        size="tiny",
        vocab_size=500,
        block_size=32,
        epochs=2,
        batch_size=16,
        lr=2e-3,
        logging_steps=3,
        report_to="tensorboard,mlflow",
        out=str(tmp_path / "runs" / "gpt"),
        progress=False,
    )
    store = tmp_path / "runs" / "mlflow.db"
    assert store.is_file() and (tmp_path / "runs" / "mlartifacts").is_dir()
    check_mlflow_run(
        MlflowClient(f"sqlite:///{store}"), "warmstart", result.run_dir, result.metrics
    )
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    steps, epochs = records(result.run_dir)
    assert [(e.step, e.value) for e in events.Scalars("epoch/valid_perplexity")] == [
        (r["step"], pytest.approx(r["valid_perplexity"])) for r in epochs
    ]
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in steps]


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the offline run's .wandb log, read by wandb's own reader."""
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_an_offline_wandb_run_holds_the_trainer_engines_settings_and_metrics(
    tiny_models, imdb_head, tmp_path, monkeypatch
):
    pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "trackers-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = warmstart.finetune(
        engine="trainer",
        data=str(imdb_head),
        split="64,32,32",
        model=str(tiny_models["bert"]),
        epochs=2,
        batch_size=16,
        lr=1e-3,
        logging_steps=3,
        report_to="wandb",
        out=str(tmp_path / "tiny-run"),
        progress=False,
    )
    found = wandb_records(result.run_dir)
    (run,) = [r["run"] for r in found if r["type"] == "run"]
    assert run["display_name"] == "tiny-run" and run["project"] == "trackers-test"
    config = {k: v for k, v in run["config"]["update"].items() if k != "_wandb"}
    assert config == settings(result.run_dir)
    rows = {
        r["history"]["step"]["num"]: r["history"]["item"] for r in found if r["type"] == "history"
    }
    steps, epochs = records(result.run_dir)
    assert epochs == result.metrics["epochs"]
    # a step record and an epoch record at the same step are one row of wandb's history
    for record in epochs + [{k: v for k, v in r.items() if k != "epoch"} for r in steps]:
        row = rows[record["step"]]
        assert {k: row[k] for k in numbers(record)} == numbers(record), record
    assert sorted(rows) == sorted({r["step"] for r in steps + epochs})
    summary = {}
    for r in found:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update") or {})
    assert summary["test_accuracy"] == result.metrics["test"]["accuracy"]
    assert summary["best_epoch"] == result.metrics["best_epoch"]
    (exit_record,) = [r for r in found if r["type"] == "exit"]
    assert exit_record["exit"].get("exit_code", 0) == 0
    (files,) = (result.run_dir / "wandb").glob("offline-run-*/files")
    assert json.loads((files / "metrics.json").read_text()) == result.metrics
    assert (files / "config.yaml").is_file() and (files / "training_curves.png").is_file()


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_is_one_line_before_any_training(
    tracker, tiny_models, imdb_head, tmp_path
):
    # The package made unimportable, as where it is not installed: a module of its name, first on
    # the path, that raises ImportError.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / f"{tracker}.py").write_text(f"raise ImportError('No module named {tracker}')\n")
    out = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "warmstart",
            "finetune",
            "--data",
            str(imdb_head),
            "--split",
            "64,32",
            "--model",
            str(tiny_models["bert"]),
            "--report-to",
            f"tensorboard,{tracker}",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install {tracker}" in lines[0], proc.stderr
    assert f"--report-to {tracker} needs" in lines[0]
    assert not (out / "history.jsonl").exists() and not (out / "model").exists()


def test_report_to_an_unknown_tracker_is_one_clear_error(tiny_models, imdb_head, tmp_path, capsys):
    code = main(
        [
            "finetune",
            "--data",
            str(imdb_head),
            "--split",
            "64,32",
            "--model",
            str(tiny_models["bert"]),
            "--report-to",
            "mlflow,bogus",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "--report-to mlflow,bogus: unknown 'bogus'" in err
    assert "none or a comma list of tensorboard, mlflow, wandb" in err
    assert not (tmp_path / "run" / "history.jsonl").exists()
