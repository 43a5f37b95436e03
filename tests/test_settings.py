"""Options are resolved once: a task settles every automatic choice into a frozen copy, each with its
reason in config.yaml's header; and one registry of task kinds answers both "which kind trains
--task X" and "which kind reads this saved folder"."""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import AutoConfig

import warmstart
from warmstart import kinds
from warmstart.config import Choice, FinetuneConfig, build, read_config_file, reasons, settle
from warmstart.errors import UserError


def test_settled_options_are_frozen_and_carry_the_reason_for_each_choice():
    given = FinetuneConfig(data="x.csv", lr=None)
    settled = settle(given, lr=Choice(1e-4, "the kind's default"), epochs=2.0)
    assert (settled.lr, settled.epochs) == (1e-4, 2.0)
    assert reasons(settled) == {"lr": "the kind's default"}  # a plain value needs no reason
    assert given.lr is None  # the user's options are left as they were
    with pytest.raises(AttributeError, match="resolved once"):
        settled.lr = 3e-4
    again = settle(settled, max_length=Choice(64, "the model's limit"))
    assert reasons(again) == {"lr": "the kind's default", "max_length": "the model's limit"}


def test_config_yaml_names_each_automatic_choice_with_its_reason_and_repeats_the_run(
    tiny_models, imdb_head, tmp_path
):
    out = tmp_path / "run"
    r = warmstart.finetune(
        data=str(imdb_head),
        split="40,20,20",
        model=str(tiny_models["bert"]),
        epochs=1,
        precision="fp32",
        attn_implementation="sdpa",
        out=str(out),
        progress=False,
    )
    text = (out / "config.yaml").read_text()
    header = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    chosen = {line.split(" ")[0]: line for line in header}
    # Decided for the user, and said why: the kind's defaults, the problem type, the model's limit.
    assert set(chosen) >= {"lr", "metric_for_best", "problem", "max_length", "eval_batch_size"}
    assert chosen["lr"].startswith("lr 5e-05: ") and "epochs" not in chosen  # epochs was given
    assert chosen["problem"].startswith("problem 'single-label': detected")
    saved = yaml.safe_load(text)
    assert (saved["lr"], saved["max_length"], saved["problem"]) == (5e-5, 128, "single-label")
    # The resolved config is a config again: it repeats the run as it was resolved.
    assert build(FinetuneConfig, read_config_file(str(out / "config.yaml"))).lr == 5e-5
    assert json.loads((r.run_dir / "metrics.json").read_text())["precision"] == "fp32"


def test_one_registry_answers_by_task_name_and_by_saved_model(tiny_models, tiny_gpt2, tmp_path):
    assert kinds.tasks() == (
        "sequence",
        "tokens",
        "seq2seq",
        "causal-lm",
        "embedding",
        "rerank",
        "qa",
        "dpo",
    )
    for task in kinds.tasks():
        assert kinds.for_task(task).task == task
    with pytest.raises(UserError, match="not a task"):
        kinds.for_task("ner")
    encoder, found = kinds.for_model(AutoConfig.from_pretrained(tiny_models["bert"]))
    assert (encoder.task, found) == (None, "encoder")
    lm, found = kinds.for_model(AutoConfig.from_pretrained(tiny_gpt2))
    assert (lm.task, found) == ("causal-lm", "causal-lm")
    config = AutoConfig.from_pretrained(tiny_models["bert"])
    config.architectures = ["BertForSequenceClassification"]
    config.id2label, config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    for problem, name in (
        ("single_label_classification", "SequenceClassification"),
        ("multi_label_classification", "MultiLabelClassification"),
        ("regression", "Regression"),
    ):
        config.problem_type = problem
        kind, found = kinds.for_model(config)
        assert (kind.__name__, found) == (name, "classifier")
    # A kind reads each saved-model kind once: a second claim is refused.
    with pytest.raises(ValueError, match="registered already"):
        kinds.register(type("Again", (kinds.TaskKind,), {"task": "again", "reads": encoder.reads}))
