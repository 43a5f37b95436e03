"""Calibrated probabilities: temperature scaling fitted at the end of finetune (both engines,
resumed runs) and by `warmstart calibrate`, saved in config.json and applied by every backend and
the server; ECE and reliability data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

import warmstart
from warmstart.cli import main
from warmstart.inference import calibration
from warmstart.inference.calibration import (
    TEMPERATURE_KEY,
    expected_calibration_error,
    fit_temperature,
    reliability,
    scaled,
)
from warmstart.metrics import softmax

TEXTS = [
    "A wonderful film with a moving story.",
    "Dull and far too long.",
    "The actors did what they could.",
    "I would watch it again tomorrow, and the day after.",
    "Not my kind of thing, but well made.",
]


def calibrated_sample(n: int = 20_000, classes: int = 3, kind: str = "softmax", seed: int = 0):
    """Logits and labels drawn from the logits' own probabilities: calibrated by construction (T =
    1)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    probs = scaled(logits, 1.0, kind)
    if kind == "softmax":
        y = (rng.random((n, 1)) > probs.cumsum(1)).sum(1)  # inverse-CDF draw of one class per row
    else:
        y = (rng.random(probs.shape) < probs).astype(np.float64)  # each label its own coin
    return logits, y


# --- the statistics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t0", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_scaled_calibrated_logits(t0):
    logits, y = calibrated_sample()
    assert fit_temperature(logits * t0, y) == pytest.approx(t0, rel=0.04)


def test_the_sigmoid_variant_recovers_the_temperature_of_multi_label_logits():
    logits, y = calibrated_sample(kind="sigmoid")
    assert fit_temperature(logits * 3.0, y, kind="sigmoid") == pytest.approx(3.0, rel=0.04)
    assert calibration.calibrate(logits * 3.0, y, kind="sigmoid").after["ece"] < 0.02


def test_ece_is_near_zero_when_calibrated_and_large_when_overconfident_and_scaling_lowers_it():
    logits, y = calibrated_sample()
    assert expected_calibration_error(scaled(logits), y) < 0.015
    overconfident = logits * 3.0  # the same ranking, three times as sure
    before = expected_calibration_error(scaled(overconfident), y)
    assert before > 0.1
    cal = calibration.calibrate(overconfident, y)
    assert cal.before["ece"] == pytest.approx(before)
    assert cal.after["ece"] < 0.015 < before
    assert cal.after["nll"] < cal.before["nll"]
    assert cal.after["accuracy"] == cal.before["accuracy"]  # dividing by T keeps every argmax


def test_ece_is_the_share_weighted_gap_between_accuracy_and_confidence_per_bin():
    probs = np.array([[0.95, 0.05], [0.15, 0.85], [0.25, 0.75], [0.65, 0.35]])
    y = np.array([0, 0, 1, 0])  # right, wrong, right, right
    data = reliability(probs, y, bins=10)
    full = [
        (b["lower"], b["count"], b["confidence"], b["accuracy"]) for b in data["bins"] if b["count"]
    ]
    assert full == [
        (0.6, 1, 0.65, 1.0),
        (0.7, 1, 0.75, 1.0),
        (0.8, 1, 0.85, 0.0),
        (0.9, 1, 0.95, 1.0),
    ]
    assert data["ece"] == pytest.approx((0.35 + 0.25 + 0.85 + 0.05) / 4)
    assert len(data["bins"]) == 10 and sum(b["count"] for b in data["bins"]) == 4


def test_a_fitting_set_the_model_gets_all_right_cannot_drive_the_temperature_to_zero():
    logits = np.array([[3.0, -3.0], [-2.0, 2.0]])
    t = fit_temperature(logits, np.array([0, 1]))
    # Every T small enough makes the NLL 0 to float precision; none below the bound of 1/20 is
    # tried.
    assert 1 / 20 * (1 - 1e-6) <= t < 0.2


# --- finetune
# ----------------------------------------------------------------------------------------------------

