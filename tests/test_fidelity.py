"""Embeddings of a sentence-transformers model equal SentenceTransformer(...).encode's by default:
its own max_seq_length, pooling and normalisation, read from the model folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import warmstart
from warmstart.models import resolve
from warmstart.models.sentence import sentence_settings


def test_the_bundled_minilm_declares_its_sentence_transformers_settings():
    own = sentence_settings(resolve("minilm"))
    assert (own.max_seq_length, own.pooling, own.normalize) == (256, "mean", True)


def test_embed_defaults_match_sentence_transformers_on_real_reviews(imdb, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    df = pd.read_csv(imdb, nrows=16)
    assert df["review"].str.split().str.len().max() > 256  # some reviews are cut at 256 tokens
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    ours = warmstart.embed(
        model="minilm", data=str(path), out=str(tmp_path / "e.npy"), progress=False
    )
    x = np.load(ours.out)
    st = sentence_transformers.SentenceTransformer(resolve("minilm"), device="cpu")
    y = st.encode(df["review"].tolist(), convert_to_numpy=True)
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cosine.min() > 0.999, cosine.min()
    assert np.allclose(
        np.linalg.norm(x, axis=1), 1, atol=1e-5
    )  # normalised, as the model's Normalize module does


def test_explicit_options_override_the_models_own(imdb, tmp_path):
    df = pd.read_csv(imdb, nrows=4)
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    out = warmstart.embed(
        model="minilm",
        data=str(path),
        out=str(tmp_path / "e.npy"),
        progress=False,
        normalize=False,
        max_length=64,
    )
    assert not np.allclose(np.linalg.norm(np.load(out.out), axis=1), 1, atol=1e-3)
