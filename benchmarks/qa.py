"""Extractive question answering on SQuAD: the Hugging Face `run_qa.py` recipe vs `warmstart
finetune --task qa`, side by side in one process, on the bundled MiniLM at equal settings (256
tokens, stride 128, batch 16, lr 1e-4): exact match and F1 on ../shared/data/squad/valid.json
(other articles than training's), training speed, and inference questions/s.

The recipe is reproduced from transformers' examples/pytorch/question-answering: run_qa.py's
``prepare_train_features`` / ``prepare_validation_features`` (padded to max_length, as the script
does by default) with the Trainer, and utils_qa.py's ``postprocess_qa_predictions`` (20 best starts x
20 best ends, answers of at most 30 tokens). Its inference is a question at a time (batch 1, its
windows padded to 256), as the pipeline serves one. Both sides are scored with the same official
SQuAD v1.1 metric (warmstart.metrics.squad_metrics).

warmstart at the same settings: dynamic padding and length-grouped batches, its windows
(data.windows: the overlap is at most half a window, so 128 becomes about 115 at 256 tokens:
fewer windows per question), the precision it measures on this CPU, and `evaluate` on its default
CPU backend for predict and serve (ONNX Runtime int8, one window per call, a call per core) and on
PyTorch fp32.

Reduced scale (the default; what fits a shared machine in about ten minutes):

    .venv/bin/python benchmarks/qa.py

Full scale (the issue's: 1,500 training questions, 2 epochs, 300 valid questions):

    .venv/bin/python benchmarks/qa.py --train 1500 --epochs 2 --valid 300 --speed 100
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad"
MAX_LENGTH, STRIDE, BATCH, LR = 256, 128, 16, 1e-4


# -- the recipe (transformers examples/pytorch/question-answering) ----------------------------------


def prepare_train_features(examples, tokenizer):
    """run_qa.py's, for a model that pads on the right."""
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(
        examples["question"],
        examples["context"],
        truncation="only_second",
        max_length=MAX_LENGTH,
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answers = examples["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (
            offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char
        ):
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            tokenized["start_positions"].append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            tokenized["end_positions"].append(token_end_index + 1)
    return tokenized


def prepare_validation_features(examples, tokenizer):
    """run_qa.py's: each window keeps its question's id and the offsets of its context tokens."""
    examples["question"] = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(
        examples["question"],
        examples["context"],
        truncation="only_second",
        max_length=MAX_LENGTH,
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    tokenized["example_id"] = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(examples["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [
            (o if sequence_ids[k] == 1 else None)
            for k, o in enumerate(tokenized["offset_mapping"][i])
        ]
    return tokenized


def postprocess_qa_predictions(
    examples, features, predictions, n_best_size: int = 20, max_answer_length: int = 30
) -> dict[str, str]:
    """utils_qa.py's, for SQuAD v1.1 (no null answer)."""
    import numpy as np

    all_start_logits, all_end_logits = predictions
    example_id_to_index = {k: i for i, k in enumerate(examples["id"])}
    features_per_example = collections.defaultdict(list)
    for i, feature in enumerate(features):
        features_per_example[example_id_to_index[feature["example_id"]]].append(i)
    all_predictions = collections.OrderedDict()
    for example_index, example in enumerate(examples):
        prelim_predictions = []
        for feature_index in features_per_example[example_index]:
            start_logits = all_start_logits[feature_index]
            end_logits = all_end_logits[feature_index]
            offset_mapping = features[feature_index]["offset_mapping"]
            start_indexes = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
            end_indexes = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if (
                        start_index >= len(offset_mapping)
                        or end_index >= len(offset_mapping)
                        or offset_mapping[start_index] is None
                        or len(offset_mapping[start_index]) < 2
                        or offset_mapping[end_index] is None
                        or len(offset_mapping[end_index]) < 2
                    ):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append(
                        {
                            "offsets": (
                                offset_mapping[start_index][0],
                                offset_mapping[end_index][1],
                            ),
                            "score": start_logits[start_index] + end_logits[end_index],
                        }
                    )
        predictions = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)
        context = example["context"]
        best = predictions[0]["offsets"] if predictions else (0, 0)
        all_predictions[example["id"]] = context[best[0] : best[1]]
    return all_predictions


def recipe(train, valid, speed, epochs: float, out: Path) -> dict:
    """The recipe: train with the Trainer, predict the valid windows, post-process, score; then
    answer ``speed`` questions one at a time."""
    import torch
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    from warmstart.metrics import squad_metrics
    from warmstart.models.registry import resolve

    path = resolve("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    train_features = train.map(
        lambda b: prepare_train_features(b, tokenizer),
        batched=True,
        remove_columns=train.column_names,
    )
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=LR,
        num_train_epochs=epochs,
        save_strategy="no",
        report_to="none",
        logging_steps=50,
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_features,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    t = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t
    features = valid.map(
        lambda b: prepare_validation_features(b, tokenizer),
        batched=True,
        remove_columns=valid.column_names,
    )
    feed = features.remove_columns(["example_id", "offset_mapping"])
    start, end = trainer.predict(feed).predictions[:2]
    answers = postprocess_qa_predictions(valid, features, (start, end))
    m = squad_metrics([answers[i] for i in valid["id"]], [a["text"] for a in valid["answers"]])
    # Inference as the pipeline serves it: one question at a time, its windows padded to 256.
    model = trainer.model.eval()
    t = time.perf_counter()
    for k in range(len(speed)):
        one = speed.select([k])
        feats = one.map(
            lambda b: prepare_validation_features(b, tokenizer),
            batched=True,
            remove_columns=one.column_names,
        )
        inputs = {
            c: torch.tensor(feats[c]) for c in ("input_ids", "attention_mask", "token_type_ids")
        }
        with torch.inference_mode():
            out_k = model(**inputs)
        postprocess_qa_predictions(
            one, feats, (out_k.start_logits.numpy(), out_k.end_logits.numpy())
        )
    infer_seconds = time.perf_counter() - t
    return {
        "exact_match": m["exact_match"],
        "f1": m["f1"],
        "train_seconds": train_seconds,
        "train_windows": len(train_features) * epochs,
        "train_windows_per_s": len(train_features) * epochs / train_seconds,
        "train_questions_per_s": len(train) * epochs / train_seconds,
        "questions_per_s": len(speed) / infer_seconds,
        "backend": "torch fp32, batch 1",
    }


# -- warmstart ------------------------------------------------------------------------------------


def ours(args, valid_file: Path, speed_file: Path, out: Path) -> dict:
    import warmstart

    result = warmstart.finetune(
        task="qa",
        data=str(SQUAD / "train.json"),
        max_train_samples=args.train,
        max_length=MAX_LENGTH,
        stride=STRIDE,
        batch_size=BATCH,
        lr=LR,
        epochs=args.epochs,
        out=str(out),
        overwrite=True,
        progress=False,
    )
    m = result.metrics
    scored = warmstart.evaluate(
        model=str(out), data=str(valid_file), backend="torch", progress=False
    )
    # predict's and serve's CPU default, ONNX Runtime int8 (evaluate itself defaults to the saved
    # model as it is, PyTorch fp32).
    fast = warmstart.evaluate(model=str(out), data=str(speed_file), quantize="int8", progress=False)
    torch_speed = warmstart.evaluate(
        model=str(out), data=str(speed_file), backend="torch", batch_size=1, progress=False
    )
    default_scored = warmstart.evaluate(
        model=str(out), data=str(valid_file), quantize="int8", progress=False
    )
    return {
        "exact_match": scored.metrics["exact_match"],
        "f1": scored.metrics["f1"],
        "exact_match_default_backend": default_scored.metrics["exact_match"],
        "f1_default_backend": default_scored.metrics["f1"],
        "train_seconds": m["train_loop_seconds"],
        "train_windows": m["train_samples"],
        "train_windows_per_s": m["train_samples_per_second"],
        "train_questions_per_s": args.train * args.epochs / m["train_loop_seconds"],
        "questions_per_s": fast.metrics["questions_per_s"],
        "questions_per_s_torch_batch1": torch_speed.metrics["questions_per_s"],
        "backend": fast.metrics["backend"],
        "precision": m["precision"],
    }


def squad_subset(path: Path, n: int, out: Path) -> Path:
    """The first ``n`` questions of a SQuAD file, as SQuAD JSON (both sides read the same)."""
    doc = json.loads(path.read_text())
    left, data = n, []
    for article in doc["data"]:
        paras = []
        for p in article["paragraphs"]:
            if left <= 0:
                break
            qas = p["qas"][:left]
            left -= len(qas)
            paras.append({**p, "qas": qas})
        if paras:
            data.append({**article, "paragraphs": paras})
    out.write_text(json.dumps({"version": doc.get("version"), "data": data}))
    return out


def as_dataset(path: Path):
    from datasets import Dataset

    from warmstart.data.squad import read_qa

    ex = read_qa(str(path))
    return Dataset.from_dict(
        {
            "id": ex.ids,
            "question": ex.questions,
            "context": ex.contexts,
            "answers": [
                {"text": [t for t, _ in a], "answer_start": [s for _, s in a]} for a in ex.answers
            ],
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=300, help="training questions (train.json's first)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument(
        "--valid", type=int, default=200, help="valid questions scored (valid.json's first)"
    )
    p.add_argument("--speed", type=int, default=50, help="questions timed one at a time")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="qa-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    train_file = squad_subset(SQUAD / "train.json", args.train, out / "train.json")
    valid_file = squad_subset(SQUAD / "valid.json", args.valid, out / "valid.json")
    speed_file = squad_subset(SQUAD / "valid.json", args.speed, out / "speed.json")
    theirs = recipe(
        as_dataset(train_file),
        as_dataset(valid_file),
        as_dataset(speed_file),
        args.epochs,
        out / "hf",
    )
    print("recipe:", json.dumps({k: v for k, v in theirs.items() if k != "_"}), flush=True)
    mine = ours(args, valid_file, speed_file, out / "warmstart")
    print("warmstart:", json.dumps(mine), flush=True)
    rows = [
        ("exact match (valid)", theirs["exact_match"], mine["exact_match"], ""),
        ("F1 (valid)", theirs["f1"], mine["f1"], ""),
        ("training windows", theirs["train_windows"], mine["train_windows"], ""),
        ("training windows/s", theirs["train_windows_per_s"], mine["train_windows_per_s"], "x"),
        (
            "training questions/s",
            theirs["train_questions_per_s"],
            mine["train_questions_per_s"],
            "x",
        ),
        ("inference questions/s", theirs["questions_per_s"], mine["questions_per_s"], "x"),
    ]
    print(
        f"\n{args.train} training questions, {args.epochs:g} epoch(s), {args.valid} valid questions,"
        f" {MAX_LENGTH} tokens, stride {STRIDE}, batch {BATCH}, lr {LR:g}; warmstart precision"
        f" {mine['precision']}, inference {mine['backend']} (torch fp32 batch 1:"
        f" {mine['questions_per_s_torch_batch1']:.1f} questions/s; default-backend EM/F1"
        f" {mine['exact_match_default_backend']:.1f}/{mine['f1_default_backend']:.1f})\n"
    )
    print("| | HF run_qa.py recipe | warmstart | ratio |\n|---|---|---|---|")
    for name, a, b, ratio in rows:
        r = f"{b / a:.2f}x" if ratio and a else ""
        print(f"| {name} | {a:.1f} | {b:.1f} | {r} |")


if __name__ == "__main__":
    main()
