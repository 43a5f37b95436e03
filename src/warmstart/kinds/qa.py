"""Extractive question answering (SQuAD): a start and an end logit on every token, the answer the
best span of the context.

Data: SQuAD JSON (v1.1, and v2 with questions that have no answer) or tables with question, context
and answers columns (data.squad). Contexts longer than --max-length are read in windows with
--stride (data.windows); a training window points at its answer's first and last tokens, or at
[CLS] when the answer is not inside it. The answer of a saved model is the best span over all
windows (inference.qa), scored with the official SQuAD exact match and F1 (metrics.squad_metrics).
The saved folder is a plain ``...ForQuestionAnswering`` checkpoint with its tokenizer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForQuestionAnswering

from warmstart import distributed
from warmstart.config import (
    Choice,
    EvaluateConfig,
    FinetuneConfig,
    PredictConfig,
    given_flags,
    refuse_inapplicable,
)
from warmstart.data.batching import Encoded, collator, pad_multiple
from warmstart.data.hub import evaluated
from warmstart.data.output import format_records
from warmstart.data.squad import QAExamples, QAWindows, encode_qa, read_qa
from warmstart.data.tables import load_splits
from warmstart.errors import UserError
from warmstart.files import atomic_write_json, atomic_write_text
from warmstart.inference.qa import Answer, Reader, best_spans, best_threshold, questions
from warmstart.kinds.base import FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT, ModelKind, TaskKind, valid_logits
from warmstart.metrics import format_squad_metrics, softmax, squad_metrics
from warmstart.models.classifier import SpanLogits
from warmstart.models.registry import dropout_of, load_options, set_dropout
from warmstart.runs import Run
from warmstart.training.common import Job

METRICS = ("f1", "exact_match")
# Options of other kinds: a question-answering model reads question, context and answers.
NOT_QA = (
    "text_column",
    "text_pair_column",
    "label_column",
    "problem",
    "label_separator",
    "class_weights",
    "sampler",
    "long_text",
    "chunk_aggregation",
    "tag_column",
    "label_names",
    "label_all_subtokens",
    "label_smoothing",
)


def references(ex: QAExamples) -> list[list[str]]:
    return [[t for t, _ in refs] for refs in ex.answers]


def span_loss(rows: list[np.ndarray], data: Encoded) -> float:
    """The model's own valid loss: mean cross-entropy of the start and of the end position."""
    loss = 0.0
    for r, s, e in zip(rows, data.features["start_positions"], data.features["end_positions"]):
        p = softmax(r.T)  # (2, tokens): start and end probabilities
        loss -= (np.log(max(p[0, s], 1e-12)) + np.log(max(p[1, e], 1e-12))) / 2
    return float(loss / max(len(rows), 1))


class SpanMetrics:
    """The Trainer's `compute_metrics` with `batch_eval_metrics=True`: keeps each valid window's
    (tokens, 2) logits, in dataset order (training.trainer scores the valid rows in order), and
    scores the answers once all windows are in."""

    def __init__(self, kind: ExtractiveQA, cfg: FinetuneConfig):
        self.kind, self.cfg = kind, cfg
        self.rows: list[np.ndarray] = []

    def __call__(self, pred, compute_result: bool) -> dict | None:
        start, end = (t.float().cpu().numpy() for t in pred.predictions)
        lengths = self.kind.windows["valid"].data.lengths
        for s, e in zip(start, end):
            n = lengths[len(self.rows)]
            self.rows.append(np.stack([s[:n], e[:n]], -1))
        if not compute_result:
            return None
        rows, self.rows = self.rows, []
        m = self.kind.score(self.cfg, rows)
        return {k: m[k] for k in METRICS}


