"""Class imbalance: the bundled MiniLM fine-tuned on an IMDb slice made 10:1 (negative:positive),
without and with --class-weights balanced and --sampler balanced; macro F1 and the minority class's
recall on the seed's balanced test rows. Quality only (no timing): run it anywhere.

    python benchmarks/imbalance.py [--negatives 1000] [--epochs 2] [--out runs/imbalance]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import warmstart

IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"


def skewed(df: pd.DataFrame, negatives: int, ratio: int, seed: int) -> pd.DataFrame:
    neg = df[df.sentiment == 0].sample(n=negatives, random_state=seed)
    pos = df[df.sentiment == 1].sample(n=negatives // ratio, random_state=seed)
    return pd.concat([neg, pos]).sample(frac=1, random_state=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--negatives", type=int, default=1000)
    ap.add_argument("--ratio", type=int, default=10)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--test-rows", type=int, default=1000)
    ap.add_argument("--out", default="runs/imbalance")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(IMDB)
    train = skewed(df.iloc[:35000], args.negatives, args.ratio, seed=0)
    valid = skewed(
        df.iloc[35000:40000], args.negatives // 2, args.ratio, seed=1
    )  # skewed like training
    test = df.iloc[40000 : 40000 + args.test_rows]  # the seed's test rows: balanced
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        part.to_csv(out / f"{name}.csv", index=False)
    runs = {
        "plain": {},
        "class weights balanced": {"class_weights": "balanced"},
        "sampler balanced": {"sampler": "balanced"},
    }
    rows = []
    for name, extra in runs.items():
        r = warmstart.finetune(
            data=str(out / "train.csv"),
            valid=str(out / "valid.csv"),
            test=str(out / "test.csv"),
            label_names="negative,positive",
            max_length=args.max_length,
            epochs=args.epochs,
            lr=1e-4,
            batch_size=16,
            out=str(out / name.replace(" ", "-")),
            overwrite=True,
            progress=False,
            **extra,
        )
        t = r.metrics["test"]
        rows.append(
            {
                "run": name,
                "macro F1": t["f1_macro"],
                "minority recall": t["per_class"]["positive"]["recall"],
                "balanced acc": t["balanced_accuracy"],
                "accuracy": t["accuracy"],
                "best epoch by": "balanced_accuracy",
            }
        )
    print(
        f"train {len(train)} rows ({args.ratio}:1 negative:positive), test {len(test)} balanced"
        f" rows, MiniLM, {args.max_length} tokens, {args.epochs:g} epochs"
    )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
