"""Option groups shared by several commands, and ``opt``: a dataclass field with the help text the
CLI shows."""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from typing import Any

from warmstart.errors import UserError


def opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    short: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field with the help text the CLI shows and, for numbers, the range it must lie in
    (ge: ≥, gt: >, le: ≤, lt: <), checked by ``build`` for flags, config files and keyword arguments
    alike, and shown in --help."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "choices": choices, "short": short, "bounds": bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# How prompt scoring cuts an overlong text (prompting.PromptScorer): head+tail keeps the first
# quarter and the last three quarters, the best of the cuts Sun et al. (2019) compared for BERT on
# IMDb (data.windows.head_tail).
TRUNCATIONS = ("head", "head+tail")
# How a sequence classifier reads a text longer than --max-length (LongTextOptions), and how chunk's
# windows become one answer.
LONG_TEXTS = ("truncate", "head+tail", "chunk")
CHUNK_AGGREGATIONS = ("mean", "max", "first+last")

_SYMBOLS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
_TESTS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def describe_bounds(bounds: dict[str, float]) -> str:
    """'≥ 1', '> 0', '≥ 0 and < 1': how --help and error messages state a field's range."""
    return " and ".join(
        f"{_SYMBOLS[k]} {v if isinstance(v, int) else f'{v:g}'}" for k, v in bounds.items()
    )


def within_bounds(value: float, bounds: dict[str, float]) -> bool:
    return all(_TESTS[k](value, limit) for k, limit in bounds.items())


@dataclass
class ModelSourceOptions:
    """Where a --model that is a Hugging Face id comes from (every command taking --model):
    the local cache, else a download (models.download), unless offline."""

    revision: str | None = opt(
        None,
        "--model as a Hugging Face id: the branch, tag or commit to use (default: main); "
        "the commit it resolves to is recorded in config.yaml",
    )
    offline: bool = opt(
        False,
        "never use the network: aliases, folders and the Hugging Face cache only (as "
        "HF_HUB_OFFLINE=1 does)",
    )
    trust_remote_code: bool = opt(
        False,
        "allow a Hub model whose config needs its own Python code (auto_map); that code "
        "runs on this machine, so read it first",
    )


@dataclass
class DataOptions:
    """Where the labelled table is and which columns hold text and labels (shared by
    finetune/evaluate)."""

    text_column: str | None = opt(None, "column with the text (auto: text, review, sentence, ...)")
    text_pair_column: str | None = opt(None, "optional second text column for sentence-pair tasks")
    label_column: str | None = opt(None, "column with the label (auto: label, sentiment, ...)")
    limit: int | None = opt(
        None, "read only the first N rows of each input file (quick runs)", ge=1
    )
    max_length: int | None = opt(
        None, "truncate texts to this many tokens (default: the model's limit)", ge=1
    )


@dataclass
class DatasetOptions:
    """Which version of a dataset --data (or predict's --input) names when it is a Hugging Face
    dataset id (data.hub): finetune, evaluate, predict, pretrain."""

    data_config: str | None = opt(
        None,
        "--data as a Hugging Face dataset id: its configuration (subset), as load_dataset's name "
        "(e.g. sst2 of glue)",
    )
    data_revision: str | None = opt(
        None,
        "--data as a Hugging Face dataset id: the branch, tag or commit to read (default: main)",
    )


@dataclass
class TagOptions:
    """Token tagging (--task tokens): which tags are read and how long sentences are cut
    (finetune/evaluate)."""

    tag_column: str | None = opt(
        None,
        "tokens: the tag column, a number in a CoNLL file (default: the last; 0 is "
        "the token) or a column name in a JSONL/Parquet table (auto: tags, ner_tags...)",
    )
    base_tags: bool = opt(
        False,
        "tokens: strip Brown-style tag modifiers (-tl, -hl, -nc, fw-, a trailing *): "
        "np-tl -> np, fw-in -> in; contractions keep both parts (vbz+rb)",
    )


