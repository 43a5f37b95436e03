"""Classification metrics (scikit-learn) and their text table."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                    zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(mp),
        "recall_macro": float(mr),
        "f1_macro": float(mf),
        "n": int(len(y_true)),
        "per_class": {n: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, n in enumerate(names)},
        "labels": list(names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def format_table(m: dict) -> str:
    """Per-class precision/recall/F1, macro averages and the confusion matrix as plain text."""
    names = m["labels"]
    w = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for n in names:
        c = m["per_class"][n]
        lines.append(f"{n:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}")
    lines.append(f"{'macro avg':<{w}}{m['precision_macro']:>10.4f}{m['recall_macro']:>10.4f}{m['f1_macro']:>10.4f}"
                 f"{m['n']:>10}")
    lines.append(f"{'accuracy':<{w}}{'':>20}{m['accuracy']:>10.4f}{m['n']:>10}")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    cw = max(8, *(len(n) + 2 for n in names))
    lines.append(f"{'':<{w}}" + "".join(f"{n:>{cw}}" for n in names))
    for n, row in zip(names, m["confusion_matrix"]):
        lines.append(f"{n:<{w}}" + "".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)
