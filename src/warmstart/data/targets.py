"""What a sequence classifier learns to predict, read from the label column: one class per text
(single-label), a set of classes per text (multi-label: JSON lists, or values joined by a separator)
or numbers (regression: one column, or several named together). The problem type is detected from
the values when not given, and said so.

The names follow transformers' ``config.problem_type`` (single_label_classification,
multi_label_classification, regression), so a saved model computes the same loss and outputs in
plain transformers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from warmstart.data.tables import Examples
from warmstart.errors import UserError, where

PROBLEMS = ("single-label", "multi-label", "regression")
HF_PROBLEM = {
    "single-label": "single_label_classification",
    "multi-label": "multi_label_classification",
    "regression": "regression",
}
# A column of numbers with fewer distinct values than this, all integers, is read as classes (0/1,
# 1..5 stars).
MAX_INTEGER_CLASSES = 20


def problem_of(config: object) -> str:
    """The problem type of a saved model (transformers' name mapped back to ours; classes by
    default)."""
    saved = getattr(config, "problem_type", None)
    return next((ours for ours, theirs in HF_PROBLEM.items() if theirs == saved), "single-label")


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def detect_problem(ex: Examples, separator: str | None) -> tuple[str, str]:
    """(problem, why) from the label values of the training rows."""
    labels = ex.labels or []
    if ex.label_names is not None:
        return "single-label", f"label column '{ex.label_column}' is a ClassLabel"
    if ex.targets is not None:
        if ex.targets.shape[1] == 1:  # a dataset's float column (data.tables.typed)
            return "regression", f"label column '{ex.label_column}' holds floats"
        return "regression", f"{ex.targets.shape[1]} numeric label columns"
    if any(v.startswith("[") for v in labels):
        return "multi-label", "labels are lists"
    if separator and any(separator in v for v in labels):
        return "multi-label", f"labels are joined by '{separator}'"
    numbers = [_number(v) for v in labels]
    if labels and all(x is not None for x in numbers):
        if any(not float(x).is_integer() for x in numbers):
            return "regression", "labels are numbers with fractions"
        if len(set(numbers)) > MAX_INTEGER_CLASSES:
            return "regression", f"labels are more than {MAX_INTEGER_CLASSES} distinct numbers"
    return "single-label", "one class per row"


def label_sets(ex: Examples, separator: str | None) -> list[list[str]]:
    """Each row's labels: a JSON list (of strings or numbers) or ``separator``-joined values; never
    empty."""
    out = []
    for j, raw in enumerate(ex.labels or []):
        if raw.startswith("["):
            try:
                items = json.loads(raw)
            except json.JSONDecodeError:
                raise UserError(
                    f"{where(ex.source, ex.rows[j], ex.label_column)}: '{raw[:40]}' is not a valid "
                    "JSON list of labels"
                ) from None
            if not isinstance(items, list) or any(
                isinstance(i, (list, dict)) or i is None for i in items
            ):
                raise UserError(
                    f"{where(ex.source, ex.rows[j], ex.label_column)}: a label list holds plain"
                    " values"
                )
            values = [str(i).strip() for i in items]
        else:
            values = [v.strip() for v in raw.split(separator)] if separator else [raw.strip()]
        values = [v for v in values if v]
        if not values:
            raise UserError(
                f"{where(ex.source, ex.rows[j], ex.label_column)}: the label list is empty (a text "
                "with no label: give it an explicit 'none' class, or drop the row)"
            )
        out.append(sorted(set(values)))
    return out


def numeric_targets(ex: Examples) -> np.ndarray:
    """(rows, targets) float32: the several label columns of ``ex.targets``, else its one label
    column."""
    if ex.targets is not None:
        return np.asarray(ex.targets, dtype=np.float32)
    out = np.empty((len(ex), 1), dtype=np.float32)
    for j, raw in enumerate(ex.labels or []):
        x = _number(raw)
        if x is None:
            raise UserError(
                f"{where(ex.source, ex.rows[j], ex.label_column)}: regression needs a number, got "
                f"'{raw[:40]}'"
            )
        out[j, 0] = x
    return out


@dataclass
class LabelSet:
    """Multi-label: label ids 0..K-1 ↔ names; a row's targets are a multi-hot vector."""

    names: list[str]

    @classmethod
    def from_sets(cls, sets: list[list[str]], source: str) -> LabelSet:
        names = sorted({v for s in sets for v in s})
        if len(names) < 2:
            raise UserError(
                f"{where(source)}: multi-label classification needs at least two labels in the "
                "training data"
            )
        return cls(names)

    def encode(self, sets: list[list[str]], ex: Examples) -> np.ndarray:
        index = {n: i for i, n in enumerate(self.names)}
        y = np.zeros((len(sets), len(self.names)), dtype=np.float32)
        for j, s in enumerate(sets):
            for v in s:
                if v not in index:
                    raise UserError(
                        f"{where(ex.source, ex.rows[j], ex.label_column)}: unknown label '{v}' "
                        f"(known: {', '.join(self.names)})"
                    )
                y[j, index[v]] = 1.0
        return y


def class_weights(spec: str, names: list[str], y: np.ndarray) -> np.ndarray | None:
    """--class-weights: None for none; balanced: n_rows / (n_classes * n_class), sklearn's rule;
    LABEL=W,...: those weights, 1 for unlisted labels."""
    if spec == "none":
        return None
    if spec == "balanced":
        counts = np.bincount(y, minlength=len(names)).astype(np.float64)
        return (len(y) / (len(names) * np.maximum(counts, 1))).astype(np.float32)
    weights = np.ones(len(names), dtype=np.float32)
    for item in spec.split(","):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name:
            raise UserError(
                f"--class-weights '{spec}': expected none, balanced or LABEL=WEIGHT,... (got"
                f" '{item}')"
            )
        if name not in names:
            raise UserError(f"--class-weights: unknown label '{name}' (known: {', '.join(names)})")
        w = _number(value.strip())
        if w is None or w <= 0:
            raise UserError(
                f"--class-weights: the weight of '{name}' must be a positive number, got '{value}'"
            )
        weights[names.index(name)] = w
    return weights


def oversampled(y: np.ndarray, seed: int) -> np.ndarray:
    """Row indices where every class has as many rows as the largest: all rows of a class, then
    seeded draws (without replacement while they last) of its rows until it is as large. The
    length-grouped sampler then shuffles them into batches like any training set."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    target = counts.max()
    out = []
    for c in np.flatnonzero(counts):
        rows = np.flatnonzero(y == c)
        extra = target - len(rows)
        draws = [rng.permutation(rows) for _ in range(-(-extra // len(rows)))] if extra else []
        out.append(np.concatenate([rows, *draws])[:target])
    return np.sort(np.concatenate(out))
