"""One dataclass per command. The CLI builds its flags from these fields, so flags, YAML keys and
keyword arguments of the Python functions are the same names."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmstart.errors import UserError


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
    precision: str = opt("auto", "auto, fp32, bf16 or fp16 (auto: bf16 on GPUs that support it, else fp32)",
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
class FinetuneConfig(TrainOptions, DataOptions):
    data: str | None = opt(None, "training table (CSV, TSV, JSONL or Parquet, optionally .gz)")
    valid: str | None = opt(None, "separate validation table")
    test: str | None = opt(None, "separate test table")
    split: str | None = opt(None, "split DATA by position into train,valid,test: counts (35000,5000,10000) "
                                  "or fractions (0.7,0.1,0.2)")
    shuffle: bool = opt(False, "shuffle rows (with --seed) before splitting")
    max_train_samples: int | None = opt(None, "keep only the first N training rows after splitting")
    max_valid_samples: int | None = opt(None, "keep only the first N validation rows after splitting")
    max_test_samples: int | None = opt(None, "keep only the first N test rows after splitting")
    label_names: str | None = opt(None, "names for integer labels 0..K-1, comma separated (e.g. negative,positive)")
    model: str = opt("minilm", "alias (minilm), local folder, or Hugging Face id already in the local cache")
    out: str = opt("runs/finetune", "run folder to write")
    engine: str = opt("native", "training loop: our Accelerate loop, or the Hugging Face Trainer",
                      choices=("native", "trainer"))
    metric_for_best: str = opt("accuracy", "valid metric that picks the best epoch",
                               choices=("accuracy", "f1_macro", "loss"))


@dataclass
class PretrainConfig(TrainOptions):
    data: str | None = opt(None, "corpus: .txt (one document per line, or blank-line separated), a table with a "
                                 "text column (CSV, TSV, JSONL, Parquet), or a folder of .txt files")
    objective: str = opt("clm", "clm: next token (GPT); mlm: masked tokens (BERT); mlm+nsp: plus next-sentence "
                                "prediction; denoise: text infilling + sentence permutation (BART)",
                         choices=("clm", "mlm", "mlm+nsp", "denoise"))
    valid: str | None = opt(None, "held-out corpus (default: --valid-fraction of the documents)")
    valid_fraction: float = opt(0.05, "share of documents held out for perplexity/accuracy after each epoch")
    text_column: str | None = opt(None, "text column of a table corpus (auto-detected)")
    limit: int | None = opt(None, "read only the first N documents")
    model: str | None = opt(None, "model to continue pre-training: alias (minilm, smollm2), folder or cached id")
    from_scratch: bool = opt(False, "a new model from a --size preset and a tokenizer trained on the corpus")
    size: str = opt("small", "preset for --from-scratch", choices=("tiny", "small"))
    vocab_size: int = opt(8000, "vocabulary of the tokenizer trained with --from-scratch")
    block_size: int = opt(128, "tokens per training sequence (texts are packed into blocks of this length)")
    whole_word_mask: bool = opt(False, "mask whole words rather than word pieces (mlm, mlm+nsp)")
    mlm_probability: float = opt(0.15, "share of tokens masked (mlm, mlm+nsp)")
    out: str = opt("runs/pretrain", "run folder to write")
    epochs: float = opt(1.0, "number of passes over the corpus")
    lr: float = opt(5e-4, "peak learning rate (5e-4 suits small models from scratch; use ~5e-5 to continue one)")
    metric_for_best: str = opt("loss", "held-out metric that picks the best epoch",
                               choices=("loss", "perplexity", "accuracy"))


@dataclass
class InferenceOptions:
    """How a saved classifier runs (shared by evaluate and predict)."""

    batch_size: int | None = opt(None, "texts per forward pass (default: tuned for the device: up to 2,048 tokens "
                                       "a batch on CPUs, 64 texts on GPUs)")
    backend: str = opt("auto", "auto (ONNX Runtime on CPUs where onnxruntime is installed, else PyTorch), torch or "
                               "onnx (exports once into the model folder's onnx/ and reuses it)",
                       choices=("auto", "torch", "onnx"))
    quantize: str = opt("auto", "int8: dynamic int8 weights (CPU); auto: int8 with the onnx backend, none with torch",
                        choices=("auto", "none", "int8"))
    precision: str = opt("auto", "torch backend: fp32 or bf16 weights (auto: bf16 on GPUs that support it)",
                         choices=("auto", "fp32", "bf16"))


@dataclass
class EvaluateConfig(InferenceOptions, DataOptions):
    model: str = opt("", "fine-tuned model: run folder, its model/ folder, or cached id")
    data: str = opt("", "labelled table to evaluate on")
    out: str | None = opt(None, "write the metrics as JSON here")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class PredictConfig(InferenceOptions):
    model: str = opt("", "fine-tuned model: run folder, its model/ folder, or cached id")
    texts: list[str] = opt([], "texts to classify (else --input, else stdin, one per line)")
    input: str | None = opt(None, "file of texts: .txt (one per line) or a table with a text column")
    text_column: str | None = opt(None, "text column of an --input table (auto-detected)")
    text_pair_column: str | None = opt(None, "second text column of an --input table")
    limit: int | None = opt(None, "read only the first N rows of --input")
    out: str | None = opt(None, "write predictions here (default: stdout)")
    format: str = opt("jsonl", "output format", choices=("jsonl", "csv"))
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: the model's limit)")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(False, "show a progress bar")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check a YAML/keyword value against the field's type, converting ints to floats etc."""
    if value is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is not list else []
    base = (args or [tp])[0]
    if typing.get_origin(base) is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
    elif base is bool and isinstance(value, bool):
        return value
    elif base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    raise UserError(f"option '{name}' must be {getattr(base, '__name__', base)}, got {shown}")


