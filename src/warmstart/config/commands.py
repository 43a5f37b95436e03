"""One dataclass per command. The CLI builds its flags from these fields, so flags, YAML keys and
keyword arguments of the Python functions are the same names."""

from __future__ import annotations

from dataclasses import dataclass

from warmstart.config.options import (
    TRUNCATIONS,
    DataOptions,
    DatasetOptions,
    DecodeOptions,
    EngineOptions,
    FeatureOptions,
    InferenceOptions,
    InstructionOptions,
    LongTextOptions,
    LoraOptions,
    ModelSourceOptions,
    PairOptions,
    PreferenceOptions,
    ProblemOptions,
    QAOptions,
    RerankOptions,
    RetrievalTrainOptions,
    Seq2SeqOptions,
    TagOptions,
    TrainOptions,
    opt,
)
from warmstart.config.settings import Settings


@dataclass
class FinetuneConfig(
    PreferenceOptions,
    QAOptions,
    RetrievalTrainOptions,
    LoraOptions,
    InstructionOptions,
    TrainOptions,
    Seq2SeqOptions,
    DecodeOptions,
    PairOptions,
    ProblemOptions,
    TagOptions,
    LongTextOptions,
    DataOptions,
    DatasetOptions,
    ModelSourceOptions,
    Settings,
):
    task: str = opt(
        "sequence",
        "sequence: a label per text (or text pair); tokens: a tag per word (named entities, "
        "part of speech) from CoNLL files or JSONL/Parquet with token and tag lists; "
        "seq2seq: a target text per source text (an encoder-decoder: BART, T5, Marian, or "
        "two copies of an encoder); causal-lm: instruction tuning of a causal LM on pairs "
        "(--template, --chat), the loss on the completion only; qa: extractive question "
        "answering (SQuAD JSON, or question/context/answers tables); embedding: a sentence-embedding "
        "model from (anchor, positive) pairs; rerank: a cross-encoder scoring (query, passage); "
        "dpo: preference tuning of a causal LM on chosen/rejected replies (--loss, --beta)",
        choices=("sequence", "tokens", "seq2seq", "causal-lm", "embedding", "rerank", "qa", "dpo"),
    )
    data: str | None = opt(
        None,
        "training data: a table (CSV, TSV, JSONL or Parquet, optionally .gz); for --task "
        "tokens a CoNLL file (.conll: a token and a tag per line) or JSONL/Parquet; or a "
        "dataset: a Hugging Face dataset id (ORG/NAME), a save_to_disk folder, a folder or "
        ".arrow file load_dataset reads (its train/validation/test splits are the parts)",
    )
    valid: str | None = opt(None, "separate validation table")
    test: str | None = opt(None, "separate test table")
    split: str | None = opt(
        None,
        "split DATA by position into train,valid,test: counts (35000,5000,10000) "
        "or fractions (0.7,0.1,0.2)",
    )
    shuffle: bool = opt(False, "shuffle rows (with --seed) before splitting")
    max_train_samples: int | None = opt(
        None, "keep only the first N training rows after splitting", ge=1
    )
    max_valid_samples: int | None = opt(
        None, "keep only the first N validation rows after splitting", ge=1
    )
    max_test_samples: int | None = opt(
        None, "keep only the first N test rows after splitting", ge=1
    )
    label_names: str | None = opt(
        None,
        "names for integer labels 0..K-1, comma separated (e.g. negative,positive; "
        "for --task tokens integer tags, e.g. O,B-PER,I-PER)",
    )
    model: str = opt(
        "minilm", "alias (minilm), local folder, or Hugging Face id (downloaded once, then cached)"
    )
    out: str = opt("runs/finetune", "run folder to write")
    engine: str = opt(
        "native",
        "training loop: our Accelerate loop, or the Hugging Face Trainer",
        choices=("native", "trainer"),
    )
    metric_for_best: str | None = opt(
        None,
        "valid metric that picks the best epoch (default: accuracy; "
        "balanced_accuracy when the classes are skewed; f1_micro for "
        "multi-label; rmse for regression; entity f1 for --task tokens with "
        "entity tags; chrf for seq2seq, else the first of --metrics)",
        choices=(
            "accuracy",
            "f1_macro",
            "f1",
            "precision",
            "recall",
            "loss",
            "balanced_accuracy",
            "f1_micro",
            "subset_accuracy",
            "rmse",
            "mae",
            "pearson",
            "spearman",
            "bleu",
            "chrf",
            "exact_match",
            "cer",
            "wer",
            "ndcg@10",
            "mrr@10",
        ),
    )
    epochs: float | None = opt(
        None, "number of passes over the training data (default: 3; 4 for --task tokens)", gt=0
    )
    lr: float | None = opt(
        None, "peak learning rate (default: 5e-5; 1.5e-4 for --task tokens)", gt=0
    )
    head_lr: float | None = opt(
        None,
        "learning rate of the new task head (default: --lr; 3e-3 for --task tokens "
        "without --lr): a fresh head can learn faster than the pre-trained body "
        "should move",
        gt=0,
    )
    label_smoothing: float = opt(
        0.0,
        "training loss: this share of each label's probability spread evenly over "
        "all classes or tokens (Szegedy et al. 2016; the Trainer's "
        "label_smoothing_factor); single-label, tokens, seq2seq and causal-lm. The "
        "valid loss stays plain cross-entropy",
        ge=0,
        lt=1,
    )
    label_all_subtokens: bool = opt(
        False,
        "tokens: train on every sub-token of a word (B- becomes I- after the "
        "first), not only the first; predictions always read the first",
    )
    calibrate: bool = opt(
        True,
        "single-label: fit a temperature on the valid split at the end (calibrated "
        "probabilities; predictions unchanged), saved in the model's config.json, with "
        "calibration.json and reliability.png in the run folder",
    )
    push_to_hub: str | None = opt(
        None,
        "at the end of a finished run, publish its model folder (with its model card) to "
        "this Hugging Face repo, NAMESPACE/NAME, as `warmstart push` does; the token from "
        "HF_TOKEN or `hf auth login`, checked before training",
    )


