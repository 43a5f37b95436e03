"""Training curves and confusion matrix as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from warmstart.runs import atomic_file  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def training_curves(epochs: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train vs valid."""
    x = [e["epoch"] for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax1, "loss", "loss"), (ax2, "accuracy", "accuracy")):
        for split, style in (("train", "o-"), ("valid", "s--")):
            ys = [e.get(f"{split}_{key}") for e in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, ys, style, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def confusion_matrix(cm: list[list[int]], names: list[str], path: Path) -> None:
    n = len(names)
    fig, ax = plt.subplots(figsize=(2 + 0.8 * n, 1.6 + 0.8 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(r) for r in cm) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color="white" if cm[i][j] > top / 2 else "black")
    _save(fig, path)
