"""End-to-end fine-tuning through the real code paths: the bundled MiniLM on a small IMDb slice, and
tiny random BERT and DistilBERT folders built with their config classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import warmstart
from warmstart.cli import main


def test_minilm_loss_goes_down_and_run_folder_is_complete(minilm_run):
    run = minilm_run.run_dir
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "config.yaml",
        "metrics.json",
        "history.jsonl",
        "training_curves.png",
        "confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    epochs = minilm_run.metrics["epochs"]
    assert len(epochs) == 3
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.05
    assert epochs[-1]["valid_loss"] < epochs[0]["valid_loss"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history if "train_loss" in h] == [1, 2, 3]
    assert sum("lr" in h for h in history) == 6  # 30 steps, a log line every 5
    test = minilm_run.metrics["test"]
    assert test["accuracy"] > 0.6  # above chance after 30 steps
    assert test["n"] == 200 and np.array(test["confusion_matrix"]).sum() == 200
    assert set(test["per_class"]) == {"negative", "positive"}


def test_saved_model_loads_with_plain_transformers_and_names_its_labels(minilm_run):
    path = minilm_run.model_dir
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model(**tok(["A wonderful, moving film."], return_tensors="pt")).logits.shape == (1, 2)


def test_predict_agrees_with_evaluate_on_the_test_split(minilm_run, imdb, tmp_path):
    import pandas as pd

    df = pd.read_csv(imdb, skiprows=range(1, 40001), nrows=200)
    path = tmp_path / "test.csv"
    df.to_csv(
        path, index=False
    )  # labels 0/1: mapped onto negative/positive by the saved label values
    # evaluate's default is PyTorch fp32, as finetune's own test pass (predict's int8 default, or
    # bf16 where --precision auto measures it faster, may flip a near-tie: test_inference_backends)
    ev = warmstart.evaluate(
        model=str(minilm_run.run_dir), data=str(path), out=str(tmp_path / "m.json"), progress=False
    )
    assert ev.accuracy == pytest.approx(minilm_run.metrics["test"]["accuracy"])
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["confusion_matrix"] == minilm_run.metrics["test"]["confusion_matrix"]
    preds = warmstart.predict(
        model=str(minilm_run.model_dir),
        texts=df["review"].tolist(),
        backend="torch",
        quantize="none",
        precision="fp32",
    )
    names = ["negative", "positive"]
    acc = np.mean([names.index(p.label) == y for p, y in zip(preds, df["sentiment"])])
    assert acc == pytest.approx(ev.accuracy)
    assert [p.text for p in preds] == df["review"].tolist()
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in preds)


def test_a_saved_model_scores_the_same_in_the_hf_pipeline_as_in_evaluate(
    minilm_run, imdb, tmp_path
):
    """The saved tokenizer carries the training length (128 here), so plain transformers truncates
    where warmstart does: the pipeline and `evaluate` agree on reviews far longer than that."""
    import pandas as pd
    from transformers import pipeline

    df = pd.read_csv(imdb, skiprows=range(1, 40001), nrows=64)
    path = tmp_path / "test.csv"
    df.to_csv(path, index=False)
    tok = AutoTokenizer.from_pretrained(minilm_run.model_dir)
    assert tok.model_max_length == 128
    assert max(len(ids) for ids in tok(df["review"].tolist(), truncation=True)["input_ids"]) == 128
    ev = warmstart.evaluate(model=str(minilm_run.run_dir), data=str(path), progress=False)
    clf = pipeline("text-classification", model=str(minilm_run.model_dir), device="cpu")
    labels = [p["label"] for p in clf(df["review"].tolist(), truncation=True, batch_size=8)]
    names = ["negative", "positive"]
    hf_accuracy = np.mean([label == names[y] for label, y in zip(labels, df["sentiment"])])
    assert hf_accuracy == pytest.approx(ev.accuracy)


def test_predict_cli_reads_arguments_files_and_stdin_and_keeps_order(
    minilm_run, tmp_path, capsys, monkeypatch
):
    import io

    texts = ["A wonderful, moving film.", "Two hours I will never get back."]
    assert main(["predict", str(minilm_run.model_dir), *texts]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert {r["label"] for r in rows} <= {"negative", "positive"}
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert (
        main(
            [
                "predict",
                str(minilm_run.model_dir),
                "--input",
                str(tmp_path / "in.txt"),
                "--format",
                "csv",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    import pandas as pd

    out = pd.read_csv(tmp_path / "p.csv")
    assert out["text"].tolist() == texts and list(out.columns) == [
        "text",
        "label",
        "score",
        "p_negative",
        "p_positive",
    ]
    assert out["label"].tolist() == [r["label"] for r in rows]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts[::-1]) + "\n"))
    assert main(["predict", str(minilm_run.model_dir)]) == 0
    assert [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()] == texts[::-1]
    assert (
        main(["predict", str(minilm_run.model_dir), "--aggregation", "max", *texts]) == 2
    )  # a tagger's option
    assert "--aggregation does not apply to a sequence classifier" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_tiny_random_encoders_finetune_and_reload(arch, tiny_models, imdb_head, tmp_path):
    out = tmp_path / arch
    code = main(
        [
            "finetune",
            "--data",
            str(imdb_head),
            "--split",
            "0.6,0.2,0.2",
            "--model",
            str(tiny_models[arch]),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--lr",
            "1e-3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == {"train": 360, "valid": 120, "test": 120}
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert (
        type(model).__name__
        == {
            "bert": "BertForSequenceClassification",
            "distilbert": "DistilBertForSequenceClassification",
        }[arch]
    )
    assert model.config.id2label == {0: "0", 1: "1"}


def test_config_yaml_repeats_the_run_exactly(tiny_models, imdb_head, tmp_path):
    first = warmstart.finetune(
        data=str(imdb_head),
        split="300,100,100",
        model=str(tiny_models["bert"]),
        epochs=2,
        lr=1e-3,
        out=str(tmp_path / "a"),
        progress=False,
    )
    cfg = yaml.safe_load((first.run_dir / "config.yaml").read_text())
    assert cfg["max_length"] == 128 and cfg["model"] == str(tiny_models["bert"])
    assert (
        main(
            [
                "finetune",
                "--config",
                str(first.run_dir / "config.yaml"),
                "--out",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 0
    )
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert second["test"] == first.metrics["test"]
    assert [e["train_loss"] for e in second["epochs"]] == [
        e["train_loss"] for e in first.metrics["epochs"]
    ]


def test_early_stopping_stops_when_valid_metric_stalls_and_keeps_the_best_model(
    tiny_models, imdb_head, tmp_path
):
    # lr 0: the model never changes, so the valid metric never improves after epoch 1.
    result = warmstart.finetune(
        data=str(imdb_head),
        split="200,100",
        model=str(tiny_models["distilbert"]),
        epochs=6,
        lr=1e-12,
        patience=2,
        out=str(tmp_path / "es"),
        progress=False,
    )
    assert result.metrics["stopped_early"] and len(result.metrics["epochs"]) == 3
    assert result.metrics["best_epoch"] == 1


def test_best_epoch_is_the_model_kept(tiny_models, imdb_head, tmp_path):
    result = warmstart.finetune(
        data=str(imdb_head),
        split="300,150",
        model=str(tiny_models["bert"]),
        epochs=4,
        lr=3e-3,
        metric_for_best="loss",
        out=str(tmp_path / "b"),
        progress=False,
    )
    epochs = result.metrics["epochs"]
    best = min(epochs, key=lambda e: e["valid_loss"])
    assert result.metrics["best_epoch"] == best["epoch"]
    import pandas as pd

    valid = pd.read_csv(imdb_head).iloc[300:450]
    valid.to_csv(tmp_path / "valid.csv", index=False)
    # fp32 PyTorch, as in training: the default int8 backend may flip a near-tie of this barely
    # trained model
    ev = warmstart.evaluate(
        model=str(result.model_dir),
        data=str(tmp_path / "valid.csv"),
        progress=False,
        backend="torch",
        quantize="none",
    )
    assert ev.accuracy == pytest.approx(best["valid_accuracy"])


def test_gradient_accumulation_counts_optimizer_steps_and_max_steps_ends_training(
    tiny_models, imdb_head, tmp_path
):
    result = warmstart.finetune(
        data=str(imdb_head),
        split="320,80",
        model=str(tiny_models["bert"]),
        batch_size=8,
        grad_accum=4,
        max_steps=7,
        logging_steps=1,
        out=str(tmp_path / "ga"),
        progress=False,
        optimizer="adam",
        scheduler="constant",
        max_grad_norm=None,
    )
    history = [
        json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()
    ]
    steps = [h for h in history if "lr" in h]
    assert [h["step"] for h in steps] == list(range(1, 8))
    assert steps[0]["epoch"] == pytest.approx(4 / 40)  # 4 micro-batches of 40 per optimizer step
    assert result.metrics["epochs"][-1]["step"] == 7


def test_sentence_pairs_train_and_evaluate_with_a_second_text_column(
    tiny_models, imdb_head, tmp_path
):
    import pandas as pd

    df = pd.read_csv(imdb_head)
    words = df["review"].str.split()
    pairs = pd.DataFrame(
        {
            "premise": words.str[:30].str.join(" "),
            "hypothesis": words.str[30:].str.join(" "),
            "label": df["sentiment"].map({0: "no", 1: "yes"}),
        }
    )
    pairs = pairs[pairs["hypothesis"].str.len() > 0]
    pairs.to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)
    result = warmstart.finetune(
        data=str(tmp_path / "pairs.jsonl"),
        split="0.7,0.3",
        test=str(tmp_path / "pairs.jsonl"),
        text_column="premise",
        text_pair_column="hypothesis",
        model=str(tiny_models["bert"]),
        epochs=1,
        limit=120,
        out=str(tmp_path / "run"),
        progress=False,
    )
    assert result.metrics["test"]["labels"] == ["no", "yes"]
    ev = warmstart.evaluate(
        model=str(result.run_dir),
        data=str(tmp_path / "pairs.jsonl"),
        limit=120,
        text_column="premise",
        text_pair_column="hypothesis",
        progress=False,
    )
    assert ev.accuracy == pytest.approx(result.test_accuracy)
    # the pair really reaches the model: segment ids 0 then 1
    from warmstart import models
    from warmstart.data import read_examples
    from warmstart.data.batching import encode

    ex = read_examples(str(tmp_path / "pairs.jsonl"), "premise", "hypothesis", limit=2)
    data = encode(models.load_tokenizer(str(result.model_dir)), ex, 128)
    assert set(data.features["token_type_ids"][0]) == {0, 1}


def test_two_runs_in_one_process_may_use_different_precisions(tiny_models, imdb_head, tmp_path):
    # Accelerate keeps one state per process; the second run must not be refused for changing
    # precision.
    for precision in ("fp32", "bf16"):
        r = warmstart.finetune(
            data=str(imdb_head),
            split="100,50",
            model=str(tiny_models["bert"]),
            epochs=1,
            precision=precision,
            out=str(tmp_path / precision),
            progress=False,
        )
        assert r.metrics["epochs"][0]["valid_accuracy"] >= 0


def test_head_lr_gives_the_new_head_its_own_learning_rate(tiny_models):
    from transformers import AutoModelForSequenceClassification

    from warmstart.config import FinetuneConfig
    from warmstart.training.common import optimizer_for

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    head = {id(p) for n, p in model.named_parameters() if n.startswith("classifier.")}
    opt = optimizer_for(model, FinetuneConfig(lr=1e-4, head_lr=3e-3))
    for group in opt.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1 and group["lr"] == (3e-3 if in_head.pop() else 1e-4)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters()
    }
    plain = optimizer_for(model, FinetuneConfig(lr=1e-4))
    assert {g["lr"] for g in plain.param_groups} == {1e-4} and len(plain.param_groups) == 2


def test_cli_options_may_follow_a_commands_texts(minilm_run, capsys):
    texts = ["A wonderful, moving film.", "Two hours I will never get back."]
    assert main(["predict", str(minilm_run.model_dir), *texts]) == 0
    before = capsys.readouterr().out
    assert (
        main(["predict", str(minilm_run.model_dir), texts[0], "--format", "jsonl", texts[1]]) == 0
    )
    assert capsys.readouterr().out == before
