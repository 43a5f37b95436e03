"""Text to text, side by side in one run: the HF recipe vs warmstart, same model, same pairs, same
settings.

Tasks: g2p (CMUdict spelling → ARPAbet phonemes, ../shared/data/cmudict/cmudict.dict, words shuffled
with seed 0, the last --test held out) or mt (English → Spanish verses,
../shared/data/bible-en-es/verses.tsv, the last --test held out). Model: a BART of --size built once
from the training pairs (--tokenizer symbols for g2p, byte-level BPE for mt) and saved, so both
start from the same weights and tokenizer; or --model FOLDER (an encoder-decoder, e.g. a `pretrain
--objective denoise` run). 1. HF recipe: Seq2SeqTrainer + DataCollatorForSeq2Seq +
predict_with_generate (greedy, max_new_tokens as ours); 2. warmstart finetune --task seq2seq with
the same batch size, learning rate, epochs and fp32 (and with --auto, its default --precision auto
as a third row; with --bf16, both again in bf16: the recipe with bf16=True, warmstart with
--precision bf16). Prints training samples/s (the training loop), the test metrics (WER and CER for
g2p: word error is a wrong pronunciation, phoneme error the WER over phonemes; BLEU and chrF for mt)
and the ratio of samples/s.

    .venv/bin/python benchmarks/text_to_text.py --task g2p [--train 20000] [--test 500] [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import warmstart  # noqa: E402
from warmstart.data.pairs import Pairs, read_pairs  # noqa: E402
from warmstart.metrics import text_metrics  # noqa: E402
from warmstart.models.seq2seq import new_bart  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pairs_of(task: str, n_train: int, n_test: int) -> tuple[Pairs, Pairs]:
    if task == "g2p":
        pairs = read_pairs(str(DATA / "cmudict" / "cmudict.dict"))
        # Words with an alternative pronunciation stay on one side of the split (their first reading
        # only).
        seen, keep = set(), []
        for i, w in enumerate(pairs.sources):
            if w not in seen and w.isalpha():
                seen.add(w)
                keep.append(i)
        random.Random(0).shuffle(keep)
        pairs = pairs.take(keep)
    else:
        pairs = read_pairs(str(DATA / "bible-en-es" / "verses.tsv"), "en", "es")
    return pairs.take(slice(0, n_train)), pairs.take(slice(len(pairs) - n_test, len(pairs)))


def write_tsv(path: Path, pairs: Pairs) -> str:
    clean = [
        (s.replace("\t", " "), t.replace("\t", " ")) for s, t in zip(pairs.sources, pairs.targets)
    ]
    path.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in clean), encoding="utf-8")
    return str(path)


def recipe(
    folder: str, train: Pairs, test: Pairs, args, new_tokens: int, out: Path, bf16: bool = False
) -> dict:
    """The HF recipe (run_translation.py's shape)."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)

    def encode(p: Pairs) -> list[dict]:
        enc = tok(p.sources, text_target=p.targets, truncation=True, max_length=args.max_length)
        return [
            {"input_ids": a, "attention_mask": m, "labels": y}
            for a, m, y in zip(enc["input_ids"], enc["attention_mask"], enc["labels"])
        ]

    warmup = math.ceil(
        0.1 * math.ceil(len(train) / args.batch_size) * args.epochs
    )  # warmstart's warmup_ratio 0.1
    targs = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        weight_decay=0.01,
        warmup_steps=warmup,
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
        predict_with_generate=True,
        bf16=bf16,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=targs,
        train_dataset=encode(train),
        data_collator=DataCollatorForSeq2Seq(tok, model=model),
        processing_class=tok,
    )
    t = time.time()
    result = trainer.train()
    seconds = time.time() - t
    pred = trainer.predict(encode(test), max_new_tokens=new_tokens, num_beams=1)
    ids = [[i for i in row if i >= 0] for row in pred.predictions.tolist()]
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    return {
        "samples_per_s": result.metrics["train_samples_per_second"],
        "seconds": seconds,
        **text_metrics(texts, test.targets, METRICS[args.task]),
    }


