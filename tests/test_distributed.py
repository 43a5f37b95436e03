"""Two processes (`accelerate launch --cpu`, gloo) train, checkpoint, resume and predict like one.

The tiny model has dropout switched off, so the only difference between 2 processes with batch 8
each and 1 process with batch 16 is float rounding (gradients summed by the all-reduce, padding per
slice): the test metrics must be equal and the losses agree to 1e-4 (relative)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for_checkpoint
from warmstart.cli import main

TOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], processes: int = 2, **popen) -> subprocess.Popen:
    """``accelerate launch --multi_gpu --num_processes N -m warmstart ARGS`` as a child in its own
    session (on a machine without GPUs the processes talk over gloo)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "warmstart",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        cmd,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


def run_launched(args: list[str], processes: int = 2, timeout: float = 300) -> str:
    proc = launch(args, processes)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err.decode()[-4000:]
    return out.decode() + err.decode()


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bert-nodrop")
    shutil.copytree(tiny_models["bert"], folder, dirs_exist_ok=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def finetune_args(model: Path, data: Path, out: Path, batch: int) -> list[str]:
    # 250 training rows with a global batch of 16: the last batch of each epoch (and of each length
    # bucket) is uneven; 75 valid and 75 test rows split 38/37 over two processes.
    return [
        "finetune",
        "--data",
        str(data),
        "--split",
        "250,75,75",
        "--model",
        str(model),
        "--epochs",
        "3",
        "--batch-size",
        str(batch),
        "--lr",
        "1e-2",
        "--max-length",
        "64",
        "--logging-steps",
        "5",
        "--save-steps",
        "4",
        "--no-progress",
        "--cpu",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def one_process(no_dropout_bert, imdb_head, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(finetune_args(no_dropout_bert, imdb_head, out, 16)) == 0
    return json.loads((out / "metrics.json").read_text())


def same_training(a: dict, b: dict) -> None:
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    assert len(a["epochs"]) == len(b["epochs"])
    for x, y in zip(a["epochs"], b["epochs"]):
        assert x["step"] == y["step"]
        for key in ("train_loss", "valid_loss", "valid_accuracy", "train_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=TOL), key


def test_two_processes_train_like_one_with_the_same_global_batch(
    no_dropout_bert, imdb_head, one_process, tmp_path
):
    out = tmp_path / "two"
    log = run_launched(finetune_args(no_dropout_bert, imdb_head, out, 8))
    two = json.loads((out / "metrics.json").read_text())
    print(
        {
            n: {
                "test_accuracy": m["test"]["accuracy"],
                "valid_loss": [e["valid_loss"] for e in m["epochs"]],
                "train_loop_seconds": m["train_loop_seconds"],
                "total_seconds": m["total_seconds"],
            }
            for n, m in (("1 process x 16", one_process), ("2 processes x 8", two))
        }
    )
    same_training(two, one_process)
    assert (
        two["rows"] == one_process["rows"] and two["test"]["n"] == 75
    )  # every test row counted once
    # one process wrote: one history line per logged step, one "resumed/training" line in the log
    steps = [
        json.loads(x)["step"]
        for x in (out / "history.jsonl").read_text().splitlines()
        if "loss" in x
    ]
    assert steps == sorted(set(steps))
    assert log.count("training 250 texts") == 1 and "per process x 2 processes" in log
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-44",
        "checkpoint-48",
    ]


def test_a_two_process_run_resumes_with_one_process(
    no_dropout_bert, imdb_head, one_process, tmp_path
):
    out = tmp_path / "killed"
    proc = launch(finetune_args(no_dropout_bert, imdb_head, out, 8))
    wait_for_checkpoint(proc, out, 240)
    # SIGTERM to the launcher: torchrun's agent passes it on to the workers (each in a session of
    # its own).
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert not (out / "metrics.json").exists()
    state = json.loads(next((out / "checkpoints").glob("checkpoint-*/state.json")).read_text())
    assert state["processes"] == 2 and state["global_batch"] == 16 and 0 < state["step"] < 48

    assert (
        main(["finetune", "--config", str(out / "config.yaml"), "--resume", "--no-progress"]) == 0
    )
    same_training(json.loads((out / "metrics.json").read_text()), one_process)


def test_embed_under_two_processes_matches_one_process_in_input_order(
    tiny_models, imdb_head, tmp_path
):
    import numpy as np

    # 101 rows in chunks of 16: 7 chunks, split 4 + 3 over the processes, the last chunk short.
    args = [
        "embed",
        "--model",
        str(tiny_models["bert"]),
        "--data",
        str(imdb_head),
        "--limit",
        "101",
        "--chunk-size",
        "16",
        "--batch-size",
        "8",
        "--no-progress",
        "--cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "one.npy")]) == 0
    run_launched([*args, "--out", str(tmp_path / "two.npy")])
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == two.shape and one.shape[0] == 101
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)
    assert not list(tmp_path.glob("*.parts"))  # the chunk folder is removed once
