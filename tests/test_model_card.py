"""Model cards: every model a run saves gets a README.md that huggingface_hub parses, whose
model-index holds exactly the test figures of metrics.json, whose pipeline_tag fits the model, and
whose usage example runs as written. Tiny real runs: a classifier (calibrated), a multi-label
classifier (thresholds), a tagger, a text-to-text model, a pre-trained MLM; then `calibrate`."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

import warmstart
from conftest import SHARED, TEXTS
from derived_data import wnut_entity_types
from warmstart.callbacks import CallbackList
from warmstart.hub import card

BROWN = SHARED / "data" / "brown-pos" / "news.conll"
# fp32: no precision measurement (seconds on a busy machine)
TINY = dict(max_length=48, batch_size=16, epochs=1, precision="fp32", progress=False)


def figures(metrics: dict) -> dict:
    """The scores of a metrics dict a model-index carries: finite numbers that are not counts."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in card.COUNTS
        and math.isfinite(v)
    }


def read_back(model_dir: Path) -> tuple[ModelCard, dict]:
    """The card as the Hub's client reads it, and its model-index as metric -> value."""
    loaded = ModelCard.load(model_dir / "README.md")
    _, results = model_index_to_eval_results(loaded.data.to_dict()["model-index"])
    return loaded, {r.metric_type: r.metric_value for r in results}


@pytest.fixture(scope="module")
def classifier_run(tiny_models, imdb_head, tmp_path_factory):
    """The tiny BERT fine-tuned on 200 IMDb reviews, calibrated on 60, tested on 60; ``.card_first``:
    whether the card was there when the callbacks heard on_run_end (the trackers upload it)."""
    seen = []

    def on_run_end(self, metrics, run_dir):
        seen.append((Path(run_dir) / "model" / "README.md").is_file())

    with pytest.MonkeyPatch.context() as m:
        m.setattr(CallbackList, "on_run_end", on_run_end)
        result = warmstart.finetune(
            data=str(imdb_head),
            split="200,60,60",
            model=str(tiny_models["bert"]),
            label_names="negative,positive",
            lr=1e-3,
            out=str(tmp_path_factory.mktemp("cards") / "imdb"),
            **TINY,
        )
    result.card_first = seen == [True]
    return result


def test_a_classifier_card_parses_and_its_model_index_is_metrics_json(classifier_run):
    model_dir = classifier_run.model_dir
    assert classifier_run.card_first  # written before on_run_end: MLflow and W&B upload it
    loaded, index = read_back(model_dir)
    metrics = json.loads((classifier_run.run_dir / "metrics.json").read_text())
    assert index == figures(metrics["test"]) and {"accuracy", "f1_macro"} <= set(index)
    data = loaded.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert "warmstart" in data.tags and "sequence" in data.tags
    # A local base model has no Hub id; no license can be read from it, and no path is published.
    assert data.base_model is None and data.license is None
    text = loaded.text
    assert str(model_dir.parent.parent) not in (model_dir / "README.md").read_text()
    for part in ("## Labels", "`negative`, `positive`", "## Training data", "## Evaluation"):
        assert part in text
    assert "| train | 200 |" in text and "| test | 60 |" in text
    # Hyperparameters from config.yaml, with the header's reasons for each automatic choice.
    notes = [line[2:] for line in (classifier_run.run_dir / "config.yaml").read_text().splitlines()]
    assert "| `lr` | 0.001 |" in text and "| `epochs` | 1.0 |" in text
    assert all(n in text for n in notes if n.startswith("eval_batch_size"))
    assert "- **Hardware:** " in text and "- **Engine:** warmstart's Accelerate loop" in text
    t = json.loads((model_dir / "config.json").read_text())["calibration_temperature"]
    assert f"T = {t:.4f}" in text


