"""embed and probe: pooling against hand-computed values, input order, output files, resume,
probes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.inference.features import Embedder, parse_layers, pool


def test_pooling_matches_hand_computed_values():
    h = torch.tensor(
        [[[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]], [[-1.0, 0.0], [7.0, 1.0], [9.0, 9.0]]]
    )  # row 2: the last position is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert pool(h, mask, "cls").tolist() == [[1.0, 2.0], [-1.0, 0.0]]
    np.testing.assert_allclose(
        pool(h, mask, "mean").numpy(), [[3.0, 4.0 / 3.0], [3.0, 0.5]], rtol=1e-6
    )
    assert pool(h, mask, "max").tolist() == [[5.0, 6.0], [7.0, 1.0]]  # the padded 9s are ignored
    assert pool(h, mask, "last").tolist() == [[5.0, 6.0], [7.0, 1.0]]


def test_layer_specs_select_by_index_slice_or_list_and_refuse_missing_layers():
    assert parse_layers("-1", 6) == [6]
    assert parse_layers("-4:", 6) == [3, 4, 5, 6]
    assert parse_layers("0,2", 6) == [0, 2]
    assert parse_layers("1:3", 6) == [1, 2]
    with pytest.raises(UserError, match="does not exist"):
        parse_layers("9", 6)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_embedder_pools_the_models_own_hidden_states(tiny_models, pooling):
    e = Embedder.load(str(tiny_models["bert"]), pooling=pooling, layers="1,2", layer_mode="concat")
    texts = [
        "a short one",
        "a rather longer text with many more words in it than the first",
        "mid length text",
    ]
    x = e.embed(texts, batch_size=2)
    assert x.shape == (3, 64) and e.dim == 64
    for i, t in enumerate(
        texts
    ):  # one text alone: no padding, so pooling is plain numpy over its tokens
        enc = e.tokenizer(t, return_tensors="pt")
        with torch.no_grad():
            hs = e.model(**enc, output_hidden_states=True).hidden_states
        ref = []
        for layer in (1, 2):
            s = hs[layer][0].numpy()
            ref.append({"cls": s[0], "mean": s.mean(0), "max": s.max(0)}[pooling])
        np.testing.assert_allclose(x[i], np.concatenate(ref), rtol=1e-4, atol=1e-5)


def test_decoders_pool_the_last_token_and_batching_never_changes_a_row(tiny_gpt2):
    e = Embedder.load(str(tiny_gpt2), max_length=64)
    assert e.pooling == "last" and e.decoder
    texts = [
        "Hello there",
        "The movie was long and the ending made no sense at all",
        "Fine",
        "Okay then, fine",
    ]
    batched = e.embed(texts, batch_size=3)
    for i, t in enumerate(
        texts
    ):  # batching (sorted, right-padded) never changes a row or its place
        np.testing.assert_allclose(batched[i], e.embed([t], batch_size=1)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="causal"):
        Embedder.load(str(tiny_gpt2), pooling="cls")


@pytest.fixture
def reviews(tmp_path, imdb_head):
    df = pd.read_csv(imdb_head, nrows=60)
    df.insert(0, "doc", [f"d{i}" for i in range(len(df))])
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    return path


def test_embed_writes_parquet_npy_safetensors_in_input_order(tiny_models, reviews, tmp_path):
    from safetensors.numpy import load_file

    from warmstart import embed

    m = str(tiny_models["bert"])
    r = embed(
        model=m,
        data=str(reviews),
        out=str(tmp_path / "f.parquet"),
        id_column="doc",
        label_column="sentiment",
        chunk_size=16,
        progress=False,
    )
    assert r.rows == 60 and r.dim == 32
    t = pd.read_parquet(r.out)
    assert list(t.columns) == ["id", "embedding", "sentiment"]
    assert t["id"].tolist() == [f"d{i}" for i in range(60)]
    assert t["sentiment"].tolist() == pd.read_csv(reviews)["sentiment"].astype(str).tolist()
    x = np.stack(t["embedding"].to_numpy())
    embed(
        model=m,
        data=str(reviews),
        out=str(tmp_path / "f.npy"),
        chunk_size=7,
        batch_size=5,
        progress=False,
    )
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), x, rtol=1e-4, atol=1e-5)
    embed(model=m, data=str(reviews), out=str(tmp_path / "f.safetensors"), progress=False)
    st = load_file(tmp_path / "f.safetensors")
    np.testing.assert_allclose(st["embeddings"], x, rtol=1e-4, atol=1e-5)
    assert st["ids"].tolist() == list(range(60))
    assert (tmp_path / "f.config.yaml").is_file()
    assert not list(tmp_path.glob(".*parts")) and not list(tmp_path.glob(".*tmp*"))


def test_embed_resumes_after_the_last_finished_chunk(tiny_models, reviews, tmp_path, monkeypatch):
    from warmstart import embed

    m, out = str(tiny_models["bert"]), tmp_path / "f.npy"
    calls = []
    real = Embedder.embed

    def dies_on_third_chunk(self, texts, *a, **k):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the third chunk
        return real(self, texts, *a, **k)

    monkeypatch.setattr(Embedder, "embed", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed(model=m, data=str(reviews), out=str(out), chunk_size=16, progress=False)
    assert not out.exists()  # never a partial output presented as complete
    calls.clear()
    embed(model=m, data=str(reviews), out=str(out), chunk_size=16, progress=False)
    assert calls == [16, 12]  # only chunks 3 and 4 were computed again
    monkeypatch.setattr(Embedder, "embed", real)
    embed(model=m, data=str(reviews), out=str(tmp_path / "ref.npy"), chunk_size=60, progress=False)
    np.testing.assert_allclose(np.load(out), np.load(tmp_path / "ref.npy"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".safetensors"])
def test_embed_killed_while_assembling_finishes_from_its_chunks(
    suffix, tiny_models, reviews, tmp_path, monkeypatch
):
    from warmstart import embed
    from warmstart.tasks import embed as task

    m, out = str(tiny_models["bert"]), tmp_path / f"f{suffix}"
    kw = dict(model=m, data=str(reviews), chunk_size=16, progress=False)
    real_chunks = task._chunks

    def killed_after_two(parts, n):
        for i, x in enumerate(real_chunks(parts, n)):
            if i == 2:
                # what a kill -9 leaves: the half-assembled file under its temporary name
                (out.parent / f".{out.name}.tmp4242").write_bytes(b"half an output")
                raise KeyboardInterrupt
            yield x

    monkeypatch.setattr(task, "_chunks", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed(out=str(out), **kw)
    assert not out.exists()  # never a partial output under the final name
    monkeypatch.setattr(task, "_chunks", real_chunks)
    monkeypatch.setattr(
        Embedder, "load", lambda *a, **k: pytest.fail("a rerun that only assembles loads no model")
    )
    r = embed(out=str(out), **kw)
    assert r.rows == 60 and r.dim == 32
    monkeypatch.undo()
    ref = tmp_path / "ref" / f"f{suffix}"
    embed(out=str(ref), **kw)
    np.testing.assert_array_equal(features(out), features(ref))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def features(path):
    """The embedding matrix of an embed output in any format."""
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".parquet":
        return np.stack(pd.read_parquet(path)["embedding"].to_numpy())
    from safetensors.numpy import load_file

    return load_file(path)["embeddings"]


def test_embed_killed_after_renaming_its_output_finishes_on_the_same_command(
    tiny_models, reviews, tmp_path, monkeypatch
):
    from warmstart import embed
    from warmstart.tasks import embed as task

    out = tmp_path / "f.npy"
    kw = dict(
        model=str(tiny_models["bert"]),
        data=str(reviews),
        out=str(out),
        chunk_size=16,
        progress=False,
    )

    write = task.atomic_write_text

    def killed(path, text):
        if str(path).endswith(".config.yaml"):
            # the output is in place; its config.yaml and the chunks' removal are not done
            raise KeyboardInterrupt
        write(path, text)

    monkeypatch.setattr(task, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        embed(**kw)
    assert out.exists() and task.parts_dir(out).is_dir()
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(Embedder, "embed", lambda self, texts, *a, **k: calls.append(texts))
    first = np.load(out)
    embed(**kw)  # no "already exists": the same command finishes the run
    assert (
        calls == [] and (tmp_path / "f.config.yaml").is_file() and not task.parts_dir(out).exists()
    )
    np.testing.assert_array_equal(np.load(out), first)


def test_embed_refuses_to_mix_chunks_of_other_options(tiny_models, reviews, tmp_path, monkeypatch):
    from warmstart import embed

    def dies(self, texts, *a, **k):
        raise KeyboardInterrupt

    m, out = str(tiny_models["bert"]), tmp_path / "f.npy"
    embed_real = Embedder.embed
    calls = iter([False, True])

    def first_ok(self, texts, *a, **k):
        if next(calls):
            raise KeyboardInterrupt
        return embed_real(self, texts, *a, **k)

    monkeypatch.setattr(Embedder, "embed", first_ok)
    with pytest.raises(KeyboardInterrupt):
        embed(model=m, data=str(reviews), out=str(out), chunk_size=16, progress=False)
    monkeypatch.setattr(Embedder, "embed", embed_real)
    with pytest.raises(UserError, match="other options.*pooling"):
        embed(
            model=m, data=str(reviews), out=str(out), chunk_size=16, pooling="max", progress=False
        )
    embed(
        model=m,
        data=str(reviews),
        out=str(out),
        chunk_size=16,
        pooling="max",
        overwrite=True,
        progress=False,
    )
    assert np.load(out).shape == (60, 32)


def test_embed_bad_input_exits_2(tiny_models, reviews, tmp_path, capsys):
    m = str(tiny_models["bert"])
    assert (
        main(["embed", "--model", m, "--data", str(reviews), "--out", str(tmp_path / "f.csv")]) == 2
    )
    assert "unknown format '.csv'" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                "--model",
                m,
                "--data",
                str(reviews),
                "--out",
                str(tmp_path / "f.npy"),
                "--text-column",
                "body",
            ]
        )
        == 2
    )
    assert "has no column 'body'" in capsys.readouterr().err


def test_probe_on_embed_output_and_on_tables_gives_the_same_result(
    tiny_models, imdb_head, tmp_path
):
    from warmstart import embed, probe

    m = str(tiny_models["bert"])
    feats = tmp_path / "all.parquet"
    embed(
        model=m,
        data=str(imdb_head),
        out=str(feats),
        label_column="sentiment",
        limit=300,
        progress=False,
    )
    a = probe(train=str(feats), split="200,50,50", out=str(tmp_path / "pa"), progress=False)
    b = probe(
        data=str(imdb_head),
        limit=300,
        split="200,50,50",
        model=m,
        out=str(tmp_path / "pb"),
        progress=False,
    )
    for r in (a, b):
        assert {"config.yaml", "metrics.json", "probe.joblib", "confusion_matrix.png"} <= {
            p.name for p in r.run_dir.iterdir()
        }
        assert r.metrics["rows"] == {"train": 200, "valid": 50, "test": 50}
        assert r.metrics["c_chosen_on"] == "valid" and len(r.metrics["c_grid_accuracy"]) == 11
    assert a.metrics["c"] == b.metrics["c"]
    assert a.test_accuracy == pytest.approx(
        b.test_accuracy, abs=0.021
    )  # at most one of 50 rows differs
    saved = json.loads((a.run_dir / "metrics.json").read_text())
    assert saved["test"]["n"] == 50


def test_probe_without_labels_in_the_feature_file_is_a_clear_error(
    tiny_models, imdb_head, tmp_path, capsys
):
    from warmstart import embed

    feats = tmp_path / "nolabels.parquet"
    embed(
        model=str(tiny_models["bert"]),
        data=str(imdb_head),
        out=str(feats),
        limit=20,
        progress=False,
    )
    assert main(["probe", "--train", str(feats), "--out", str(tmp_path / "p")]) == 2
    assert "has no label column" in capsys.readouterr().err
