"""Sequence classification: one label per text (or text pair), a classification head on the first token."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from warmstart import distributed, plots
from warmstart.config import FinetuneConfig, given_flags
from warmstart.data.batching import Encoded, collator, encode
from warmstart.data.tables import LabelMap, load_splits
from warmstart.errors import UserError
from warmstart.inference.batched import predict_logits
from warmstart.inference.classifier import Classifier
from warmstart.metrics import classification_metrics, cross_entropy, format_table
from warmstart.models.classifier import load_classifier
from warmstart.runs import Run
from warmstart.training.common import Job

METRICS = ("accuracy", "f1_macro")  # valid metrics besides the loss, for --metric-for-best


class StreamingMetrics:
    """The Trainer's `compute_metrics` with `batch_eval_metrics=True`: keeps one predicted id per row, never all
    logits."""

    def __init__(self, names: list[str]):
        self.names = names
        self.y: list[np.ndarray] = []
        self.p: list[np.ndarray] = []

    def __call__(self, pred, compute_result: bool) -> dict | None:
        self.p.append(pred.predictions.argmax(-1).cpu().numpy())
        self.y.append(pred.label_ids.cpu().numpy())
        if not compute_result:
            return None
        m = classification_metrics(np.concatenate(self.y), np.concatenate(self.p), self.names)
        self.y, self.p = [], []
        return {k: m[k] for k in METRICS}


class SequenceClassification:
    name = "sequence"

    def __init__(self, cfg: FinetuneConfig):
        # Options first: a tagging option given by mistake is named before any file is read.
        given = given_flags(cfg, ("tag_column", "base_tags", "stride", "label_all_subtokens"))
        if given:
            raise UserError(f"{', '.join(given)} only apply to --task tokens")
        if cfg.metric_for_best not in (None, "loss", *METRICS):
            raise UserError(f"--metric-for-best {cfg.metric_for_best} is for --task tokens; choose one of loss, "
                            f"{', '.join(METRICS)}")
        cfg.metric_for_best = cfg.metric_for_best or "accuracy"
        cfg.epochs = 3.0 if cfg.epochs is None else cfg.epochs
        cfg.lr = 5e-5 if cfg.lr is None else cfg.lr
        self.parts = load_splits(cfg)
        names = [n.strip() for n in cfg.label_names.split(",")] if cfg.label_names else None
        self.labels = LabelMap.from_examples(self.parts["train"], names)
        self.y = {role: self.labels.encode(part) for role, part in self.parts.items()}  # unknown labels fail now

    def describe(self) -> str:
        return f"labels {self.labels.names}"

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        return load_classifier(path, self.labels.names, self.labels.values, cfg.attention_dropout)

    def encode(self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None) -> Encoded:
        return encode(tokenizer, self.parts[role], max_length, self.y[role])

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        collate = collator(tokenizer)
        valid = data.get("valid")

        def evaluate(model, device, autocast) -> dict:
            # Under `accelerate launch` each process scores its shard; all get every row back, once, in order.
            logits = distributed.gather_rows(len(valid), lambda idx: predict_logits(
                model, valid.take(idx), cfg.eval_batch_size, collate, device, autocast,
                progress=cfg.progress and distributed.is_main(), desc="valid"))
            m = classification_metrics(valid.labels, logits.argmax(1), self.labels.names)
            return {"loss": cross_entropy(logits, valid.labels), **{k: m[k] for k in METRICS}}

        def accuracy(out, batch) -> tuple[int, int]:
            return int((out.logits.argmax(-1) == batch["labels"]).sum()), len(batch["labels"])

        def batch_loss(out, batch) -> float:
            return torch.nn.functional.cross_entropy(out.logits.detach().float(), batch["labels"]).item()

        def save(model, folder: Path, weights: dict | None = None) -> None:
            model.save_pretrained(folder, state_dict=weights)
            tokenizer.save_pretrained(folder)

        return Job(train=data["train"], lengths=data["train"].lengths, collate=collate, save=save,
                   evaluate=evaluate if valid is not None else None, accuracy=accuracy, valid=valid,
                   trainer_metrics=lambda: StreamingMetrics(self.labels.names), metric_names=METRICS,
                   batch_loss=batch_loss, tokenizer=tokenizer)

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        # Reload from disk through the same path `evaluate` uses: proves the saved model is complete.
        clf = Classifier.load(str(model_dir), cfg.max_length, cfg.cpu)
        test = self.parts["test"]
        t = time.time()
        probs = distributed.gather_rows(len(test), lambda idx: clf.probabilities(
            test.take(idx), cfg.eval_batch_size, progress=cfg.progress and distributed.is_main()))
        metrics = classification_metrics(self.y["test"], probs.argmax(1), self.labels.names)
        seconds = round(time.time() - t, 2)
        if run.main:
            plots.confusion_matrix(metrics["confusion_matrix"], self.labels.names, run.dir / "confusion_matrix.png")
        run.say("test set:\n" + format_table(metrics))
        return {"test": metrics, "test_seconds": seconds}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return f"test accuracy {m['accuracy']:.4f}, macro F1 {m['f1_macro']:.4f} on {m['n']} texts"
