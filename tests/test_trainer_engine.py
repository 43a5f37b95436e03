"""`--engine trainer`: the same config through the Hugging Face Trainer, the same run folder."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForSequenceClassification

import test_distributed
import warmstart
from conftest import kill_after_checkpoint
from test_distributed import run_launched
from test_resume import _stable
from warmstart.cli import main

no_dropout_bert = test_distributed.no_dropout_bert  # the fixture, shared


def test_both_engines_learn_the_same_task_to_close_accuracy(minilm_run, imdb, tmp_path):
    native = minilm_run  # the native engine's run of this config (shared with the finetune tests)
    common = dict(
        data=str(imdb),
        split="35000,5000,10000",
        max_train_samples=160,
        max_valid_samples=48,
        max_test_samples=200,
        label_names="negative,positive",
        max_length=128,
        epochs=3,
        lr=1e-4,
        batch_size=16,
        logging_steps=5,
        progress=False,
    )
    trainer = warmstart.finetune(**common, engine="trainer", out=str(tmp_path / "trainer"))
    for result in (native, trainer):
        for name in (
            "model/model.safetensors",
            "config.yaml",
            "metrics.json",
            "history.jsonl",
            "training_curves.png",
            "confusion_matrix.png",
        ):
            assert (result.run_dir / name).is_file(), (result.run_dir, name)
        model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
        assert model.config.id2label == {0: "negative", 1: "positive"}
        assert [e["epoch"] for e in result.metrics["epochs"]] == [1, 2, 3]
        assert result.test_accuracy > 0.6
    # Different batch orders (ours vs HF's LengthGroupedSampler), so not identical runs. On 200 test
    # reviews one run's accuracy has a binomial std of ~0.033, a difference of two runs ~0.047: 0.1
    # is ~2 std.
    assert abs(native.test_accuracy - trainer.test_accuracy) <= 0.1


def test_trainer_engine_resumes_from_its_own_checkpoint_to_the_same_metrics(
    tiny_models, imdb_head, tmp_path
):
    args = [
        "finetune",
        "--engine",
        "trainer",
        "--data",
        str(imdb_head),
        "--split",
        "400,100,100",
        "--model",
        str(tiny_models["bert"]),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--no-progress",
        "--save-total-limit",
        "3",
    ]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "checkpoint-100",
        "checkpoint-150",
        "checkpoint-50",
    ]
    # an interrupted run: its last finished checkpoint is the one at the end of epoch 2
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    (cut / "metrics.json").unlink()
    shutil.rmtree(cut / "checkpoints" / "checkpoint-150")
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, cut))
    assert a["test"] == b["test"]
    assert [e["valid_loss"] for e in a["epochs"]] == [e["valid_loss"] for e in b["epochs"]]
    assert a["best_epoch"] == b["best_epoch"]
    assert [json.loads(x)["step"] for x in (cut / "history.jsonl").read_text().splitlines()] == [
        json.loads(x)["step"] for x in (full / "history.jsonl").read_text().splitlines()
    ]


def test_trainer_engine_stops_early_and_logs_to_tensorboard(tiny_models, imdb_head, tmp_path):
    pytest.importorskip("tensorboard")
    result = warmstart.finetune(
        engine="trainer",
        data=str(imdb_head),
        split="200,100",
        model=str(tiny_models["distilbert"]),
        epochs=6,
        lr=1e-12,
        patience=2,
        logging_steps=5,
        logging_dir=str(tmp_path / "tb"),
        out=str(tmp_path / "es"),
        progress=False,
    )
    assert result.metrics["stopped_early"] and len(result.metrics["epochs"]) == 3
    assert result.metrics["best_epoch"] == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"train/loss", "train/lr", "epoch/valid_accuracy", "epoch/train_loss"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("epoch/valid_accuracy")] == [
        13,
        26,
        39,
    ]  # 200 rows, batch 16


def test_trainer_engine_killed_mid_run_resumes_to_the_same_metrics(
    tiny_models, imdb_head, tmp_path
):
    """The issue's case for real: `kill -9` of a Trainer-engine run once it has a checkpoint (it may
    die while writing the next one), then --resume, ends like a run never interrupted
    (tests/test_resume.py for native)."""
    args = [
        "finetune",
        "--engine",
        "trainer",
        "--data",
        str(imdb_head),
        "--split",
        "200,50,50",
        "--model",
        str(tiny_models["bert"]),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--save-steps",
        "4",
        "--logging-steps",
        "3",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    ckpt = kill_after_checkpoint(args, killed)
    assert 0 < ckpt["step"] < 75
    assert (
        main(["finetune", "--config", str(killed / "config.yaml"), "--resume", "--no-progress"])
        == 0
    )
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    resumed, full = (
        json.loads((d / "metrics.json").read_text()) for d in (killed, tmp_path / "full")
    )
    assert resumed["test"] == full["test"]
    assert _stable(resumed["epochs"]) == _stable(full["epochs"])
    history = [
        [json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()]
        for d in (killed, tmp_path / "full")
    ]
    assert [(h["step"], h.get("loss")) for h in history[0]] == [
        (h["step"], h.get("loss")) for h in history[1]
    ]
    assert (
        len(list((killed / "checkpoints").glob("checkpoint-*"))) == 2
    )  # --save-total-limit default


def test_trainer_engine_saves_the_gathered_weights_which_reload_in_plain_transformers(
    tiny_models, imdb_head, tmp_path, monkeypatch
):
    """The final model goes through Accelerate's get_state_dict, which gathers FSDP/DeepSpeed shards
    (a plain run takes the same path): what it returned is what model/ holds, and plain transformers
    reloads it."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    gathered = []
    real = Accelerator.get_state_dict

    def spy(self, model, *a, **k):
        weights = real(self, model, *a, **k)
        gathered.append({name: t.detach().clone() for name, t in weights.items()})
        return weights

    monkeypatch.setattr(Accelerator, "get_state_dict", spy)
    result = warmstart.finetune(
        engine="trainer",
        data=str(imdb_head),
        split="64,32",
        model=str(tiny_models["bert"]),
        epochs=1,
        out=str(tmp_path / "run"),
        progress=False,
    )
    assert len(gathered) == 1  # one epoch, one best model
    reloaded = AutoModelForSequenceClassification.from_pretrained(result.model_dir).eval()
    saved = reloaded.state_dict()
    for name, t in gathered[0].items():
        assert torch.equal(saved[name], t), name
    # the same outputs as the trained weights put into a fresh model of the same config
    fresh = AutoModelForSequenceClassification.from_config(reloaded.config).eval()
    fresh.load_state_dict(gathered[0])
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    batch = tok(["A fine film.", "Dull, long and loud."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, fresh(**batch).logits)


def test_trainer_engine_under_two_processes_counts_every_process(
    no_dropout_bert, imdb_head, tmp_path
):
    """With lr 1e-12 (--lr must be > 0; an Adam step of 1e-12 is below a float32 weight's
    resolution) the model never changes, so an epoch's train loss and accuracy are those of the
    fixed model over all 64 training rows, however they are batched: 2 processes must report what 1
    process does (each process counts its own half of every batch; rank 0's half alone was logged
    before)."""
    args = [
        "finetune",
        "--engine",
        "trainer",
        "--data",
        str(imdb_head),
        "--split",
        "64,16",
        "--model",
        str(no_dropout_bert),
        "--epochs",
        "1",
        "--lr",
        "1e-12",
        "--max-length",
        "64",
        "--logging-steps",
        "2",
        "--no-progress",
        "--cpu",
    ]
    assert main([*args, "--batch-size", "16", "--out", str(tmp_path / "one")]) == 0
    run_launched([*args, "--batch-size", "8", "--out", str(tmp_path / "two")])
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["epochs"][0]["train_accuracy"] == one["epochs"][0]["train_accuracy"]
    assert two["epochs"][0]["train_loss"] == pytest.approx(one["epochs"][0]["train_loss"], rel=1e-5)
    # every process's samples are counted, not rank 0's half (the exact count: speed x seconds are
    # both rounded)
    assert two["train_samples"] == one["train_samples"] == 64
