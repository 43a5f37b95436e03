"""The plots of docs/benchmarks.md, drawn from the figures in its tables (each measured by the
benchmark named beside it; see that page for command, machine and date).

    .venv/bin/python benchmarks/docs_plots.py [--out docs/assets]

The numbers are copied here rather than re-measured, so the plots redraw in a second and stay the
figures the page states; when a benchmark is rerun, update its row here and on the page together."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

# (what, warmstart / peer) from "Against the tools you know".
SPEEDUPS = [
    ("training, MiniLM on IMDb\nvs HF Trainer (group_by_length)", 3.71),
    ("inference (predict)\nvs HF pipeline", 4.39),
    ("serving, 16 clients\nvs FastAPI + pipeline", 5.20),
    ("tagging, training\nvs HF token-classification recipe", 2.29),
    ("tagging, inference\nvs pipeline (aggregation simple)", 8.40),
    ("text to text training, EN→ES\nvs Seq2SeqTrainer recipe", 2.66),
    ("text to text training, G2P\nvs Seq2SeqTrainer recipe", 2.32),
    ("generation, whole process\nvs HF pipeline", 3.06),
]

# configs/imdb-90.yaml's checkpoints scored on the 10,000 test reviews (benchmarks/imdb_curve.py):
# (minutes of training, accuracy %).
CURVE_HEAD_TAIL = [(5.8, 88.89), (11.3, 91.11), (17.0, 91.76), (20.4, 92.36)]
CURVE_FIRST_256 = [(7.5, 85.04), (14.7, 87.96), (22.5, 89.52), (30.2, 90.15)]

# benchmarks/inference_throughput.py --rounds 2: (setting, texts/s, accuracy %).
INFERENCE = [
    ("HF pipeline, batch 1", 20.6, 87.11),
    ("HF pipeline, batch 32", 9.8, 87.11),
    ("torch fp32", 23.0, 87.11),
    ("torch bf16", 55.1, 87.11),
    ("torch int8", 41.3, 86.72),
    ("onnx fp32", 51.2, 87.11),
    ("onnx int8", 88.3, 87.50),
    ("default (auto)", 90.3, 87.50),
]


def speedups(out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    labels = [s[0] for s in SPEEDUPS]
    ratios = [s[1] for s in SPEEDUPS]
    bars = ax.barh(labels, ratios, color="#3f51b5")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.bar_label(bars, labels=[f"{r:.2f}x" for r in ratios], padding=3, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlabel("warmstart's speed / the peer's (same model, data and machine; 1 = the peer)")
    ax.set_xlim(0, max(ratios) * 1.15)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("Speed-ups over the Hugging Face recipes (2 CPU cores, AMD EPYC Zen 4)")
    return _save(fig, out / "speedups.png")


def imdb_curve(out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for points, label in (
        (CURVE_HEAD_TAIL, "head+tail, 256 tokens (configs/imdb-90.yaml)"),
        (CURVE_FIRST_256, "first 256 tokens (before the faster dropout mask)"),
    ):
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.axhline(90.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("minutes of training (2 CPU cores, AMD EPYC Zen 4)")
    ax.set_ylabel("test accuracy, 10,000 IMDb reviews (%)")
    ax.set_title("Bundled MiniLM on IMDb: accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out / "imdb-curve.png")


def inference(out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    names = [r[0] for r in INFERENCE]
    speeds = [r[1] for r in INFERENCE]
    colors = ["#9e9e9e" if n.startswith("HF") else "#3f51b5" for n in names]
    bars = ax.barh(names, speeds, color=colors)
    ax.bar_label(
        bars, labels=[f"{s:g}  ({a:.1f}%)" for _, s, a in INFERENCE], padding=3, fontsize=8
    )
    ax.invert_yaxis()
    ax.set_xlim(0, max(speeds) * 1.3)
    ax.set_xlabel("texts/s (accuracy in brackets); 512 IMDb reviews at 512 tokens, 2 CPU cores")
    ax.set_title("Inference by backend: the make demo MiniLM")
    return _save(fig, out / "inference.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "assets")
    )
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for draw in (speedups, imdb_curve, inference):
        print(f"wrote {draw(out)}")


if __name__ == "__main__":
    main()