def test_the_cards_transformers_example_gives_warmstarts_prediction(classifier_run, monkeypatch):
    """The card's Python example, run as written from the run's parent folder, labels the text as
    `warmstart predict` does."""
    text = (classifier_run.model_dir / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert 'pipeline("text-classification", model="imdb/model")' in code
    monkeypatch.chdir(classifier_run.run_dir.parent)
    printed = []
    exec(code, {"print": printed.append})
    example = re.search(r"classifier\((.*)\)\)", code).group(1).strip("'\"")
    expected = warmstart.predict(
        model=str(classifier_run.model_dir), texts=[example], backend="torch", quantize="none"
    )[0]
    assert printed[0][0]["label"] == expected.label


def test_a_multi_label_card_lists_its_tuned_thresholds(tiny_models, tmp_path):
    tweets = tmp_path / "tweets.csv"
    wnut_entity_types(limit=200).to_csv(tweets, index=False)
    r = warmstart.finetune(
        data=str(tweets),
        split="120,40,40",
        model=str(tiny_models["bert"]),
        lr=1e-3,
        out=str(tmp_path / "types"),
        **TINY,
    )
    _, index = read_back(r.model_dir)
    assert index == figures(r.metrics["test"]) and "f1_micro" in index
    text = (r.model_dir / "README.md").read_text()
    config = json.loads((r.model_dir / "config.json").read_text())
    assert "## Thresholds" in text and 'function_to_apply="sigmoid"' in text
    name, threshold = config["id2label"]["0"], config["thresholds"][0]
    assert f"| `{name}` | {threshold:.4f} |" in text


def test_a_tagger_card_is_token_classification_with_its_tags(tiny_models, tmp_path):
    r = warmstart.finetune(
        task="tokens",
        data=str(BROWN),
        split="120,30,30",
        base_tags=True,
        model=str(tiny_models["bert"]),
        lr=3e-3,
        out=str(tmp_path / "pos"),
        **TINY,
    )
    loaded, index = read_back(r.model_dir)
    assert loaded.data.pipeline_tag == "token-classification" and "tokens" in loaded.data.tags
    assert index == figures(r.metrics["test"]) and "accuracy" in index
    assert "## Tags" in loaded.text and "`nn`" in loaded.text
    assert 'pipeline("token-classification", model="pos/model"' in loaded.text


def test_a_text_to_text_card_is_text2text_generation_and_uses_a_source_of_the_run(tmp_path):
    rng = random.Random(0)
    drawn = ("".join(rng.choices("abcdef", k=rng.randint(2, 5))) for _ in range(300))
    words = list(dict.fromkeys(drawn))[:90]
    pairs = tmp_path / "copy.tsv"
    pairs.write_text("src\ttgt\n" + "".join(f"{w}\t{w}\n" for w in words))
    r = warmstart.finetune(
        task="seq2seq",
        data=str(pairs),
        split="70,10,10",
        from_scratch=True,
        tokenizer="char",
        size="tiny",
        metrics="exact_match,cer",
        batch_size=16,
        epochs=1,
        precision="fp32",
        progress=False,
        out=str(tmp_path / "copy"),
    )
    loaded, index = read_back(r.model_dir)
    assert loaded.data.pipeline_tag == "text2text-generation" and "seq2seq" in loaded.data.tags
    assert (
        index
        == figures(r.metrics["test"])
        == {k: r.metrics["test"][k] for k in ("exact_match", "cer")}
    )
    # Built from scratch: no base model, and the size preset is among the hyperparameters.
    assert loaded.data.base_model is None and "| `size` | tiny |" in loaded.text
    first = json.loads((r.run_dir / "predictions.jsonl").read_text().splitlines()[0])["source"]
    assert f"warmstart predict copy/model {first}" in loaded.text
    assert "AutoModelForSeq2SeqLM" in loaded.text


def test_a_pretrain_card_reports_held_out_figures_before_and_after(tiny_models, tmp_path, imdb):
    docs = pd.read_csv(imdb, nrows=50)["review"].str.split().str[:30].str.join(" ")
    corpus = tmp_path / "reviews.txt"
    corpus.write_text("\n".join(docs) + "\n")
    r = warmstart.pretrain(
        data=str(corpus),
        objective="mlm",
        model=str(tiny_models["bert"]),
        block_size=32,
        batch_size=16,
        valid_fraction=0.2,
        lr=1e-3,
        precision="fp32",
        progress=False,
        out=str(tmp_path / "mlm"),
    )
    loaded, index = read_back(r.model_dir)
    assert loaded.data.pipeline_tag == "fill-mask" and "mlm" in loaded.data.tags
    assert index == figures(r.metrics["valid_after"]) and "perplexity" in index
    assert "before training" in loaded.text and "| `objective` | mlm |" in loaded.text
    assert "| `mlm_probability` | 0.15 |" in loaded.text


def test_calibrate_updates_the_cards_temperature_and_a_bare_folder_gets_a_card(
    classifier_run, imdb_head, tmp_path
):
    copy = tmp_path / "run"
    shutil.copytree(classifier_run.run_dir, copy)
    held_out = tmp_path / "held.csv"
    pd.read_csv(imdb_head).iloc[400:520].to_csv(held_out, index=False)
    before = (copy / "model" / "README.md").read_text()
    r = warmstart.calibrate(model=str(copy), data=str(held_out), backend="torch", progress=False)
    loaded, index = read_back(copy / "model")
    after = loaded.text
    assert f"T = {r.temperature:.4f}" in after and "120 rows of `held.csv`" in after
    # Everything else stands: the same model-index, the same sections in the same order.
    assert index == figures(classifier_run.metrics["test"])
    sections = [line for line in after.splitlines() if line.startswith("## ")]
    assert sections == [line for line in before.splitlines() if line.startswith("## ")]

    bare = tmp_path / "bare"
    shutil.copytree(classifier_run.model_dir, bare)
    (bare / "README.md").unlink()
    r = warmstart.calibrate(model=str(bare), data=str(held_out), backend="torch", progress=False)
    loaded = ModelCard.load(bare / "README.md")
    assert loaded.data.pipeline_tag == "text-classification" and "warmstart" in loaded.data.tags
    assert f"T = {r.temperature:.4f}" in loaded.text and "ECE" in loaded.text

    foreign = tmp_path / "foreign"
    shutil.copytree(classifier_run.model_dir, foreign)
    (foreign / "README.md").write_text("---\nlicense: mit\n---\n# Someone else's card\n")
    warmstart.calibrate(model=str(foreign), data=str(held_out), backend="torch", progress=False)
    assert (foreign / "README.md").read_text().endswith("# Someone else's card\n")


def test_an_alias_names_its_hub_id_and_the_license_its_readme_states():
    settings = {"model": "minilm"}
    assert card.base_model_of(settings) == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.base_license(settings) == "apache-2.0"  # the bundled model's own README says so
    assert card.base_model_of({"model": "distilbert-base-uncased"}) == "distilbert-base-uncased"
    assert card.base_model_of({"model": "/models/mine"}) is None
    assert card.base_model_of({"model": "minilm", "from_scratch": True}) is None
    from warmstart.models.bundled import ALIASES

    assert set(card.ALIAS_HUB_IDS) == set(ALIASES)


def test_an_onnx_export_stays_current_when_the_card_is_written(classifier_run, tmp_path):
    from warmstart.inference.export import current_export

    copy = tmp_path / "model"
    shutil.copytree(classifier_run.model_dir, copy)
    warmstart.predict(model=str(copy), texts=TEXTS[:1], backend="onnx", quantize="none")
    assert current_export(copy) is not None
    card.write(copy, (copy / "README.md").read_text() + "\nOne more line.\n")
    assert current_export(copy) is not None


def test_a_hub_base_model_is_named_with_its_license_and_the_commit_it_was_pinned_to(
    tiny_models, imdb_head, tmp_path, monkeypatch
):
    """--model as a Hub id (served by olah): the card names it as base_model, takes the license its
    README states and the commit the run read."""
    import huggingface_hub.constants as constants

    from hub_server import HubServer, make_git_repo

    files: dict = {p.name: p for p in tiny_models["bert"].iterdir() if p.is_file()}
    files["README.md"] = "---\nlicense: mit\n---\n# A tiny BERT\n"
    sha = make_git_repo(tmp_path / "hub" / "models" / "test-org" / "tiny-bert", files)
    with HubServer(tmp_path / "hub") as hub:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        url = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        r = warmstart.finetune(
            data=str(imdb_head),
            split="120,40,40",
            model="test-org/tiny-bert",
            out=str(tmp_path / "run"),
            **TINY,
        )
    loaded = ModelCard.load(r.model_dir / "README.md")
    assert loaded.data.base_model == "test-org/tiny-bert" and loaded.data.license == "mit"
    assert (
        f"[test-org/tiny-bert](https://huggingface.co/test-org/tiny-bert) at revision `{sha}`"
        in (loaded.text)
    )
