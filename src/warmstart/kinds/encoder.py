"""A plain pre-trained encoder (minilm, a BERT folder without a task head): read back only. It
embeds texts and classifies them zero-shot by similarity; `evaluate` and `predict` say that it
needs fine-tuning first. (Training an embedding model of its own is a kind to come.)"""

from __future__ import annotations

from warmstart.kinds.base import ModelKind, TaskKind


class Encoder(TaskKind):
    task = None  # not a --task: `finetune` adds a head and trains another kind
    reads = {"encoder": ModelKind("a plain encoder", ("embed", "zeroshot"), zeroshot="similarity")}
