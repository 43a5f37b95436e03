"""LoRA against full fine-tuning of SmolLM2-135M (`smollm2`) on English -> Spanish verse pairs with
`finetune --task causal-lm`: trainable parameters, peak memory and training samples/s, same data,
steps and batch.

Each setting trains in a process of its own, so its peak resident memory (ru_maxrss: weights,
gradients, optimizer state and activations, as the OS counts them) is its own; on a GPU torch's peak
allocation is reported too. Python's tracemalloc is not used: tensors live outside the Python
allocator it traces. Prints a Markdown table.

    .venv/bin/python benchmarks/lora.py [--rows 256] [--steps 20] [--batch-size 8] [--lora-r 16]
    .venv/bin/python benchmarks/lora.py --rows 16 --steps 2 --batch-size 4      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
VERSES = ROOT.parent / "shared" / "data" / "bible-en-es" / "verses.tsv"


def pairs(rows: int, folder: Path) -> Path:
    import pandas as pd

    path = folder / "pairs.tsv"
    pd.read_csv(VERSES, sep="\t", nrows=rows, quoting=3).to_csv(path, sep="\t", index=False)
    return path


def child(args: argparse.Namespace) -> None:
    """One training run; prints its figures as one JSON line."""
    import torch

    import warmstart

    with tempfile.TemporaryDirectory() as tmp:
        data = pairs(args.rows, Path(tmp))
        t = time.perf_counter()
        result = warmstart.finetune(
            task="causal-lm",
            data=str(data),
            source_column="en",
            target_column="es",
            model="smollm2",
            chat=True,
            template="Translate to Spanish: {source}",
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            lora_r=args.lora_r if args.mode == "lora" else 0,
            precision=args.precision,
            logging_steps=max(args.steps, 1),
            out=str(Path(tmp) / "run"),
            progress=False,
        )
        seconds = time.perf_counter() - t
    m = result.metrics
    trainable, total = m["parameters"]["trainable"], m["parameters"]["total"]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out = {
        "mode": args.mode,
        "trainable": trainable,
        "total": total,
        "peak_rss_mib": peak_rss / 2**20,
        "samples_per_s": m["train_samples_per_second"],
        "train_loop_s": m["train_loop_seconds"],
        "run_s": seconds,
        "precision": m["precision"],
    }
    if torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=256, help="verse pairs to train on")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per setting")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    p.add_argument("--child", dest="mode", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        return child(args)
    rows = []
    for mode in ("full", "lora"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--rows",
            str(args.rows),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--lora-r",
            str(args.lora_r),
            "--precision",
            args.precision,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if done.returncode:
            sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    full, lora = rows
    cuda = "cuda_peak_mib" in full
    print(
        f"SmolLM2-135M, {args.rows} verse pairs, {args.steps} steps of batch {args.batch_size}, max"
        f" length {args.max_length}, {full['precision']}, LoRA r={args.lora_r} on q_proj,v_proj\n"
    )
    print(
        "| setting | trainable parameters | peak RSS (MiB) |"
        + (" CUDA peak (MiB) |" if cuda else "")
        + " samples/s |"
    )
    print("|---|---:|---:|" + ("---:|" if cuda else "") + "---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['trainable']:,} ({100 * r['trainable'] / r['total']:.2f}%) | "
            f"{r['peak_rss_mib']:,.0f} |"
            + (f" {r['cuda_peak_mib']:,.0f} |" if cuda else "")
            + f" {r['samples_per_s']:.2f} |"
        )
    print(
        f"\nLoRA / full: trainable {lora['trainable'] / full['trainable']:.4f}x, peak RSS "
        f"{lora['peak_rss_mib'] / full['peak_rss_mib']:.2f}x, samples/s "
        f"{lora['samples_per_s'] / full['samples_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