def ours(
    folder: str, train_file: str, test_file: str, args, out: Path, precision: str = "fp32"
) -> dict:
    r = warmstart.finetune(
        task="seq2seq",
        data=train_file,
        test=test_file,
        model=folder,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        precision=precision,
        metrics=",".join(METRICS[args.task]),
        out=str(out),
        overwrite=True,
        progress=False,
    )
    m = r.metrics
    return {
        "samples_per_s": m["train_samples_per_second"],
        "seconds": m["train_loop_seconds"],
        **{k: m["test"][k] for k in METRICS[args.task]},
    }


METRICS = {"g2p": ("wer", "cer"), "mt": ("bleu", "chrf")}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", choices=("g2p", "mt"), default="g2p")
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--size", choices=("tiny", "mini", "small"), default="small")
    ap.add_argument(
        "--model", help="an encoder-decoder folder to start both from (default: a new BART)"
    )
    ap.add_argument("--skip-recipe", action="store_true")
    ap.add_argument(
        "--auto",
        action="store_true",
        help="also warmstart with --precision auto (bf16 where faster)",
    )
    ap.add_argument(
        "--bf16", action="store_true", help="also both in bf16 (the recipe's bf16=True)"
    )
    args = ap.parse_args()
    train, test = pairs_of(args.task, args.train, args.test)
    work = Path(tempfile.mkdtemp(prefix="text2text-"))
    folder = args.model
    if folder is None:
        torch.manual_seed(42)
        model, tok = new_bart(
            train.sources + train.targets,
            "symbols" if args.task == "g2p" else "bpe",
            args.size,
            8000,
            args.max_length,
        )
        folder = str(work / "start")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    train_file, test_file = write_tsv(work / "train.tsv", train), write_tsv(work / "test.tsv", test)
    # The same limit for both: 1.5x the longest training target in tokens, as warmstart's default.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    longest = max(
        len(x) for x in tok(train.targets, truncation=True, max_length=args.max_length)["input_ids"]
    )
    new_tokens = int(1.5 * longest + 0.999)
    print(
        f"{args.task}: {len(train)} training pairs, {len(test)} test pairs, model {folder}, batch"
        f" {args.batch_size}, lr {args.lr}, {args.epochs} epochs, fp32, greedy, at most"
        f" {new_tokens} new tokens"
    )
    rows, baseline = {}, {}  # each warmstart row is compared with the recipe at the same precision
    recipe32, recipe16 = (
        "HF recipe (Seq2SeqTrainer, predict_with_generate)",
        "HF recipe in bf16 (bf16=True)",
    )
    if not args.skip_recipe:
        rows[recipe32] = recipe(folder, train, test, args, new_tokens, work / "recipe")
    rows["warmstart finetune --task seq2seq (fp32, as the recipe)"] = ours(
        folder, train_file, test_file, args, work / "ours"
    )
    baseline["warmstart finetune --task seq2seq (fp32, as the recipe)"] = recipe32
    if args.auto:
        rows["warmstart, --precision auto (its default)"] = ours(
            folder, train_file, test_file, args, work / "auto", "auto"
        )
        baseline["warmstart, --precision auto (its default)"] = recipe32
    if args.bf16:
        if not args.skip_recipe:
            rows[recipe16] = recipe(
                folder, train, test, args, new_tokens, work / "recipe16", bf16=True
            )
        rows["warmstart --precision bf16"] = ours(
            folder, train_file, test_file, args, work / "bf16", "bf16"
        )
        baseline["warmstart --precision bf16"] = recipe16
    names = METRICS[args.task]
    print(
        f"| run | samples/s | training s | {' | '.join(names)} |\n|---|---|---|"
        + "---|" * len(names)
    )
    for name, r in rows.items():
        print(
            f"| {name} | {r['samples_per_s']:.1f} | {r['seconds']:.0f} | "
            + " | ".join(
                f"{r[k]:.4f}" if k in ("cer", "wer", "exact_match") else f"{r[k]:.2f}"
                for k in names
            )
            + " |"
        )
    for name, base in baseline.items():
        if base in rows:
            ratio = rows[name]["samples_per_s"] / max(rows[base]["samples_per_s"], 1e-9)
            print(f"training speed ratio ({name} / {base}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
