"""Named-entity tagging, side by side in one run: the HF recipe vs warmstart, same model and split.

Model: the bundled MiniLM. Data: WNUT-16 (../shared/data/wnut16/train.conll), tweets 1-1,600 to
train and 1,601-2,000 to test (no valid part: both train for a fixed number of epochs and keep the
last model). 1. HF recipe: AutoModelForTokenClassification + DataCollatorForTokenClassification +
Trainer (labels on first sub-tokens, batch 16, lr 5e-5, 3 epochs, fp32), scored with seqeval on
words; inference with pipeline("token-classification", aggregation_strategy="simple") on the test
tweets; 2. warmstart finetune --task tokens with the recipe's settings (lr 5e-5, 3 epochs, batch
16): training speed at equal settings; 3. warmstart finetune --task tokens with its defaults: entity
F1 and training time; 4. optionally (--tuned) the recipe tuned: lr 1.5e-4, 6 epochs; (--fp32)
warmstart's defaults in fp32. warmstart's runs use --precision auto: measured per CPU (bf16 where a
training step is ≥1.15x faster). Prints entity F1 (micro, seqeval), training tweets/s (training loop
only) and seconds, inference tweets/s (the pipeline vs `warmstart predict`'s Tagger on the same raw
tweets), and the ratios.

    .venv/bin/python benchmarks/tagging.py [--train 1600] [--test 400] [--tuned] [--skip-recipe]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import warmstart  # noqa: E402
from warmstart.data.tagged import read_sentences  # noqa: E402
from warmstart.inference.tagger import Tagger  # noqa: E402
from warmstart.metrics import tagging_metrics  # noqa: E402
from warmstart.models import resolve  # noqa: E402

WNUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wnut16" / "train.conll"


def write_conll(path: Path, tokens: list[list[str]], tags: list[list[str]]) -> None:
    path.write_text(
        "".join(
            "".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n" for ws, ts in zip(tokens, tags)
        )
    )


def recipe(train, test, tags: list[str], lr: float, epochs: float, out: Path) -> dict:
    """The HF recipe (run_ner.py's shape): first sub-token labels, Trainer, seqeval on words."""
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    path = resolve("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    ids = {t: i for i, t in enumerate(tags)}

    def encode(sents):
        enc = tok(sents.tokens, is_split_into_words=True, truncation=True)
        rows = []
        for i in range(len(sents)):
            prev, labels = None, []
            for w in enc.word_ids(i):
                labels.append(-100 if w is None or w == prev else ids[sents.tags[i][w]])
                prev = w
            rows.append(
                {
                    "input_ids": enc["input_ids"][i],
                    "token_type_ids": enc["token_type_ids"][i],
                    "attention_mask": enc["attention_mask"][i],
                    "labels": labels,
                }
            )
        return rows

    torch.manual_seed(42)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(tags), id2label=dict(enumerate(tags)), label2id=ids
    )
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=lr,
        num_train_epochs=epochs,
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        use_cpu=True,
        seed=42,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encode(train),
        data_collator=DataCollatorForTokenClassification(tok),
    )
    result = trainer.train()
    test_rows = encode(test)
    pred = trainer.predict(test_rows)
    words = []
    for row, logits in zip(test_rows, pred.predictions):
        lab = np.array(row["labels"])
        keep = lab != -100
        words.append([tags[k] for k in logits[: len(lab)][keep].argmax(-1)])
    f1 = tagging_metrics(test.tags, words, "IOB2")["f1"]
    seconds = result.metrics["train_runtime"]
    return {
        "f1": f1,
        "train_seconds": seconds,
        "train_per_s": len(train) * epochs / seconds,
        "model_dir": trainer,
        "tokenizer": tok,
    }


def pipeline_speed(trainer, tok, texts: list[str]) -> float:
    from transformers import pipeline

    pipe = pipeline(
        "token-classification",
        model=trainer.model.eval(),
        tokenizer=tok,
        aggregation_strategy="simple",
        device=-1,
    )
    pipe(texts[:8])  # warm-up
    t = time.perf_counter()
    pipe(texts)
    return len(texts) / (time.perf_counter() - t)


def ours(train_file: Path, test_file: Path, out: Path, **options) -> dict:
    r = warmstart.finetune(
        task="tokens",
        data=str(train_file),
        test=str(test_file),
        out=str(out),
        overwrite=True,
        progress=False,
        **options,
    )
    m = r.metrics
    return {
        "f1": m["test"]["f1"],
        "train_seconds": m["train_loop_seconds"],
        "train_per_s": m["train_samples_per_second"],
        "model_dir": r.model_dir,
    }


def tagger_speed(model_dir: Path, texts: list[str]) -> float:
    tagger = Tagger.load(str(model_dir), backend="auto", quantize="auto")
    tagger.tag(texts[:8])  # warm-up (and the one-time ONNX export)
    t = time.perf_counter()
    tagger.tag(texts)
    return len(texts) / (time.perf_counter() - t)


