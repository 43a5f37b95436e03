"""Long documents for sequence classification (--long-text truncate|head+tail|chunk): what each mode
feeds the model, how chunk's windows cover a text and aggregate, that a finetuned choice travels
with the model into evaluate/predict/serve, that chunk runs on every backend, and that options that
would do nothing are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import warmstart
from warmstart import models
from warmstart.cli import main
from warmstart.data import Examples, read_examples
from warmstart.data.batching import encode, encode_chunks
from warmstart.data.windows import head_tail, overlap, token_windows
from warmstart.errors import UserError
from warmstart.inference import backends
from warmstart.inference.classifier import Classifier

MODES = [
    dict(long_text="truncate"),
    dict(long_text="head+tail"),
    dict(long_text="chunk", aggregation="mean"),
    dict(long_text="chunk", aggregation="max"),
    dict(long_text="chunk", aggregation="first+last"),
]


def examples(texts: list[str]) -> Examples:
    return Examples(
        source="test",
        texts=list(texts),
        pairs=None,
        labels=None,
        rows=list(range(1, len(texts) + 1)),
    )


@pytest.fixture(scope="module")
def tiny_clf(tiny_models, tmp_path_factory) -> str:
    """A tiny BERT classifier saved like a fine-tuned model, its head widened so decisions are
    clear."""
    folder = tmp_path_factory.mktemp("long-clf")
    model = models.load_classifier(str(tiny_models["bert"]), ["negative", "positive"], ["0", "1"])
    torch.manual_seed(1)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=2.0)
    model.save_pretrained(folder)
    models.load_tokenizer(str(tiny_models["bert"])).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tiny_clf):
    return models.load_tokenizer(tiny_clf)


@pytest.fixture(scope="module")
def reviews(imdb) -> Examples:
    """Twelve whole IMDb reviews: hundreds of tokens each, many windows at a 32-token window."""
    return examples(pd.read_csv(imdb, nrows=12)["review"].tolist())


@pytest.fixture(scope="module")
def long_reviews(tmp_path_factory, imdb) -> Path:
    """240 labelled reviews cut to 80 words: longer than a 32-token window, still quick to train
    on."""
    df = pd.read_csv(imdb, nrows=240)
    df["review"] = df["review"].str.split().str[:80].str.join(" ")
    path = tmp_path_factory.mktemp("long") / "reviews.csv"
    df.to_csv(path, index=False)
    return path


def test_head_tail_keeps_exactly_the_first_quarter_and_the_last_three_quarters(tokenizer, reviews):
    assert head_tail(list(range(100)), 32) == list(range(8)) + list(range(76, 100))
    assert head_tail(list(range(20)), 32) == list(range(20))  # a text that fits is left whole
    text = reviews.texts[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    room = 34 - 2  # [CLS] and [SEP]
    assert len(ids) > room
    got = encode(tokenizer, examples([text]), 34, long_text="head+tail").features["input_ids"][0]
    assert got == [tokenizer.cls_token_id, *ids[:8], *ids[-24:], tokenizer.sep_token_id]
    # truncate keeps the first tokens, as the tokenizer's own truncation does
    first = encode(tokenizer, examples([text]), 34).features["input_ids"][0]
    assert first == [tokenizer.cls_token_id, *ids[:32], tokenizer.sep_token_id]


def test_token_windows_cover_every_token_and_share_exactly_the_stride():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, budget = int(rng.integers(0, 200)), int(rng.integers(1, 40))
        stride = None if rng.random() < 0.2 else int(rng.integers(0, budget + 5))
        spans = token_windows(n, budget, stride)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(0 < e - s <= budget for s, e in spans) or n == 0
        for (ps, pe), (s, _) in zip(spans, spans[1:]):
            assert (
                pe - s == overlap(budget, stride) and ps < s
            )  # exactly the stride shared, always moving on
    assert (
        overlap(40, None) == 10 and overlap(40, 30) == 20
    )  # default a quarter, at most half the window


def test_chunk_windows_hold_every_token_of_a_text_between_special_tokens(tokenizer, reviews):
    data, counts = encode_chunks(tokenizer, reviews, 32, stride=6)
    assert counts.sum() == len(data) and (counts > 1).all()
    rows = iter(data.features["input_ids"])
    for text, k in zip(reviews.texts, counts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows = [next(rows) for _ in range(k)]
        assert all(
            w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id and len(w) <= 32
            for w in windows
        )
        inner = [w[1:-1] for w in windows]
        rebuilt = inner[0] + [
            t for w in inner[1:] for t in w[6:]
        ]  # each later window repeats 6 tokens
        assert rebuilt == ids


@pytest.mark.parametrize(
    "how, expected", [("mean", [11.0, -11.0]), ("max", [12.0, -8.0]), ("first+last", [10.0, -10.0])]
)
def test_chunk_aggregates_its_windows_logits_as_asked(tokenizer, how, expected):
    # A stub model whose logits are (tokens in the window, minus that): 30 tokens in windows of 10
    # (+2 special tokens) sharing 2 are (0,10) (8,18) (16,26) (24,30): 12, 12, 12 and 8 tokens.
    long_text, short_text = " ".join(["the"] * 30), "the the the"
    assert len(tokenizer(long_text, add_special_tokens=False)["input_ids"]) == 30

    def stub(batch: dict) -> torch.Tensor:
        return batch["attention_mask"].sum(1, keepdim=True).float() * torch.tensor([1.0, -1.0])

    clf = Classifier(
        "stub",
        None,
        tokenizer,
        None,
        torch.device("cpu"),
        12,
        stub,
        backends.plan("torch", "none", "fp32"),
        long_text="chunk",
        stride=2,
        aggregation=how,
    )
    logits = clf.logits(examples([short_text, long_text]))
    np.testing.assert_allclose(
        logits, [[5.0, -5.0], expected]
    )  # the short text: its one window, whatever `how`


def test_a_text_that_fits_gets_the_same_answer_under_every_mode(tiny_clf, tokenizer):
    texts = ["A wonderful film with a moving story.", "Dull and far too long.", "ok"]
    ids = {
        m["long_text"]: encode(tokenizer, examples(texts), 64, long_text=m["long_text"]).features
        for m in MODES[:2]
    }
    assert (
        ids["truncate"]
        == ids["head+tail"]
        == encode_chunks(tokenizer, examples(texts), 64)[0].features
    )
    got = [
        Classifier.load(tiny_clf, 64, cpu=True, **m).probabilities(examples(texts)) for m in MODES
    ]
    for other in got[1:]:
        np.testing.assert_allclose(other, got[0], atol=1e-6)


def test_long_texts_get_different_answers_under_each_mode(tiny_clf, reviews):
    got = {
        json.dumps(m): Classifier.load(tiny_clf, 32, cpu=True, **m).probabilities(reviews)
        for m in MODES
    }
    values = list(got.values())
    assert all(not np.allclose(a, b) for i, a in enumerate(values) for b in values[i + 1 :])


@pytest.mark.parametrize("engine", ["native", "trainer"])
def test_finetune_head_tail_saves_the_choice_and_evaluate_predict_and_the_test_part_use_it(
    engine, tiny_models, long_reviews, tmp_path, capsys
):
    out = tmp_path / "run"
    args = [
        "finetune",
        "--data",
        str(long_reviews),
        "--split",
        "0.6,0.2,0.2",
        "--model",
        str(tiny_models["bert"]),
        "--max-length",
        "32",
        "--long-text",
        "head+tail",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--engine",
        engine,
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["long_text"] == "head+tail" and config["train_max_length"] == 32
    assert "long_text: head+tail" in (out / "config.yaml").read_text()
    test_rows = read_examples(str(long_reviews)).take(
        list(range(192, 240))
    )  # the split's test part
    saved = Classifier.load(str(out / "model"), cpu=True)
    assert saved.long_text == "head+tail"
    ref = saved.probabilities(test_rows)
    metrics = json.loads(
        (out / "metrics.json").read_text()
    )  # the run's test part was read the same way
    assert metrics["test"]["accuracy"] == pytest.approx(
        (ref.argmax(1) == saved.labels.encode(test_rows)).mean()
    )
    preds = warmstart.predict(
        model=str(out), texts=test_rows.texts, backend="torch", progress=False
    )
    np.testing.assert_allclose(
        [[p.probabilities[n] for n in saved.labels.names] for p in preds], ref, atol=1e-6
    )
    ev = warmstart.evaluate(
        model=str(out), data=str(long_reviews), limit=48, backend="torch", progress=False
    )
    assert ev.metrics["long_text"] == "head+tail"
    assert (
        warmstart.evaluate(
            model=str(out),
            data=str(long_reviews),
            limit=48,
            backend="torch",
            progress=False,
            long_text="truncate",
        ).metrics["long_text"]
        == "truncate"
    )  # an explicit option wins
    # plain transformers loads the model (and reads a long text from the left: the one known
    # difference)
    from transformers import AutoModelForSequenceClassification

    assert (
        AutoModelForSequenceClassification.from_pretrained(out / "model").config.long_text
        == "head+tail"
    )
    # --resume continues the same run: a different --long-text is refused
    capsys.readouterr()
    assert main([*args[:-2], "--long-text", "truncate", "--resume", "--out", str(out)]) == 2
    assert "long_text" in capsys.readouterr().err


def test_finetune_chunk_trains_on_truncated_texts_and_saves_its_window_settings(
    tiny_models, long_reviews, tmp_path
):
    run = warmstart.finetune(
        data=str(long_reviews),
        split="0.6,0.2,0.2",
        model=str(tiny_models["bert"]),
        max_length=32,
        long_text="chunk",
        stride=4,
        chunk_aggregation="max",
        epochs=1,
        max_train_samples=64,
        lr=1e-3,
        progress=False,
        out=str(tmp_path / "run"),
    )
    config = json.loads((run.model_dir / "config.json").read_text())
    assert (config["long_text"], config["long_text_stride"], config["chunk_aggregation"]) == (
        "chunk",
        4,
        "max",
    )
    clf = Classifier.load(str(run.model_dir), cpu=True)
    assert (clf.long_text, clf.stride, clf.aggregation) == ("chunk", 4, "max")
    assert Classifier.load(str(run.model_dir), cpu=True, aggregation="mean").aggregation == "mean"


def test_chunk_gives_the_same_probabilities_on_torch_and_onnx(tiny_clf, reviews):
    kw = dict(long_text="chunk", aggregation="mean")
    ref = Classifier.load(tiny_clf, 32, cpu=True, backend="torch", **kw).probabilities(reviews)
    onnx = Classifier.load(
        tiny_clf, 32, cpu=True, backend="onnx", quantize="none", **kw
    ).probabilities(reviews)
    np.testing.assert_allclose(onnx, ref, atol=1e-4)


def test_an_int8_chunked_text_gets_the_same_bits_alone_and_among_others(tiny_clf, reviews):
    clf = Classifier.load(
        tiny_clf,
        32,
        cpu=True,
        backend="onnx",
        quantize="int8",
        long_text="chunk",
        aggregation="first+last",
    )
    together = clf.probabilities(reviews)
    np.testing.assert_array_equal(clf.probabilities(reviews.take([9, 2])), together[[9, 2]])
    np.testing.assert_array_equal(clf.probabilities(reviews.take([4]))[0], together[4])


def test_serve_predict_reads_long_texts_as_asked(tiny_clf, reviews):
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving import ServedModel, create_app

    served = ServedModel.load(
        tiny_clf,
        max_length=32,
        cpu=True,
        backend="torch",
        long_text="chunk",
        chunk_aggregation="max",
    )
    texts = reviews.texts[:4]
    with TestClient(create_app(served, ServeConfig(model=tiny_clf))) as c:
        r = c.post("/predict", json={"texts": texts})
    assert r.status_code == 200
    got = [list(p["probabilities"].values()) for p in r.json()["predictions"]]
    expected = Classifier.load(
        tiny_clf, 32, cpu=True, long_text="chunk", aggregation="max"
    ).probabilities(examples(texts))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_serve_refuses_long_text_options_for_a_model_without_predict(tiny_models):
    from warmstart.serving import ServedModel

    with pytest.raises(UserError, match="--long-text does not apply to model"):
        ServedModel.load(str(tiny_models["distilbert"]), cpu=True, long_text="chunk")


@pytest.fixture(scope="module")
def tiny_tagger(tiny_models, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("long-tagger")
    models.load_classifier(
        str(tiny_models["bert"]), ["O", "B-PER", "I-PER"], head="tokens"
    ).save_pretrained(folder)
    models.load_tokenizer(str(tiny_models["bert"])).save_pretrained(folder)
    return str(folder)


def test_options_that_would_do_nothing_are_refused_in_one_line(
    tiny_clf, tiny_tagger, long_reviews, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # where a finetune would write runs/finetune
    data = str(long_reviews)
    cases = [
        (
            ["finetune", "--data", "d.csv", "--stride", "8"],
            "--stride only apply to --long-text chunk",
        ),
        (
            [
                "finetune",
                "--data",
                "d.csv",
                "--long-text",
                "head+tail",
                "--chunk-aggregation",
                "max",
            ],
            "--chunk-aggregation only apply to --long-text chunk",
        ),
        (
            ["finetune", "--data", "d.csv", "--long-text", "chunk", "--text-pair-column", "b"],
            "one text per row",
        ),
        (
            ["finetune", "--task", "tokens", "--data", "d.conll", "--long-text", "chunk"],
            "are for --task sequence",
        ),
        (
            ["predict", tiny_clf, "--stride", "8", "a text"],
            "--stride only apply to --long-text chunk",
        ),
        (["predict", tiny_clf, "--aggregation", "max", "a text"], "--aggregation does not apply"),
        (
            ["predict", tiny_tagger, "--long-text", "chunk", "a text"],
            "--long-text does not apply to a tagger",
        ),
        (
            [
                "evaluate",
                tiny_clf,
                "--data",
                data,
                "--long-text",
                "truncate",
                "--chunk-aggregation",
                "max",
            ],
            "--chunk-aggregation only apply to --long-text chunk",
        ),
        (
            ["evaluate", tiny_tagger, "--data", data, "--long-text", "chunk"],
            "do not apply to a tagger",
        ),
        (["predict", tiny_clf, "--long-text", "all", "a text"], "invalid choice"),
    ]
    for argv, expected in cases:
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not any(tmp_path.iterdir())  # the refused finetunes wrote nothing
    # a tagger's --stride still means its own windows
    assert main(["predict", tiny_tagger, "--stride", "4", "--backend", "torch", "a few words"]) == 0
