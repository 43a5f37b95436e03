"""English -> Spanish verses by every text-to-text route warmstart has, on the same held-out verses:
test BLEU and chrF (sacreBLEU) and the training time of each route, as a Markdown table.

Routes (all split the 29,995 verse pairs of ../shared/data/bible-en-es/verses.tsv the same way: --split
28995,500,500 --shuffle, seed 42; each trains at most --minutes of steps, estimated from a short first run):
  scratch   a small BART from scratch, byte-level BPE trained on the pairs (finetune --from-scratch);
  pretrain  a small BART pre-trained with `pretrain --objective denoise` on the training verses
            (both languages), then fine-tuned (the pre-training counts in its time);
  bert2bert an EncoderDecoderModel warm-started from the bundled MiniLM (its uncased, accent-stripping
            tokenizer cannot write Spanish accents or capitals: scored as written, against the cased
            references);
  lora      SmolLM2-135M-Instruct instruction-tuned with LoRA r=16 (--chat, "Translate to Spanish: {source}");
  full      the same, every weight trained.

.venv/bin/python benchmarks/translation_routes.py --routes bert2bert,lora,full [--minutes 12]
[--test 500]

Each route is a warmstart command line (printed before it runs); the run folders stay under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
VERSES = ROOT.parent / "shared" / "data" / "bible-en-es" / "verses.tsv"
SPLIT = [
    "--data",
    str(VERSES),
    "--source-column",
    "en",
    "--target-column",
    "es",
    "--split",
    "28995,500,500",
    "--shuffle",
    "--metrics",
    "bleu,chrf",
    "--no-progress",
    "--overwrite",
]
CHAT = [
    "--task",
    "causal-lm",
    "--model",
    "smollm2",
    "--chat",
    "--template",
    "Translate to Spanish: {source}",
    "--max-length",
    "256",
]
ROUTES = {
    "scratch": ["--task", "seq2seq", "--from-scratch", "--size", "small", "--batch-size", "32"],
    "pretrain": ["--task", "seq2seq", "--batch-size", "32", "--lr", "3e-4"],
    "bert2bert": [
        "--task",
        "seq2seq",
        "--model",
        "minilm",
        "--batch-size",
        "32",
        "--lr",
        "1e-4",
        "--max-length",
        "128",
    ],
    "lora": [*CHAT, "--lora-r", "16", "--lr", "5e-4", "--batch-size", "8"],
    "full": [*CHAT, "--lr", "5e-5", "--batch-size", "8"],
}
BATCH = {"scratch": 32, "pretrain": 32, "bert2bert": 32, "lora": 8, "full": 8}


def warmstart(*args: str) -> None:
    cmd = [sys.executable, "-m", "warmstart", *args]
    print(
        "$ warmstart "
        + " ".join(args[:1] + tuple(a if " " not in a else repr(a) for a in args[1:])),
        flush=True,
    )
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def corpus(work: Path) -> Path:
    """The training part's verses, English and Spanish, one a line: what `pretrain` may read (never
    the test's)."""
    sys.path.insert(0, str(ROOT / "src"))
    from warmstart.data.pairs import read_pairs
    from warmstart.data.tables import split_examples

    train = split_examples(read_pairs(str(VERSES), "en", "es"), "28995,500,500", True, 42)[0]
    path = work / "corpus.txt"
    path.write_text("\n".join(train.sources + (train.targets or [])) + "\n", encoding="utf-8")
    return path


def steps_for(route: str, args, work: Path, extra: list[str]) -> int:
    """Optimizer steps that fit in --minutes, from the samples/s of a 20-step run of the same
    command."""
    probe = work / f"{route}-probe"
    warmstart(
        "finetune",
        *SPLIT,
        *ROUTES[route],
        *extra,
        "--max-steps",
        "20",
        "--max-valid-samples",
        "8",
        "--max-test-samples",
        "8",
        "--out",
        str(probe),
    )
    speed = json.loads((probe / "metrics.json").read_text())["train_samples_per_second"]
    return max(20, int(args.minutes * 60 * speed / BATCH[route]))


def run(route: str, args, work: Path) -> dict:
    t0 = time.time()
    extra: list[str] = [
        "--eval-samples",
        str(args.eval_samples),
        "--max-test-samples",
        str(args.test),
    ]
    if route == "pretrain":
        bart = work / "bart"
        if not (bart / "metrics.json").is_file():  # a finished pre-training in --work is reused
            warmstart(
                "pretrain",
                "--objective",
                "denoise",
                "--from-scratch",
                "--size",
                "small",
                "--data",
                str(corpus(work)),
                "--max-steps",
                str(args.pretrain_steps),
                "--batch-size",
                "32",
                "--block-size",
                "128",
                "--no-progress",
                "--overwrite",
                "--out",
                str(bart),
            )
        extra += ["--model", str(bart)]
    steps = steps_for(route, args, work, extra)
    out = work / route
    warmstart(
        "finetune", *SPLIT, *ROUTES[route], *extra, "--max-steps", str(steps), "--out", str(out)
    )
    m = json.loads((out / "metrics.json").read_text())
    return {
        "route": route,
        "steps": steps,
        "pairs": m["train_samples"],
        "train_min": m["train_loop_seconds"] / 60,
        "total_min": (time.time() - t0) / 60,
        "bleu": m["test"]["bleu"],
        "chrf": m["test"]["chrf"],
        "n": m["test"]["n"],
        "examples": [
            json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()[:5]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument(
        "--minutes", type=float, default=12, help="training time per route (fine-tuning)"
    )
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--test", type=int, default=500, help="held-out verses scored")
    ap.add_argument(
        "--eval-samples", type=int, default=50, help="valid verses generated each epoch"
    )
    ap.add_argument("--work", default="/tmp/translation-routes")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for route in args.routes.split(","):
        rows.append(run(route, args, work))
        (work / "results.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "examples"}), flush=True)
    print(
        "| route | steps | pairs trained | training min | whole route min | BLEU | chrF | test"
        " verses |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['route']} | {r['steps']} | {r['pairs']} | {r['train_min']:.1f} |"
            f" {r['total_min']:.1f} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['n']} |"
        )


if __name__ == "__main__":
    main()