ARGS = dict(split="360,120,120", epochs=2, lr=1e-3, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def run(tiny_models, imdb_head, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "run"
    return warmstart.finetune(
        data=str(imdb_head), model=str(tiny_models["bert"]), out=str(out), **ARGS
    )


def hf_probabilities(model_dir: Path, texts: list[str]) -> np.ndarray:
    """What a plain transformers user computes: softmax(logits / config.calibration_temperature)."""
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        logits = model(
            **tok(texts, padding=True, truncation=True, return_tensors="pt")
        ).logits.numpy()
    return softmax(logits.astype(np.float64) / config.calibration_temperature)


def saved_t(model_dir: Path) -> float:
    return json.loads((Path(model_dir) / "config.json").read_text())[TEMPERATURE_KEY]


def test_finetune_saves_the_temperature_calibration_json_and_the_reliability_diagram(run):
    record = json.loads((run.run_dir / "calibration.json").read_text())
    t = saved_t(run.model_dir)
    assert t == record["temperature"] == run.metrics["calibration"]["temperature"]
    assert abs(t - 1) > 1e-3  # a barely trained model is not calibrated as it comes
    assert (
        record["rows"] == 120 and record["kind"] == "softmax" and len(record["after"]["bins"]) == 15
    )
    assert record["after"]["nll"] <= record["before"]["nll"]  # T = 1 was among the candidates
    assert record["after"]["accuracy"] == record["before"]["accuracy"]
    figures = run.metrics["calibration"]
    assert (
        figures["ece_before"] == record["before"]["ece"]
        and figures["ece_after"] == record["after"]["ece"]
    )
    assert (run.run_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        AutoConfig.from_pretrained(run.model_dir).calibration_temperature == t
    )  # plain transformers sees it


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_and_evaluate_give_softmax_of_the_raw_logits_over_the_temperature(
    run, imdb_head, tmp_path, backend
):
    model = tmp_path / "model"
    shutil.copytree(
        run.model_dir, model
    )  # the onnx backend exports into the folder: keep the shared run clean
    expected = hf_probabilities(model, TEXTS)
    preds = warmstart.predict(model=str(model), texts=TEXTS, backend=backend, quantize="none")
    got = np.array([list(p.probabilities.values()) for p in preds])
    assert np.allclose(got, expected, atol=1e-4)
    assert not np.allclose(got, hf_probabilities_uncalibrated(model, TEXTS), atol=1e-3)

    df = pd.read_csv(imdb_head).iloc[480:600]
    df.to_csv(tmp_path / "test.csv", index=False)
    ev = warmstart.evaluate(
        model=str(model),
        data=str(tmp_path / "test.csv"),
        backend=backend,
        quantize="none",
        progress=False,
    )
    probs = hf_probabilities(model, df["review"].tolist())
    assert ev.metrics["calibration_temperature"] == saved_t(model)
    assert ev.metrics["ece"] == pytest.approx(
        expected_calibration_error(probs, df["sentiment"].to_numpy()), abs=1e-4
    )
    if backend == "torch":  # finetune's own test pass ran these rows on fp32 PyTorch
        assert ev.accuracy == pytest.approx(run.test_accuracy)


def hf_probabilities_uncalibrated(model_dir: Path, texts: list[str]) -> np.ndarray:
    t = AutoConfig.from_pretrained(model_dir).calibration_temperature
    return softmax(np.log(hf_probabilities(model_dir, texts)) * t)


def test_served_predictions_are_calibrated(run):
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving import ServedModel, create_app

    served = ServedModel.load(str(run.model_dir), cpu=True, backend="torch")
    with TestClient(create_app(served, ServeConfig(model=served.name))) as c:
        preds = c.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    assert np.allclose(
        [list(p["probabilities"].values()) for p in preds],
        hf_probabilities(run.model_dir, TEXTS),
        atol=1e-5,
    )


def test_calibration_changes_no_prediction_and_can_be_turned_off(
    run, tiny_models, imdb_head, tmp_path
):
    plain = warmstart.finetune(
        data=str(imdb_head),
        model=str(tiny_models["bert"]),
        out=str(tmp_path / "plain"),
        calibrate=False,
        **ARGS,
    )
    assert (
        plain.metrics["test"] == run.metrics["test"]
    )  # accuracy, F1 and confusion matrix identical
    assert "calibration" not in plain.metrics and not (plain.run_dir / "calibration.json").exists()
    assert TEMPERATURE_KEY not in json.loads((plain.model_dir / "config.json").read_text())


def test_finetuning_a_calibrated_model_does_not_inherit_its_temperature(
    run, imdb_head, tmp_path, monkeypatch
):
    from warmstart.kinds import SequenceClassification as kind

    trained: dict = {}
    fit = kind.finish  # where the kind calibrates the saved model, after training

    def spy(self, cfg, model_dir, r):  # the model as training saved it, before calibration
        trained.update(json.loads((model_dir / "config.json").read_text()))
        return fit(self, cfg, model_dir, r)

    monkeypatch.setattr(kind, "finish", spy)
    again = warmstart.finetune(
        data=str(imdb_head),
        model=str(run.model_dir),
        out=str(tmp_path / "again"),
        split="360,120",
        epochs=1,
        lr=1e-3,
        progress=False,
    )
    assert trained and TEMPERATURE_KEY not in trained
    assert (
        saved_t(again.model_dir) == again.metrics["calibration"]["temperature"]
    )  # its own, fitted anew


@pytest.mark.parametrize("engine", ["native", "trainer"])
def test_both_engines_and_resumed_runs_end_with_the_same_calibrated_model(
    engine, tiny_models, imdb_head, tmp_path
):
    args = [
        "finetune",
        "--engine",
        engine,
        "--data",
        str(imdb_head),
        "--split",
        "360,120,120",
        "--model",
        str(tiny_models["bert"]),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--no-progress",
        "--save-total-limit",
        "3",
    ]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    t = saved_t(full / "model")
    assert (full / "reliability.png").is_file()

    before = (full / "model" / "config.json").read_bytes()
    assert main([*args, "--out", str(full), "--resume"]) == 0  # finished: nothing to do
    assert (full / "model" / "config.json").read_bytes() == before

    # Interrupted during its last epoch (and so before calibration): resumes, retrains, calibrates
    # alike.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for name in ("metrics.json", "calibration.json", "reliability.png"):
        (cut / name).unlink()
    shutil.rmtree(max((cut / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1])))
    calibration.save_temperature(cut / "model", None)
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert saved_t(cut / "model") == t
    assert json.loads((cut / "calibration.json").read_text()) == json.loads(
        (full / "calibration.json").read_text()
    )


# --- warmstart calibrate
# -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overconfident(tiny_models, tmp_path_factory) -> Path:
    """A tiny BERT classifier saved like a fine-tuned one, with a wide random head: sure of itself,
    often wrong."""
    from warmstart import models

    folder = tmp_path_factory.mktemp("overconfident")
    model = models.load_classifier(str(tiny_models["bert"]), ["negative", "positive"], ["0", "1"])
    torch.manual_seed(1)
    torch.nn.init.normal_(
        [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight, std=2.0
    )
    model.save_pretrained(folder)
    models.load_tokenizer(str(tiny_models["bert"])).save_pretrained(folder)
    return folder


@pytest.fixture
def model_copy(overconfident, tmp_path) -> Path:
    folder = tmp_path / "clf"
    shutil.copytree(overconfident, folder)
    return folder


@pytest.fixture
def held_out(imdb_head, tmp_path) -> Path:
    path = tmp_path / "held_out.csv"
    pd.read_csv(imdb_head).iloc[480:600].to_csv(path, index=False)
    return path


def test_calibrate_updates_the_temperature_and_the_next_predict_uses_it_even_on_an_existing_onnx_export(
    model_copy, held_out, capsys
):
    calibration.save_temperature(
        model_copy, 7.0
    )  # far off: whatever calibrate fits differs from it
    stale = warmstart.predict(model=str(model_copy), texts=TEXTS, backend="onnx", quantize="none")
    assert np.allclose(
        [list(p.probabilities.values()) for p in stale],
        hf_probabilities(model_copy, TEXTS),
        atol=1e-4,
    )
    exported = (model_copy / "onnx" / "model.onnx").stat().st_mtime_ns

    assert (
        main(
            [
                "calibrate",
                str(model_copy),
                "--data",
                str(held_out),
                "--backend",
                "torch",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    t = saved_t(model_copy)
    assert t != 7.0 and f"temperature {t:.4f} (was 7.0000)" in out and "ECE" in out
    record = json.loads(
        (model_copy / "calibration.json").read_text()
    )  # a bare model folder: written beside it
    assert record["temperature"] == t and record["rows"] == 120
    assert (model_copy / "reliability.png").is_file()

    expected = hf_probabilities(model_copy, TEXTS)
    for backend in ("onnx", "torch"):
        preds = warmstart.predict(
            model=str(model_copy), texts=TEXTS, backend=backend, quantize="none"
        )
        assert np.allclose([list(p.probabilities.values()) for p in preds], expected, atol=1e-4), (
            backend
        )
    # The export was kept (only the temperature changed) and its own copy of config.json says the
    # new T.
    assert (model_copy / "onnx" / "model.onnx").stat().st_mtime_ns == exported
    assert saved_t(model_copy / "onnx") == t


def test_calibrate_on_a_run_folder_writes_its_report_in_the_run_folder_or_out(
    run, held_out, tmp_path
):
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    result = warmstart.calibrate(
        model=str(copy), data=str(held_out), backend="torch", progress=False
    )
    assert result.model_dir == copy / "model" and result.out == copy
    assert json.loads((copy / "calibration.json").read_text())["temperature"] == saved_t(
        copy / "model"
    )
    elsewhere = warmstart.calibrate(
        model=str(copy),
        data=str(held_out),
        backend="torch",
        progress=False,
        out=str(tmp_path / "report"),
    )
    assert (tmp_path / "report" / "calibration.json").is_file() and (
        tmp_path / "report" / "reliability.png"
    ).is_file()
    assert (
        elsewhere.temperature == pytest.approx(result.temperature)
        and elsewhere.previous == result.temperature
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def tagger(tiny_models, tmp_path) -> Path:
    folder = tmp_path / "tagger"
    id2label = {0: "O", 1: "B-PER", 2: "I-PER"}
    model = AutoModelForTokenClassification.from_pretrained(
        tiny_models["bert"],
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case, expected",
    [
        ("tagger", "is a tagger"),
        ("encoder", "has no classification head"),
        ("no labels", "no label column found"),
        ("unknown label", "unknown label 'great'"),
        ("read-only", "cannot write the model folder"),
    ],
)
def test_calibrate_refuses_bad_input_in_one_line_with_exit_code_2_and_writes_nothing(
    case, expected, model_copy, tagger, tiny_models, held_out, tmp_path, capsys, monkeypatch
):
    model = {"tagger": tagger, "encoder": tiny_models["bert"]}.get(case, model_copy)
    data = held_out
    if case in ("no labels", "unknown label"):
        df = pd.read_csv(held_out)
        if case == "no labels":
            df = df.drop(columns="sentiment")
        else:
            df["sentiment"] = df["sentiment"].astype(str)
            df.loc[5, "sentiment"] = "great"
        data = tmp_path / "bad.csv"
        df.to_csv(data, index=False)
    if case == "read-only":  # tests run as root, which chmod does not stop
        monkeypatch.setattr("warmstart.tasks.calibrate.os.access", lambda path, mode: False)
    before = snapshot(Path(model))
    monkeypatch.chdir(tmp_path)
    cwd_before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["calibrate", str(model), "--data", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert snapshot(Path(model)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == cwd_before
