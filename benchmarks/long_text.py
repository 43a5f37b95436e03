"""Long IMDb reviews: accuracy and cost of --long-text truncate, head+tail and chunk on the demo
model.

The demo model (MiniLM fine-tuned at 256 tokens with plain truncation by `make demo`) reads the same
1,000 IMDb test reviews (rows 40,000-40,999: the seed's test split) through
`Classifier.probabilities`, the path behind predict, evaluate and serve (tokenisation included), on
the default backend (ONNX int8 on a CPU with onnxruntime). Settings: truncation at 256 and at 512
tokens, head+tail at 256 and 512, and chunk at 256 (windows sharing a quarter, --stride default)
with each aggregation. Prints accuracy over all reviews and over those longer than 256 tokens (the
only ones where the settings differ at 256), texts/s, and model rows (windows) per text.

    make demo      # once: fine-tunes MiniLM into runs/demo/model
    .venv/bin/python benchmarks/long_text.py [--model runs/demo/model] [--rows 1000] [--rounds 3]

Every setting runs --rounds times, interleaved, and its best round counts: on a shared machine the
best round is the one least disturbed by other work (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"

# (name, max length, --long-text, --chunk-aggregation)
SETTINGS = [
    ("truncate @256", 256, "truncate", None),
    ("truncate @512", 512, "truncate", None),
    ("head+tail @256", 256, "head+tail", None),
    ("head+tail @512", 512, "head+tail", None),
    ("chunk @256, mean", 256, "chunk", "mean"),
    ("chunk @256, max", 256, "chunk", "max"),
    ("chunk @256, first+last", 256, "chunk", "first+last"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default=str(ROOT / "runs" / "demo" / "model"),
        help="fine-tuned classifier folder",
    )
    ap.add_argument("--data", default=str(IMDB))
    ap.add_argument(
        "--start", type=int, default=40_000, help="first row of the slice (the seed's test split)"
    )
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="runs of every setting; the best counts")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"))
    args = ap.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(
            f"no fine-tuned model at {args.model}: run `make demo` first, or pass --model FOLDER"
        )

    import torch

    from warmstart.data import Examples
    from warmstart.data.batching import encode_chunks
    from warmstart.inference.classifier import Classifier

    df = pd.read_csv(args.data).iloc[args.start : args.start + args.rows]
    ex = Examples(
        source=args.data,
        texts=df["review"].astype(str).tolist(),
        pairs=None,
        labels=df["sentiment"].astype(str).tolist(),
        rows=list(range(args.start + 2, args.start + 2 + len(df))),
    )
    clfs = {
        name: Classifier.load(
            args.model,
            length,
            cpu=True,
            backend=args.backend,
            quantize="auto",
            precision="auto",
            long_text=mode,
            aggregation=how,
        )
        for name, length, mode, how in SETTINGS
    }
    first = next(iter(clfs.values()))
    tokens = (
        np.array([len(x) for x in first.tokenizer(ex.texts, add_special_tokens=False)["input_ids"]])
        + 2
    )
    long = tokens > 256
    windows = {
        name: (
            encode_chunks(c.tokenizer, ex, c.max_length, c.stride)[1].mean()
            if c.long_text == "chunk"
            else 1.0
        )
        for name, c in clfs.items()
    }
    print(
        f"model {args.model} | {len(ex)} reviews from row {args.start} | backend {first.plan.name}"
        f" | torch {torch.__version__}, {torch.get_num_threads()} threads | load average {_load()}",
        flush=True,
    )
    print(
        f"tokens per review (with [CLS]/[SEP]): median {int(np.median(tokens))}, > 256:"
        f" {100 * long.mean():.1f}%, > 512: {100 * (tokens > 512).mean():.1f}%",
        flush=True,
    )
    y = first.labels.encode(ex)
    for c in clfs.values():
        c.probabilities(ex.take(list(range(4))))  # warm-up: the first ONNX runs are slower
    best: dict[str, float] = {}
    preds: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, c in clfs.items():
            t0 = time.perf_counter()
            preds[name] = c.probabilities(ex).argmax(1)
            rate = len(ex) / (time.perf_counter() - t0)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"round {r + 1}: {name:24s} {rate:6.1f} texts/s", flush=True)
    print(f"\nload average after: {_load()} (other work on the machine lowers every texts/s alike)")
    print(
        f"| setting | accuracy | accuracy, reviews > 256 tokens ({int(long.sum())}) | texts/s |"
        " windows/text |"
    )
    print("|---|---|---|---|---|")
    for name, rate in best.items():
        acc, acc_long = (preds[name] == y).mean(), (preds[name][long] == y[long]).mean()
        print(
            f"| {name} | {100 * acc:.1f}% | {100 * acc_long:.1f}% | {rate:.1f} |"
            f" {windows[name]:.2f} |"
        )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
