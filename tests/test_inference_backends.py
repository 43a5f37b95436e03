"""Inference backends: ONNX (fp32/int8), torch int8 and bf16 agree with fp32; export is atomic and
cached; predict/evaluate take --backend/--quantize/--precision; a missing onnxruntime is one clear
sentence."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from warmstart import cli, models
from warmstart.data import read_examples
from warmstart.data.batching import budget_batches
from warmstart.errors import UserError
from warmstart.inference import backends
from warmstart.inference import export as onnx_export
from warmstart.inference.classifier import Classifier


@pytest.fixture(scope="module")
def classifiers(tiny_models, tmp_path_factory) -> dict[str, str]:
    """Tiny bert and distilbert classifiers saved like a fine-tuned model (labels 0/1 in the
    data)."""
    out = {}
    for name in ("bert", "distilbert"):
        folder = tmp_path_factory.mktemp(f"clf-{name}")
        model = models.load_classifier(str(tiny_models[name]), ["negative", "positive"], ["0", "1"])
        torch.manual_seed(1)
        # A random head gives near-tied logits; a wide one makes decisions clear, so agreement
        # measures the backend and not float noise on ties.
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.normal_(head.weight, std=2.0)
        model.save_pretrained(folder)
        models.load_tokenizer(str(tiny_models[name])).save_pretrained(folder)
        out[name] = str(folder)
    return out


@pytest.fixture(scope="module")
def reviews(imdb_head):
    return read_examples(str(imdb_head), limit=48)


def probs(path: str, ex, **kw) -> np.ndarray:
    return Classifier.load(path, cpu=True, **kw).probabilities(ex)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_onnx_fp32_matches_torch_fp32(classifiers, reviews, arch):
    ref = probs(classifiers[arch], reviews, backend="torch")
    onnx = probs(classifiers[arch], reviews, backend="onnx", quantize="none")
    np.testing.assert_allclose(onnx, ref, atol=1e-4)


def test_export_computes_only_the_first_query_in_a_bert_last_layer_with_the_same_logits(
    classifiers, reviews
):
    import onnx

    bert = onnx_export._load_eager(classifiers["bert"])
    assert isinstance(bert.base_model.encoder.layer[-1], onnx_export._FirstQueryLayer)
    full = models.load_classifier(classifiers["bert"]).eval()
    texts = ["a fine film", *reviews.texts[:5]]
    batch = models.load_tokenizer(classifiers["bert"])(
        texts, truncation=True, max_length=64, padding=True, return_tensors="pt"
    )
    assert (
        int(batch["attention_mask"].sum(1).min()) < batch["input_ids"].shape[1]
    )  # really padded rows
    with torch.no_grad():
        torch.testing.assert_close(bert(**batch).logits, full(**batch).logits, atol=1e-5, rtol=1e-5)
    # DistilBERT's layers are shaped otherwise: exported whole (and still equal to torch, above).
    assert not isinstance(
        onnx_export._load_eager(classifiers["distilbert"]).base_model.transformer.layer[-1],
        onnx_export._FirstQueryLayer,
    )
    folder, _ = onnx_export.ensure_export(classifiers["bert"], quiet=True)
    ops = {n.op_type for n in onnx.load(str(folder / onnx_export.INT8_FILE)).graph.node}
    assert "SkipLayerNormalization" not in ops and "DynamicQuantizeLinear" in ops


@pytest.mark.parametrize(
    "kw",
    [
        dict(backend="onnx", quantize="int8"),
        dict(backend="torch", quantize="int8"),
        dict(backend="torch", precision="bf16"),
    ],
    ids=["onnx-int8", "torch-int8", "torch-bf16"],
)
def test_quantised_and_bf16_backends_stay_close_to_fp32(classifiers, reviews, kw):
    ref = probs(classifiers["bert"], reviews, backend="torch")
    got = probs(classifiers["bert"], reviews, **kw)
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert np.abs(got - ref).max() < 0.15


@pytest.mark.parametrize(
    "kw",
    [dict(backend="onnx", quantize="int8"), dict(backend="torch", quantize="int8")],
    ids=["onnx-int8", "torch-int8"],
)
def test_int8_probabilities_of_a_text_do_not_depend_on_its_batch(classifiers, reviews, kw):
    # Dynamic quantisation scales activations over a whole batch: run together, a text's scores
    # moved with its neighbours. Alone, in another order, in other groupings and with any
    # --batch-size: the same bits.
    clf = Classifier.load(classifiers["bert"], cpu=True, **kw)
    ex = reviews.take(list(range(12)))
    together = clf.probabilities(ex)
    shuffled = np.random.default_rng(0).permutation(12)
    np.testing.assert_array_equal(clf.probabilities(ex.take(shuffled)), together[shuffled])
    np.testing.assert_array_equal(clf.probabilities(ex, batch_size=5), together)
    for i in (0, 7):
        np.testing.assert_array_equal(clf.probabilities(ex.take([i]))[0], together[i])


def test_auto_backend_is_onnx_int8_on_cpu_and_torch_without_onnxruntime(classifiers, monkeypatch):
    assert (
        Classifier.load(classifiers["bert"], cpu=True, backend="auto", quantize="auto").plan.name
        == "onnx-int8"
    )
    monkeypatch.setitem(
        sys.modules, "onnxruntime", None
    )  # import onnxruntime now raises ImportError
    clf = Classifier.load(
        classifiers["bert"], cpu=True, backend="auto", quantize="auto", precision="auto"
    )
    assert clf.plan.name in (
        "torch-fp32",
        "torch-bf16",
    )  # auto precision on a CPU: measured (test_precision.py)


def test_onnx_backend_without_onnxruntime_is_a_clear_user_error(classifiers, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match="needs the package onnxruntime"):
        Classifier.load(classifiers["bert"], cpu=True, backend="onnx")
    assert cli.main(["predict", classifiers["bert"], "a fine film", "--backend", "onnx"]) == 2
    assert "onnxruntime" in capsys.readouterr().err


def test_export_is_written_whole_reused_and_redone_when_the_model_changes(
    classifiers, tmp_path, monkeypatch
):
    import warmstart

    out = tmp_path / "exported"

    def killed(*args, **kwargs):
        raise OSError("killed half-way")

    with monkeypatch.context() as m:
        m.setattr(onnx_export, "quantize_int8", killed)
        with pytest.raises(OSError):
            warmstart.export(model=classifiers["distilbert"], onnx=True, out=str(out))
    assert not out.exists()  # a failed export leaves no half folder under the real name

    first = warmstart.export(model=classifiers["distilbert"], onnx=True, out=str(out))
    assert not first.reused and {f.name for f in first.files} == {"model.onnx", "model.int8.onnx"}
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]
    stamp = (out / "model.onnx").stat().st_mtime_ns
    again = warmstart.export(model=classifiers["distilbert"], onnx=True, out=str(out))
    assert again.reused and (out / "model.onnx").stat().st_mtime_ns == stamp

    weights = next(
        p for p in os.scandir(classifiers["distilbert"]) if p.name.endswith(".safetensors")
    )
    os.utime(weights.path, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert not warmstart.export(model=classifiers["distilbert"], onnx=True, out=str(out)).reused

    # The export folder is a model of its own: --model accepts it (on the onnx backend only).
    clf = Classifier.load(str(out), cpu=True, backend="auto", quantize="none")
    assert clf.plan.name == "onnx-fp32" and clf.labels.names == ["negative", "positive"]
    with pytest.raises(UserError, match="is an ONNX export"):
        Classifier.load(str(out), cpu=True, backend="torch")


def test_export_refuses_a_folder_holding_other_files(classifiers, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli.main(["export", classifiers["bert"], "--onnx", "--out", str(tmp_path)]) == 2
    assert (
        cli.main(["export", classifiers["bert"], "--out", str(tmp_path / "new")]) == 2
    )  # no format chosen


def test_predict_and_evaluate_cli_take_the_backend_flags(classifiers, imdb_head, tmp_path, capsys):
    path = classifiers["bert"]
    assert (
        cli.main(
            [
                "predict",
                path,
                "A wonderful film.",
                "Dull and far too long.",
                "--backend",
                "onnx",
                "--quantize",
                "int8",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and {r["label"] for r in rows} <= {"negative", "positive"}
    for flags in (
        ["--backend", "torch", "--quantize", "int8"],
        ["--backend", "torch", "--precision", "bf16"],
        ["--backend", "onnx", "--quantize", "none"],
        [],
    ):
        out = tmp_path / f"m{len(flags)}{flags[-1:]}.json"
        assert (
            cli.main(
                [
                    "evaluate",
                    path,
                    "--data",
                    str(imdb_head),
                    "--limit",
                    "24",
                    "--out",
                    str(out),
                    "--no-progress",
                    *flags,
                ]
            )
            == 0
        )
        metrics = json.loads(out.read_text())
        # evaluate's default scores the saved model as it is (PyTorch fp32), not the int8 export.
        assert 0 <= metrics["accuracy"] <= 1 and metrics["backend"].startswith(
            flags[1] if flags else "torch-fp32"
        )
    capsys.readouterr()
    assert cli.main(["predict", path, "x", "--backend", "onnx", "--precision", "bf16"]) == 2
    assert "bf16" in capsys.readouterr().err


def test_budget_batches_cover_every_row_longest_first_within_the_token_budget():
    lengths = np.random.default_rng(0).integers(1, 300, size=500)
    batches = budget_batches(lengths, batch_size=16, max_tokens=512)
    assert sorted(i for b in batches for i in b) == list(range(500))
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    assert all(
        len(b) <= 16 and len(b) * lengths[b].max() <= max(512, lengths[b].max()) for b in batches
    )
    assert max(len(b) for b in batches) == 16  # short texts still share a batch


def test_plan_resolves_auto_per_device():
    gpu = torch.device("cuda")
    assert backends.plan("auto", "auto", "auto", torch.device("cpu")).name in (
        "onnx-int8",
        "torch-fp32",
    )
    assert backends.plan("torch", "auto", "fp32", gpu).name == "torch-fp32"
    assert backends.plan("auto", "auto", "bf16", torch.device("cpu")).name == "torch-bf16"
    with pytest.raises(UserError, match="runs on the CPU"):
        backends.plan("torch", "int8", "auto", gpu)
    assert backends.auto_batching(backends.plan("torch", "none", "fp32", gpu), None) == (
        backends.GPU_BATCH,
        None,
        1,
    )
    assert backends.auto_batching(backends.plan("torch", "none", "fp32"), 8) == (8, None, 1)
    # int8 runs one text at a time whatever the batch size asked for (one per thread on ONNX
    # Runtime).
    assert backends.auto_batching(backends.plan("onnx", "int8"), 8) == (1, None, backends.threads())
    assert backends.auto_batching(backends.plan("torch", "int8", "fp32"), None) == (1, None, 1)
