"""`--engine ray`: predict, evaluate and embed on a local Ray cluster (2 CPUs, started once for the
module) give the single-process command's rows, in input order with ids, as Parquet shards; a
replica that dies is replaced and its batch retried without duplicate rows; bad input is one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray")

import warmstart  # noqa: E402
from warmstart import models  # noqa: E402
from warmstart.errors import UserError  # noqa: E402
from warmstart.inference import ray_engine  # noqa: E402

ROWS = 40


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: starting one takes seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def classifier(tiny_models, tmp_path_factory) -> str:
    """A tiny bert classifier saved like a fine-tuned model, with a wide random head (clear
    decisions)."""
    folder = tmp_path_factory.mktemp("ray-clf")
    model = models.load_classifier(str(tiny_models["bert"]), ["negative", "positive"], ["0", "1"])
    torch.manual_seed(1)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=2.0)
    model.save_pretrained(folder)
    models.load_tokenizer(str(tiny_models["bert"])).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def shards(imdb_head, tmp_path_factory) -> tuple[Path, Path]:
    """(a folder of three CSV shards, the same rows in one CSV file) of real reviews."""
    df = pd.read_csv(imdb_head, nrows=ROWS)
    folder = tmp_path_factory.mktemp("shards")
    for i, part in enumerate(np.array_split(np.arange(ROWS), 3)):
        df.iloc[part].to_csv(folder / f"reviews-{i}.csv", index=False)
    whole = tmp_path_factory.mktemp("whole") / "reviews.csv"
    df.to_csv(whole, index=False)
    return folder, whole


def read_shards(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("part-*.parquet"))
    assert files, f"no shards in {folder}"
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def test_predict_on_ray_writes_the_single_process_records_in_input_order(
    cluster, classifier, shards, tmp_path
):
    folder, whole = shards
    expected = [
        p.record() for p in warmstart.predict(model=classifier, input=str(whole), progress=False)
    ]

    result = warmstart.predict(
        model=classifier,
        input=str(folder),
        out=str(tmp_path / "ray"),
        engine="ray",
        actors=2,
        batch_tokens=300,  # several batches per shard: the order is put back across actors
        progress=False,
    )
    got = read_shards(tmp_path / "ray")
    assert result.rows == ROWS and result.actors == 2
    assert got["id"].tolist() == list(range(ROWS))
    records = [
        {"text": r.text, "label": r.label, "score": r.score, "probabilities": r.probabilities}
        for r in got.itertuples()
    ]
    # ONNX int8 runs each text alone: the same rows, bit for bit
    assert records == expected


@pytest.mark.slow
def test_evaluate_on_ray_gives_the_single_process_metrics(cluster, classifier, shards):
    _, whole = shards
    local = warmstart.evaluate(model=classifier, data=str(whole), progress=False).metrics
    on_ray = warmstart.evaluate(
        model=classifier, data=str(whole), engine="ray", actors=2, progress=False
    ).metrics
    timing = {"seconds", "texts_per_s"}
    assert {k: v for k, v in on_ray.items() if k not in timing} == {
        k: v for k, v in local.items() if k not in timing
    }


@pytest.mark.slow
def test_a_replica_that_dies_is_replaced_and_its_batch_written_once(
    cluster, classifier, shards, tmp_path
):
    csv_folder, _ = shards
    folder = tmp_path / "parquet"  # Parquet shards this time (Ray Data's other reader)
    folder.mkdir()
    for f in sorted(csv_folder.glob("*.csv")):
        pd.read_csv(f).to_parquet(folder / f"{f.stem}.parquet")
    marker = tmp_path / "died"

    class DiesOnce(ray_engine.ClassifierPredictor):
        # The first batch any replica takes kills its process (a crash, not an exception): Ray
        # starts a new actor and runs the batch again.
        def __call__(self, batch):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return super().__call__(batch)
            os._exit(1)

    from warmstart.models.registry import load_tokenizer

    result = ray_engine.run(
        str(folder),
        str(tmp_path / "out"),
        DiesOnce,
        lambda column: {"model": classifier, "text_column": column},
        address=None,
        actors=2,
        batch_tokens=300,
        tokenizer=load_tokenizer(classifier),
        text_column=None,
        progress=False,
    )
    got = read_shards(tmp_path / "out")
    assert marker.exists()  # a replica did die
    assert result.rows == ROWS and got["id"].tolist() == list(range(ROWS))
    assert (
        got["text"].tolist()
        == pd.concat([pd.read_csv(f) for f in sorted(csv_folder.glob("*.csv"))])["review"].tolist()
    )


@pytest.mark.slow
def test_embed_on_ray_matches_the_single_process_features(cluster, tiny_models, shards, tmp_path):
    folder, whole = shards
    local = tmp_path / "local.parquet"
    common = dict(model=str(tiny_models["bert"]), label_column="sentiment", progress=False)
    warmstart.embed(data=str(whole), out=str(local), **common)
    result = warmstart.embed(
        data=str(folder), out=str(tmp_path / "ray"), engine="ray", actors=2, **common
    )
    expected, got = pd.read_parquet(local), read_shards(tmp_path / "ray")
    assert result.rows == ROWS
    assert got["id"].tolist() == expected["id"].tolist() == list(range(ROWS))
    assert got["sentiment"].tolist() == expected["sentiment"].tolist()
    # fp32 PyTorch batches by length: a row's padding differs between the two, not its values
    np.testing.assert_allclose(
        np.stack(got["embedding"]), np.stack(expected["embedding"]), rtol=0, atol=1e-5
    )


def test_bad_input_and_other_models_fail_in_one_line_before_any_actor(
    cluster, classifier, tiny_models, shards, tmp_path
):
    folder, _ = shards
    with pytest.raises(UserError, match="shards.*has no column 'body'"):
        warmstart.predict(
            model=classifier,
            input=str(folder),
            out=str(tmp_path / "o"),
            engine="ray",
            text_column="body",
            progress=False,
        )
    with pytest.raises(UserError, match="--engine ray runs sequence classifiers"):
        warmstart.predict(
            model=str(tiny_models["bert"]), input=str(folder), out=str(tmp_path / "o"), engine="ray"
        )
    with pytest.raises(UserError, match="--actors does not apply to --engine local"):
        warmstart.predict(model=classifier, texts=["good"], actors=2)
    with pytest.raises(UserError, match="pass --input"):
        warmstart.predict(model=classifier, texts=["good"], out=str(tmp_path / "o"), engine="ray")
