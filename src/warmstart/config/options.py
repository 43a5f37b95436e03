"""Option groups shared by several commands, and ``opt``: a dataclass field with the help text the CLI shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None, short: str | None = None) -> Any:
    """A config field with the help text the CLI shows."""
    meta = {"help": help, "choices": choices, "short": short}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# How prompt scoring cuts an overlong text (prompting.PromptScorer): head+tail keeps the first quarter and
# the last three quarters, the best of the cuts Sun et al. (2019) compared for BERT on IMDb.
TRUNCATIONS = ("head", "head+tail")


@dataclass
class DataOptions:
    """Where the labelled table is and which columns hold text and labels (shared by finetune/evaluate)."""

    text_column: str | None = opt(None, "column with the text (auto: text, review, sentence, ...)")
    text_pair_column: str | None = opt(None, "optional second text column for sentence-pair tasks")
    label_column: str | None = opt(None, "column with the label (auto: label, sentiment, ...)")
    limit: int | None = opt(None, "read only the first N rows of each input file (quick runs)")
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: the model's limit)")


@dataclass
class TagOptions:
    """Token tagging (--task tokens): which tags are read and how long sentences are cut (finetune/evaluate)."""

    tag_column: str | None = opt(None, "tokens: the tag column, a number in a CoNLL file (default: the last; 0 is "
                                       "the token) or a column name in a JSONL/Parquet table (auto: tags, ner_tags...)")
    base_tags: bool = opt(False, "tokens: strip Brown-style tag modifiers (-tl, -hl, -nc, fw-, a trailing *): "
                                 "np-tl -> np, fw-in -> in; contractions keep both parts (vbz+rb)")
    stride: int | None = opt(None, "tokens: sub-tokens shared by consecutive windows of a sentence longer than "
                                   "--max-length (default: a quarter of the window)")


@dataclass
class TrainOptions:
    """How to train: shared by finetune and pretrain, and by both engines."""

    epochs: float = opt(3.0, "number of passes over the training data")
    max_steps: int | None = opt(None, "stop after this many optimizer steps (overrides --epochs)")
    batch_size: int = opt(16, "training batch size per device")
    eval_batch_size: int | None = opt(None, "evaluation batch size (default: 2x batch size)")
    grad_accum: int = opt(1, "gradient accumulation steps")
    lr: float = opt(5e-5, "peak learning rate")
    optimizer: str = opt("adamw", "optimizer", choices=("adamw", "adam"))
    weight_decay: float = opt(0.01, "weight decay (AdamW; not applied to biases and LayerNorm)")
    warmup_ratio: float = opt(0.1, "fraction of steps with linear warm-up")
    scheduler: str = opt("linear", "learning-rate schedule after warm-up", choices=("linear", "constant"))
    attention_dropout: float | None = opt(
        0.0, "dropout on attention probabilities (none: keep the model's, 0.1 for BERT). 0 by default: with it, "
             "PyTorch's fused CPU attention falls back to a kernel ~7x slower; hidden dropout still regularises")
    max_grad_norm: float | None = opt(1.0, "clip gradients to this norm (none: no clipping)")
    seed: int = opt(42, "random seed for shuffling, initialisation and dropout")
    precision: str = opt("auto", "auto, fp32, bf16 or fp16 (auto: bf16 on GPUs that support it; on a CPU bf16 "
                                 "where a measured training step is ≥1.15x faster, else fp32; cached per CPU)",
                         choices=("auto", "fp32", "bf16", "fp16"))
    cpu: bool = opt(False, "train on the CPU even when a GPU is present")
    patience: int | None = opt(None, "stop when the valid metric has not improved for N epochs")
    logging_steps: int = opt(50, "log loss, learning rate and samples/s every N steps")
    logging_dir: str | None = opt(None, "also write the logged values as TensorBoard event files here "
                                        "(needs tensorboard)")
    save_steps: int | None = opt(None, "also checkpoint every N steps (always at epoch end)")
    save_total_limit: int = opt(2, "keep the last K checkpoints")
    resume: bool = opt(False, "continue from the last checkpoint in --out")
    overwrite: bool = opt(False, "replace an existing run folder")
    progress: bool = opt(True, "show progress bars")
    num_processes: int = opt(1, "train with N local processes: re-runs this command under `accelerate launch` "
                                "(one per GPU, or gloo on the CPU); --batch-size is per process")


@dataclass
class InferenceOptions:
    """How a saved classifier runs (shared by evaluate and predict)."""

    batch_size: int | None = opt(None, "texts per forward pass (default: tuned for the device: up to 2,048 tokens "
                                       "a batch on CPUs, 64 texts on GPUs; int8 always runs one text at a time, one "
                                       "per core, so that no text's scores depend on its neighbours)")
    backend: str = opt("auto", "auto (ONNX Runtime on CPUs where onnxruntime is installed, else PyTorch), torch or "
                               "onnx (exports once into the model folder's onnx/ and reuses it)",
                       choices=("auto", "torch", "onnx"))
    quantize: str = opt("auto", "int8: dynamic int8 weights (CPU); auto: int8 with the onnx backend, none with torch",
                        choices=("auto", "none", "int8"))
    precision: str = opt("auto", "torch backend: fp32 or bf16 weights (auto: bf16 on GPUs that support it; on a CPU "
                                 "the faster of the two, measured once per CPU and model)",
                         choices=("auto", "fp32", "bf16"))


@dataclass
class FeatureOptions:
    """Which hidden states become features (shared by embed, probe and the similarity methods)."""

    pooling: str = opt("auto", "how token states become one vector: auto is the model's own (sentence-transformers "
                               "config), else mean for encoders and last for decoders",
                       choices=("auto", "cls", "mean", "max", "last"))
    layers: str = opt("-1", "hidden layer(s): -1 (last), a list 2,4,6, or a range like -4: (0 is the embeddings)")
    layer_mode: str = opt("concat", "combine several --layers by concatenating or averaging them",
                          choices=("concat", "mean"))
    normalize: bool = opt(False, "L2-normalise each feature vector")
    precision: str = opt("auto", "auto (bf16 on GPUs that support it, else fp32), fp32 or bf16",
                         choices=("auto", "fp32", "bf16"))
