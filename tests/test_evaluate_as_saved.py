"""`evaluate` scores the saved model as it is (PyTorch, the dtype it was saved in), so that its
figures are the ones plain transformers gives; `--quantize int8` scores the int8 deployment that
predict and serve run by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import warmstart


@pytest.fixture(scope="module")
def weak_classifier(tiny_models, tmp_path_factory) -> Path:
    """A tiny random BERT with a fresh head: a weak model whose logits nearly tie, where a
    quantised deployment's decisions part from the saved model's."""
    import torch
    from transformers import AutoTokenizer

    from warmstart.models import load_classifier

    folder = tmp_path_factory.mktemp("weak-clf")
    torch.manual_seed(0)
    load_classifier(str(tiny_models["bert"]), ["negative", "positive"], ["0", "1"]).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(tiny_models["bert"]).save_pretrained(folder)
    return folder


def test_evaluate_scores_exactly_what_the_transformers_pipeline_scores(
    weak_classifier, imdb_head, tmp_path
):
    from transformers import pipeline

    df = pd.read_csv(imdb_head, nrows=100)
    data = tmp_path / "reviews.csv"
    df.to_csv(data, index=False)
    ev = warmstart.evaluate(model=str(weak_classifier), data=str(data), progress=False)
    clf = pipeline("text-classification", model=str(weak_classifier), device="cpu")
    labels = [p["label"] for p in clf(df["review"].tolist(), truncation=True, batch_size=16)]
    names = ["negative", "positive"]
    predicted = np.array([names.index(label) for label in labels])
    truth = df["sentiment"].to_numpy()
    assert ev.metrics["backend"] == "torch-fp32"
    assert ev.accuracy == np.mean(predicted == truth)  # exactly: the same model, the same sums
    expected = [[int(np.sum((truth == t) & (predicted == p))) for p in (0, 1)] for t in (0, 1)]
    assert ev.metrics["confusion_matrix"] == expected
    # Asked for, the int8 deployment is what is scored.
    int8 = warmstart.evaluate(
        model=str(weak_classifier), data=str(data), progress=False, quantize="int8"
    )
    assert int8.metrics["backend"] == "onnx-int8"
