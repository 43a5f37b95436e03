"""Training throughput, side by side in one run: the seed's recipe vs warmstart's two engines.

Same model (bundled MiniLM), same IMDb slice, same machine, one process after the other:
  1. seed: the whole split tokenised with padding=True (every review padded to the longest, 512),
     batch 16, torch.optim.Adam lr 5e-5, fp32, HF Trainer (the model's own dropout);
  2. warmstart finetune, native engine, defaults (max length 512 here, as for the seed);
  3. warmstart finetune --engine trainer, defaults.
Prints training samples/s (training loop only, no evaluation), the ratios 2/1 and 3/1, the valid
accuracy each reaches after the same number of epochs (scored by one evaluator, at 512 tokens), and
model FLOPs utilisation against this machine's measured fp32 matmul peak.

    .venv/bin/python benchmarks/train_throughput.py [--train 256] [--valid 500] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import warmstart  # noqa: E402
from warmstart import models  # noqa: E402

IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb" / "movie_data.csv.gz"


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Measured fp32 matmul FLOP/s on this machine (best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_flops(model: torch.nn.Module, lengths: np.ndarray) -> float:
    """Model FLOPs of one pass of training over texts of these (real, unpadded) token lengths:
    6 x non-embedding parameters per token (forward + backward), plus attention scores and mixing,
    6 x 2 x layers x hidden x length per token. Padding is not useful work and is not counted."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    dense = 6 * params * lengths.sum()
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * (lengths.astype(np.float64) ** 2).sum()
    return float(dense + attention)


def seed_recipe(train: pd.DataFrame, epochs: int, out: Path) -> float:
    """The seed's Trainer run; returns training samples/s. Saves the model for the common evaluator."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    path = models.resolve("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(train["review"].tolist(), truncation=True, padding=True)  # the seed: pad the split to its longest

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(train)

        def __getitem__(self, i):
            item = {k: torch.tensor(v[i]) for k, v in enc.items()}
            item["labels"] = torch.tensor(int(train["sentiment"].iloc[i]))
            return item

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = TrainingArguments(output_dir=str(out / "ckpt"), num_train_epochs=epochs, per_device_train_batch_size=16,
                             logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, seed=1,
                             dataloader_pin_memory=False)
    optim = torch.optim.Adam(model.parameters(), lr=5e-5)
    trainer = Trainer(model=model, args=args, train_dataset=DS(), optimizers=(optim, None))
    result = trainer.train()
    model.config.id2label, model.config.label2id = {0: "0", 1: "1"}, {"0": 0, "1": 1}
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    print(f"  seed: padded to {len(enc['input_ids'][0])} tokens; {result.metrics['train_runtime']:.0f}s")
    return len(train) * epochs / result.metrics["train_runtime"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=256, help="training reviews (rows 0..N-1)")
    ap.add_argument("--valid", type=int, default=500, help="valid reviews (rows 35,000 on)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    df = pd.read_csv(IMDB)
    train, valid = df.iloc[: a.train], df.iloc[35000 : 35000 + a.valid]
    work = Path(tempfile.mkdtemp(prefix="warmstart-bench-"))
    train.to_csv(work / "train.csv", index=False)
    valid.to_csv(work / "valid.csv", index=False)

    peak = matmul_peak()
    tok = models.load_tokenizer(models.resolve("minilm"))
    lengths = np.array([len(x) for x in tok(train["review"].tolist(), truncation=True, max_length=512)["input_ids"]])
    print(f"machine: {torch.get_num_threads()} threads, fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"{a.train} train reviews, mean {lengths.mean():.0f} tokens (padding to 512 wastes "
          f"{1 - lengths.sum() / (512 * len(lengths)):.0%}), {a.epochs} epoch(s)")

    rows = []
    print("1. seed recipe (HF Trainer, padding=True, Adam 5e-5, fp32) ...")
    rate = seed_recipe(train, a.epochs, work / "seed")
    rows.append(("seed recipe (HF Trainer, padded)", rate, work / "seed" / "model"))
    for engine in ("native", "trainer"):
        print(f"{len(rows) + 1}. warmstart finetune --engine {engine} ...")
        r = warmstart.finetune(data=str(work / "train.csv"), model="minilm", engine=engine, epochs=a.epochs,
                               max_length=512, out=str(work / engine), progress=False, logging_steps=10**6)
        rows.append((f"warmstart --engine {engine}", r.metrics["train_samples_per_second"], r.model_dir))

    model = models.load_classifier(models.resolve("minilm"), ["0", "1"])
    flops_per_sample = train_flops(model, lengths) / len(lengths)
    results = []
    print(f"\n{'run':<36}{'samples/s':>10}{'ratio':>8}{'valid acc':>11}{'MFU':>8}")
    for name, rate, model_dir in rows:
        acc = warmstart.evaluate(model=str(model_dir), data=str(work / "valid.csv"), max_length=512,
                                 progress=False).accuracy
        mfu = rate * flops_per_sample / peak
        results.append({"run": name, "samples_per_s": rate, "ratio": rate / rows[0][1], "valid_accuracy": acc,
                        "mfu": mfu})
        print(f"{name:<36}{rate:>10.2f}{rate / rows[0][1]:>8.2f}{acc:>11.4f}{mfu:>8.1%}")
    print(f"\nratio native/seed {results[1]['ratio']:.2f}, trainer/seed {results[2]['ratio']:.2f}; "
          f"accuracy differences vs seed: {100 * (results[1]['valid_accuracy'] - results[0]['valid_accuracy']):+.1f} "
          f"and {100 * (results[2]['valid_accuracy'] - results[0]['valid_accuracy']):+.1f} points "
          f"on {a.valid} valid reviews")
    if a.json:
        Path(a.json).write_text(json.dumps({"peak_flops": peak, "train": a.train, "valid": a.valid,
                                            "epochs": a.epochs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
