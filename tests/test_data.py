"""Reading tables, picking columns, mapping labels and splitting, on the real IMDb and SST-2
files."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from conftest import SST2
from warmstart.config import FinetuneConfig
from warmstart.data import LabelMap, load_splits, read_examples, split_examples, split_sizes


@pytest.fixture()
def small(tmp_path, imdb):
    return pd.read_csv(imdb, nrows=20)


def test_every_format_gives_the_same_examples(tmp_path, small):
    paths = {
        "csv": tmp_path / "a.csv",
        "tsv": tmp_path / "a.tsv",
        "jsonl": tmp_path / "a.jsonl",
        "parquet": tmp_path / "a.parquet",
        "csv.gz": tmp_path / "a.csv.gz",
        "jsonl.gz": tmp_path / "a.jsonl.gz",
    }
    small.to_csv(paths["csv"], index=False)
    small.to_csv(paths["tsv"], sep="\t", index=False)
    small.to_json(paths["jsonl"], orient="records", lines=True)
    small.to_parquet(paths["parquet"])
    paths["csv.gz"].write_bytes(gzip.compress(paths["csv"].read_bytes()))
    paths["jsonl.gz"].write_bytes(gzip.compress(paths["jsonl"].read_bytes()))
    want = read_examples(str(paths["csv"]))
    assert want.texts == small["review"].tolist()
    assert want.labels == [str(v) for v in small["sentiment"]]
    for path in paths.values():
        got = read_examples(str(path))
        assert got.texts == want.texts and got.labels == want.labels, path


def test_columns_are_detected_from_common_names_including_sst2_header():
    ex = read_examples(str(SST2), limit=5)
    assert ex.label_column == "label" and ex.texts[0].startswith("hide new secretions")
    assert ex.labels == ["0", "0", "1", "0", "0"]


def test_explicit_text_pair_and_label_columns_are_read(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame(
        {"premise": ["a cat", "a dog"], "hypo": ["an animal", "a car"], "y": ["yes", "no"]}
    ).to_csv(path, index=False)
    ex = read_examples(str(path), text_column="premise", text_pair_column="hypo", label_column="y")
    assert ex.pairs == ["an animal", "a car"] and ex.labels == ["yes", "no"]


def test_string_labels_map_in_sorted_order_and_integer_labels_keep_their_ids(tmp_path, small):
    ex = read_examples(str(SST2), limit=50)
    lm = LabelMap.from_examples(ex)
    assert lm.names == ["0", "1"]
    assert (lm.encode(ex) == np.array([int(v) for v in ex.labels])).all()
    path = tmp_path / "s.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos", "neg", "neutral"]}).to_csv(
        path, index=False
    )
    lm = LabelMap.from_examples(read_examples(str(path)))
    assert lm.names == ["neg", "neutral", "pos"]
    named = LabelMap.from_examples(ex, ["negative", "positive"])
    assert named.names == ["negative", "positive"] and named.values == ["0", "1"]
    # a file labelled with names or with the raw values maps onto the same ids
    assert (named.encode(ex) == lm_ids(ex)).all()


def lm_ids(ex):
    return np.array([int(v) for v in ex.labels])


def test_split_by_counts_keeps_row_positions(imdb):
    cfg = FinetuneConfig(
        data=str(imdb),
        split="35000,5000,10000",
        max_train_samples=10,
        max_valid_samples=5,
        max_test_samples=7,
    )
    parts = load_splits(cfg)
    assert [len(parts[r]) for r in ("train", "valid", "test")] == [10, 5, 7]
    assert (
        parts["train"].rows[0] == 1
        and parts["valid"].rows[0] == 35001
        and parts["test"].rows[0] == 40001
    )
    full = pd.read_csv(imdb, skiprows=range(1, 40001), nrows=7)
    assert parts["test"].texts == full["review"].tolist()


def test_limit_caps_every_split_and_separate_files_fill_the_missing_parts(imdb, imdb_head):
    cfg = FinetuneConfig(data=str(imdb), split="35000,5000", test=str(imdb_head), limit=12)
    parts = load_splits(cfg)
    assert {r: len(p) for r, p in parts.items()} == {"train": 12, "valid": 12, "test": 12}
    assert parts["valid"].rows[0] == 35001 and parts["test"].source == str(imdb_head)


def test_fraction_split_with_shuffle_is_seeded(imdb_head):
    ex = read_examples(str(imdb_head))
    a = split_examples(ex, "0.7,0.1,0.2", shuffle=True, seed=1)
    b = split_examples(ex, "0.7,0.1,0.2", shuffle=True, seed=1)
    c = split_examples(ex, "0.7,0.1,0.2", shuffle=True, seed=2)
    assert [len(p) for p in a] == [420, 60, 120]
    assert a[0].rows == b[0].rows and a[0].rows != c[0].rows
    assert sorted(a[0].rows + a[1].rows + a[2].rows) == list(range(1, 601))


def test_split_sizes_turn_fractions_into_row_counts_and_keep_given_counts():
    assert split_sizes("0.5,0.5", 11, "f") == [6, 5]
    assert split_sizes("3,2", 10, "f") == [3, 2]


def test_texts_one_per_line_read_alike_from_files_and_stdin_for_predict_and_generate(
    tmp_path, monkeypatch
):
    """CRLF line ends are dropped and blank lines skipped wherever texts come one per line (a review
    found predict keeping them or failing on them while generate skipped them)."""
    import io

    from warmstart.data.prompts import read_prompts
    from warmstart.data.texts import read_texts

    raw = "A wonderful film.\r\n\r\n  \r\nTwo hours lost.\r\n"
    path = tmp_path / "in.txt"
    path.write_bytes(raw.encode("utf-8"))
    expected = ["A wonderful film.", "Two hours lost."]
    assert read_texts([], str(path)).texts == expected
    assert read_prompts([], str(path)) == expected
    for read in (lambda: read_texts([], None).texts, lambda: read_prompts([], None)):
        stdin = io.TextIOWrapper(
            io.BytesIO(raw.encode("utf-8")), encoding="utf-8", newline=""
        )  # keeps \r\n
        monkeypatch.setattr("sys.stdin", stdin)
        assert read() == expected


def test_warmstart_home_moves_every_cache_the_token_cache_included(tmp_path, monkeypatch):
    from warmstart.files import cache_dir
    from warmstart.models import precision
    from warmstart.objectives import stream

    monkeypatch.delenv("WARMSTART_TOKEN_CACHE", raising=False)
    monkeypatch.setenv("WARMSTART_HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home"
    assert stream.cache_dir() == tmp_path / "home" / "tokens"
    assert precision.cache_file().parent == tmp_path / "home"
    monkeypatch.setenv("WARMSTART_TOKEN_CACHE", str(tmp_path / "tokens"))
    assert stream.cache_dir() == tmp_path / "tokens"


def test_label_lists_read_the_same_from_jsonl_parquet_and_csv(tmp_path):
    from warmstart.data.targets import label_sets

    df = pd.DataFrame(
        {
            "text": ["a storm hit", "the match", "a vote"],
            "label": [["weather", "news"], ["sport"], ["news"]],
        }
    )
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "t.parquet")
    df.assign(label=df.label.map(lambda v: str(v).replace("'", '"'))).to_csv(
        tmp_path / "t.csv", index=False
    )
    sets = [
        label_sets(read_examples(str(tmp_path / f"t.{x}")), None)
        for x in ("jsonl", "parquet", "csv")
    ]
    assert sets[0] == sets[1] == sets[2] == [["news", "weather"], ["sport"], ["news"]]
