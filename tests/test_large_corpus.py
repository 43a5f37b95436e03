"""A corpus far larger than the bounded memory of `pretrain`: the training documents are streamed
into a token file on disk and trained on through memory-mapped blocks, so peak RSS (measured on a
child process, with getrusage) stays under a fixed bound; and a second run with the same corpus and
tokenizer reuses the token cache instead of tokenising again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MB = 1 << 20
MEASURE = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "RC", rc)
"""


def write_corpus(path: Path, size: int, imdb: Path) -> int:
    """About ``size`` bytes of one-review-per-line text, built from real review words (a 4 MB piece,
    shuffled anew for each repeat so lines differ)."""
    import pandas as pd

    words = np.array(
        " ".join(pd.read_csv(imdb, nrows=2000)["review"]).replace("<br />", " ").split()
    )
    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        written = 0
        while written < size:
            picks = words[rng.integers(0, len(words), 4 * MB // 6)]
            lines = [" ".join(picks[i : i + 80]) for i in range(0, len(picks), 80)]
            text = "\n".join(lines) + "\n"
            f.write(text)
            written += len(text.encode())
    return path.stat().st_size


def pretrain_rss(args: list[str], env: dict) -> tuple[int, str]:
    """Peak resident memory (bytes) of `warmstart pretrain ARGS` run as a child, and its stderr."""
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "warmstart", "pretrain", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    line = [x for x in out.stdout.splitlines() if x.startswith("MAXRSS_KB")][-1].split()
    assert line[3] == "0", out.stderr[-3000:]
    return int(line[1]) * 1024, out.stderr


def check_bounded(tmp_path: Path, tiny_models, imdb: Path, corpus_mb: int, bound_mb: int) -> dict:
    corpus = tmp_path / "corpus.txt"
    size = write_corpus(corpus, corpus_mb * MB, imdb)
    valid = tmp_path / "valid.txt"
    with corpus.open() as f:
        valid.write_text("".join(f.readline() for _ in range(20)))
    env = {
        **os.environ,
        "WARMSTART_TOKEN_CACHE": str(tmp_path / "cache"),
        "TOKENIZERS_PARALLELISM": "true",
        "HF_HUB_OFFLINE": "1",
    }
    args = [
        "--data",
        str(corpus),
        "--valid",
        str(valid),
        "--objective",
        "mlm",
        "--model",
        str(tiny_models["bert"]),
        "--block-size",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "2",
        "--no-progress",
        "--cpu",
    ]
    rss, log = pretrain_rss([*args, "--out", str(tmp_path / "first")], env)
    assert "tokenised:" in log
    tokens = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())["tokens"]
    assert tokens * 4 > 0.2 * size  # the token file really holds the corpus
    assert rss < bound_mb * MB, (
        f"peak RSS {rss / MB:.0f} MB over {bound_mb} MB for a {size / MB:.0f} MB corpus"
    )
    again_rss, again = pretrain_rss([*args, "--out", str(tmp_path / "second")], env)
    assert "tokens from the cache" in again and "tokenised:" not in again
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())
    assert (
        first["sequences"] == second["sequences"] == tokens // 62
    )  # 62 tokens + [CLS] + [SEP] per block
    report = {
        "corpus_mb": round(size / MB),
        "tokens": tokens,
        "peak_rss_mb": round(rss / MB),
        "cached_run_peak_rss_mb": round(again_rss / MB),
    }
    print(report)
    return report


def test_pretrain_memory_stays_bounded_on_an_8mb_corpus_and_reuses_its_token_cache(
    tmp_path, tiny_models, imdb
):
    check_bounded(tmp_path, tiny_models, imdb, corpus_mb=8, bound_mb=1024)


@pytest.mark.slow
def test_pretrain_memory_stays_under_2gb_on_a_400mb_corpus(tmp_path, tiny_models, imdb):
    check_bounded(tmp_path, tiny_models, imdb, corpus_mb=400, bound_mb=2048)
