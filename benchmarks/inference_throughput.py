"""Inference throughput: Hugging Face `pipeline("text-classification")` vs warmstart's backends, in
one run.

The same fine-tuned classifier and the same IMDb test reviews (512 from row 40,000 on, truncated at
512 tokens) go through the HF pipeline at batch 1 and batch 32, then through each warmstart backend
(`Classifier.probabilities`, the path behind `predict` and `evaluate`, tokenisation included).
Prints texts/s, the ratio to the pipeline's better setting, accuracy, and each backend's accuracy
difference to PyTorch fp32.

    make demo      # once: fine-tunes MiniLM into runs/demo/model (a few minutes on 2 cores)
    .venv/bin/python benchmarks/inference_throughput.py [--model runs/demo/model] [--rounds 2]

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

# (label, backend, quantize, precision); "default" is what `warmstart predict/evaluate` use with no
# flags.
OURS = [
    ("torch fp32", "torch", "none", "fp32"),
    ("torch bf16", "torch", "none", "bf16"),
    ("torch auto (measured)", "torch", "none", "auto"),
    ("torch int8", "torch", "int8", "fp32"),
    ("onnx fp32", "onnx", "none", "fp32"),
    ("onnx int8", "onnx", "int8", "fp32"),
    ("default (auto)", "auto", "auto", "auto"),
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
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2, help="runs of every setting; the best counts")
    ap.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of our settings, e.g. 'onnx int8,torch fp32'",
    )
    args = ap.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(
            f"no fine-tuned model at {args.model}: run `make demo` first, or pass --model FOLDER"
        )

    import torch
    from transformers import pipeline

    from warmstart.data import Examples, LabelMap
    from warmstart.inference.classifier import Classifier

    df = pd.read_csv(args.data).iloc[args.start : args.start + args.rows]
    texts = df["review"].astype(str).tolist()
    ex = Examples(
        source=args.data,
        texts=texts,
        pairs=None,
        labels=df["sentiment"].astype(str).tolist(),
        rows=list(range(args.start + 2, args.start + 2 + len(texts))),
    )
    print(
        f"model {args.model} | {len(texts)} reviews from row {args.start} | max length"
        f" {args.max_length} | torch {torch.__version__}, {torch.get_num_threads()} threads | load"
        f" average {_load()}",
        flush=True,
    )

    ours = [o for o in OURS if args.only is None or o[0] in args.only.split(",")]
    pipe = pipeline("text-classification", model=args.model, device=-1)
    label2id = {k: int(v) for k, v in pipe.model.config.label2id.items()}
    clfs = {}
    for name, backend, quantize, precision in ours:
        t0 = time.perf_counter()
        clfs[name] = Classifier.load(
            args.model,
            args.max_length,
            cpu=True,
            backend=backend,
            quantize=quantize,
            precision=precision,
        )
        print(
            f"loaded {name} as {clfs[name].plan.name} in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    y = LabelMap.from_model_config(pipe.model.config).encode(ex)

    def run_pipe(bs: int) -> np.ndarray:
        out = pipe(texts, batch_size=bs, truncation=True, max_length=args.max_length)
        return np.array([label2id[o["label"]] for o in out])

    runs = {f"HF pipeline, batch {bs}": lambda bs=bs: run_pipe(bs) for bs in (1, 32)}
    for name, *_ in ours:
        runs[name] = lambda c=clfs[name]: c.probabilities(ex).argmax(1)
    pipe(texts[:4], batch_size=1, truncation=True, max_length=args.max_length)  # warm-up
    for c in clfs.values():
        c.probabilities(ex.take(list(range(8))))
    best: dict[str, float] = {}
    preds: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            preds[name] = fn()
            rate = len(texts) / (time.perf_counter() - t0)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"round {r + 1}: {name:24s} {rate:6.1f} texts/s", flush=True)
    _report(best, preds, y, args)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _report(best: dict[str, float], preds: dict[str, np.ndarray], y: np.ndarray, args) -> None:
    base_name = max((k for k in best if k.startswith("HF")), key=best.get)
    ref = preds.get("torch fp32")
    ref_acc = float((ref == y).mean()) if ref is not None else None
    print(f"\nload average after: {_load()} (other work on the machine lowers every number alike)")
    print(
        f"ratios to the better HF setting ({base_name}); accuracy vs torch fp32 in points; agree:"
        " same label"
    )
    print(
        f"{'setting':24s} {'texts/s':>8s} {'x HF':>8s} {'accuracy':>9s} {'vs fp32':>8s}"
        f" {'agree':>6s}"
    )
    for name, rate in best.items():
        acc = float((preds[name] == y).mean())
        diff = f"{100 * (acc - ref_acc):+.2f}" if ref_acc is not None else "-"
        agree = f"{100 * float((preds[name] == ref).mean()):.1f}%" if ref is not None else "-"
        print(
            f"{name:24s} {rate:8.1f} {rate / best[base_name]:7.2f}x {100 * acc:8.2f}% {diff:>8s}"
            f" {agree:>6s}"
        )


if __name__ == "__main__":
    main()