@dataclass
class PretrainConfig(TrainOptions, DatasetOptions, ModelSourceOptions, Settings):
    data: str | None = opt(
        None,
        "corpus: .txt (one document per line, or blank-line separated), a table with a "
        "text column (CSV, TSV, JSONL, Parquet), a folder of .txt files, or a dataset: a "
        "Hugging Face dataset id or a save_to_disk folder (its train split; its validation "
        "split is held out)",
    )
    streaming: bool = opt(
        False,
        "--data as a dataset: read it as a stream (an IterableDataset; a Hub dataset is "
        "never downloaded whole); under accelerate launch each process tokenises its shard",
    )
    objective: str = opt(
        "clm",
        "clm: next token (GPT); mlm: masked tokens (BERT); mlm+nsp: plus next-sentence "
        "prediction; denoise: text infilling + sentence permutation (BART)",
        choices=("clm", "mlm", "mlm+nsp", "denoise"),
    )
    valid: str | None = opt(None, "held-out corpus (default: --valid-fraction of the documents)")
    valid_fraction: float = opt(
        0.05, "share of documents held out for perplexity/accuracy after each epoch", ge=0, lt=1
    )
    text_column: str | None = opt(None, "text column of a table corpus (auto-detected)")
    limit: int | None = opt(None, "read only the first N documents", ge=1)
    model: str | None = opt(
        None, "model to continue pre-training: alias (minilm, smollm2), folder or Hugging Face id"
    )
    from_scratch: bool = opt(
        False, "a new model from a --size preset and a tokenizer trained on the corpus"
    )
    size: str = opt(
        "small",
        "preset for --from-scratch (tiny: 2 layers of 64; mini: 6 of 256; small: 6 of 384)",
        choices=("tiny", "mini", "small"),
    )
    vocab_size: int = opt(8000, "vocabulary of the tokenizer trained with --from-scratch", ge=100)
    block_size: int = opt(
        128, "tokens per training sequence (texts are packed into blocks of this length)", ge=1
    )
    whole_word_mask: bool = opt(False, "mask whole words rather than word pieces (mlm, mlm+nsp)")
    mlm_probability: float = opt(0.15, "share of tokens masked (mlm, mlm+nsp)", gt=0, lt=1)
    out: str = opt("runs/pretrain", "run folder to write")
    epochs: float = opt(1.0, "number of passes over the corpus", gt=0)
    lr: float = opt(
        5e-4,
        "peak learning rate (5e-4 suits small models from scratch; use ~5e-5 to continue one)",
        gt=0,
    )
    metric_for_best: str = opt(
        "loss",
        "held-out metric that picks the best epoch",
        choices=("loss", "perplexity", "accuracy"),
    )


