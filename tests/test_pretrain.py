"""`pretrain`: each objective through the real path (corpus → objective → native engine → run
folder), perplexity falling, resume, and outputs that plug into the other commands."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

import warmstart
from warmstart.cli import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, imdb) -> str:
    """300 real IMDb reviews, one per line, cut to 80 words to keep the runs short."""
    df = pd.read_csv(imdb, nrows=300)
    docs = df["review"].str.replace("<br />", " ").str.split().str[:80].str.join(" ")
    path = tmp_path_factory.mktemp("corpus") / "reviews.txt"
    path.write_text("\n".join(docs) + "\n")
    return str(path)


def test_clm_from_scratch_lowers_held_out_perplexity_and_feeds_generate(corpus, tmp_path):
    r = warmstart.pretrain(
        data=corpus,
        objective="clm",
        from_scratch=True,
        size="tiny",
        vocab_size=1500,
        block_size=64,
        epochs=3,
        lr=2e-3,
        out=str(tmp_path / "gpt"),
        progress=False,
    )
    before, after = r.metrics["valid_before"]["perplexity"], r.metrics["valid_after"]["perplexity"]
    assert after < 0.5 * before, (before, after)
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "config.yaml",
        "history.jsonl",
        "metrics.json",
        "training_curves.png",
    ):
        assert (r.run_dir / name).is_file(), name
    gens = warmstart.generate(
        model=str(r.model_dir), prompts=["This movie"], max_new_tokens=8, seed=0
    )
    assert gens[0].completions[0].strip()


def test_mlm_continues_an_encoder_which_then_finetunes(corpus, tiny_models, imdb_head, tmp_path):
    r = warmstart.pretrain(
        data=corpus,
        objective="mlm",
        model=str(tiny_models["bert"]),
        block_size=64,
        epochs=2,
        lr=1e-3,
        out=str(tmp_path / "mlm"),
        progress=False,
    )
    assert r.metrics["valid_after"]["loss"] < r.metrics["valid_before"]["loss"]
    assert 0 <= r.metrics["valid_after"]["accuracy"] <= 1
    ft = warmstart.finetune(
        data=str(imdb_head),
        split="200,100",
        model=str(r.run_dir),
        epochs=1,
        out=str(tmp_path / "ft"),
        progress=False,
    )
    assert (ft.model_dir / "model.safetensors").is_file()


@pytest.mark.parametrize("objective", ["mlm+nsp", "denoise"])
def test_bert_and_bart_objectives_train_from_scratch(objective, corpus, tmp_path):
    r = warmstart.pretrain(
        data=corpus,
        objective=objective,
        from_scratch=True,
        size="tiny",
        vocab_size=1500,
        block_size=64,
        max_steps=12,
        batch_size=8,
        out=str(tmp_path / "m"),
        progress=False,
    )
    after = r.metrics["valid_after"]
    assert after["loss"] < r.metrics["valid_before"]["loss"]
    if objective == "mlm+nsp":
        assert 0 <= after["nsp_accuracy"] <= 1
    model_type = json.loads((r.model_dir / "config.json").read_text())["model_type"]
    assert model_type == {"mlm+nsp": "bert", "denoise": "bart"}[objective]


def test_resume_continues_masks_and_order_exactly(corpus, tiny_models, tmp_path):
    args = [
        "pretrain",
        "--data",
        corpus,
        "--objective",
        "mlm",
        "--model",
        str(tiny_models["bert"]),
        "--block-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--save-steps",
        "7",
        "--save-total-limit",
        "50",
        "--no-progress",
    ]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    (cut / "metrics.json").unlink()
    steps = sorted(int(p.name.split("-")[1]) for p in (cut / "checkpoints").iterdir())
    mid = next(s for s in steps if s % 7 == 0 and s > steps[0])  # a mid-epoch checkpoint
    for p in (cut / "checkpoints").iterdir():
        if p.name != f"checkpoint-{mid}":
            shutil.rmtree(p)
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, cut))
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["valid_after"] == b["valid_after"]
    assert (
        a["valid_before"] == b["valid_before"]
    )  # measured by the run's start, kept across the resume


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "case", ["empty", "too_short", "wrong_architecture", "no_model", "missing"]
)
def test_bad_pretraining_input_is_one_clear_error(case, tmp_path, tiny_models, capsys):
    argv = {
        "empty": ["--data", write(tmp_path, "e.txt", "\n\n"), "--from-scratch"],
        "too_short": [
            "--data",
            write(tmp_path, "s.txt", "A short film.\nIt was fine.\nGood.\n"),
            "--model",
            str(tiny_models["bert"]),
            "--objective",
            "mlm",
            "--block-size",
            "64",
            "--valid-fraction",
            "0",
        ],
        "wrong_architecture": [
            "--data",
            write(tmp_path, "w.txt", "A review. Of a film.\n" * 8),
            "--model",
            str(tiny_models["distilbert"]),
            "--objective",
            "mlm+nsp",
        ],
        "no_model": ["--data", write(tmp_path, "n.txt", "one\ntwo\n")],
        "missing": ["--data", str(tmp_path / "nope.txt"), "--from-scratch"],
    }[case]
    expected = {
        "empty": "no text",
        "too_short": "fewer than one block",
        "no_model": "--from-scratch",
        "wrong_architecture": "needs a model that has a next-sentence head",
        "missing": "does not exist",
    }[case]
    assert main(["pretrain", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