class ExtractiveQA(TaskKind):
    task = "qa"
    not_mine = (FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT, (NOT_QA, "other tasks: qa reads SQuAD data"))
    reads = {"qa": ModelKind("a question-answering model", ("answer", "embed"))}

    def __init__(self, cfg: FinetuneConfig):
        if cfg.metric_for_best not in (None, "loss", *METRICS):
            raise UserError(
                f"--metric-for-best {cfg.metric_for_best} is not measured for question answering;"
                f" choose one of loss, {', '.join(METRICS)}"
            )
        self.parts: dict[str, QAExamples] = load_splits(cfg, read=read_qa)
        for role, part in self.parts.items():
            if role == "train" and all(part.impossible):
                raise UserError(f"{part.source}: no question has an answer to learn from")
        self.with_negatives = any(p.with_negatives for p in self.parts.values())
        self.windows: dict[str, QAWindows] = {}

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        made = {}
        if cfg.metric_for_best is None:
            made["metric_for_best"] = Choice("f1", "SQuAD's headline metric")
        if cfg.lr is None:
            made["lr"] = Choice(
                1e-4, "a small encoder's rate for SQuAD (the issue's recipe setting)"
            )
        if cfg.epochs is None:
            made["epochs"] = Choice(2.0, "SQuAD's usual 2 epochs (BERT's recipe)")
        return made

    def describe(self) -> str:
        v2 = "; SQuAD v2: some questions have no answer" if self.with_negatives else ""
        windowed = (
            "; contexts cut into windows: "
            + ", ".join(f"{r} {w.windowed}" for r, w in self.windows.items())
            if self.windows
            else ""
        )
        return f"extractive question answering{v2}{windowed}"

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        config = AutoConfig.from_pretrained(path, **load_options(path))
        set_dropout(config, dropout_of(cfg))
        # Saved with the model, so that evaluate, predict and serve read it as it was trained.
        config.qa_with_negatives = self.with_negatives
        config.qa_stride = cfg.stride
        try:
            return AutoModelForQuestionAnswering.from_pretrained(
                path, config=config, **load_options(path)
            )
        except ValueError as e:
            raise UserError(
                f"model '{path}' cannot be used for question answering: "
                f"{str(e).strip().splitlines()[0]}"
            ) from None

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        # Every part with its answers' positions: the valid loss needs them too.
        w = encode_qa(tokenizer, self.parts[role], max_length, cfg.stride if cfg else None, True)
        self.windows[role] = w
        return w.data

    def score(self, cfg: FinetuneConfig, rows: list[np.ndarray], role: str = "valid") -> dict:
        part = self.parts[role]
        threshold = 0.0 if self.with_negatives else None
        answers = best_spans(self.windows[role], rows, part, cfg.max_answer_length, threshold)
        return squad_metrics([a.answer for a in answers], references(part))

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        collate = collator(tokenizer, pad_multiple(cfg.cpu))
        valid = data.get("valid")

        def evaluate(model, device, autocast) -> dict:
            rows = valid_logits(SpanLogits(model), valid, cfg, collate, device, autocast, True)
            m = self.score(cfg, rows)
            return {"loss": span_loss(rows, valid), **{k: m[k] for k in METRICS}}

        def save(model, folder: Path, weights: dict | None = None) -> None:
            model.save_pretrained(folder, state_dict=weights)
            tokenizer.save_pretrained(folder)

        return Job(
            train=data["train"],
            lengths=data["train"].lengths,
            collate=collate,
            save=save,
            evaluate=evaluate if valid is not None else None,
            valid=valid,
            trainer_metrics=lambda: SpanMetrics(self, cfg),
            metric_names=METRICS,
            batch_loss=lambda out, batch: float(out.loss.detach().float().item()),
            tokenizer=tokenizer,
            unit="question windows",
        )

    def finish(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """SQuAD v2: the null-score threshold with the best valid F1, saved in config.json."""
        if not self.with_negatives or "valid" not in self.parts or not run.main:
            return {}
        reader = Reader.load(str(model_dir), cfg.max_length, cfg.cpu, stride=cfg.stride)
        reader.null_threshold = float("inf")  # every best span, with its null-score difference
        answers = reader.answer(self.parts["valid"], cfg.eval_batch_size, cfg.max_answer_length)
        threshold = best_threshold(answers, references(self.parts["valid"]))
        config_file = model_dir / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        atomic_write_json(config_file, {**config, "qa_null_threshold": threshold})
        run.say(f"null-score threshold {threshold:.3f}: the best F1 on the valid part")
        return {"null_threshold": threshold}

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        # Reloaded from disk through the path `evaluate` takes: proves the saved model complete.
        reader = Reader.load(str(model_dir), cfg.max_length, cfg.cpu, stride=cfg.stride)
        t = time.time()
        part = self.parts["test"]
        answers = reader.answer(part, cfg.eval_batch_size, cfg.max_answer_length)
        metrics = squad_metrics([a.answer for a in answers], references(part))
        run.say("test set: " + format_squad_metrics(metrics))
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return f"test exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f} on {m['questions']}"

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        test = metrics.get("test") or {}
        return f"run folder: {result_dir}\n" + (
            f"test exact match: {test['exact_match']:.2f}\ntest F1: {test['f1']:.2f}\n"
            if test
            else ""
        )

    # -- a saved model read back ------------------------------------------------------------------
    @classmethod
    def load_saved(cls, cfg: EvaluateConfig | PredictConfig) -> Reader:
        return Reader.load(
            cfg.model,
            cfg.max_length,
            cfg.cpu,
            cfg.backend,
            cfg.quantize,
            cfg.precision,
            cfg.stride,
            cfg.null_threshold,
            hub=cfg,
        )

    @classmethod
    def refuse_not_qa(cls, cfg: EvaluateConfig | PredictConfig) -> None:
        names = tuple(n for n in NOT_QA if hasattr(cfg, n))
        refuse_inapplicable(cfg, names, "a question-answering model")

    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        cls.refuse_not_qa(cfg)
        ex = read_qa(evaluated(cfg, cfg.data), cfg.limit)
        reader = cls.load_saved(cfg)
        t0 = time.time()
        answers = reader.answer(ex, cfg.batch_size, cfg.max_answer_length, cfg.progress)
        seconds = time.time() - t0
        metrics = squad_metrics([a.answer for a in answers], references(ex))
        metrics.update(
            model=reader.path,
            data=str(Path(cfg.data).resolve()),
            backend=reader.plan.name,
            windowed_contexts=reader.last_windowed,
            seconds=round(seconds, 2),
            questions_per_s=round(len(ex) / max(seconds, 1e-9), 2),
        )
        if cfg.predictions and distributed.is_main():
            lines = [json.dumps(a.record(), ensure_ascii=False) for a in answers]
            atomic_write_text(Path(cfg.predictions), "\n".join(lines) + "\n")
        return metrics

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        return format_squad_metrics(metrics)

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list[Answer]:
        cls.refuse_not_qa(cfg)
        if given_flags(cfg, ("texts",)):
            raise UserError("a question-answering model reads --question and --context, not texts")
        if cfg.question or cfg.context:
            if not cfg.question or not cfg.context:
                raise UserError("--question and --context go together")
            ex = questions([(q, cfg.context) for q in cfg.question])
        elif cfg.input:
            ex = read_qa(evaluated(cfg, cfg.input), cfg.limit, labelled=False)
        else:
            raise UserError(
                "nothing to answer: pass --question Q --context C, or --input with question and"
                " context (SQuAD JSON or a table)"
            )
        reader = cls.load_saved(cfg)
        return reader.answer(ex, cfg.batch_size, cfg.max_answer_length, cfg.progress)

    @classmethod
    def predict_report(cls, cfg: PredictConfig, records: list) -> str:
        return format_records([a.record() for a in records], cfg.format)

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict:
        reader = Reader.load(
            path,
            max_length=options.get("max_length"),
            cpu=options.get("cpu", False),
            backend=options.get("backend", "torch"),
            quantize=options.get("quantize", "none"),
            stride=options.get("stride"),
        )
        return {"reader": reader}

    @classmethod
    def serve_refuses(cls, options: dict) -> list[str]:
        # --stride is a question-answering model's too (its windows over a long context).
        return [f for f in super().serve_refuses(options) if f != "--stride"]
