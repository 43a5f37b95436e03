"""Honest multi-label and regression sets derived from real data in ../shared/data (no ready-made
ones there):

- multi-label: WNUT-16 tweets, labelled with the entity types that occur in each (JSON lists; a tweet without
  entities gets ["none"], since a row must carry at least one label);
- regression: CMUdict words, with their number of syllables counted from the stress digits of their phonemes.

Used by the tests and benchmarks/problems.py."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def wnut_entity_types(limit: int | None = None) -> pd.DataFrame:
    """text, labels (a JSON list of the entity types in the tweet) per WNUT-16 training tweet, in
    file order."""
    rows, words, types = [], [], set()
    for line in (SHARED / "wnut16" / "train.conll").read_text(encoding="utf-8").splitlines() + [""]:
        if not line.strip():
            if words:
                rows.append(
                    {"text": " ".join(words), "labels": json.dumps(sorted(types) or ["none"])}
                )
            words, types = [], set()
            if limit and len(rows) >= limit:
                break
            continue
        word, _, tag = line.rpartition("\t")
        words.append(word)
        if tag[:2] in ("B-", "I-"):
            types.add(tag[2:])
    return pd.DataFrame(rows)


def cmudict_syllables(limit: int | None = None) -> pd.DataFrame:
    """word, syllables (phonemes with a stress digit) per CMUdict entry, first pronunciation
    only."""
    rows = []
    for line in (SHARED / "cmudict" / "cmudict.dict").read_text(encoding="utf-8").splitlines():
        word, _, phones = line.partition(" ")
        if "(" in word or not word.isalpha():  # alternative pronunciations, abbreviations
            continue
        rows.append({"text": word, "syllables": sum(p[-1].isdigit() for p in phones.split())})
        if limit and len(rows) >= limit:
            break
    return pd.DataFrame(rows)