@dataclass
class LongTextOptions:
    """Texts longer than --max-length (finetune, evaluate, predict, serve): how a sequence
    classifier reads them, and the overlapping windows that both a tagger and --long-text chunk cut
    them into (data.windows)."""

    long_text: str | None = opt(
        None,
        "sequence classifier, a text longer than --max-length: truncate keeps its "
        "first tokens; head+tail its first quarter and last three quarters (Sun et al. "
        "2019), at training and inference; chunk reads all of it in overlapping "
        "windows at evaluate/predict/serve time and aggregates their logits (finetune "
        "trains it on truncated texts). Default: finetune's choice, saved with the "
        "model, else truncate",
        choices=LONG_TEXTS,
    )
    stride: int | None = opt(
        None,
        "sub-tokens shared by consecutive windows: of a tagger's sentence longer than "
        "--max-length, or of a text with --long-text chunk (default: a quarter of the "
        "window; at most half)",
        ge=0,
    )
    chunk_aggregation: str | None = opt(
        None,
        "--long-text chunk: a text's logits from its windows': their mean, "
        "the max per class, or the mean of the first and the last window "
        "(default: finetune's choice, else mean)",
        choices=CHUNK_AGGREGATIONS,
    )


@dataclass
class ProblemOptions:
    """What a sequence classifier predicts, and how skewed classes are handled (finetune --task
    sequence)."""

    problem: str = opt(
        "auto",
        "single-label: one class per text; multi-label: a set of classes per text (JSON "
        "lists, or values joined by --label-separator; sigmoid outputs, thresholds tuned on "
        "the valid split); regression: numbers (several: --label-column a,b). auto: from "
        "the label values, and said so",
        choices=("auto", "single-label", "multi-label", "regression"),
    )
    label_separator: str | None = opt(
        None,
        "multi-label: the character joining a row's labels (e.g. '|'), "
        "for labels not written as JSON lists",
    )
    class_weights: str = opt(
        "none",
        "weighted cross-entropy: none, balanced (n_rows / (n_classes x n_class)), or "
        "LABEL=W,... (unlisted labels 1)",
    )
    sampler: str = opt(
        "random",
        "training batches: random (length-grouped), or balanced: rows of the smaller "
        "classes repeated (seeded) until every class has as many as the largest, then "
        "length-grouped",
        choices=("random", "balanced"),
    )


@dataclass
class PairOptions:
    """Text pairs: the column a model reads and the one it should write, and how its output is
    scored (finetune --task seq2seq, and evaluate on a text-to-text model)."""

    source_column: str | None = opt(
        None,
        "text-to-text: the column of the input texts (auto: source, src, input, "
        "prompt, question, text)",
    )
    target_column: str | None = opt(
        None,
        "text-to-text: the column of the texts to generate (auto: target, tgt, "
        "output, completion, answer, response, summary)",
    )
    metrics: str = opt(
        "bleu,chrf,exact_match,cer,wer",
        "text-to-text: metrics of the generated texts, comma "
        "separated: bleu and chrf (sacreBLEU, 0-100), exact_match "
        "(0-1), cer and wer (jiwer error rates; lower is better)",
    )


@dataclass
class DecodeOptions:
    """How a text-to-text model writes its output (finetune's evaluation each epoch, evaluate,
    predict)."""

    max_new_tokens: int | None = opt(
        None,
        "text-to-text: most tokens generated per text (default: 1.5x the longest "
        "training target, saved with the model; never a library's 20)",
        ge=1,
        le=100_000,
    )
    num_beams: int = opt(1, "text-to-text: beams of beam search (1: greedy decoding)", ge=1, le=64)


