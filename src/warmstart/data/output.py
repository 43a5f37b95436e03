"""Predictions written out: JSON Lines (one object per text), CSV (a column per class probability,
or a row per tagged word) or CoNLL (a tagger's word and tag per line)."""

from __future__ import annotations

import csv
import io
import json


def format_records(records: list[dict], fmt: str) -> str:
    """``records`` as JSON Lines or CSV. Floats keep 6 decimals; in CSV a ``probabilities`` mapping
    becomes one ``p_<label>`` column per label and a list of labels (multi-label) is joined with
    ';'."""
    if fmt == "jsonl":
        return "".join(json.dumps(_rounded(r), ensure_ascii=False) + "\n" for r in records)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for i, r in enumerate(records):
        flat = {}
        for k, v in r.items():
            if isinstance(v, dict):
                # probabilities/scores: p_<label>; a regression's several values: one column per
                # target
                flat.update({(name if k == "values" else f"p_{name}"): p for name, p in v.items()})
            else:
                flat[k] = ";".join(v) if isinstance(v, list) else v
        if i == 0:
            w.writerow(list(flat))
        w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in flat.values()])
    return buf.getvalue()


def _rounded(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def format_tagged(records: list[dict], fmt: str) -> str:
    """A tagger's records (text, words with offsets/tag/score, entities) as JSON Lines (one object
    per text), CSV (one row per word: text index, word, start, end, tag, score) or CoNLL
    (word<TAB>tag, a blank line after each text)."""
    if fmt == "jsonl":
        return format_records(records, "jsonl")
    if fmt == "conll":
        return "".join(
            "".join(f"{w['word']}\t{w['tag']}\n" for w in r["words"]) + "\n" for r in records
        )
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["text_index", "word", "start", "end", "tag", "score"])
    for i, r in enumerate(records):
        for word in r["words"]:
            w.writerow(
                [i, word["word"], word["start"], word["end"], word["tag"], f"{word['score']:.6f}"]
            )
    return buf.getvalue()
