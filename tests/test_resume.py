"""A training process killed mid-run resumes from its last checkpoint to the same final metrics as a
run that was never interrupted."""

from __future__ import annotations

import json

from conftest import kill_after_checkpoint
from warmstart.cli import main

VOLATILE = {"epoch_seconds", "elapsed_seconds", "samples_per_s"}


def _stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def test_resume_after_kill_gives_same_metrics(tiny_models, imdb_head, tmp_path):
    args = [
        "finetune",
        "--data",
        str(imdb_head),
        "--split",
        "400,100,100",
        "--model",
        str(tiny_models["bert"]),
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--save-steps",
        "9",
        "--logging-steps",
        "10",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    ckpt = kill_after_checkpoint(args, killed)
    assert 0 < ckpt["step"] < 300
    # A mid-epoch checkpoint carries the training time so far (it was 0 until the epoch ended).
    assert ckpt["batches_done"] > 0 and ckpt["train_seconds"] > 0

    assert (
        main(["finetune", "--config", str(killed / "config.yaml"), "--resume", "--no-progress"])
        == 0
    )
    assert main([*args, "--out", str(tmp_path / "full")]) == 0

    resumed = json.loads((killed / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["test"] == full["test"]
    assert _stable(resumed["epochs"]) == _stable(full["epochs"])
    history = [json.loads(x) for x in (killed / "history.jsonl").read_text().splitlines()]
    full_history = [
        json.loads(x) for x in (tmp_path / "full" / "history.jsonl").read_text().splitlines()
    ]
    # every step logged once, with the same losses, although the killed process logged some of them
    # twice
    assert [h["step"] for h in history] == [h["step"] for h in full_history]
    assert [h.get("loss") for h in history] == [h.get("loss") for h in full_history]
    assert (
        len(list((killed / "checkpoints").glob("checkpoint-*"))) == 2
    )  # --save-total-limit default


def test_resume_refuses_changed_options(tiny_models, imdb_head, tmp_path, capsys):
    out = tmp_path / "r"
    args = [
        "finetune",
        "--data",
        str(imdb_head),
        "--split",
        "100,50",
        "--model",
        str(tiny_models["bert"]),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(args) == 0
    assert main([*args, "--resume", "--lr", "1e-2"]) == 2
    err = capsys.readouterr().err
    assert "options differ from the run" in err and "(lr)" in err
    assert main([*args, "--resume"]) == 0  # finished: nothing to do, metrics untouched
