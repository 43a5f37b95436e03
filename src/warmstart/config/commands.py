"""One dataclass per command. The CLI builds its flags from these fields, so flags, YAML keys and
keyword arguments of the Python functions are the same names."""

from __future__ import annotations

from dataclasses import dataclass

from warmstart.config.options import (
    TRUNCATIONS,
    DataOptions,
    FeatureOptions,
    InferenceOptions,
    TagOptions,
    TrainOptions,
    opt,
)


@dataclass
class FinetuneConfig(TrainOptions, TagOptions, DataOptions):
    task: str = opt("sequence", "sequence: a label per text (or text pair); tokens: a tag per word (named entities, "
                                "part of speech) from CoNLL files or JSONL/Parquet with token and tag lists",
                    choices=("sequence", "tokens"))
    data: str | None = opt(None, "training data: a table (CSV, TSV, JSONL or Parquet, optionally .gz); for --task "
                                 "tokens a CoNLL file (.conll: a token and a tag per line) or JSONL/Parquet")
    valid: str | None = opt(None, "separate validation table")
    test: str | None = opt(None, "separate test table")
    split: str | None = opt(None, "split DATA by position into train,valid,test: counts (35000,5000,10000) "
                                  "or fractions (0.7,0.1,0.2)")
    shuffle: bool = opt(False, "shuffle rows (with --seed) before splitting")
    max_train_samples: int | None = opt(None, "keep only the first N training rows after splitting")
    max_valid_samples: int | None = opt(None, "keep only the first N validation rows after splitting")
    max_test_samples: int | None = opt(None, "keep only the first N test rows after splitting")
    label_names: str | None = opt(None, "names for integer labels 0..K-1, comma separated (e.g. negative,positive; "
                                        "for --task tokens integer tags, e.g. O,B-PER,I-PER)")
    model: str = opt("minilm", "alias (minilm), local folder, or Hugging Face id already in the local cache")
    out: str = opt("runs/finetune", "run folder to write")
    engine: str = opt("native", "training loop: our Accelerate loop, or the Hugging Face Trainer",
                      choices=("native", "trainer"))
    metric_for_best: str | None = opt(None, "valid metric that picks the best epoch (default: accuracy; entity f1 "
                                            "for --task tokens with entity tags)",
                                      choices=("accuracy", "f1_macro", "f1", "precision", "recall", "loss"))
    epochs: float | None = opt(None, "number of passes over the training data (default: 3; 4 for --task tokens)")
    lr: float | None = opt(None, "peak learning rate (default: 5e-5; 1.5e-4 for --task tokens)")
    head_lr: float | None = opt(None, "learning rate of the new task head (default: --lr; 3e-3 for --task tokens "
                                      "without --lr): a fresh head can learn faster than the pre-trained body "
                                      "should move")
    label_all_subtokens: bool = opt(False, "tokens: train on every sub-token of a word (B- becomes I- after the "
                                           "first), not only the first; predictions always read the first")


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
class EvaluateConfig(InferenceOptions, TagOptions, DataOptions):
    model: str = opt("", "fine-tuned model: run folder, its model/ folder, or cached id")
    data: str = opt("", "labelled table to evaluate on")
    out: str | None = opt(None, "write the metrics as JSON here")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(True, "show progress bars")


@dataclass
class PredictConfig(InferenceOptions):
    model: str = opt("", "fine-tuned model: run folder, its model/ folder, or cached id")
    texts: list[str] = opt([], "texts to classify or tag (else --input, else stdin, one per line)")
    input: str | None = opt(None, "file of texts: .txt (one per line) or a table with a text column; for a tagger "
                                  "also pre-split words: a CoNLL file or JSONL/Parquet with a tokens column")
    text_column: str | None = opt(None, "text column of an --input table (auto-detected)")
    text_pair_column: str | None = opt(None, "second text column of an --input table")
    limit: int | None = opt(None, "read only the first N rows of --input")
    out: str | None = opt(None, "write predictions here (default: stdout)")
    format: str = opt("jsonl", "output format (conll: a tagger's word and tag per line)",
                      choices=("jsonl", "csv", "conll"))
    max_length: int | None = opt(None, "truncate texts to this many tokens (default: the model's limit); a "
                                       "tagger cuts longer sentences into overlapping windows instead")
    stride: int | None = opt(None, "tagger: sub-tokens shared by consecutive windows (default: a quarter)")
    aggregation: str = opt("average", "tagger: an entity's score from its words' scores",
                           choices=("first", "average", "max"))
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    progress: bool = opt(False, "show a progress bar")


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
    precision: str = opt("auto", "weights: auto (on a CPU the faster of fp32 and bf16 for decoding, measured once "
                                 "per CPU and model; a GPU checkpoint's own), fp32 or bf16",
                         choices=("auto", "fp32", "bf16"))
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
