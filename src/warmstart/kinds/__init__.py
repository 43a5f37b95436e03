"""Task kinds: what `finetune` trains and what `evaluate`, `predict` and `serve` read back. A kind
brings its data reading, head, encoding and collator, loss, metrics, saving, scoring of a saved
model, prediction records and serving parts (the contract: ``base.TaskKind``); the engines, run
folder, resume, CLI, backends and server are shared. One module per kind, registered here:

    sequence   sequence classification: one label per text (or text pair)
    problems   the same for multi-label (a set of labels per text) and regression (numbers)
    tokens     token classification: a tag per word (named entities, part of speech)
    seq2seq    text to text: an encoder-decoder writes a target text for each source text
    causal_lm  instruction tuning of a causal LM on text pairs or multi-turn conversations: the loss
               on the completion (the assistant's turns) only
    dpo        preference tuning of a causal LM on chosen/rejected replies (DPO, IPO, ORPO)
    encoder    a plain pre-trained encoder: read back only (embed, zero-shot, retrieval evaluation)
    embedding  a sentence-embedding model trained on (anchor, positive) pairs, in-batch negatives
    rerank     a cross-encoder scoring (query, passage) pairs: re-ranks a first stage, /rerank
    qa         extractive question answering: the answer span of a context (SQuAD)

The one registry is keyed both by ``--task`` and by what a saved model folder is
(models.registry.kind): adding a kind is one module and one ``register`` line below."""

from __future__ import annotations

from typing import Any

from warmstart.errors import UserError
from warmstart.kinds.base import ModelKind, Prediction, TaskKind
from warmstart.kinds.causal_lm import CausalLMTuning
from warmstart.kinds.dpo import PreferenceTuning
from warmstart.kinds.embedding import EmbeddingTuning
from warmstart.kinds.encoder import Encoder
from warmstart.kinds.problems import MultiLabelClassification, Regression
from warmstart.kinds.qa import ExtractiveQA
from warmstart.kinds.rerank import RerankTuning
from warmstart.kinds.seq2seq import Seq2Seq
from warmstart.kinds.sequence import SequenceClassification
from warmstart.kinds.tokens import TokenClassification
from warmstart.models.registry import kind as model_kind

REGISTRY: list[type[TaskKind]] = []


def register(cls: type[TaskKind]) -> type[TaskKind]:
    """Add a kind: its --task name and the saved-model kinds it reads must be new."""
    taken = {k for c in REGISTRY for k in c.reads}
    if cls.task in tasks() or taken & set(cls.reads):
        raise ValueError(f"{cls.__name__}: its task or model kinds are registered already")
    REGISTRY.append(cls)
    return cls


def tasks() -> tuple[str, ...]:
    """The --task names, in registration order."""
    return tuple(c.task for c in REGISTRY if c.task is not None)


def for_task(name: str) -> type[TaskKind]:
    for cls in REGISTRY:
        if cls.task == name:
            return cls
    raise UserError(f"--task {name}: not a task (choose one of {', '.join(tasks())})")


def for_model(config: Any) -> tuple[type[TaskKind], str]:
    """(the kind that reads a saved model with this config, what the folder is)."""
    found = model_kind(config)
    for cls in REGISTRY:
        if found in cls.reads:
            return cls.variant(config), found
    raise UserError(f"no task kind reads a model of kind '{found}'")


def describe(found: str) -> ModelKind:
    """What a saved model of kind ``found`` is (its description, routes, zero-shot method)."""
    for cls in REGISTRY:
        if found in cls.reads:
            return cls.reads[found]
    raise UserError(f"no task kind reads a model of kind '{found}'")


for _kind in (SequenceClassification, TokenClassification, Seq2Seq, CausalLMTuning, Encoder):
    register(_kind)
register(EmbeddingTuning)  # retrieval: a bi-encoder and a cross-encoder
register(RerankTuning)
register(ExtractiveQA)
register(PreferenceTuning)
DEFAULT = SequenceClassification.task
# --task -> the kind for a run's options: the registry seen by task name.
KINDS = {cls.task: cls.start for cls in REGISTRY if cls.task is not None}

__all__ = [
    "DEFAULT",
    "KINDS",
    "REGISTRY",
    "ModelKind",
    "MultiLabelClassification",
    "Regression",
    "SequenceClassification",
    "Prediction",
    "TaskKind",
    "describe",
    "for_model",
    "for_task",
    "register",
    "tasks",
]
