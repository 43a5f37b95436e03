"""zeroshot methods (nli, similarity) and the zeroshot command on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TEXTS
from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.metrics import softmax


@pytest.fixture(scope="module")
def tiny_nli(tiny_models, tmp_path_factory):
    """A random BERT NLI head whose entailment class is id 2 and named in capitals, as some
    checkpoints do."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-nli")
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    tok.save_pretrained(folder)
    id2label = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    config = BertConfig.from_pretrained(
        tiny_models["bert"],
        num_labels=3,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_nli_scores_all_pairs_in_one_pass_with_the_entailment_id_from_label2id(tiny_nli):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from warmstart.lowshot.zeroshot import load_method

    method = load_method("nli", str(tiny_nli))
    assert method.entail == 2 and method.contra == 0
    labels = ["positive", "negative", "neutral"]
    p = method.scores(TEXTS, labels, batch_size=5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_nli).eval()
    tok = AutoTokenizer.from_pretrained(tiny_nli)
    for i, t in enumerate(TEXTS):  # the reference: one pair at a time, as the pipeline does it
        with torch.no_grad():
            logits = torch.stack(
                [
                    model(**tok(t, f"This text is {lab}.", return_tensors="pt")).logits[0]
                    for lab in labels
                ]
            ).numpy()
        np.testing.assert_allclose(p[i], softmax(logits[None, :, 2])[0], rtol=1e-4, atol=1e-5)
        multi = method.scores([t], labels, multi_label=True)[0]
        np.testing.assert_allclose(multi, softmax(logits[:, [0, 2]])[:, 1], rtol=1e-4, atol=1e-5)


def test_a_classifier_without_an_entailment_label_is_not_an_nli_model(tiny_models, tmp_path):
    from warmstart.lowshot.zeroshot import load_method
    from warmstart.models import load_classifier

    clf = tmp_path / "clf"
    load_classifier(str(tiny_models["bert"]), ["neg", "pos"]).save_pretrained(clf)
    import shutil

    for f in tiny_models["bert"].glob("*tok*"):
        shutil.copy(f, clf)
    with pytest.raises(UserError, match="not an NLI model"):
        load_method("nli", str(clf))
    with pytest.raises(UserError, match="needs --model"):
        load_method("nli")


def test_similarity_uses_description_ensembles(tiny_models):
    from warmstart.lowshot.zeroshot import load_method

    m = load_method("similarity", str(tiny_models["bert"]))
    m.descriptions = {"good": ["great", "excellent film"]}
    v = m.label_vectors(["good", "bad"])
    e = m.embedder.embed(["great", "excellent film", "This text is bad."])
    ref_good = e[:2].mean(0) / np.linalg.norm(e[:2].mean(0))
    np.testing.assert_allclose(v[0], ref_good, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v[1], e[2], rtol=1e-5, atol=1e-6)
    p = m.scores(TEXTS, ["good", "bad"])
    assert p.shape == (4, 2) and np.allclose(p.sum(1), 1)


def test_zeroshot_evaluates_with_a_label_column_and_predicts_without(
    tiny_models, imdb_head, tmp_path, capsys
):
    m = str(tiny_models["bert"])
    assert (
        main(
            [
                "zeroshot",
                "--method",
                "similarity",
                "--model",
                m,
                "--labels",
                "negative,positive",
                "--data",
                str(imdb_head),
                "--limit",
                "30",
                "--out",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (
        metrics["n"] == 30 and metrics["label_column"] == "sentiment" and "texts_per_s" in metrics
    )
    assert (
        main(
            [
                "zeroshot",
                "--method",
                "similarity",
                "--model",
                m,
                "--labels",
                "good,bad",
                "Fine film.",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["label"] in ("good", "bad") and set(row["probabilities"]) == {"good", "bad"}


def test_zeroshot_bad_input_exits_2_naming_the_labels_column_or_row(
    tiny_models, imdb_head, tmp_path, capsys
):
    m = str(tiny_models["bert"])
    assert main(["zeroshot", "--model", m, "--labels", "", "some text"]) == 2
    assert "no candidate labels" in capsys.readouterr().err
    assert (
        main(
            [
                "zeroshot",
                "--model",
                m,
                "--labels",
                "a,b",
                "--data",
                str(imdb_head),
                "--label-column",
                "stars",
            ]
        )
        == 2
    )
    assert "has no column 'stars'" in capsys.readouterr().err
    odd = tmp_path / "odd.csv"
    pd.DataFrame({"text": ["fine", "bad", "ok"], "label": ["good", "bad", "meh"]}).to_csv(
        odd, index=False
    )
    assert main(["zeroshot", "--model", m, "--labels", "good,bad", "--data", str(odd)]) == 2
    assert (
        "row 3, column 'label': label 'meh' is not one of the labels (good, bad)"
        in capsys.readouterr().err
    )