@dataclass
class Seq2SeqOptions:
    """What only `finetune --task seq2seq` reads: a model from scratch and the valid texts generated
    each epoch."""

    from_scratch: bool = opt(
        False,
        "seq2seq: train a small BART from scratch (--size) with a tokenizer trained on "
        "the training pairs (--tokenizer), instead of fine-tuning --model",
    )
    tokenizer: str = opt(
        "bpe",
        "seq2seq --from-scratch: byte-level BPE (--vocab-size); char: one token per "
        "character (transliteration); symbols: characters, but a whitespace-separated "
        "symbol seen 20+ times is one token (spelling to phonemes)",
        choices=("bpe", "char", "symbols"),
    )
    size: str = opt(
        "tiny",
        "seq2seq --from-scratch: model preset (tiny: 2 layers of 64; mini: 6 of 256; small: 6 "
        "of 384; BART's layers half in the encoder, half in the decoder)",
        choices=("tiny", "mini", "small"),
    )
    vocab_size: int = opt(
        8000, "seq2seq --from-scratch --tokenizer bpe: vocabulary size", ge=300, le=1_000_000
    )
    eval_samples: int | None = opt(
        None,
        "seq2seq: generate and score only the first N valid pairs each epoch "
        "(generation is the slow part; the valid loss covers them all)",
        ge=1,
    )


