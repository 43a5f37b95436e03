"""`datasets` as input (data.hub): a save_to_disk folder and a Hub dataset id (through a loopback Hub
server) train the same model as the same rows from a file; ClassLabel and Sequence(ClassLabel)
names reach config.json; features carry their meaning (floats are regression, structs flatten);
a missing column is one line naming columns and splits; pretrain --streaming reads an
IterableDataset and gives the sequences a whole read gives, also when processes tokenise shards."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

import warmstart
from hub_server import HubServer, make_git_repo
from warmstart.cli import main
from warmstart.config import FinetuneConfig
from warmstart.data.corpus import DatasetCorpus, split_stream
from warmstart.data.hub import DatasetRef, dataset_parts
from warmstart.data.pairs import read_pairs
from warmstart.data.tables import load_splits, read_examples
from warmstart.data.tagged import read_sentences
from warmstart.data.targets import detect_problem
from warmstart.objectives import stream

datasets.disable_progress_bars()  # the tests' own save_to_disk calls
WNUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wnut16" / "train.conll"
SENTIMENT = ClassLabel(names=["negative", "positive"])
REVIEWS = Features({"review": Value("string"), "sentiment": SENTIMENT})
# Deterministic across processes: no measured precision or attention choice.
FIXED = dict(
    epochs=1,
    batch_size=16,
    max_length=64,
    lr=1e-3,
    precision="fp32",
    attn_implementation="eager",
    progress=False,
)


def flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += (
            [flag]
            if value is True
            else [f"--no-{flag[2:]}"]
            if value is False
            else [flag, str(value)]
        )
    return out


@pytest.fixture(scope="module")
def reviews(imdb) -> pd.DataFrame:
    """The first 160 IMDb reviews, cut to 50 words; sentiment 0/1."""
    df = pd.read_csv(imdb, nrows=160)
    df["review"] = df["review"].str.split().str[:50].str.join(" ")
    return df


@pytest.fixture(scope="module")
def saved_dict(reviews, tmp_path_factory) -> Path:
    """Rows 1-96, 97-128, 129-160 as a DatasetDict's train/validation/test, saved with
    save_to_disk."""
    folder = tmp_path_factory.mktemp("saved") / "imdb"
    parts = {"train": reviews[:96], "validation": reviews[96:128], "test": reviews[128:]}
    DatasetDict(
        {
            k: Dataset.from_pandas(v, features=REVIEWS, preserve_index=False)
            for k, v in parts.items()
        }
    ).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_dict_trains_the_same_model_as_the_same_rows_from_a_csv(
    saved_dict, reviews, tiny_models, tmp_path
):
    csv = tmp_path / "rows.csv"
    reviews.to_csv(csv, index=False)
    common = dict(model=str(tiny_models["bert"]), **FIXED)
    from_dataset = warmstart.finetune(data=str(saved_dict), out=str(tmp_path / "ds"), **common)
    from_csv = warmstart.finetune(
        data=str(csv),
        split="96,32,32",
        label_names="negative,positive",
        out=str(tmp_path / "csv"),
        **common,
    )
    assert from_dataset.metrics["test"] == from_csv.metrics["test"]
    assert [e["valid_loss"] for e in from_dataset.metrics["epochs"]] == [
        e["valid_loss"] for e in from_csv.metrics["epochs"]
    ]
    # The ClassLabel's names, as --label-names gives them to the CSV's 0/1.
    config = json.loads((from_dataset.model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config == json.loads((from_csv.model_dir / "config.json").read_text())
    # evaluate reads the dataset's test split: the figure the run's test part gave.
    ev = warmstart.evaluate(
        model=str(from_dataset.run_dir), data=str(saved_dict), backend="torch", precision="fp32"
    )
    assert (
        ev.metrics["n"] == 32 and ev.metrics["accuracy"] == from_dataset.metrics["test"]["accuracy"]
    )


def test_sequence_classlabel_tag_names_reach_config_json_even_unseen_ones(tiny_models, tmp_path):
    sents = read_sentences(WNUT, limit=60)
    types = sorted({t[2:] for tags in sents.tags for t in tags if t != "O"})
    # conll2003's layout: every type's B- and I- tag, and one type no sentence has.
    names = ["O", *(f"{p}-{t}" for t in [*types, "unseen"] for p in "BI")]
    ids = {n: i for i, n in enumerate(names)}
    features = Features(
        {"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names))}
    )
    rows = {"tokens": sents.tokens, "ner_tags": [[ids[t] for t in tags] for tags in sents.tags]}
    folder = tmp_path / "wnut"
    DatasetDict(
        {
            "train": Dataset.from_dict({k: v[:40] for k, v in rows.items()}, features=features),
            "validation": Dataset.from_dict(
                {k: v[40:] for k, v in rows.items()}, features=features
            ),
        }
    ).save_to_disk(str(folder))
    r = warmstart.finetune(
        task="tokens",
        data=str(folder),
        model=str(tiny_models["bert"]),
        out=str(tmp_path / "ner"),
        **{**FIXED, "lr": 1e-3},
    )
    id2label = json.loads((r.model_dir / "config.json").read_text())["id2label"]
    assert set(id2label.values()) == set(names) and id2label["0"] == "O"
    # The tags read are the names (errors and metrics speak of them), row numbers per split.
    train = dataset_parts(DatasetRef(str(folder)), None)["train"]
    read = read_sentences(train)
    assert (
        read.tags[:3] == sents.tags[:3]
        and read.where(2) == f"dataset '{folder}' split 'train', row 3"
    )


def test_features_carry_their_meaning_floats_pairs_structs_label_lists(tmp_path):
    texts = ["a fine film", "a dull film", "great fun", "boring", "so-so", "loved it"]
    folder = tmp_path / "mixed"
    Dataset.from_dict(
        {
            "sentence1": texts,
            "sentence2": texts[::-1],
            # integers as floats: a CSV's "1.0, 2.0" would read as classes; the feature says numbers
            "score": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
            "translation": [{"en": t, "fr": t.upper()} for t in texts],
            "topics": [[0, 1], [1], [0], [2], [1, 2], [0]],
        },
        features=Features(
            {
                "sentence1": Value("string"),
                "sentence2": Value("string"),
                "score": Value("float32"),
                "translation": {"en": Value("string"), "fr": Value("string")},
                "topics": List(ClassLabel(names=["plot", "acting", "music"])),
            }
        ),
    ).save_to_disk(str(folder))
    cfg = FinetuneConfig(
        data=str(folder), split="4,1,1", text_pair_column="sentence2", label_column="score"
    )
    parts = load_splits(cfg)  # a lone Dataset is cut by --split as a file is
    assert [len(p) for p in parts.values()] == [4, 1, 1]
    train = parts["train"]
    assert train.pairs == texts[::-1][:4] and train.targets[:, 0].tolist() == [1.0, 2.0, 3.0, 1.0]
    assert detect_problem(train, None) == ("regression", "label column 'score' holds floats")
    split = dataset_parts(DatasetRef(str(folder)), None)["train"]
    topics = read_examples(split, "sentence1", label_column="topics")
    assert topics.labels[0] == '["plot", "acting"]'
    assert detect_problem(topics, None)[0] == "multi-label"
    pairs = read_pairs(split, "translation.en", "translation.fr")
    assert pairs.sources == texts and pairs.targets == [t.upper() for t in texts]


@pytest.mark.parametrize("case", ["missing_column", "empty_text", "file_options"])
def test_a_bad_dataset_is_one_line_naming_split_row_and_column(case, saved_dict, tmp_path, capsys):
    folder = tmp_path / "bad"
    Dataset.from_dict({"text": ["fine", "good", "  "], "label": [0, 1, 0]}).save_to_disk(
        str(folder)
    )
    csv = tmp_path / "a.csv"
    csv.write_text("text,label\nfine,1\nbad,0\n", encoding="utf-8")
    argv, expected = {
        "missing_column": (
            ["--data", str(saved_dict), "--text-column", "body"],
            f"error: dataset '{saved_dict}' split 'train' has no column 'body' (columns: 'review',"
            " 'sentiment'; splits: train, validation, test)",
        ),
        "empty_text": (
            ["--data", str(folder), "--split", "1,1,1"],
            f"error: dataset '{folder}', row 3, column 'text': text is empty",
        ),
        "file_options": (
            ["--data", str(csv), "--data-config", "sst2"],
            "error: --data-config only applies to a dataset (a Hub id or a save_to_disk folder);"
            f" '{csv}' is a file",
        ),
    }[case]
    capsys.readouterr()
    assert main(["finetune", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == expected + "\n", err
    assert not (tmp_path / "run").exists()


def test_streamed_pretraining_reads_an_iterable_dataset_and_makes_the_same_sequences(
    reviews, tiny_gpt2, tmp_path, monkeypatch
):
    folder = tmp_path / "corpus"
    Dataset.from_pandas(reviews[["review"]], preserve_index=False).save_to_disk(str(folder))
    csv = tmp_path / "corpus.csv"
    reviews[["review"]].to_csv(csv, index=False)
    corpus = DatasetCorpus.open(DatasetRef(str(folder), streaming=True), None, None)
    assert isinstance(corpus.train, datasets.IterableDataset)  # rows in batches, never whole
    runs = {}
    for name, data, streaming in (
        ("csv", csv, False),
        ("whole", folder, False),
        ("streamed", folder, True),
    ):
        # each its own token cache: every run tokenises its corpus itself
        monkeypatch.setenv("WARMSTART_TOKEN_CACHE", str(tmp_path / f"tokens-{name}"))
        r = warmstart.pretrain(
            data=str(data),
            streaming=streaming,
            model=str(tiny_gpt2),
            objective="clm",
            block_size=64,
            max_steps=1,
            batch_size=8,
            valid_fraction=0.1,
            precision="fp32",
            attn_implementation="eager",
            out=str(tmp_path / name),
            progress=False,
        )
        runs[name] = r.metrics
    assert runs["streamed"]["sequences"] == runs["whole"]["sequences"] == runs["csv"]["sequences"]
    assert (
        runs["streamed"]["documents"] == runs["whole"]["documents"] == {"train": 144, "valid": 16}
    )
    assert runs["streamed"]["valid_before"] == runs["csv"]["valid_before"]


def test_shards_of_a_streamed_dataset_merge_into_the_token_file_one_process_writes(
    reviews, tiny_gpt2, tmp_path, monkeypatch
):
    from transformers import AutoTokenizer

    monkeypatch.setenv("WARMSTART_TOKEN_CACHE", str(tmp_path / "tokens"))
    folder = tmp_path / "corpus"
    texts = reviews["review"].tolist()[:45]
    texts[7] = " "  # a blank row: no document, but a row that keeps its place
    Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    split = split_stream(DatasetRef(str(folder), streaming=True), None, None, None, 0.2, 3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    one = stream.write_tokens(tokenizer, split.train(), 0, "one")
    for world in (2, 3):
        for rank in range(world):  # what each process of `accelerate launch` writes
            stream.write_part(tokenizer, split.shard(rank, world), 0, f"w{world}", rank, world)
        merged = stream.merge_parts(f"w{world}", world, 0, rows_per_step=4)
        assert np.array_equal(merged.ids, one.ids) and merged.documents == one.documents == 35
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == sorted(
        f"{k}.{e}" for k in ("one", "w2", "w3") for e in ("i32", "json")
    )


HUB_README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train.parquet
  - split: test
    path: data/test.parquet
---
# reviews
"""