@dataclass
class EvaluateConfig(
    QAOptions,
    RerankOptions,
    EngineOptions,
    InferenceOptions,
    DecodeOptions,
    PairOptions,
    TagOptions,
    LongTextOptions,
    DataOptions,
    DatasetOptions,
    ModelSourceOptions,
    Settings,
):
    model: str = opt("", "fine-tuned model: run folder, its model/ folder, or Hugging Face id")
    data: str = opt(
        "",
        "labelled table to evaluate on, or a dataset (Hub id or save_to_disk folder: its test"
        " split, else its validation split)",
    )
    label_separator: str | None = opt(
        None,
        "multi-label: the character joining a row's labels (default: the one "
        "the model was trained with; JSON lists need none)",
    )
    out: str | None = opt(None, "write the metrics as JSON here")
    predictions: str | None = opt(
        None,
        "text-to-text: write each pair with the model's output as JSON Lines here "
        "(default: beside --out, as NAME.predictions.jsonl)",
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class PredictConfig(
    QAOptions,
    EngineOptions,
    InferenceOptions,
    DecodeOptions,
    LongTextOptions,
    DatasetOptions,
    ModelSourceOptions,
    Settings,
):
    model: str = opt("", "fine-tuned model: run folder, its model/ folder, or Hugging Face id")
    texts: list[str] = opt([], "texts to classify or tag (else --input, else stdin, one per line)")
    question: list[str] = opt(
        [], "question answering: a question to answer from --context (repeat for several)"
    )
    context: str | None = opt(None, "question answering: the text the --question is answered from")
    input: str | None = opt(
        None,
        "file of texts: .txt (one per line, blank lines skipped) or a table with a text "
        "column; for a tagger "
        "also pre-split words: a CoNLL file or JSONL/Parquet with a tokens column; or a "
        "dataset (Hub id or save_to_disk folder: its test split, else validation)",
    )
    text_column: str | None = opt(None, "text column of an --input table (auto-detected)")
    text_pair_column: str | None = opt(None, "second text column of an --input table")
    limit: int | None = opt(None, "read only the first N rows of --input", ge=1)
    out: str | None = opt(None, "write predictions here (default: stdout)")
    format: str = opt(
        "jsonl",
        "output format (conll: a tagger's word and tag per line)",
        choices=("jsonl", "csv", "conll"),
    )
    max_length: int | None = opt(
        None,
        "truncate texts to this many tokens (default: the model's limit); a "
        "tagger cuts longer sentences into overlapping windows instead",
        ge=1,
    )
    aggregation: str = opt(
        "average",
        "tagger: an entity's score from its words' scores",
        choices=("first", "average", "max"),
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(False, "show a progress bar")


@dataclass
class GenerateConfig(ModelSourceOptions, Settings):
    prompts: list[str] = opt([], "prompts to continue (else --input, else stdin, one per line)")
    model: str = opt(
        "smollm2",
        "causal LM: alias (smollm2: the bundled SmolLM2-135M-Instruct), a local folder "
        "(GPT-2, GPT-Neo, Llama, Qwen...), or a Hugging Face id",
    )
    input: str | None = opt(
        None, "file of prompts: one per line, or JSON Lines (.jsonl) with a 'prompt' field"
    )
    out: str | None = opt(None, "write the results here (default: stdout)")
    format: str = opt(
        "text",
        "output: the texts, or JSON Lines with prompt, completions and token counts",
        choices=("text", "jsonl"),
    )
    chat: bool = opt(False, "send each prompt as a user message through the model's chat template")
    system: str | None = opt(None, "system message for --chat")
    messages: str | None = opt(
        None,
        "--chat: continue a conversation: a JSON list of role/content messages ending with the "
        "user's turn, or a file holding one (.json) or one a line (.jsonl)",
    )
    max_length: int | None = opt(
        None, "most tokens of prompt + completion, for each prompt (as in the seed)", ge=1
    )
    max_new_tokens: int | None = opt(
        None,
        "most tokens of each completion; with --max-length as well, the "
        "stricter of the two holds; with neither, 100",
        ge=1,
    )
    num_return_sequences: int = opt(1, "completions per prompt", ge=1)
    strategy: str = opt(
        "auto",
        "decoding: auto is beam with --num-beams > 1, sampling with several completions "
        "or any sampling option (or when the model's generation config samples), else greedy",
        choices=("auto", "greedy", "sample", "beam"),
    )
    temperature: float | None = opt(
        None,
        "sampling temperature (default: the model's, else 1.0; for no randomness: "
        "--strategy greedy)",
        ge=0.01,
        le=100,
    )
    top_k: int | None = opt(
        None, "sample from the K most likely tokens (default: the model's, else 50; 0: all)", ge=0
    )
    top_p: float | None = opt(
        None, "nucleus sampling: the smallest set of tokens with this probability mass", gt=0, le=1
    )
    typical_p: float | None = opt(None, "locally typical sampling mass", gt=0, le=1)
    repetition_penalty: float | None = opt(
        None, "divide the scores of tokens already present (1.0: none)", ge=0.01, le=100
    )
    no_repeat_ngram_size: int | None = opt(None, "never repeat an n-gram of this size", ge=0)
    num_beams: int | None = opt(None, "beams for beam search (--strategy beam: default 4)", ge=1)
    stop: list[str] = opt(
        [],
        "stop string: a completion ends just before it (\\n and \\t are understood; "
        "several as a list in --config or the Python API)",
    )
    seed: int | None = opt(None, "random seed: makes sampling reproducible", ge=0, le=4294967295)
    batch_size: int = opt(8, "prompts generated together (left-padded)", ge=1)
    stream: bool = opt(
        True,
        "print tokens as they are produced when stdout is a terminal (text output, "
        "one completion per prompt, no beam search)",
    )
    precision: str = opt(
        "auto",
        "weights: auto (on a CPU the faster of fp32 and bf16 for decoding, measured once "
        "per CPU and model; a GPU checkpoint's own), fp32 or bf16 (the onnx backend: fp32)",
        choices=("auto", "fp32", "bf16"),
    )
    backend: str = opt(
        "auto",
        "causal LMs: torch (transformers), onnx (ONNX Runtime GenAI: the model exported once "
        "into the cache, fp32, CPU; greedy and sampling), or auto: onnx on a machine without "
        "a GPU where the request allows it, else torch",
        choices=("auto", "torch", "onnx"),
    )
    quantize: str = opt(
        "auto",
        "weights: int4 or int8 (the onnx backend: GenAI's MatMulNBits, blocks of "
        "--quant-block-size; torch: int8 only, dynamic), none (fp32), or auto: what was "
        "measured fastest on this CPU at the fp32 model's quality (perplexity within 2%), "
        "once per CPU and model; none on the torch backend",
        choices=("auto", "none", "int8", "int4"),
    )
    quant_block_size: int = opt(
        32,
        "--quantize int4/int8 on the onnx backend: weights quantised in blocks of this many "
        "input features: 16, 32, 64, 128 or 256 (smaller: closer to fp32, a little slower)",
        ge=16,
        le=256,
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(False, "show a progress bar")


@dataclass
class ServeConfig(QAOptions, LongTextOptions, ModelSourceOptions, Settings):
    model: str = opt(
        "",
        "model to serve: a fine-tuned classifier (run folder or its model/ folder), an encoder"
        " (minilm), a causal LM (smollm2, a GPT-2 folder...), or a Hugging Face id",
    )
    host: str = opt(
        "127.0.0.1", "address to listen on (0.0.0.0: every network interface; set an API key first)"
    )
    port: int = opt(8000, "port to listen on (0: any free port)", ge=0, le=65535)
    batching: bool = opt(
        True, "gather concurrent requests into one forward pass (off: one request at a time)"
    )
    max_batch_size: int = opt(32, "most texts in one forward pass", ge=1)
    max_wait_ms: float = opt(
        10.0, "how long the first request of a batch waits for others to join it", ge=0
    )
    max_texts_per_request: int = opt(64, "requests with more texts are refused (413)", ge=1)
    max_text_chars: int = opt(20_000, "longer texts and prompts are refused (413)", ge=1)
    max_body_bytes: int = opt(1_000_000, "larger request bodies are refused (413)", ge=1)
    max_length: int | None = opt(
        None, "truncate texts to this many tokens (default: the model's limit)", ge=1
    )
    max_new_tokens: int = opt(256, "most tokens /generate writes per completion", ge=1)
    backend: str = opt(
        "auto",
        "classifier backend for /predict, as in predict: auto (ONNX Runtime on CPUs where "
        "onnxruntime is installed, else PyTorch), torch or onnx; a causal LM's for /generate "
        "and /v1/: as generate --backend (auto: ONNX Runtime GenAI's batching engine on a "
        "machine without a GPU)",
        choices=("auto", "torch", "onnx"),
    )
    quantize: str = opt(
        "auto",
        "weights: a classifier's for /predict: auto (int8 with onnx, none with torch), none or "
        "int8; a causal LM's for /generate and /v1/: as generate --quantize (auto: the "
        "fastest measured at the fp32 model's quality; int4 needs the onnx backend)",
        choices=("auto", "none", "int8", "int4"),
    )
    quant_block_size: int = opt(
        32,
        "a causal LM's int4/int8 weights are quantised in blocks of this many input features "
        "(16, 32, 64, 128 or 256)",
        ge=16,
        le=256,
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    log_level: str = opt(
        "info", "server log level", choices=("critical", "error", "warning", "info", "debug")
    )
    api_key: str | None = opt(
        None,
        "require the header Authorization: Bearer API_KEY on every route but /health "
        "(default: the WARMSTART_API_KEY environment variable, which keeps the key out of "
        "the process list; neither: no authentication)",
    )
    max_queue: int | None = opt(
        None,
        "most model requests waiting or running at once; more are refused at once with "
        "503 and Retry-After (default: no bound)",
        ge=1,
    )
    request_timeout: float | None = opt(
        None,
        "seconds a model request may take before it is answered 504 and its "
        "work dropped (default: no limit)",
        gt=0,
    )
    cors_origin: list[str] = opt(
        [],
        "let web pages from this origin (e.g. https://app.example.com) call the server "
        "from a browser (default: none: CORS off)",
    )
    ui: bool = opt(
        False,
        "serve a playground page at / (chat for causal LMs, forms for the other routes; "
        "it calls the same API with the same key)",
    )


@dataclass
class EmbedConfig(EngineOptions, FeatureOptions, ModelSourceOptions, Settings):
    model: str = opt(
        "minilm", "encoder or causal LM: alias (minilm, smollm2), local folder, or Hugging Face id"
    )
    data: str = opt(
        "",
        "texts to embed: .txt (one per line) or a table (CSV, TSV, JSONL, Parquet) with a text"
        " column",
    )
    out: str = opt("", "output: .parquet (id, embedding and --label-column), .npy or .safetensors")
    text_column: str | None = opt(None, "text column of a table (auto-detected)")
    id_column: str | None = opt(
        None, "column copied to the output's id (default: the row number, from 0)"
    )
    label_column: str | None = opt(
        None, "column copied to the output (.parquet), so `probe` can train on the file"
    )
    limit: int | None = opt(None, "read only the first N rows", ge=1)
    max_length: int | None = opt(
        None, "truncate texts to this many tokens (default: the model's limit)", ge=1
    )
    batch_size: int = opt(32, "texts per forward pass", ge=1)
    chunk_size: int = opt(
        4096,
        "texts per chunk written to disk; an interrupted run resumes after the last chunk",
        ge=1,
    )
    overwrite: bool = opt(
        False, "replace an existing output (and discard a half-finished run's chunks)"
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class ProbeConfig(FeatureOptions, DataOptions, ModelSourceOptions, Settings):
    data: str | None = opt(
        None, "training table, or a .parquet written by `embed` (with its label column)"
    )
    train: str | None = opt(None, "the same as --data")
    valid: str | None = opt(None, "validation table or feature file: picks C")
    test: str | None = opt(None, "test table or feature file")
    split: str | None = opt(
        None, "split DATA by position into train,valid,test as finetune does (35000,5000,10000)"
    )
    shuffle: bool = opt(False, "shuffle rows (with --seed) before splitting")
    max_train_samples: int | None = opt(
        None, "keep only the first N training rows after splitting", ge=1
    )
    max_valid_samples: int | None = opt(
        None, "keep only the first N validation rows after splitting", ge=1
    )
    max_test_samples: int | None = opt(
        None, "keep only the first N test rows after splitting", ge=1
    )
    label_names: str | None = opt(
        None, "names for integer labels 0..K-1, comma separated (e.g. negative,positive)"
    )
    model: str = opt(
        "minilm", "model whose features are probed, for tables (alias, folder or Hugging Face id)"
    )
    c: float | None = opt(
        None,
        "inverse regularisation strength (default: the best on --valid, else by 5-fold CV)",
        gt=0,
    )
    batch_size: int = opt(32, "texts per forward pass when embedding tables", ge=1)
    seed: int = opt(42, "random seed", ge=0, le=4294967295)
    out: str = opt("runs/probe", "run folder to write")
    overwrite: bool = opt(False, "replace an existing run folder")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class ZeroshotConfig(ModelSourceOptions, Settings):
    labels: str = opt(
        "",
        "candidate labels, comma separated; with integer labels 0..K-1 in --label-column they "
        "name them in order (e.g. negative,positive)",
    )
    texts: list[str] = opt([], "texts to classify (else --data)")
    data: str | None = opt(None, "table or .txt of texts; with a label column it is evaluated")
    method: str = opt(
        "similarity",
        "nli: entailment of 'This text is {label}.'; similarity: cosine to label "
        "descriptions; prompt: a causal LM scores each label after a prompt",
        choices=("nli", "similarity", "prompt"),
    )
    model: str | None = opt(
        None,
        "model for the method (default: minilm for similarity, smollm2 for prompt; "
        "nli needs an NLI model: a Hugging Face id such as facebook/bart-large-mnli, or a folder)",
    )
    template: str | None = opt(
        None,
        "nli: hypothesis with {label}; similarity: label description with {label}; "
        "prompt: the prompt with {text} (and optionally {labels}), the label follows it",
    )
    descriptions: list[str] = opt(
        [], "similarity: LABEL=description, one per label (else the --template)"
    )
    multi_label: bool = opt(
        False, "labels are independent (nli, similarity): each gets its own probability"
    )
    calibrate: bool = opt(True, "prompt: divide by the label probabilities of content-free inputs")
    chat: bool = opt(
        False,
        "prompt: send the template as a user message through the model's chat template; "
        "the reply starts with --answer-prefix, then the label",
    )
    answer_prefix: str = opt("The answer is", "prompt with --chat: the start of the model's reply")
    truncate: str = opt(
        "head",
        "prompt: which tokens of an overlong text are kept: the first ones, or the first "
        "quarter and last three quarters (head+tail: where reviews give their verdict)",
        choices=TRUNCATIONS,
    )
    text_column: str | None = opt(None, "text column of a table (auto-detected)")
    label_column: str | None = opt(
        None, "label column: evaluate against it (auto-detected when present)"
    )
    limit: int | None = opt(None, "read only the first N rows", ge=1)
    max_length: int | None = opt(
        None,
        "truncate texts to this many tokens (default: 256 for prompt, else the model's limit)",
        ge=1,
    )
    batch_size: int = opt(16, "sequences per forward pass", ge=1)
    out: str | None = opt(
        None, "write predictions (.jsonl or .csv) or, when evaluating, metrics (.json)"
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class FewshotConfig(ModelSourceOptions, Settings):
    method: str = opt(
        "setfit",
        "setfit: contrastive fine-tuning of a sentence encoder on pairs, then a logistic "
        "head; incontext: k examples per class in a causal LM's prompt; prompt: a causal "
        "LM's label scores after a prompt, calibrated on the k examples per class",
        choices=("setfit", "incontext", "prompt"),
    )
    data: str = opt("", "labelled table the k examples per class are drawn from")
    test: str = opt("", "labelled table to evaluate on")
    labels: str | None = opt(
        None, "label names; with integer labels 0..K-1 they name them in order"
    )
    k: int = opt(8, "examples per class", ge=1)
    repeats: int = opt(
        1, "draw the k examples R times (seeds seed..seed+R-1) and report mean ± std", ge=1
    )
    seed: int = opt(42, "random seed for drawing examples and training", ge=0, le=4294967295)
    model: str | None = opt(None, "default: minilm for setfit, smollm2 for incontext and prompt")
    text_column: str | None = opt(None, "text column (auto-detected)")
    label_column: str | None = opt(None, "label column (auto-detected)")
    limit: int | None = opt(None, "read only the first N rows of each table", ge=1)
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: 256)", ge=1)
    # incontext and prompt
    select: str = opt(
        "random",
        "incontext: the examples are a seeded random draw, or the k most similar "
        "(MiniLM cosine) of each class for every query",
        choices=("random", "similar"),
    )
    template: str | None = opt(
        None, "incontext, prompt: how one text is shown, with {text}; its label follows"
    )
    example_max_length: int = opt(64, "incontext: tokens kept of each example text", ge=1)
    calibrate: bool = opt(
        True, "incontext, prompt: divide by the label probabilities of a content-free input"
    )
    chat: bool = opt(
        False,
        "incontext: the examples as earlier chat turns (user: --template with the text; "
        "assistant: --answer-prefix and the label), then the query; prompt: the template "
        "in the model's chat format",
    )
    answer_prefix: str = opt(
        "The answer is", "incontext, prompt with --chat: the start of each answer"
    )
    truncate: str = opt(
        "head",
        "incontext, prompt: which tokens of an overlong text are kept: the first ones, "
        "or the first quarter and last three quarters (head+tail)",
        choices=TRUNCATIONS,
    )
    descriptions: list[str] = opt(
        [],
        "prompt: LABEL=description (repeatable, several per label average): the "
        "MiniLM similarity of each text to them becomes a second feature of the "
        "head, which the k examples weigh against the prompt's score",
    )
    # setfit
    pairs_per_example: int = opt(
        40,
        "setfit: contrastive pairs drawn per example, half same-class (SetFit's "
        "default of 20 iterations makes 40)",
        ge=1,
    )
    epochs: float = opt(1.0, "setfit: passes over the pairs", gt=0)
    lr: float = opt(2e-5, "setfit: learning rate of the encoder", gt=0)
    batch_size: int = opt(16, "pairs per training step, texts per inference pass", ge=1)
    out: str = opt("runs/fewshot", "run folder to write")
    overwrite: bool = opt(False, "replace an existing run folder")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class CalibrateConfig(InferenceOptions, LongTextOptions, DataOptions, ModelSourceOptions, Settings):
    model: str = opt(
        "", "fine-tuned classifier to calibrate, written in place: run folder or its model/ folder"
    )
    data: str = opt(
        "", "labelled table the temperature is fitted on: held-out rows, not the training data"
    )
    out: str | None = opt(
        None,
        "folder for calibration.json and reliability.png (default: the run folder for a "
        "run's model, else the model folder)",
    )
    bins: int = opt(
        15,
        "equal-width confidence bins of the expected calibration error and the diagram",
        ge=1,
        le=1000,
    )
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show a progress bar")


@dataclass
class ExportConfig(ModelSourceOptions, Settings):
    model: str = opt("", "fine-tuned classifier: run folder, its model/ folder, or Hugging Face id")
    onnx: bool = opt(
        False, "export to ONNX (fp32, plus int8 with --quantize int8); the only format so far"
    )
    out: str | None = opt(
        None, "folder to write (default: the model folder's onnx/, where --backend onnx looks)"
    )
    quantize: str = opt(
        "int8",
        "also write an int8 (dynamic quantisation) model, or only fp32",
        choices=("int8", "none"),
    )
    overwrite: bool = opt(False, "export again even when an up-to-date export is there")


@dataclass
class PushConfig(Settings):
    model: str = opt(
        "", "model to publish, its model card (README.md) included: run folder or model folder"
    )
    repo: str = opt("", "Hugging Face repo to push to: NAMESPACE/NAME (created when missing)")
    private: bool | None = opt(
        None, "create the repo private (an existing repo keeps its visibility)"
    )
    revision: str | None = opt(
        None, "branch to push to, created from main when missing (default: main)"
    )
    commit_message: str | None = opt(
        None, "the commit's message (default: Upload RUN/model with warmstart)"
    )
    with_onnx: bool = opt(
        False,
        "also upload the ONNX export (fp32 and int8) as onnx/, exporting first when it is "
        "missing or stale (classifiers and taggers)",
    )


@dataclass
class TuneConfig(Settings):
    # `base`, not `config`: --config is every command's flag for reading its own options from a file
    # (so `warmstart tune --config tune.yaml` works like the others); --base names the file of the
    # command being tuned.
    base: str = opt(
        "",
        "YAML/TOML options of the command being tuned, as for its --config (data, split, model, "
        "epochs...); its out, overwrite and resume are set by tune",
    )
    space: str = opt(
        "",
        "YAML file of option name: distribution, e.g. lr: {type: float, low: 1e-5, high: 1e-3, "
        "log: true}; epochs: {type: int, low: 1, high: 3}; batch_size: {type: categorical, "
        "choices: [8, 16]}",
    )
    command: str = opt(
        "finetune", "command whose options are searched", choices=("finetune", "probe")
    )
    trials: int = opt(
        20,
        "trials to finish (complete or pruned) in --out, those of an interrupted search included",
        ge=1,
    )
    timeout: float | None = opt(
        None,
        "seconds the search may take; a trial still running then is stopped and runs "
        "again first when the same command is repeated",
        gt=0,
    )
    metric: str | None = opt(
        None,
        "valid metric the trials are compared on (default: the base's metric_for_best, "
        "else finetune's default; accuracy for probe)",
        choices=(
            "accuracy",
            "f1_macro",
            "f1",
            "precision",
            "recall",
            "loss",
            "balanced_accuracy",
            "precision_macro",
            "recall_macro",
        ),
    )
    direction: str = opt(
        "auto",
        "auto: minimize loss, maximize any other metric",
        choices=("auto", "maximize", "minimize"),
    )
    pruner: str = opt(
        "median",
        "stop a finetune trial after an epoch whose valid metric is worse than the median "
        "of finished trials at that epoch, or by Hyperband's successive halving, or never",
        choices=("median", "hyperband", "none"),
    )
    prune_after: int = opt(
        3,
        "median pruner: trials that must complete before it stops any (against fewer, "
        "noise decides)",
        ge=0,
    )
    prune_warmup: int = opt(0, "epochs every trial runs before it may be pruned", ge=0)
    sampler_seed: int = opt(
        42, "seed of the TPE sampler (the trials' own seed is the base's)", ge=0, le=4294967295
    )
    out: str = opt(
        "runs/tune",
        "search folder: study.db, trial-NNN/ run folders, best/, best.json, trials.csv, trials.png",
    )
    overwrite: bool = opt(
        False, "delete the search in --out and start again (without it, a search there resumes)"
    )
    storage: str | None = opt(
        None,
        "Optuna storage URL the study lives in (default: sqlite:///OUT/study.db); several tune"
        " processes given one URL (postgresql://..., mysql://..., or one SQLite file) share the"
        " study: each runs trials until --trials are done among them",
    )
    study_name: str = opt("warmstart-tune", "name of the study in --storage")


@dataclass
class DownloadConfig(Settings):
    model: str = opt(
        "", "Hugging Face id of the model to fetch into the local cache (ORG/NAME), for offline use"
    )
    revision: str | None = opt(None, "branch, tag or commit to fetch (default: main)")