def build(cls: type, values: dict[str, Any], source: str = "arguments") -> Any:
    """Build config ``cls`` from a dict, rejecting unknown keys and wrong types with one sentence."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} in {source} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(name, value, hints[name])
        choices = fields[name].metadata.get("choices")
        if choices and kwargs[name] is not None and kwargs[name] not in choices:
            raise UserError(f"option '{name}' must be one of {', '.join(choices)}, got {value!r}")
    return cls(**kwargs)


def read_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or TOML file of options (the same keys as the command's flags, with underscores)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' does not exist")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        else:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{path}' is not valid YAML/TOML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def absolute_paths(cfg: Any, *names: str) -> Any:
    """Make the existing paths among ``names`` absolute, so config.yaml repeats a run from any folder."""
    for name in names:
        value = getattr(cfg, name)
        if value and Path(value).expanduser().exists():
            setattr(cfg, name, str(Path(value).expanduser().resolve()))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def make(cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """The config a task function runs with: a dataclass, keyword arguments, or both (kwargs win)."""
    if config is None:
        return build(cls, kwargs)
    if not isinstance(config, cls):
        raise UserError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return build(cls, {**dataclasses.asdict(config), **kwargs})


@dataclass
class GenerateConfig:
    prompts: list[str] = opt([], "prompts to continue (else --input, else stdin, one per line)")
    model: str = opt("smollm2", "causal LM: alias (smollm2: the bundled SmolLM2-135M-Instruct), a local folder "
                                "(GPT-2, GPT-Neo, Llama, Qwen...), or a Hugging Face id already in the local cache")
    input: str | None = opt(None, "file of prompts: one per line, or JSON Lines (.jsonl) with a 'prompt' field")
    out: str | None = opt(None, "write the results here (default: stdout)")
    format: str = opt("text", "output: the texts, or JSON Lines with prompt, completions and token counts",
                      choices=("text", "jsonl"))
    chat: bool = opt(False, "send each prompt as a user message through the model's chat template")
    system: str | None = opt(None, "system message for --chat")
    max_length: int | None = opt(None, "most tokens of prompt + completion, for each prompt (as in the seed)")
    max_new_tokens: int | None = opt(None, "most tokens of each completion; with --max-length as well, the "
                                           "stricter of the two holds; with neither, 100")
    num_return_sequences: int = opt(1, "completions per prompt")
    strategy: str = opt("auto", "decoding: auto is beam with --num-beams > 1, sampling with several completions "
                                "or any sampling option (or when the model's generation config samples), else greedy",
                        choices=("auto", "greedy", "sample", "beam"))
    temperature: float | None = opt(None, "sampling temperature (default: the model's, else 1.0)")
    top_k: int | None = opt(None, "sample from the K most likely tokens (default: the model's, else 50; 0: all)")
    top_p: float | None = opt(None, "nucleus sampling: the smallest set of tokens with this probability mass")
    typical_p: float | None = opt(None, "locally typical sampling mass")
    repetition_penalty: float | None = opt(None, "divide the scores of tokens already present (1.0: none)")
    no_repeat_ngram_size: int | None = opt(None, "never repeat an n-gram of this size")
    num_beams: int | None = opt(None, "beams for beam search (--strategy beam: default 4)")
    stop: list[str] = opt([], "stop string: a completion ends just before it (\\n and \\t are understood; "
                              "several as a list in --config or the Python API)")
    seed: int | None = opt(None, "random seed: makes sampling reproducible")
    batch_size: int = opt(8, "prompts generated together (left-padded)")
    stream: bool = opt(True, "print tokens as they are produced when stdout is a terminal (text output, "
                             "one completion per prompt, no beam search)")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(False, "show a progress bar")


@dataclass
class ServeConfig:
    model: str = opt("", "model to serve: a fine-tuned classifier (run folder or its model/ folder), an encoder "
                         "(minilm), a causal LM (smollm2, a GPT-2 folder...), or a Hugging Face id in the local cache")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every network interface)")
    port: int = opt(8000, "port to listen on")
    batching: bool = opt(True, "gather concurrent requests into one forward pass (off: one request at a time)")
    max_batch_size: int = opt(32, "most texts in one forward pass")
    max_wait_ms: float = opt(10.0, "how long the first request of a batch waits for others to join it")
    max_texts_per_request: int = opt(64, "requests with more texts are refused (413)")
    max_text_chars: int = opt(20_000, "longer texts and prompts are refused (413)")
    max_body_bytes: int = opt(1_000_000, "larger request bodies are refused (413)")
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: the model's limit)")
    max_new_tokens: int = opt(256, "most tokens /generate writes per completion")
    backend: str = opt("auto", "classifier backend for /predict, as in predict: auto (ONNX Runtime on CPUs where "
                               "onnxruntime is installed, else PyTorch), torch or onnx",
                       choices=("auto", "torch", "onnx"))
    quantize: str = opt("auto", "classifier weights for /predict: auto (int8 with onnx, none with torch), none or int8",
                        choices=("auto", "none", "int8"))
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    log_level: str = opt("info", "server log level", choices=("critical", "error", "warning", "info", "debug"))


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


@dataclass
class EmbedConfig(FeatureOptions):
    model: str = opt("minilm", "encoder or causal LM: alias (minilm, smollm2), local folder, or cached id")
    data: str = opt("", "texts to embed: .txt (one per line) or a table (CSV, TSV, JSONL, Parquet) with a text column")
    out: str = opt("", "output: .parquet (id, embedding and --label-column), .npy or .safetensors")
    text_column: str | None = opt(None, "text column of a table (auto-detected)")
    id_column: str | None = opt(None, "column copied to the output's id (default: the row number, from 0)")
    label_column: str | None = opt(None, "column copied to the output (.parquet), so `probe` can train on the file")
    limit: int | None = opt(None, "read only the first N rows")
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: the model's limit)")
    batch_size: int = opt(32, "texts per forward pass")
    chunk_size: int = opt(4096, "texts per chunk written to disk; an interrupted run resumes after the last chunk")
    overwrite: bool = opt(False, "replace an existing output (and discard a half-finished run's chunks)")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class ProbeConfig(FeatureOptions, DataOptions):
    data: str | None = opt(None, "training table, or a .parquet written by `embed` (with its label column)")
    train: str | None = opt(None, "the same as --data")
    valid: str | None = opt(None, "validation table or feature file: picks C")
    test: str | None = opt(None, "test table or feature file")
    split: str | None = opt(None, "split DATA by position into train,valid,test as finetune does (35000,5000,10000)")
    shuffle: bool = opt(False, "shuffle rows (with --seed) before splitting")
    max_train_samples: int | None = opt(None, "keep only the first N training rows after splitting")
    max_valid_samples: int | None = opt(None, "keep only the first N validation rows after splitting")
    max_test_samples: int | None = opt(None, "keep only the first N test rows after splitting")
    label_names: str | None = opt(None, "names for integer labels 0..K-1, comma separated (e.g. negative,positive)")
    model: str = opt("minilm", "model whose features are probed, for tables (alias, folder or cached id)")
    c: float | None = opt(None, "inverse regularisation strength (default: the best on --valid, else by 5-fold CV)")
    batch_size: int = opt(32, "texts per forward pass when embedding tables")
    seed: int = opt(42, "random seed")
    out: str = opt("runs/probe", "run folder to write")
    overwrite: bool = opt(False, "replace an existing run folder")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class ZeroshotConfig:
    labels: str = opt("", "candidate labels, comma separated; with integer labels 0..K-1 in --label-column they "
                          "name them in order (e.g. negative,positive)")
    texts: list[str] = opt([], "texts to classify (else --data)")
    data: str | None = opt(None, "table or .txt of texts; with a label column it is evaluated")
    method: str = opt("similarity", "nli: entailment of 'This text is {label}.'; similarity: cosine to label "
                                    "descriptions; prompt: a causal LM scores each label after a prompt",
                      choices=("nli", "similarity", "prompt"))
    model: str | None = opt(None, "model for the method (default: minilm for similarity, smollm2 for prompt; "
                                  "nli needs a local NLI model)")
    template: str | None = opt(None, "nli: hypothesis with {label}; similarity: label description with {label}; "
                                     "prompt: the prompt with {text} (and optionally {labels}), the label follows it")
    descriptions: list[str] = opt([], "similarity: LABEL=description, one per label (else the --template)")
    multi_label: bool = opt(False, "labels are independent (nli, similarity): each gets its own probability")
    calibrate: bool = opt(True, "prompt: divide by the label probabilities of content-free inputs")
    chat: bool = opt(False, "prompt: send the template as a user message through the model's chat template; "
                            "the reply starts with --answer-prefix, then the label")
    answer_prefix: str = opt("The answer is", "prompt with --chat: the start of the model's reply")
    truncate: str = opt("head", "prompt: which tokens of an overlong text are kept: the first ones, or the first "
                                "quarter and last three quarters (head+tail: where reviews give their verdict)",
                        choices=TRUNCATIONS)
    text_column: str | None = opt(None, "text column of a table (auto-detected)")
    label_column: str | None = opt(None, "label column: evaluate against it (auto-detected when present)")
    limit: int | None = opt(None, "read only the first N rows")
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: 256 for prompt, else "
                                       "the model's limit)")
    batch_size: int = opt(16, "sequences per forward pass")
    out: str | None = opt(None, "write predictions (.jsonl or .csv) or, when evaluating, metrics (.json)")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class FewshotConfig:
    method: str = opt("setfit", "setfit: contrastive fine-tuning of a sentence encoder on pairs, then a logistic "
                                "head; incontext: k examples per class in a causal LM's prompt; prompt: a causal "
                                "LM's label scores after a prompt, calibrated on the k examples per class",
                      choices=("setfit", "incontext", "prompt"))
    data: str = opt("", "labelled table the k examples per class are drawn from")
    test: str = opt("", "labelled table to evaluate on")
    labels: str | None = opt(None, "label names; with integer labels 0..K-1 they name them in order")
    k: int = opt(8, "examples per class")
    repeats: int = opt(1, "draw the k examples R times (seeds seed..seed+R-1) and report mean ± std")
    seed: int = opt(42, "random seed for drawing examples and training")
    model: str | None = opt(None, "default: minilm for setfit, smollm2 for incontext and prompt")
    text_column: str | None = opt(None, "text column (auto-detected)")
    label_column: str | None = opt(None, "label column (auto-detected)")
    limit: int | None = opt(None, "read only the first N rows of each table")
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: 256)")
    # incontext and prompt
    select: str = opt("random", "incontext: the examples are a seeded random draw, or the k most similar "
                                "(MiniLM cosine) of each class for every query", choices=("random", "similar"))
    template: str | None = opt(None, "incontext, prompt: how one text is shown, with {text}; its label follows")
    example_max_length: int = opt(64, "incontext: tokens kept of each example text")
    calibrate: bool = opt(True, "incontext, prompt: divide by the label probabilities of a content-free input")
    chat: bool = opt(False, "incontext: the examples as earlier chat turns (user: --template with the text; "
                            "assistant: --answer-prefix and the label), then the query; prompt: the template "
                            "in the model's chat format")
    answer_prefix: str = opt("The answer is", "incontext, prompt with --chat: the start of each answer")
    truncate: str = opt("head", "incontext, prompt: which tokens of an overlong text are kept: the first ones, "
                                "or the first quarter and last three quarters (head+tail)", choices=TRUNCATIONS)
    descriptions: list[str] = opt([], "prompt: LABEL=description (repeatable, several per label average): the "
                                      "MiniLM similarity of each text to them becomes a second feature of the "
                                      "head, which the k examples weigh against the prompt's score")
    # setfit
    pairs_per_example: int = opt(40, "setfit: contrastive pairs drawn per example, half same-class (SetFit's "
                                     "default of 20 iterations makes 40)")
    epochs: float = opt(1.0, "setfit: passes over the pairs")
    lr: float = opt(2e-5, "setfit: learning rate of the encoder")
    batch_size: int = opt(16, "pairs per training step, texts per inference pass")
    out: str = opt("runs/fewshot", "run folder to write")
    overwrite: bool = opt(False, "replace an existing run folder")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class ExportConfig:
    model: str = opt("", "fine-tuned classifier: run folder, its model/ folder, or cached id")
    onnx: bool = opt(False, "export to ONNX (fp32, plus int8 with --quantize int8); the only format so far")
    out: str | None = opt(None, "folder to write (default: the model folder's onnx/, where --backend onnx looks)")
    quantize: str = opt("int8", "also write an int8 (dynamic quantisation) model, or only fp32",
                        choices=("int8", "none"))
    overwrite: bool = opt(False, "export again even when an up-to-date export is there")