EVALUATE = ["--backend", "torch", "--precision", "fp32", "--no-progress"]
HUB_DRIVER = """
import contextlib, io, json, sys
from warmstart.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append({"code": code, "err": err.getvalue()})
print(json.dumps(results))
"""


def parquet(df: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    Dataset.from_pandas(df, features=REVIEWS, preserve_index=False).to_parquet(out)
    return out.getvalue()


def drive(argvs: list[list[str]], env: dict) -> list[dict]:
    """Run the CLI on each argv in one fresh process (datasets and huggingface_hub read the endpoint
    and offline mode at import), with ``env``; each call's exit code and standard error."""
    done = subprocess.run(
        [sys.executable, "-c", HUB_DRIVER, json.dumps(argvs)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_hub_dataset_id_trains_the_same_model_as_the_same_rows_from_a_file_then_works_offline(
    reviews, tiny_models, tmp_path
):
    train, test = reviews[:96], reviews[128:]
    repo = tmp_path / "hub" / "datasets" / "test-org" / "reviews"
    make_git_repo(
        repo,
        {
            "README.md": HUB_README,
            "data/train.parquet": parquet(train),
            "data/test.parquet": parquet(test),
        },
        tags=["v1"],
    )
    # main moves on: --data-revision v1 must read v1's rows, not the newest
    make_git_repo(repo, {"data/train.parquet": parquet(reviews[:64])})
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    options = flags({"model": str(tiny_models["bert"]), **FIXED})
    hub_run = tmp_path / "hub-run"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    with HubServer(tmp_path / "hub") as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        trained, newest, bad_revision, missing = drive(
            [
                [
                    "finetune",
                    "--data",
                    "test-org/reviews",
                    "--data-revision",
                    "v1",
                    "--out",
                    str(hub_run),
                    *options,
                ],
                # main (the default revision): its test split, the same rows as v1's
                [
                    "evaluate",
                    str(hub_run),
                    "--data",
                    "test-org/reviews",
                    *EVALUATE,
                    "--out",
                    str(tmp_path / "main.json"),
                ],
                ["finetune", "--data", "test-org/reviews", "--data-revision", "v9", *options],
                ["finetune", "--data", "test-org/none", *options],
            ],
            env,
        )
    assert trained["code"] == 0, trained["err"][-2000:]
    assert bad_revision == {
        "code": 2,
        "err": "error: dataset 'test-org/reviews' has no revision 'v9' (a branch, tag or commit)\n",
    }
    assert missing["code"] == 2 and missing["err"] == (
        "error: dataset 'test-org/none' not found: no such file or folder here, and no dataset"
        f" 'test-org/none' on the Hub ({hub.endpoint}) that you can read (a private or gated one"
        " needs `hf auth login` or HF_TOKEN)\n"
    )
    from_file = warmstart.finetune(
        data=str(tmp_path / "train.csv"),
        test=str(tmp_path / "test.csv"),
        label_names="negative,positive",
        model=str(tiny_models["bert"]),
        out=str(tmp_path / "file-run"),
        **FIXED,
    )
    metrics = json.loads((hub_run / "metrics.json").read_text())
    assert metrics["rows"] == {"train": 96, "test": 32}  # v1's, not main's 64 training rows
    assert metrics["test"] == from_file.metrics["test"] and metrics["test"]["n"] == 32
    assert newest["code"] == 0, newest["err"][-2000:]
    assert (
        json.loads((tmp_path / "main.json").read_text())["accuracy"] == metrics["test"]["accuracy"]
    )
    config = json.loads((hub_run / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    # Offline (the server is gone): the cached copy is read; a dataset never fetched is one line.
    env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    cached, uncached = drive(
        [
            [
                "evaluate",
                str(hub_run),
                "--data",
                "test-org/reviews",
                "--data-revision",
                "v1",
                *EVALUATE,
                "--out",
                str(tmp_path / "eval.json"),
            ],
            ["finetune", "--data", "test-org/other", *options],
        ],
        env,
    )
    assert cached["code"] == 0, cached["err"][-2000:]
    assert (
        json.loads((tmp_path / "eval.json").read_text())["accuracy"] == metrics["test"]["accuracy"]
    )
    assert uncached == {
        "code": 2,
        "err": "error: no file or folder 'test-org/other' here, and dataset 'test-org/other' is"
        " not in the local cache: HF_HUB_OFFLINE=1 keeps warmstart off the network; load it once"
        " where there is a network (HF_HUB_OFFLINE unset), or give a file or a save_to_disk"
        " folder\n",
    }
