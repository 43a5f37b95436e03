"""A saved classifier scored three ways on the same test reviews: `warmstart evaluate` (fp32
PyTorch, and the default ONNX int8 backend), plain transformers' `pipeline("text-classification",
truncation=True)`, and the seed's own loop (tokenizer with truncation=True, padding=True, argmax).
With the training length saved in the tokenizer (issue 18) the three read the same tokens, so fp32
accuracies agree exactly.

    python benchmarks/parity.py runs/demo [--rows 500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import warmstart

IMDB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder (its model/ is scored)")
    ap.add_argument(
        "--rows", type=int, default=500, help="test reviews from row 40,000 (the seed's test part)"
    )
    args = ap.parse_args()
    model_dir = str(Path(args.run) / "model")
    df = pd.read_csv(IMDB, skiprows=range(1, 40001), nrows=args.rows)
    names = ["negative", "positive"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.csv"
        df.to_csv(path, index=False)
        fp32 = warmstart.evaluate(
            model=args.run,
            data=str(path),
            progress=False,
            backend="torch",
            quantize="none",
            precision="fp32",
        ).accuracy
        default = warmstart.evaluate(model=args.run, data=str(path), progress=False).accuracy
    texts = df["review"].tolist()
    labels = [
        p["label"]
        for p in pipeline("text-classification", model=model_dir, device="cpu")(
            texts, truncation=True, batch_size=16
        )
    ]
    piped = float(np.mean([label == names[y] for label, y in zip(labels, df["sentiment"])]))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    predicted = []
    with torch.inference_mode():
        for i in range(0, len(texts), 16):
            enc = tok(texts[i : i + 16], truncation=True, padding=True, return_tensors="pt")
            predicted += model(**enc).logits.argmax(-1).tolist()
    seed = float(np.mean(np.array(predicted) == df["sentiment"].to_numpy()))
    print(f"{args.rows} test reviews, tokenizer model_max_length {tok.model_max_length}")
    print(f"warmstart evaluate fp32 torch  {fp32:.4f}")
    print(f"warmstart evaluate default     {default:.4f}")
    print(f"HF pipeline(truncation=True)   {piped:.4f}")
    print(f"seed loop (truncation=True)    {seed:.4f}")


if __name__ == "__main__":
    main()