def backend_f1(model_dir: Path, test, backend: str, quantize: str) -> float:
    """Entity F1 of the saved model on the test words through one backend (int8 must stay close to
    fp32)."""
    tagger = Tagger.load(str(model_dir), backend=backend, quantize=quantize)
    words = tagger.word_probabilities(test.tokens)
    return tagging_metrics(
        test.tags, [[tagger.tags[k] for k in w.argmax(-1)] for w in words], tagger.scheme
    )["f1"]


class Rows(dict):
    """The finished runs; each is printed as it finishes, so a later failure loses nothing."""

    def __setitem__(self, name: str, r: dict) -> None:
        super().__setitem__(name, r)
        print(
            f"RESULT {name}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float)),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=1600)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument(
        "--tuned", action="store_true", help="also run the recipe at lr 1.5e-4 for 6 epochs"
    )
    ap.add_argument("--skip-recipe", action="store_true", help="only warmstart's runs")
    ap.add_argument(
        "--options", default="{}", help="JSON of extra finetune options for the defaults run"
    )
    ap.add_argument(
        "--fp32", action="store_true", help="also run the defaults with --precision fp32"
    )
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    sents = read_sentences(WNUT)
    train, test = (
        sents.take(slice(0, args.train)),
        sents.take(slice(len(sents) - args.test, len(sents))),
    )
    tags = sorted({t for s in sents.tags for t in s}, key=lambda t: (t != "O", t[2:], t[:1]))
    texts = [" ".join(ws) for ws in test.tokens]
    rows = Rows()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_conll(tmp / "train.conll", train.tokens, train.tags)
        write_conll(tmp / "test.conll", test.tokens, test.tags)
        if not args.skip_recipe:
            r = recipe(train, test, tags, 5e-5, 3, tmp / "recipe")
            r["infer_per_s"] = pipeline_speed(r.pop("model_dir"), r.pop("tokenizer"), texts)
            rows["HF recipe (lr 5e-5, 3 epochs)"] = r
            if args.tuned:
                r = recipe(train, test, tags, 1.5e-4, 6, tmp / "recipe-tuned")
                r.pop("model_dir"), r.pop("tokenizer")
                rows["HF recipe tuned (lr 1.5e-4, 6 epochs)"] = r
            r = ours(
                tmp / "train.conll",
                tmp / "test.conll",
                tmp / "equal",
                lr=5e-5,
                epochs=3,
                batch_size=16,
            )
            r.pop("model_dir")
            rows["warmstart, recipe settings"] = r
        r = ours(tmp / "train.conll", tmp / "test.conll", tmp / "ours", **json.loads(args.options))
        model_dir = r.pop("model_dir")
        r["infer_per_s"] = tagger_speed(model_dir, texts)
        r["f1_torch_fp32"] = backend_f1(model_dir, test, "torch", "none")
        r["f1_onnx_int8"] = backend_f1(model_dir, test, "onnx", "int8")
        rows["warmstart defaults"] = r
        if args.fp32:
            r = ours(
                tmp / "train.conll",
                tmp / "test.conll",
                tmp / "fp32",
                precision="fp32",
                **json.loads(args.options),
            )
            r.pop("model_dir")
            rows["warmstart defaults, --precision fp32"] = r
    table(rows, len(train), len(test))


def table(rows: dict, n_train: int, n_test: int) -> None:
    print(
        f"\nWNUT-16, bundled MiniLM, {n_train} train / {n_test} test tweets,"
        f" {torch.get_num_threads()} threads"
    )
    print(f"{'run':<40}{'entity F1':>10}{'train s':>9}{'train tw/s':>12}{'infer tw/s':>12}")
    for name, r in rows.items():
        infer = f"{r['infer_per_s']:.1f}" if "infer_per_s" in r else ""
        print(
            f"{name:<40}{r['f1']:>10.3f}{r['train_seconds']:>9.0f}{r['train_per_s']:>12.1f}{infer:>12}"
        )
    base = rows.get("HF recipe (lr 5e-5, 3 epochs)")
    if base:
        eq, ws = rows["warmstart, recipe settings"], rows["warmstart defaults"]
        print(
            f"training speed at equal settings: {eq['train_per_s'] / base['train_per_s']:.2f}x the"
            " recipe"
        )
        print(f"inference: {ws['infer_per_s'] / base['infer_per_s']:.2f}x the pipeline")
        print(
            f"defaults: entity F1 {ws['f1']:.3f} in {ws['train_seconds']:.0f} s of training "
            f"(recipe {base['f1']:.3f} in {base['train_seconds']:.0f} s)"
        )
    ws = rows["warmstart defaults"]
    print(
        f"entity F1 of the saved model by backend: torch fp32 {ws['f1_torch_fp32']:.3f}, "
        f"onnx int8 {ws['f1_onnx_int8']:.3f} (the default on CPUs)"
    )


if __name__ == "__main__":
    main()
