"""`warmstart zeroshot`: classify texts into labels no model was trained on (nli, similarity or
prompt).

With a label column in --data it evaluates (accuracy, per-class F1, confusion matrix); without one,
or with texts given directly, it predicts."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmstart.config import ZeroshotConfig, make, refuse_inapplicable, settle, to_dict
from warmstart.data.output import format_records
from warmstart.data.tables import (
    LABEL_COLUMNS,
    examples_from_table,
    find_column,
    label_value,
    read_table,
)
from warmstart.errors import UserError, where
from warmstart.files import atomic_write_json, atomic_write_text
from warmstart.lowshot.zeroshot import check_labels, load_method, parse_descriptions
from warmstart.metrics import classification_metrics, format_table
from warmstart.models.download import pin


@dataclass
class ZeroshotResult:
    texts: list[str]
    labels: list[str]
    probabilities: np.ndarray
    multi_label: bool
    metrics: dict | None
    texts_per_s: float

    @property
    def predictions(self) -> list[str] | list[list[str]]:
        if self.multi_label:
            return [
                [lab for lab, p in zip(self.labels, row) if p >= 0.5] for row in self.probabilities
            ]
        return [self.labels[int(i)] for i in self.probabilities.argmax(1)]

    @property
    def accuracy(self) -> float | None:
        return None if self.metrics is None else self.metrics["accuracy"]


def gold_ids(values: list[str], labels: list[str], source: str, column: str) -> np.ndarray:
    """Label ids of raw values: integers 0..K-1 in --labels order, else the label names (any
    case)."""
    ints = all(v.lstrip("-").isdigit() for v in values)
    lookup = {lab.lower(): i for i, lab in enumerate(labels)}
    ids = np.empty(len(values), dtype=np.int64)
    for row, v in enumerate(values):
        i = int(v) if ints else lookup.get(v.lower(), -1)
        if not 0 <= i < len(labels):
            known = f"0..{len(labels) - 1}" if ints else ", ".join(labels)
            raise UserError(
                f"{where(source, row + 1, column)}: label '{v}' is not one of the labels ({known})"
            )
        ids[row] = i
    return ids


# The options that only some methods read: any other method refuses them rather than silently
# ignoring them.
METHOD_OPTIONS = {
    "descriptions": ("similarity",),
    "multi_label": ("nli", "similarity"),
    "calibrate": ("prompt",),
    "chat": ("prompt",),
    "answer_prefix": ("prompt",),
    "truncate": ("prompt",),
}


def zeroshot(config: ZeroshotConfig | None = None, **kwargs) -> ZeroshotResult:
    """Classify texts into ``config.labels`` with no training example: NLI, embedding similarity or
    prompt scoring with a causal LM."""
    cfg = make(ZeroshotConfig, config, kwargs)
    refuse_inapplicable(
        cfg,
        tuple(n for n, methods in METHOD_OPTIONS.items() if cfg.method not in methods),
        f"--method {cfg.method}",
    )
    labels = check_labels(cfg.labels.split(",")) if cfg.labels.strip() else check_labels([])
    if len(labels) < 2 and not cfg.multi_label:
        raise UserError(
            "--labels needs at least two labels (or --multi-label for yes/no per label)"
        )
    descriptions = parse_descriptions(cfg.descriptions, labels)
    y, column = None, None
    if cfg.texts and cfg.data:
        raise UserError("give texts as arguments or with --data, not both")
    if cfg.data:
        df = read_table(cfg.data, cfg.limit)
        texts = examples_from_table(df, cfg.data, cfg.text_column, labelled=False).texts
        column = find_column(
            df, cfg.data, cfg.label_column, LABEL_COLUMNS, "label", "--label-column", required=False
        )
        if column is not None:
            raw = [label_value(v) for v in df[column].tolist()]
            if None in raw:
                raise UserError(f"{where(cfg.data, raw.index(None) + 1, column)}: label is missing")
            if cfg.multi_label:
                raise UserError(
                    "evaluation with --multi-label is not supported; drop the label column to"
                    " predict"
                )
            y = gold_ids(raw, labels, cfg.data, column)
    else:
        texts = [t for t in cfg.texts]
        if not texts:
            raise UserError("no texts: pass them as arguments or with --data FILE")
        for i, t in enumerate(texts):
            if not t.strip():
                raise UserError(f"text {i + 1} of the arguments is empty")
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    method = load_method(
        cfg.method,
        cfg.model,
        template=cfg.template,
        cpu=cfg.cpu,
        max_length=cfg.max_length,
        descriptions=descriptions,
        calibrate=cfg.calibrate,
        chat=cfg.chat,
        answer_prefix=cfg.answer_prefix,
        truncate=cfg.truncate,
        hub=cfg,
    )
    t0 = time.perf_counter()
    probs = method.scores(texts, labels, cfg.multi_label, cfg.batch_size, cfg.progress)
    speed = round(len(texts) / max(time.perf_counter() - t0, 1e-9), 2)
    metrics = None
    if y is not None:
        metrics = classification_metrics(y, probs.argmax(1), labels)
        metrics.update(
            method=cfg.method,
            model=cfg.model or "default",
            data=str(Path(cfg.data).resolve()),
            label_column=column,
            texts_per_s=speed,
            config=to_dict(cfg),
        )  # repeatable from the file
    result = ZeroshotResult(texts, labels, probs, cfg.multi_label, metrics, speed)
    if cfg.out:
        out = Path(cfg.out)
        if metrics is not None:
            atomic_write_json(out, metrics)
        else:
            atomic_write_text(
                out, format_predictions(result, "csv" if out.suffix == ".csv" else "jsonl")
            )
    return result


def format_predictions(r: ZeroshotResult, fmt: str) -> str:
    return format_records(
        [
            {
                "text": t,
                "label": p,
                "probabilities": {lab: float(v) for lab, v in zip(r.labels, row)},
            }
            for t, p, row in zip(r.texts, r.predictions, r.probabilities)
        ],
        fmt,
    )


def report(cfg: ZeroshotConfig, r: ZeroshotResult) -> str:
    if r.metrics is not None:
        return (
            format_table(r.metrics)
            + f"\n{cfg.method}: accuracy {r.accuracy:.4f}, {r.texts_per_s} texts/s\n"
        )
    return "" if cfg.out else format_predictions(r, "jsonl")
