"""LoRA (--lora-r) for any task kind: only the adapters and a new head train; model/ is the merged
model (plain transformers gives the PEFT model's outputs) or the adapter alone (peft on the base
reads it, and so does every warmstart command); a run killed mid-way resumes to the metrics of an
uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

import warmstart
from conftest import SHARED, TEXTS, kill_after_checkpoint
from warmstart.cli import main

VOLATILE = {"epoch_seconds", "elapsed_seconds", "samples_per_s"}
WNUT = SHARED / "data" / "wnut16" / "train.conll"


def lora_args(imdb_head, model, *extra: str) -> list[str]:
    return [
        "finetune",
        "--data",
        str(imdb_head),
        "--split",
        "160,40,40",
        "--model",
        str(model),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--lora-r",
        "4",
        "--precision",
        "fp32",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def lora_runs(tiny_models, imdb_head, tmp_path_factory):
    """The same LoRA run saved merged and as the adapter alone."""
    folder = tmp_path_factory.mktemp("lora")
    runs = {}
    for how in ("merged", "adapter"):
        out = folder / how
        assert (
            main(
                [*lora_args(imdb_head, tiny_models["bert"], "--lora-save", how), "--out", str(out)]
            )
            == 0
        )
        runs[how] = out
    return runs


def logits(model, folder, texts=TEXTS) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return model.eval()(**tok(texts, return_tensors="pt", padding=True)).logits


def test_merged_and_adapter_saves_reload_to_the_same_outputs(lora_runs, tiny_models):
    from peft import PeftModel

    merged_dir, adapter_dir = lora_runs["merged"] / "model", lora_runs["adapter"] / "model"
    assert (merged_dir / "model.safetensors").is_file() and not (
        merged_dir / "adapter_config.json"
    ).exists()
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in adapter_dir.iterdir()
    }
    assert not (adapter_dir / "config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir)  # plain transformers
    assert merged.config.num_labels == 2
    # The adapter on its base, with peft alone: the head comes back from the adapter
    # (modules_to_save).
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    peft_model = PeftModel.from_pretrained(base, adapter_dir)
    torch.testing.assert_close(
        logits(merged, merged_dir), logits(peft_model, adapter_dir), rtol=1e-4, atol=1e-5
    )
    # Both runs trained alike, and warmstart reads the adapter folder like any model folder.
    m = {how: json.loads((run / "metrics.json").read_text()) for how, run in lora_runs.items()}
    assert m["merged"]["test"]["accuracy"] == m["adapter"]["test"]["accuracy"]
    preds = {
        how: warmstart.predict(model=str(run), texts=TEXTS, backend="torch", quantize="none")
        for how, run in lora_runs.items()
    }
    for a, b in zip(preds["merged"], preds["adapter"]):
        assert a.label == b.label
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_only_adapters_and_head_train_and_the_count_is_peft_s(lora_runs, tiny_models):
    from peft import LoraConfig, get_peft_model

    info = json.loads((lora_runs["merged"] / "metrics.json").read_text())["lora"]
    assert info["targets"] == ["query", "value"] and info["head"] == ["classifier"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    hidden, layers = base.config.hidden_size, base.config.num_hidden_layers
    peft_model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]
        ),
    )
    assert (info["trainable"], info["total"]) == peft_model.get_nb_trainable_parameters()
    counted = json.loads((lora_runs["merged"] / "metrics.json").read_text())["parameters"]
    assert counted == {"trainable": info["trainable"], "total": info["total"]}
    # Two adapted projections a layer, each A (r x hidden) and B (hidden x r), plus the head's
    # weight and bias.
    assert info["trainable"] == layers * 2 * (2 * 4 * hidden) + (hidden * 2 + 2)


def test_lora_resume_after_kill_gives_the_same_metrics(tiny_models, imdb_head, tmp_path):
    args = lora_args(imdb_head, tiny_models["bert"], "--save-steps", "7", "--logging-steps", "5")
    killed = tmp_path / "killed"
    ckpt = kill_after_checkpoint(args, killed)
    assert 0 < ckpt["step"] < 40
    assert (
        main(["finetune", "--config", str(killed / "config.yaml"), "--resume", "--no-progress"])
        == 0
    )
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["test"] == full["test"]
    strip = [
        [{k: v for k, v in r.items() if k not in VOLATILE} for r in m["epochs"]]
        for m in (resumed, full)
    ]
    assert strip[0] == strip[1]


def test_lora_tags_words_with_the_trainer_engine(tiny_models, tmp_path):
    out = tmp_path / "tagger"
    result = warmstart.finetune(
        task="tokens",
        data=str(WNUT),
        split="120,30,30",
        model=str(tiny_models["bert"]),
        epochs=1,
        batch_size=8,
        lora_r=2,
        lora_target_modules="query,key,value",
        engine="trainer",
        precision="fp32",
        out=str(out),
        progress=False,
    )
    assert result.metrics["lora"]["targets"] == ["key", "query", "value"]
    assert result.metrics["lora"]["head"] == ["classifier"]
    model = AutoModelForTokenClassification.from_pretrained(
        result.model_dir
    )  # merged: plain transformers
    tags = warmstart.predict(
        model=str(out), texts=["Ann lives in Oslo"], backend="torch", quantize="none"
    )
    assert model.config.tag_scheme == "IOB2" and tags[0].text == "Ann lives in Oslo"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora-alpha", "16"], "--lora-alpha does not apply to full fine-tuning"),
        (["--lora-r", "4", "--lora-target-modules", "no_such_layer"], "--lora-target-modules:"),
    ],
)
def test_bad_lora_options_get_one_clear_error(
    tiny_models, imdb_head, tmp_path, capsys, extra, message
):
    args = [
        "finetune",
        "--data",
        str(imdb_head),
        "--split",
        "40,10",
        "--model",
        str(tiny_models["bert"]),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "r"),
        "--precision",
        "fp32",
        "--no-progress",
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