@dataclass
class TrainOptions:
    """How to train: shared by finetune and pretrain, and by both engines."""

    epochs: float = opt(3.0, "number of passes over the training data", gt=0)
    max_steps: int | None = opt(
        None, "stop after this many optimizer steps (overrides --epochs)", ge=1
    )
    batch_size: int = opt(16, "training batch size per device", ge=1)
    eval_batch_size: int | None = opt(None, "evaluation batch size (default: 2x batch size)", ge=1)
    grad_accum: int = opt(1, "gradient accumulation steps", ge=1)
    lr: float = opt(5e-5, "peak learning rate", gt=0)
    optimizer: str = opt("adamw", "optimizer", choices=("adamw", "adam"))
    weight_decay: float = opt(
        0.01, "weight decay (AdamW; not applied to biases and LayerNorm)", ge=0
    )
    warmup_ratio: float = opt(0.1, "fraction of steps with linear warm-up", ge=0, le=1)
    scheduler: str = opt(
        "linear", "learning-rate schedule after warm-up", choices=("linear", "constant")
    )
    length_buckets: int = opt(
        50,
        "training batches of similar length: each epoch's shuffled rows are cut into "
        "buckets of this many batches, each sorted by length (less padding: faster). 1: "
        "random batches. Same-length batches can slow learning where length says much "
        "about the target (spelling to phonemes)",
        ge=1,
    )
    gradient_checkpointing: bool = opt(
        False,
        "keep each layer's input alone and recompute the layer's activations in the backward "
        "pass: far less memory for about a third more compute (TRL's SFT and DPO default)",
    )
    attention_dropout: float | None = opt(
        0.0,
        "dropout on attention probabilities (none: keep the model's, 0.1 for BERT). 0 by default:"
        " with it, PyTorch's fused CPU attention falls back to a kernel ~7x slower; hidden dropout"
        " still regularises",
        ge=0,
        lt=1,
    )
    dropout: float | None = opt(
        None,
        "dropout on hidden states: embeddings and residual branches (none: keep the model's, 0.1"
        " for BERT, BART and GPT-2). 0 can learn faster where training is short against the data,"
        " e.g. a few epochs from scratch",
        ge=0,
        lt=1,
    )
    attn_implementation: str = opt(
        "auto",
        "attention kernel while training: auto (on a CPU the faster of the model's own, usually"
        " PyTorch's fused sdpa, and transformers' eager attention, timed on the run's batch shape"
        " with the precision and cached; on GPUs the model's own), sdpa or eager. The same"
        " arithmetic; saved models keep transformers' default",
        choices=("auto", "sdpa", "eager"),
    )
    max_grad_norm: float | None = opt(1.0, "clip gradients to this norm (none: no clipping)", gt=0)
    seed: int = opt(
        42, "random seed for shuffling, initialisation and dropout", ge=0, le=4294967295
    )
    precision: str = opt(
        "auto",
        "auto, fp32, bf16 or fp16 (auto: bf16 on GPUs that support it; on a CPU bf16 "
        "where a measured training step is ≥1.15x faster, else fp32; cached per CPU)",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    cpu: bool = opt(False, "train on the CPU even when a GPU is present")
    patience: int | None = opt(
        None, "stop when the valid metric has not improved for N epochs", ge=1
    )
    logging_steps: int = opt(50, "log loss, learning rate and samples/s every N steps", ge=1)
    logging_dir: str | None = opt(
        None, "also write the logged values as TensorBoard event files here (needs tensorboard)"
    )
    report_to: str = opt(
        "none",
        "experiment trackers that get the settings, every logged step and epoch and the final"
        " metrics: none, or a comma list of tensorboard (event files in --logging-dir, default"
        " <out>/tensorboard), mlflow (MLFLOW_TRACKING_URI, else a local mlflow.db next to --out)"
        " and wandb (WANDB_PROJECT, WANDB_MODE=offline...); --logging-dir alone means tensorboard",
    )
    save_steps: int | None = opt(None, "also checkpoint every N steps (always at epoch end)", ge=1)
    save_total_limit: int | None = opt(
        2, "keep the last K checkpoints (none: keep every one)", ge=1
    )
    resume: bool = opt(False, "continue from the last checkpoint in --out")
    overwrite: bool = opt(False, "replace an existing run folder")
    progress: bool = opt(True, "show progress bars")
    num_processes: int = opt(
        1,
        "train with N local processes: re-runs this command under `accelerate launch` "
        "(one per GPU, or gloo on the CPU); --batch-size is per process",
        ge=1,
    )
    fsdp: bool = opt(
        False,
        "with --num-processes N: shard parameters, gradients and optimizer state over the N"
        " processes (FSDP2: Accelerate's on GPUs, torch's on CPU processes); checkpoints hold"
        " sharded state, model/ the gathered weights",
    )
    deepspeed: str | None = opt(
        None,
        "with --num-processes N: DeepSpeed config JSON (ZeRO-2/3) for the N GPUs, through"
        " Accelerate (GPUs only; needs `pip install deepspeed`)",
    )

    def __post_init__(self) -> None:
        # Contradictions between these options, refused wherever the config comes from (flags, file,
        # keywords).
        if self.resume and self.overwrite:
            raise UserError(
                "--resume continues the run in --out and --overwrite replaces it: give one of them"
            )
        if self.fsdp and self.deepspeed:
            raise UserError("--fsdp and --deepspeed are two ways to shard: give one of them")
        # under `accelerate launch` WORLD_SIZE is set: the launcher made the processes
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if (self.fsdp or self.deepspeed) and self.num_processes == 1 and not launched:
            flag = "--fsdp" if self.fsdp else "--deepspeed"
            raise UserError(f"{flag} shards over several processes: add --num-processes N")


@dataclass
class InstructionOptions:
    """How `finetune --task causal-lm` turns a pair into a prompt and its completion
    (kinds.causal_lm); saved with the model, so `generate` and `serve` prompt it the same way."""

    template: str | None = opt(
        None,
        "causal-lm: the prompt made of a source text, with {source} where it goes (e.g. "
        "'Translate to Spanish: {source}'); default: '{source}' with --chat, else "
        "'{source}' and a new line",
    )
    chat: bool = opt(
        False,
        "causal-lm: send the templated source as a user message through the tokenizer's chat "
        "template; the target is the assistant's reply",
    )
    system: str | None = opt(
        None,
        "causal-lm --chat: the system message of every training prompt (saved with the "
        "model: generate and serve use it unless given another); default: the chat "
        "template's own",
    )
    packing: bool = opt(
        False,
        "causal-lm: pack several short examples into each training row of up to "
        "--max-length tokens (positions restart per example, and attention does not cross "
        "examples in models that read packed rows from their positions, as Llama and GPT-2 "
        "do in transformers 5)",
    )
    conversation_column: str | None = opt(
        None,
        "causal-lm: the column of multi-turn conversations (a messages list of role/content, a "
        "ShareGPT conversations list of from/value, or an HH transcript); default: a messages "
        "or conversations column when no --source-column/--target-column is named",
    )
    train_on: str = opt(
        "all",
        "causal-lm conversations: the loss on every assistant turn, or on the last alone",
        choices=("all", "last"),
    )


@dataclass
class PreferenceOptions:
    """Preference tuning (`finetune --task dpo`, kinds.dpo): the loss and its strength."""

    loss: str = opt(
        "sigmoid",
        "dpo: sigmoid (DPO, Rafailov et al. 2023), ipo (Azar et al. 2023: squared, on mean "
        "token log-probabilities) or orpo (Hong et al. 2024: no reference model; the chosen "
        "reply's NLL plus an odds-ratio term)",
        choices=("sigmoid", "ipo", "orpo"),
    )
    beta: float = opt(
        0.1, "dpo: the strength of the preference term (DPO's beta; ORPO's lambda)", gt=0
    )
    precompute_reference: bool | None = opt(
        None,
        "dpo: the reference model's log-probabilities computed once before training, so each "
        "step runs the policy alone (default: on the CPU; on a GPU the reference runs beside "
        "each step)",
    )


@dataclass
class LoraOptions:
    """Low-rank adapters instead of full fine-tuning (finetune, every task kind; models.lora)."""

    lora_r: int = opt(
        0,
        "LoRA rank: train low-rank adapters on the attention projections (and a new task head in "
        "full) instead of every weight; 0: full fine-tuning",
        ge=0,
        le=4096,
    )
    lora_alpha: float | None = opt(
        None,
        "LoRA scale numerator: the adapters' update is scaled by alpha / r (default: 2 x --lora-r)",
        gt=0,
    )
    lora_dropout: float = opt(
        0.05,
        "dropout on the adapters' input (--task dpo: 0 unless another rate is given, as TRL's"
        " disable_dropout)",
        ge=0,
        lt=1,
    )
    lora_target_modules: str | None = opt(
        None,
        "modules given adapters, comma separated (e.g. q_proj,k_proj,v_proj,"
        "o_proj), or all-linear (default: the query and value projections "
        "of the architecture: query,value for BERT-likes, q_proj,v_proj for "
        "Llama-likes, c_attn for GPT-2)",
    )
    lora_save: str = opt(
        "merged",
        "what model/ holds: the adapters merged into the weights (plain transformers "
        "loads it), or the adapter alone (adapter_config.json + adapter_model.safetensors "
        "with the head, for peft on the base model; warmstart commands read it too)",
        choices=("merged", "adapter"),
    )


@dataclass
class InferenceOptions:
    """How a saved classifier runs (shared by evaluate and predict)."""

    batch_size: int | None = opt(
        None,
        "texts per forward pass (default: tuned for the device: up to 2,048 tokens "
        "a batch on CPUs, 64 texts on GPUs; int8 always runs one text at a time, one "
        "per core, so that no text's scores depend on its neighbours)",
        ge=1,
    )
    backend: str = opt(
        "auto",
        "auto (ONNX Runtime on CPUs where onnxruntime is installed, else PyTorch), torch or "
        "onnx (exports once into the model folder's onnx/ and reuses it)",
        choices=("auto", "torch", "onnx"),
    )
    quantize: str = opt(
        "auto",
        "int8: dynamic int8 weights (CPU); auto: int8 with the onnx backend, none with torch",
        choices=("auto", "none", "int8"),
    )
    precision: str = opt(
        "auto",
        "torch backend: fp32 or bf16 weights (auto: bf16 on GPUs that support it; on a CPU "
        "the faster of the two, measured once per CPU and model)",
        choices=("auto", "fp32", "bf16"),
    )


@dataclass
class FeatureOptions:
    """Which hidden states become features (shared by embed, probe and the similarity methods)."""

    pooling: str = opt(
        "auto",
        "how token states become one vector: auto is the model's own (sentence-transformers "
        "config), else mean for encoders and last for decoders (a sentence-transformers "
        "model's own max_seq_length is also the default --max-length)",
        choices=("auto", "cls", "mean", "max", "last"),
    )
    layers: str = opt(
        "-1", "hidden layer(s): -1 (last), a list 2,4,6, or a range like -4: (0 is the embeddings)"
    )
    layer_mode: str = opt(
        "concat",
        "combine several --layers by concatenating or averaging them",
        choices=("concat", "mean"),
    )
    normalize: bool | None = opt(
        None,
        "L2-normalise each feature vector (default: as the model does: yes for a "
        "sentence-transformers model with a Normalize module, like minilm, else no)",
    )
    precision: str = opt(
        "auto",
        "auto (bf16 on GPUs that support it, else fp32), fp32 or bf16",
        choices=("auto", "fp32", "bf16"),
    )


@dataclass
class EngineOptions:
    """Where predict, evaluate and embed run: this process, or a Ray cluster's actors (shared by
    the three)."""

    engine: str = opt(
        "local",
        "local: this process (or `accelerate launch`'s); ray: an actor pool of model replicas on a"
        " Ray cluster, --input/--data read by Ray Data, --out a folder of Parquet shards",
        choices=("local", "ray"),
    )
    ray_address: str | None = opt(
        None,
        "Ray cluster to join (e.g. auto, or ray://HEAD:10001); default: a Ray started in this"
        " process on this machine's CPUs",
    )
    actors: int | None = opt(
        None, "--engine ray: model replicas, one CPU each (default: the cluster's CPUs)", ge=1
    )
    batch_tokens: int = opt(
        16384,
        "--engine ray: tokens per batch sent to an actor (rows per batch: this over the mean"
        " tokens of a sample of the input)",
        ge=1,
    )


@dataclass
class RetrievalTrainOptions:
    """Training an embedding model or a reranker (finetune --task embedding / rerank)."""

    rank_loss: str | None = opt(
        None,
        "embedding: mnrl, in-batch negatives (MultipleNegativesRankingLoss); rerank: pointwise"
        " (binary cross-entropy per pair) or listwise (softmax cross-entropy over a query's"
        " candidates) (default: mnrl; listwise)",
        choices=("mnrl", "pointwise", "listwise"),
    )
    scale: float | None = opt(
        None,
        "embedding: the similarity scale of the in-batch loss (1 / temperature; default 20)",
        gt=0,
    )
    learn_scale: bool = opt(
        False, "embedding: learn the scale (from --scale, as CLIP's logit scale; at most 100)"
    )
    mini_batch_size: int | None = opt(
        None,
        "embedding: cached negatives (GradCache): embed each batch in pieces of this many texts,"
        " so --batch-size (the in-batch negatives) can be larger than memory allows",
        ge=1,
    )
    negatives: int | None = opt(
        None,
        "rerank: negatives per query and positive (default 7); embedding: mined hard negatives"
        " per pair (default 0: in-batch negatives only)",
        ge=0,
    )
    mine: str | None = opt(
        None,
        "where negatives come from: bm25, random, or an embedding model (e.g. minilm) whose top"
        " documents that are not judged relevant (default: bm25)",
    )


@dataclass
class RerankOptions:
    """Retrieval evaluation on a BEIR folder (evaluate): the first stage and its re-ranking."""

    first_stage: str | None = opt(
        None,
        "retrieval: where candidates come from: bm25, or an embedding model (default: --model"
        " when it embeds, else bm25)",
    )
    rerank: str | None = opt(
        None, "retrieval: re-rank the first stage's --top-k documents with this cross-encoder"
    )
    top_k: int | None = opt(
        None, "retrieval: documents of the first stage a cross-encoder re-ranks (default 100)", ge=1
    )


@dataclass
class QAOptions:
    """Extractive question answering (finetune --task qa; evaluate, predict and serve with a
    question-answering model): how an answer span is chosen."""

    max_answer_length: int = opt(
        30, "question answering: the longest answer span, in tokens (the HF recipe's 30)", ge=1
    )
    null_threshold: float | None = opt(
        None,
        "question answering with SQuAD v2 models: answer nothing when the null score beats the"
        " best span's by more than this (default: the threshold finetune tuned on its valid"
        " part, saved with the model, else 0); a difference of logits",
        ge=-1000.0,
        le=1000.0,
    )
