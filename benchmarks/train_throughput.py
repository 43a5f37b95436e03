"""Training throughput, side by side in one run: plain Hugging Face recipes vs warmstart's two
engines.

Same model (bundled MiniLM), same IMDb rows, same machine, one process after the other: 1. seed: the
whole split tokenised with padding=True (every review padded to the longest), batch 16,
torch.optim.Adam lr 5e-5, fp32, HF Trainer (the model's own dropout); 2. the strongest plain HF:
Trainer with DataCollatorWithPadding and train_sampling_strategy="group_by_length" (batches of
similar lengths, padded per batch), the model's and TrainingArguments' defaults, batch 16; 3.
warmstart finetune, native engine, defaults (--precision auto: measured per CPU); 4. warmstart
finetune --engine trainer, defaults. All at --max-length tokens. Prints training samples/s (training
loop only, no evaluation), the ratio to row 2, the valid accuracy each reaches after the same epochs
(one evaluator, at --max-length), and model FLOPs utilisation against this machine's measured matmul
peak in the precision each run trained in.

.venv/bin/python benchmarks/train_throughput.py [--train 800] [--valid 500] [--epochs 1]
[--max-length 256]"""

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


def matmul_peak(n: int = 2048, reps: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul FLOP/s on this machine in ``dtype`` (best of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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
    attention = (
        12 * cfg.num_hidden_layers * cfg.hidden_size * (lengths.astype(np.float64) ** 2).sum()
    )
    return float(dense + attention)


def _dataset(enc: dict, labels: list[int]) -> torch.utils.data.Dataset:
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {
                **{k: torch.tensor(v[i]) for k, v in enc.items()},
                "labels": torch.tensor(labels[i]),
            }

    return DS()


def hf_trainer(
    train: pd.DataFrame, epochs: int, max_length: int, out: Path, grouped: bool
) -> float:
    """A plain Trainer run; returns training samples/s and saves the model for the common evaluator.
    grouped=False: the seed (padding=True over the split, Adam 5e-5); True: DataCollatorWithPadding
    and group_by_length, with the defaults of the model and TrainingArguments (AdamW 5e-5, linear
    schedule)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    path = models.resolve("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    # The seed pads the split to its longest; grouped leaves padding to the collator, batch by
    # batch.
    enc = tok(train["review"].tolist(), truncation=True, max_length=max_length, padding=not grouped)
    labels = [int(v) for v in train["sentiment"]]
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    extra = {"train_sampling_strategy": "group_by_length"} if grouped else {}
    args = TrainingArguments(
        output_dir=str(out / "ckpt"),
        num_train_epochs=epochs,
        per_device_train_batch_size=16,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=1,
        dataloader_pin_memory=False,
        **extra,
    )
    optimizers = (None, None) if grouped else (torch.optim.Adam(model.parameters(), lr=5e-5), None)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_dataset(enc, labels),
        optimizers=optimizers,
        data_collator=DataCollatorWithPadding(tok) if grouped else None,
    )
    result = trainer.train()
    model.config.id2label, model.config.label2id = {0: "0", 1: "1"}, {"0": 0, "1": 1}
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    print(
        f"  {result.metrics['train_runtime']:.0f}s"
        + ("" if grouped else f"; padded to {len(enc['input_ids'][0])} tokens")
    )
    return len(train) * epochs / result.metrics["train_runtime"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train", type=int, default=800, help="training reviews (rows 0..N-1)")
    ap.add_argument("--valid", type=int, default=500, help="valid reviews (rows 35,000 on)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--skip-seed", action="store_true", help="leave out row 1 (the slowest)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    df = pd.read_csv(IMDB)
    train, valid = df.iloc[: a.train], df.iloc[35000 : 35000 + a.valid]
    work = Path(tempfile.mkdtemp(prefix="warmstart-bench-"))
    train.to_csv(work / "train.csv", index=False)
    valid.to_csv(work / "valid.csv", index=False)

    peaks = {"fp32": matmul_peak(), "bf16": matmul_peak(dtype=torch.bfloat16)}
    tok = models.load_tokenizer(models.resolve("minilm"))
    lengths = np.array(
        [
            len(x)
            for x in tok(train["review"].tolist(), truncation=True, max_length=a.max_length)[
                "input_ids"
            ]
        ]
    )
    print(
        f"machine: {torch.get_num_threads()} threads, matmul peak fp32 {peaks['fp32'] / 1e9:.1f}"
        f" GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; {a.train} train reviews at"
        f" ≤{a.max_length} tokens, mean {lengths.mean():.0f} (padding all to {a.max_length} wastes"
        f" {1 - lengths.mean() / a.max_length:.0%}), {a.epochs} epoch(s)"
    )

    rows = []  # (name, samples/s, model folder, precision)
    if not a.skip_seed:
        print(f"{len(rows) + 1}. seed recipe (HF Trainer, padding=True, Adam 5e-5, fp32) ...")
        rows.append(
            (
                "seed recipe (HF Trainer, padded)",
                hf_trainer(train, a.epochs, a.max_length, work / "seed", grouped=False),
                work / "seed" / "model",
                "fp32",
            )
        )
    print(f"{len(rows) + 1}. HF Trainer, DataCollatorWithPadding, group_by_length, defaults ...")
    rows.append(
        (
            "HF Trainer, group_by_length",
            hf_trainer(train, a.epochs, a.max_length, work / "grouped", grouped=True),
            work / "grouped" / "model",
            "fp32",
        )
    )
    for engine in ("native", "trainer"):
        print(f"{len(rows) + 1}. warmstart finetune --engine {engine} ...")
        r = warmstart.finetune(
            data=str(work / "train.csv"),
            model="minilm",
            engine=engine,
            epochs=a.epochs,
            max_length=a.max_length,
            out=str(work / engine),
            progress=False,
            logging_steps=10**6,
        )
        rows.append(
            (
                f"warmstart --engine {engine} ({r.metrics['precision']})",
                r.metrics["train_samples_per_second"],
                r.model_dir,
                r.metrics["precision"],
            )
        )

    model = models.load_classifier(models.resolve("minilm"), ["0", "1"])
    flops_per_sample = train_flops(model, lengths) / len(lengths)
    base = next(rate for name, rate, _, _ in rows if name.startswith("HF Trainer, group"))
    results = []
    print(f"\n{'run':<40}{'samples/s':>10}{'x grouped':>10}{'valid acc':>11}{'MFU':>8}")
    for name, rate, model_dir, precision in rows:
        acc = warmstart.evaluate(
            model=str(model_dir),
            data=str(work / "valid.csv"),
            max_length=a.max_length,
            progress=False,
        ).accuracy
        mfu = rate * flops_per_sample / peaks[precision]
        results.append(
            {
                "run": name,
                "samples_per_s": rate,
                "ratio": rate / base,
                "valid_accuracy": acc,
                "precision": precision,
                "mfu": mfu,
            }
        )
        print(f"{name:<40}{rate:>10.2f}{rate / base:>10.2f}{acc:>11.4f}{mfu:>8.1%}")
    print(
        "\n(MFU against the matmul peak of the precision each run trained in; accuracy on"
        f" {a.valid} valid reviews)"
    )
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "peak_flops": peaks,
                    "train": a.train,
                    "valid": a.valid,
                    "epochs": a.epochs,
                    "max_length": a.max_length,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
