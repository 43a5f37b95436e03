"""Training curves, confusion matrix and reliability diagram as PNG (matplotlib, no display
needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from warmstart.files import atomic_file  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def training_curves(epochs: list[dict], path: Path, metric: str = "accuracy") -> None:
    """Loss and a second metric (accuracy; a regression's rmse...) per epoch, train vs valid."""
    x = [e["epoch"] for e in epochs]
    if not any(f"{split}_{metric}" in e for e in epochs for split in ("train", "valid")):
        metric = next(
            (
                k.removeprefix("valid_")
                for k in epochs[0]
                if k.startswith("valid_") and k != "valid_loss"
            ),
            metric,
        )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((ax1, "loss", "loss"), (ax2, metric, metric.replace("_", " "))):
        for split, style in (("train", "o-"), ("valid", "s--")):
            ys = [e.get(f"{split}_{key}") for e in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, ys, style, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_lines():
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
            ax.text(
                j,
                i,
                str(cm[i][j]),
                ha="center",
                va="center",
                color="white" if cm[i][j] > top / 2 else "black",
            )
    _save(fig, path)


def reliability_diagram(before: dict, after: dict, path: Path) -> None:
    """Accuracy against mean confidence per confidence bin, before and after temperature scaling,
    with the diagonal (perfect calibration) and each curve's ECE in the legend; below, how many
    predictions fall in each bin. ``before``/``after``: inference.calibration.reliability's dict
    plus the temperature."""
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    width = 1 / max(len(before["bins"]), 1)
    for k, (curve, style) in enumerate(((before, "o-"), (after, "s-"))):
        full = [b for b in curve["bins"] if b["count"]]
        top.plot(
            [b["confidence"] for b in full],
            [b["accuracy"] for b in full],
            style,
            label=f"T = {curve['temperature']:.2f}: ECE {curve['ece']:.4f}",
        )
        bottom.bar(
            [b["lower"] + width * (0.25 + 0.5 * k) for b in curve["bins"]],
            [b["count"] for b in curve["bins"]],
            width=width / 2,
            label=f"T = {curve['temperature']:.2f}",
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy")
    top.set_title("reliability (before and after temperature scaling)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("predictions")
    bottom.grid(alpha=0.3)
    _save(fig, path)
