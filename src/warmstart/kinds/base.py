"""The contract of a task kind, from training to serving: everything that depends on what is being
predicted, in one class per kind (peft's ``BaseTuner`` + ``register_peft_method`` is the model).

Training (one instance per `finetune` run, built from the user's options before any work):

    __init__(cfg)                   read and check the data: bad input fails before a run folder exists
    choices(cfg)                    the options this kind decides when the user did not (lr, epochs,
                                    the metric that picks the best epoch...), each with its reason
    describe()                      the run's first log line (e.g. the labels)
    load(cfg)                       (what the model is, model with this kind's head, tokenizer)
    encode(tokenizer, role, n, cfg) one part, tokenised once, with its targets
    job(cfg, tokenizer, data)       what either engine needs: batches, valid metrics, saving
    finish(cfg, model_dir, run)     after training, before the test: calibration, thresholds...
    test(cfg, model_dir, run)       the saved model scored on the test part, through ``score``
    summary(metrics), report(m)     the run's last log line and finetune's printed result

A saved model read back (class methods: no training run):

    reads                           what saved folders it reads (models.registry.kind): one
                                    ``ModelKind`` each, with its description and serving routes
    evaluate(cfg, path)             a labelled file scored: the same ``score`` the test part uses
    predict(cfg, path)              prediction records, in input order
    serve(path, source, opts)       the parts the server's routes call

The engines, run folder, resume, LoRA, backends, server and CLI are shared; nothing outside the kinds
branches on a kind. Adding one is a module in this folder and a ``register`` line in __init__.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from warmstart import distributed
from warmstart.config import (
    Choice,
    EvaluateConfig,
    FinetuneConfig,
    PredictConfig,
    refuse_inapplicable,
)
from warmstart.data.batching import Encoded
from warmstart.data.output import format_records
from warmstart.errors import UserError
from warmstart.inference.batched import predict_logits
from warmstart.models.registry import load_tokenizer, resolve
from warmstart.runs import Run
from warmstart.training.common import Job

# Options only some kinds read, named in the ``not_mine`` of the others.
CAUSAL_LM_ONLY = ("template", "chat", "system", "packing")
# The options of text-to-text fine-tuning (config.options: PairOptions, DecodeOptions,
# Seq2SeqOptions).
TEXT_TO_TEXT_ONLY = (
    "source_column",
    "target_column",
    "metrics",
    "max_new_tokens",
    "num_beams",
    "from_scratch",
    "tokenizer",
    "size",
    "vocab_size",
    "eval_samples",
)
FOR_CAUSAL_LM = (CAUSAL_LM_ONLY, "they are for --task causal-lm")
FOR_TEXT_TO_TEXT = (TEXT_TO_TEXT_ONLY, "they are for text to text: --task seq2seq or causal-lm")


@dataclass(frozen=True)
class ModelKind:
    """What a saved model folder of one kind is, for messages and the server."""

    description: str  # "a text classifier": completes "model 'x' is ..."
    endpoints: tuple[str, ...]  # the server's routes for it, e.g. ("predict", "embed")
    zeroshot: str | None = None  # the zero-shot method /zeroshot uses with it, if any


@dataclass
class Prediction:
    """One text's prediction: label, score and every class's probability (single-label); the labels
    at or above their thresholds and every label's score (multi-label); the value(s) (regression);
    or the text a text-to-text model writes."""

    text: str
    label: str | None = None
    score: float | None = None
    probabilities: dict[str, float] | None = None
    labels: list[str] | None = None
    scores: dict[str, float] | None = None
    value: float | None = None
    values: dict[str, float] | None = None
    output: str | None = None  # a text-to-text model's

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def valid_logits(model, valid, cfg, collate, device, autocast, ragged: bool = False):
    """A classifier's logits on the encoded valid part during training, in order: under `accelerate
    launch` each process scores its shard and all get every row back, once."""
    return distributed.gather_rows(
        len(valid),
        lambda idx: predict_logits(
            model,
            valid.take(idx),
            cfg.eval_batch_size,
            collate,
            device,
            autocast,
            progress=cfg.progress and distributed.is_main(),
            desc="valid",
            ragged=ragged,
        ),
    )


class TaskKind:
    """Base of every task kind; the methods a kind does not support say so in one sentence."""

    task: ClassVar[str | None] = None  # its --task name; None: a kind only read back (an encoder)
    reads: ClassVar[dict[str, ModelKind]] = {}  # models.registry.kind -> what that folder is
    # Options of other kinds that this one refuses by name: (options, what they are for).
    not_mine: ClassVar[tuple[tuple[tuple[str, ...], str], ...]] = ()
    parts: dict[str, Any]  # train/valid/test examples, read and checked by __init__

    # -- training -----------------------------------------------------------------------------
    @classmethod
    def refuse_others(cls, cfg: FinetuneConfig) -> None:
        """Options of other kinds, refused in one sentence before any file is read."""
        for names, what in cls.not_mine:
            refuse_inapplicable(cfg, names, f"--task {cls.task} ({what})")

    @classmethod
    def start(cls, cfg: FinetuneConfig) -> TaskKind:
        """The kind for a run with ``cfg`` (a subclass where the data decide, e.g. multi-label)."""
        return cls(cfg)

    def __init__(self, cfg: FinetuneConfig) -> None:
        raise UserError(f"{type(self).__name__} models are not trained by `warmstart finetune`")

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        """The options this kind decides where ``cfg`` leaves them open, with the reason."""
        return {}

    def describe(self) -> str:
        return ""

    def load(self, cfg: FinetuneConfig) -> tuple[str, torch.nn.Module, Any]:
        """(what the model is, for the log; the model with this kind's head; its tokenizer)."""
        path = resolve(cfg.model, hub=cfg)
        return f"{cfg.model} ({path})", self.load_model(path, cfg), load_tokenizer(path)

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        raise NotImplementedError

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        raise NotImplementedError

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        raise NotImplementedError

    def finish(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """Work on the saved best model before the test (e.g. tuned thresholds); its figures."""
        return {}

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        return ""

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        """What `warmstart finetune` prints when it is done."""
        return f"run folder: {result_dir}\n"

    # -- a saved model read back ------------------------------------------------------------------
    @classmethod
    def variant(cls, config: Any) -> type[TaskKind]:
        """The kind that reads the saved model with this ``config`` (e.g. a multi-label one)."""
        return cls

    @classmethod
    def describe_model(cls, model_kind: str) -> str:
        return cls.reads[model_kind].description

    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        cls.refuse_headless(cfg.model, model_kind, "to evaluate")
        return {}

    @classmethod
    def refuse_headless(cls, name: str, model_kind: str, what: str) -> None:
        """The one sentence for a model without a task head (a plain encoder or causal LM)."""
        hint = "" if what == "to evaluate" else ", or use embed or zeroshot"
        raise UserError(
            f"model '{name}' is {cls.describe_model(model_kind)}: it has no classification head"
            f" {what}; fine-tune it first (warmstart finetune){hint}"
        )

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        raise NotImplementedError

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list:
        cls.refuse_headless(cfg.model, model_kind, "to predict with")
        return []

    @classmethod
    def predict_report(cls, cfg: PredictConfig, records: list) -> str:
        return format_records([r.record() for r in records], cfg.format)

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict[str, Any]:
        """The parts the server's routes call, by ServedModel field (classifier, tagger,
        causal_lm, text_to_text); ``options``: max_length, cpu, backend, quantize, long_text,
        stride, chunk_aggregation."""
        return {}

    @classmethod
    def serve_refuses(cls, options: dict) -> list[str]:
        """The long-text flags given in ``options`` that mean nothing for this kind's server."""
        flags = (
            ("--long-text", "long_text"),
            ("--chunk-aggregation", "chunk_aggregation"),
            ("--stride", "stride"),
        )
        return [flag for flag, key in flags if options.get(key) is not None]
