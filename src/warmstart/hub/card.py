"""Model cards: the README.md of every saved model folder, written from what the run left in its
folder (config.yaml with its header of automatic choices, metrics.json, the model's config.json,
calibration.json), so a model published or copied on its own still says what it is.

The card is the Hub's format (https://huggingface.co/docs/hub/model-cards): YAML metadata between
``---`` lines — library_name, base_model, datasets, pipeline_tag, tags, license and a model-index
holding the test metrics exactly as metrics.json has them (``huggingface_hub.ModelCard.load`` reads
them back) — then Markdown. What differs between models is read from the saved model itself: the
pipeline from its architecture (as the Hub infers it), labels, tags, thresholds and temperature
from its config.json; nothing here branches on a task kind.

Paths never appear in a card (it may be published): files are named by their file name, a local base
model by its folder's name, and the usage examples load the model from its folder name until `push`
writes the repo id in (``for_repo``).

A card is written by the task that saved the model, after metrics.json and before the trackers'
``on_run_end`` (MLflow and W&B upload the model folder's README.md). Writing it changes the model
folder, whose file list fingerprints an ONNX export; a README changes nothing the graph depends on,
so an up-to-date export is kept up to date (inference.export.adopt_config), as calibrate does."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmstart import __version__
from warmstart.files import atomic_write_text

CARD = "README.md"
TAG = "warmstart"  # every card warmstart writes carries it: how `calibrate` and `push` know theirs
REPO_URL = "https://github.com/warmstart/warmstart"
# The Hub ids of the bundled aliases (models.bundled.ALIASES): the base model a card names.
ALIAS_HUB_IDS = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
# Counts, not scores: shown with the evaluation, left out of the model-index.
COUNTS = {
    "n",
    "sentences",
    "entities",
    "cut_at_limit",
    "max_new_tokens",
    "support",
    "rows",
    "questions",
}
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "f1": "F1",
    "f1_macro": "Macro F1",
    "f1_micro": "Micro F1",
    "precision": "Precision",
    "precision_macro": "Macro precision",
    "precision_micro": "Micro precision",
    "recall": "Recall",
    "recall_macro": "Macro recall",
    "recall_micro": "Micro recall",
    "subset_accuracy": "Subset accuracy",
    "rmse": "RMSE",
    "mae": "MAE",
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "bleu": "BLEU",
    "chrf": "chrF",
    "exact_match": "Exact match",
    "cer": "Character error rate",
    "wer": "Word error rate",
    "loss": "Loss",
    "perplexity": "Perplexity",
    "ece": "Expected calibration error",
}
# The options a card lists as hyperparameters, in this order, where the run's config.yaml has them
# set (and not false); config.yaml itself has every option, those of other task kinds included.
COMMON = tuple(
    "task epochs max_steps batch_size grad_accum lr head_lr optimizer weight_decay warmup_ratio"
    " scheduler max_grad_norm max_length label_smoothing dropout attention_dropout metric_for_best"
    " patience seed precision attn_implementation engine num_processes".split()
)
PRETRAINING = tuple(
    "objective block_size mlm_probability whole_word_mask valid_fraction from_scratch".split()
)
SCRATCH = ("size", "tokenizer", "vocab_size")  # only when --from-scratch built the model
LORA = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_save")
# Values that mean "off": not worth a row.
OFF = {"class_weights": "none", "sampler": "random", "label_smoothing": 0.0}


# --- what a saved model is: its pipeline, read from its architecture ---------------------------


@dataclass(frozen=True)
class Pipeline:
    """What the Hub calls a model's task (its pipeline_tag), and how a card tells and shows it."""

    tag: str  # the Hub's pipeline_tag
    name: str  # the model-index task name
    does: Callable[[dict], str]  # the model's config -> "gives each text one of 2 labels..."
    usage: Callable[[str, dict, str], str]  # (model id or folder, config, an input) -> Python
    example: str  # an input for the usage examples when the run has none of its own
    options: tuple[str, ...] = ()  # the fine-tuning options of this kind of model a card lists
    warmstart: str = "predict"  # the warmstart command that runs it


def labels_of(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)] if id2label else []


def classifies(config: dict) -> str:
    names = labels_of(config)
    # Looked up, not compared: the saved config's problem_type is transformers' own name.
    problem = config.get("problem_type") or "single_label_classification"
    return {
        "multi_label_classification": f"gives each text every one of its {len(names)} labels whose"
        " score (a sigmoid per label) reaches that label's threshold",
        "regression": "predicts "
        + (f"{len(names)} numbers" if len(names) > 1 else "a number")  # one head output per target
        + " for each text ("
        + ", ".join(config.get("label_values") or names or ["value"])
        + ")",
    }.get(problem, f"gives each text one of {len(names)} labels, with a probability for each")


def classifier_usage(ref: str, config: dict, example: str) -> str:
    problem = config.get("problem_type") or "single_label_classification"
    extra = {
        "multi_label_classification": ', top_k=None, function_to_apply="sigmoid"',
        "regression": ', function_to_apply="none"',
    }.get(problem, "")
    lines = [
        "from transformers import pipeline",
        "",
        f'classifier = pipeline("text-classification", model="{ref}"{extra})',
        f"print(classifier({example!r}))",
    ]
    if problem == "multi_label_classification" and config.get("thresholds"):
        lines += [
            "# a label applies where its score reaches its threshold (config.thresholds, in the",
            "# order of config.id2label)",
        ]
    if config.get("calibration_temperature"):
        lines += [
            "# the pipeline gives softmax(logits); the calibrated probabilities are",
            "# softmax(logits / model.config.calibration_temperature)",
        ]
    return "\n".join(lines)


def tagger_usage(ref: str, config: dict, example: str) -> str:
    return "\n".join(
        [
            "from transformers import pipeline",
            "",
            "# each word's tag is its first sub-token's, as warmstart trained and scored it",
            f'tagger = pipeline("token-classification", model="{ref}",'
            ' aggregation_strategy="first")',
            f"print(tagger({example!r}))",
        ]
    )


def qa_usage(ref: str, config: dict, example: str) -> str:
    # transformers 5 dropped pipeline("question-answering"): the model and the best span by hand,
    # as the HF recipe's postprocess_qa_predictions reads them.
    return "\n".join(
        [
            "import torch",
            "from transformers import AutoModelForQuestionAnswering, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{ref}")',
            f'model = AutoModelForQuestionAnswering.from_pretrained("{ref}")',
            f"question, context = {QA_QUESTION!r}, {example!r}",
            "enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors='pt')",
            "offsets = enc.pop('offset_mapping')[0]",
            "in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])",
            "with torch.no_grad():",
            "    out = model(**enc)",
            "start = out.start_logits[0].masked_fill(~in_context, -1e9)",
            "end = out.end_logits[0].masked_fill(~in_context, -1e9)",
            "# spans of 1 to 30 tokens: end at or after start, at most 29 tokens later",
            "ok = torch.ones(len(start), len(start), dtype=torch.bool).triu().tril(29)",
            "scores = (start[:, None] + end[None, :]).masked_fill(~ok, -1e9)",
            "s, e = divmod(int(scores.argmax()), scores.shape[1])",
            "print(context[offsets[s][0] : offsets[e][1]])",
        ]
    )


def seq2seq_usage(ref: str, config: dict, example: str) -> str:
    new = config.get("max_new_tokens") or 64
    return "\n".join(
        [
            "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{ref}")',
            f'model = AutoModelForSeq2SeqLM.from_pretrained("{ref}")',
            f"inputs = tokenizer([{example!r}], return_tensors='pt')",
            f"outputs = model.generate(**inputs, max_new_tokens={new})",
            "print(tokenizer.batch_decode(outputs, skip_special_tokens=True))",
        ]
    )


def generator_usage(ref: str, config: dict, example: str) -> str:
    template = config.get("instruction_template")
    if config.get("instruction_chat"):
        system = config.get("instruction_system")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": example}
        ]
        prompt = [
            f"messages = {messages!r}",
            "prompt = generator.tokenizer.apply_chat_template(messages, tokenize=False,"
            " add_generation_prompt=True)",
        ]
    elif template:
        prompt = [f"prompt = {template!r}.format(source={example!r})"]
    else:
        prompt = [f"prompt = {example!r}"]
    return "\n".join(
        [
            "from transformers import pipeline",
            "",
            f'generator = pipeline("text-generation", model="{ref}")',
            *prompt,
            "print(generator(prompt, max_new_tokens=32, do_sample=False,"
            ' return_full_text=False)[0]["generated_text"])',
        ]
    )


def fill_mask_usage(ref: str, config: dict, example: str) -> str:
    return "\n".join(
        [
            "from transformers import pipeline",
            "",
            f'unmasker = pipeline("fill-mask", model="{ref}")',
            f"print(unmasker({example!r}.replace('[MASK]', unmasker.tokenizer.mask_token)))",
        ]
    )


def features_usage(ref: str, config: dict, example: str) -> str:
    return "\n".join(
        [
            "from transformers import pipeline",
            "",
            f'extractor = pipeline("feature-extraction", model="{ref}")',
            f"print(len(extractor({example!r})[0]))",
        ]
    )


TEXT_CLASSIFICATION = Pipeline(
    "text-classification",
    "Text Classification",
    classifies,
    classifier_usage,
    "A wonderful, moving film.",
    ("problem", "long_text", "stride", "chunk_aggregation", "class_weights", "sampler"),
)
TOKEN_CLASSIFICATION = Pipeline(
    "token-classification",
    "Token Classification",
    lambda c: (
        f"tags each word of a text with one of {len(labels_of(c))} tags"
        + (f" ({c['tag_scheme']} entity tags)" if c.get("tag_scheme") else "")
    ),
    tagger_usage,
    "Sarah flew from Oslo to New York on Monday.",
    ("base_tags", "label_all_subtokens", "stride"),
)
QA_QUESTION = "Where do water deer live?"
QUESTION_ANSWERING = Pipeline(
    "question-answering",
    "Question Answering",
    lambda c: (
        "answers a question with the span of its context that holds the answer (extractive)"
        + (
            ", or with nothing where the context has none (SQuAD v2)"
            if c.get("qa_with_negatives")
            else ""
        )
    ),
    qa_usage,
    "The water deer is native to China and Korea, where it lives along rivers.",
    ("stride", "max_answer_length"),
    warmstart="answer",
)
TEXT2TEXT = Pipeline(
    "text2text-generation",
    "Text2Text Generation",
    lambda c: "writes a target text for each source text (an encoder-decoder)",
    seq2seq_usage,
    "A source text.",
    ("num_beams", "max_new_tokens", "from_scratch"),
)
TEXT_GENERATION = Pipeline(
    "text-generation",
    "Text Generation",
    lambda c: (
        "writes a completion for each prompt"
        + (
            " in the instruction format it was tuned on"
            if c.get("instruction_template") or c.get("instruction_chat")
            else " (a causal language model)"
        )
        + (
            f", preference-tuned on chosen/rejected replies ({c['preference'].get('loss')} loss,"
            f" beta {c['preference'].get('beta')}, reference `{c['preference'].get('reference')}`)"
            if isinstance(c.get("preference"), dict)
            else ""
        )
    ),
    generator_usage,
    "Once upon a time",
    (
        "template",
        "chat",
        "system",
        "packing",
        "conversation_column",
        "num_beams",
        "max_new_tokens",
    ),
)
FILL_MASK = Pipeline(
    "fill-mask",
    "Fill-Mask",
    lambda c: "fills in masked words (a masked language model): a starting point for fine-tuning",
    fill_mask_usage,
    "The film was [MASK].",
    warmstart="embed",
)
FEATURES = Pipeline(
    "feature-extraction",
    "Feature Extraction",
    lambda c: "turns texts into hidden-state features",
    features_usage,
    "A text to embed.",
    warmstart="embed",
)


def sentence_usage(ref: str, config: dict, example: str) -> str:
    return "\n".join(
        [
            "from sentence_transformers import SentenceTransformer",
            "",
            f'model = SentenceTransformer("{ref}")',
            f"vectors = model.encode([{example!r}, 'another passage'])",
            "print(model.similarity(vectors[:1], vectors[1:]))",
        ]
    )


def reranker_usage(ref: str, config: dict, example: str) -> str:
    return "\n".join(
        [
            "from sentence_transformers import CrossEncoder",
            "",
            f'model = CrossEncoder("{ref}")',
            f"print(model.predict([({example!r}, 'the lift of a wing in a propeller slipstream')]))",
        ]
    )


# Saved by `finetune --task embedding` / `--task rerank` (sentence-transformers folders), told apart
# by what their config.json records rather than by the architecture alone.
SENTENCE_SIMILARITY = Pipeline(
    "sentence-similarity",
    "Sentence Similarity",
    lambda c: "embeds texts for search by cosine similarity (a sentence-transformers bi-encoder)",
    sentence_usage,
    "what is the lift of a wing in a slipstream",
    ("rank_loss", "scale", "learn_scale", "mini_batch_size", "negatives", "mine"),
    warmstart="embed",
)
TEXT_RANKING = Pipeline(
    "text-ranking",
    "Text Ranking",
    lambda c: "scores how well a passage answers a query (a cross-encoder reranker)",
    reranker_usage,
    "what is the lift of a wing in a slipstream",
    ("rank_loss", "negatives", "mine"),
    warmstart="evaluate",
)
# Architecture name endings, as the Hub reads a transformers model's task from config.json.
ARCHITECTURES = (
    ("ForSequenceClassification", TEXT_CLASSIFICATION),
    ("ForTokenClassification", TOKEN_CLASSIFICATION),
    ("ForQuestionAnswering", QUESTION_ANSWERING),
    ("ForConditionalGeneration", TEXT2TEXT),
    ("ForSeq2SeqLM", TEXT2TEXT),
    ("EncoderDecoderModel", TEXT2TEXT),
    ("ForCausalLM", TEXT_GENERATION),
    ("LMHeadModel", TEXT_GENERATION),
    ("ForMaskedLM", FILL_MASK),
    ("ForPreTraining", FILL_MASK),
)


def pipeline_of(config: dict) -> Pipeline:
    if config.get("num_labels", len(config.get("id2label") or {})) == 1 and isinstance(
        config.get("sentence_transformers"), dict
    ):
        return TEXT_RANKING
    if isinstance(config.get("sentence_embedding"), dict):
        return SENTENCE_SIMILARITY
    for arch in config.get("architectures") or []:
        for ending, found in ARCHITECTURES:
            if arch.endswith(ending):
                return found
    return FEATURES


def model_config(model_dir: Path) -> dict:
    """The saved model's config.json (an adapter saved with --lora-save adapter keeps it as
    merged_config.json)."""
    for name in ("config.json", "merged_config.json"):
        path = model_dir / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}


def is_adapter(model_dir: Path) -> bool:
    return (model_dir / "adapter_config.json").is_file()


# --- where the model came from ------------------------------------------------------------------


def is_hub_id(name: str | None) -> bool:
    """A Hub id ("bert-base-uncased", "org/name") rather than a path: no path prefix, at most one
    slash, and nothing of that name here."""
    if not name or name.startswith(("/", ".", "~")) or Path(name).expanduser().exists():
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def base_model_of(settings: dict) -> str | None:
    """The Hub id of the model the run started from: an alias's own id, a Hub id as given; None for
    a local folder or a model built from scratch."""
    model = settings.get("model")
    if not model or settings.get("from_scratch"):
        return None
    alias = ALIAS_HUB_IDS.get(str(model).strip().lower())
    return alias or (str(model) if is_hub_id(str(model)) else None)


def base_license(settings: dict) -> str | None:
    """The license the base model's own README.md states, where it has one."""
    model = settings.get("model")
    if not model or settings.get("from_scratch"):
        return None
    try:
        from warmstart.config.options import ModelSourceOptions
        from warmstart.models.registry import resolve

        # The run has just used the model, so this finds it where the run did: a Hub id at the
        # commit the run pinned, from the cache (offline: a card never downloads).
        hub = ModelSourceOptions(revision=settings.get("revision"), offline=True)
        readme = Path(
            resolve(str(model), hub=hub) if is_hub_id(str(model)) else resolve(str(model))
        )
        readme = readme / CARD
        meta = read_metadata(readme) if readme.is_file() else {}
    except Exception:  # a card is written at the end of a run: never fail the run over a license
        return None
    found = meta.get("license")
    return found if isinstance(found, str) else None


def source_name(value: str | None) -> str | None:
    """How a card names a data source: a Hub dataset by its id, a file by its file name."""
    if not value:
        return None
    return value if is_hub_id(value) else Path(value).name


# --- the machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware() -> str:
    """This machine: CPU model and cores, the GPUs torch sees (only if torch is already loaded: a
    card never imports it)."""
    gpus: list[str] = []
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cpu = f"{cpu_model()} ({os.cpu_count()} logical cores)"
    return cpu + (f"; GPU: {', '.join(gpus)}" if gpus else "; no GPU")


def software() -> str:
    found = [f"warmstart {__version__}", f"Python {platform.python_version()}"]
    for name in ("torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            found.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(found)


# --- the card's parts ---------------------------------------------------------------------------


@dataclass
class Card:
    """A card being written: its metadata (the YAML block) and its sections, in order."""

    title: str
    metadata: dict = field(default_factory=dict)
    intro: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, heading: str, text: str) -> None:
        if text.strip():
            self.sections.append((heading, text.strip()))

    def text(self) -> str:
        body = "".join(f"\n## {h}\n\n{t}\n" for h, t in self.sections)
        return f"---\n{metadata_yaml(self.metadata)}---\n\n# {self.title}\n\n{self.intro}\n{body}"


def metadata_yaml(metadata: dict) -> str:
    """The YAML block through huggingface_hub's own ModelCardData, so the model-index is in the
    Hub's format."""
    from huggingface_hub import EvalResult, ModelCardData

    meta = dict(metadata)
    results = [EvalResult(**r) for r in meta.pop("eval_results", [])]
    data = ModelCardData(eval_results=results or None, **meta)
    return data.to_yaml() + "\n"


def figure(value: Any) -> str:
    """A table cell: numbers to 4 decimals, nothing as a dash, a '|' escaped (it splits cells)."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).replace("|", "\\|")
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"


def table(head: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(figure(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def scores(metrics: dict | None) -> dict[str, float]:
    """The figures of a metrics dict the model-index holds: finite numbers that are not counts."""
    return {
        k: v
        for k, v in (metrics or {}).items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and k not in COUNTS
        and math.isfinite(v)
    }


def eval_results(
    pipeline: Pipeline, figures: dict[str, float], dataset: str, split: str, config: str | None
) -> list[dict]:
    return [
        dict(
            task_type=pipeline.tag,
            task_name=pipeline.name,
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=split,
            dataset_config=config,
            metric_type=k,
            metric_value=v,
            metric_name=METRIC_NAMES.get(k, k.replace("_", " ")),
        )
        for k, v in figures.items()
    ]


def per_item_table(per: dict, limit: int = 40) -> str:
    """Per class, label or entity type: precision, recall, F1 and support, largest support
    first."""
    rows = sorted(per.items(), key=lambda kv: -(kv[1].get("support") or 0))
    shown = [
        (f"`{name}`", m.get("precision"), m.get("recall"), m.get("f1"), m.get("support"))
        for name, m in rows[:limit]
    ]
    more = f"\n\n({len(rows) - limit} more in metrics.json)" if len(rows) > limit else ""
    return table(("", "precision", "recall", "F1", "support"), shown) + more


def outputs_section(config: dict, pipeline: Pipeline) -> tuple[str, str]:
    names = labels_of(config)
    if pipeline is TOKEN_CLASSIFICATION:
        return "Tags", ", ".join(f"`{n}`" for n in names)
    if pipeline is TEXT_CLASSIFICATION:
        if config.get("problem_type") == "regression":
            return "Targets", ", ".join(f"`{n}`" for n in config.get("label_values") or names)
        return "Labels", ", ".join(f"`{n}`" for n in names)
    return "", ""


def thresholds_section(config: dict) -> str:
    thresholds = config.get("thresholds")
    names = labels_of(config)
    if not thresholds or len(thresholds) != len(names):
        return ""
    return (
        "Tuned per label for F1 on the validation split and saved as `config.thresholds` (in the"
        " order of `config.id2label`): a label applies where `sigmoid(logits) >= threshold`.\n\n"
        + table(("label", "threshold"), [(f"`{n}`", t) for n, t in zip(names, thresholds)])
    )


def calibration_text(temperature: float, figures: dict, where: str) -> str:
    """The calibration section: T, and the ECE/NLL before and after where they are known."""
    lines = [
        f"Temperature scaling (Guo et al., 2017): T = {temperature:.4f}, fitted on {where}."
        " Probabilities are softmax(logits / T), saved as `config.calibration_temperature`;"
        " dividing by T never changes a label. warmstart applies it on every backend; with plain"
        " transformers divide the logits by it."
    ]
    rows = [
        (name, figures[f"{key}_before"], figures[f"{key}_after"])
        for name, key in (("ECE", "ece"), ("NLL", "nll"))
        if f"{key}_before" in figures and f"{key}_after" in figures
    ]
    if rows:
        lines.append(table(("", "T = 1", "calibrated"), rows))
    return "\n\n".join(lines)


def warmstart_command(pipeline: Pipeline, ref: str, example: str) -> str:
    if pipeline is TEXT_GENERATION:
        return f"warmstart generate --model {ref} {shlex.quote(example)}"
    if pipeline.warmstart == "answer":
        return (
            f"warmstart predict {ref} --question {shlex.quote(QA_QUESTION)}"
            f" --context {shlex.quote(example)}"
        )
    if pipeline.warmstart == "embed":
        return f"warmstart embed --model {ref} --data texts.txt --out features.parquet"
    if pipeline.warmstart == "evaluate":  # a reranker: BM25's top 100 of a BEIR folder re-ranked
        return f"warmstart evaluate {ref} --data beir-folder/ --first-stage bm25"
    return f"warmstart predict {ref} {shlex.quote(example)}"


# The transformers class a saved model of each pipeline loads with (for a LoRA adapter's base).
AUTO_CLASSES = {
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "text2text-generation": "AutoModelForSeq2SeqLM",
    "text-generation": "AutoModelForCausalLM",
    "fill-mask": "AutoModelForMaskedLM",
}


def adapter_base(model_dir: Path, settings: dict | None = None) -> str | None:
    """For a folder saved with --lora-save adapter, the model its adapter goes on (a Hub id where
    known; else a placeholder, never a local path); None for any other folder."""
    if not is_adapter(model_dir):
        return None
    found = base_model_of(settings) if settings else None
    if found is None:
        try:
            adapter = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
            name = str(adapter.get("base_model_name_or_path") or "")
            found = name if is_hub_id(name) else None
        except (OSError, ValueError):
            pass
    return found or "path/to/the-base-model"


def adapter_usage(pipeline: Pipeline, config: dict, ref: str, base: str) -> str:
    auto = AUTO_CLASSES.get(pipeline.tag, "AutoModel")
    labels = labels_of(config)
    heads = (
        f", num_labels={len(labels)}"
        if pipeline in (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION)
        else ""
    )
    return "\n".join(
        [
            "from peft import PeftModel",
            f"from transformers import AutoTokenizer, {auto}",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{ref}")',
            f'base = {auto}.from_pretrained("{base}"{heads})',
            "# the LoRA adapter, and the task head it trained, on the base model",
            f'model = PeftModel.from_pretrained(base, "{ref}")',
        ]
    )


def usage_section(
    pipeline: Pipeline, config: dict, ref: str, example: str, base: str | None = None
) -> str:
    """How to run the model with transformers and with warmstart; ``base``: the base model of a
    LoRA adapter folder (None: a whole model)."""
    code = (
        pipeline.usage(ref, config, example)
        if base is None
        else adapter_usage(pipeline, config, ref, base)
    )
    parts = [
        "With transformers:"
        if base is None
        else (
            "This folder holds a LoRA adapter (`--lora-save adapter`) and its task head: load it"
            " with peft on its base model (warmstart merges it once, by itself):"
        ),
        f"```python\n{code}\n```",
        f"With [warmstart]({REPO_URL}):",
        f"```\n{warmstart_command(pipeline, ref, example)}\n```",
    ]
    if pipeline.warmstart == "embed":
        parts.append(
            f"Or fine-tune it for a task: `warmstart finetune --model {ref} --data train.csv"
            " --out runs/x`."
        )
    return "\n\n".join(parts)


def example_of(run_dir: Path | None, pipeline: Pipeline) -> str:
    """An input for the usage examples: the first source text the run wrote predictions for, else
    the pipeline's own."""
    path = run_dir / "predictions.jsonl" if run_dir else None
    try:
        if path is not None and path.is_file():
            with open(path, encoding="utf-8") as f:
                source = json.loads(f.readline()).get("source")
            if isinstance(source, str) and source.strip():
                return source.strip()[:200]
    except (OSError, ValueError, AttributeError):
        pass
    return pipeline.example


# --- cards --------------------------------------------------------------------------------------


def read_settings(run_dir: Path) -> tuple[dict, list[str]]:
    """config.yaml's options and the notes of its header (one automatic choice and its reason
    each)."""
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    notes = [line[2:].strip() for line in text.splitlines() if line.startswith("# ")]
    return yaml.safe_load(text) or {}, notes


def run_card(run_dir: Path, model_dir: Path | None = None) -> str:
    """The card of the model a finetune or pretrain run saved, from its run folder."""
    run_dir = Path(run_dir)
    model_dir = Path(model_dir) if model_dir else run_dir / "model"
    settings, notes = read_settings(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    config = model_config(model_dir)
    pipeline = pipeline_of(config)
    adapter = is_adapter(model_dir)
    pretraining = "objective" in settings and "task" not in settings
    base = base_model_of(settings)
    datasets = [d for d in (settings.get("data"), settings.get("valid"), settings.get("test"))]
    hub_datasets = list(dict.fromkeys(d for d in datasets if d and is_hub_id(d)))
    data_name = source_name(settings.get("test") or settings.get("data")) or "unknown"

    test = metrics.get("test")
    if test:
        figures, split = scores(test), "test"
        evaluated = test
    elif metrics.get("valid_best") or metrics.get("valid_after"):
        evaluated = metrics.get("valid_best") or metrics.get("valid_after")
        figures, split = scores(evaluated), "validation"
        data_name = source_name(settings.get("valid") or settings.get("data")) or "unknown"
    else:
        best = best_epoch(metrics)
        evaluated = {k[6:]: v for k, v in best.items() if k.startswith("valid_")}
        figures, split = scores(evaluated), "validation"
    name = run_dir.name
    task_tag = settings.get("task") or settings.get("objective")
    metadata: dict = {
        "library_name": "peft" if adapter else "transformers",
        "base_model": base,
        "license": base_license(settings),
        "datasets": hub_datasets or None,
        "pipeline_tag": pipeline.tag,
        "tags": list(dict.fromkeys([TAG, pipeline.tag, *([task_tag] if task_tag else [])])),
        "model_name": name,
        "eval_results": eval_results(
            pipeline, figures, data_name, split, settings.get("data_config")
        ),
    }
    if not figures:
        metadata.pop("model_name")
    metadata = {k: v for k, v in metadata.items() if v is not None}

    card = Card(name, metadata)
    made = "pre-trained" if pretraining else "fine-tuned"
    origin = (
        f"[{base}](https://huggingface.co/{base})"
        if base
        else "a new model built from scratch"
        if settings.get("from_scratch")
        else f"a local model (`{Path(str(settings.get('model'))).name}`)"
    )
    revision = settings.get("revision")
    card.intro = (
        f"This model {pipeline.does(config)}. It was {made} with [warmstart]({REPO_URL})"
        f" (`warmstart {'pretrain' if pretraining else 'finetune'}`) from {origin}"
        + (f" at revision `{revision}`" if revision and base else "")
        + f" on {describe_data(settings)}."
        + (f" Objective: {settings['objective']}." if pretraining else "")
    )
    heading, outputs = outputs_section(config, pipeline)
    card.add(heading, outputs)
    card.add("Training data", data_section(settings, metrics))
    card.add(
        "Training procedure",
        procedure_section(
            settings, notes, metrics, hyperparameters(settings, pipeline, pretraining)
        ),
    )
    card.add("Evaluation", evaluation_section(evaluated, figures, split, data_name, metrics))
    calibration = metrics.get("calibration")
    if calibration and config.get("calibration_temperature"):
        rows = calibration.get("rows")
        card.add(
            "Calibration",
            calibration_text(
                config["calibration_temperature"],
                calibration,
                f"the validation split ({rows} rows)" if rows else "the validation split",
            ),
        )
    card.add("Thresholds", thresholds_section(config))
    card.add("Limits", limits_section(settings, metrics, pipeline, evaluated, split))
    ref = f"{name}/{model_dir.name}"
    card.add(
        "How to use",
        usage_section(
            pipeline, config, ref, example_of(run_dir, pipeline), adapter_base(model_dir, settings)
        ),
    )
    card.add(
        "Reproduce",
        "The run folder's `config.yaml` holds every resolved option:"
        " `warmstart "
        + ("pretrain" if pretraining else "finetune")
        + " --config config.yaml` repeats the run.",
    )
    return card.text()


def best_epoch(metrics: dict) -> dict:
    epochs = metrics.get("epochs") or []
    if not epochs:
        return {}
    best = metrics.get("best_epoch") or len(epochs)
    return epochs[min(best, len(epochs)) - 1]


def describe_data(settings: dict) -> str:
    names = [source_name(settings.get(k)) for k in ("data", "valid", "test")]
    named = [n for n in names if n]
    if not named:
        return "its data"
    return ", ".join(f"`{n}`" for n in dict.fromkeys(named))


def data_section(settings: dict, metrics: dict) -> str:
    lines = []
    for key, what in (("data", "training data"), ("valid", "validation"), ("test", "test")):
        name = source_name(settings.get(key))
        if name:
            extra = ""
            if is_hub_id(settings.get(key)):
                config = settings.get("data_config")
                extra = f" (Hugging Face dataset{f', config `{config}`' if config else ''})"
            lines.append(f"- {what}: `{name}`{extra}")
    if settings.get("split"):
        lines.append(
            f"- split by position into train, valid, test: `{settings['split']}`"
            + (" after a seeded shuffle" if settings.get("shuffle") else "")
        )
    for key in ("max_train_samples", "max_valid_samples", "max_test_samples"):
        if settings.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {settings[key]:,}")
    for key in ("text_column", "text_pair_column", "label_column", "source_column"):
        if settings.get(key):
            lines.append(f"- {key.replace('_', ' ')}: `{settings[key]}`")
    if settings.get("target_column"):
        lines.append(f"- target column: `{settings['target_column']}`")
    rows = metrics.get("rows") or metrics.get("documents")
    unit = "rows" if metrics.get("rows") else "documents"
    if rows:
        lines.append(
            "\n"
            + table(
                ("part", unit),
                [(part, n) for part, n in rows.items()],
            )
        )
    if metrics.get("sequences"):
        block = settings.get("block_size")
        lines.append(
            f"\n{metrics['sequences']:,} training sequences"
            + (f" of at most {block} tokens" if block else "")
            + "."
        )
    return "\n".join(lines)


def hyperparameters(settings: dict, pipeline: Pipeline, pretraining: bool) -> list[tuple]:
    """(option, value) rows: the training options, those of this kind of model, LoRA's when it
    was used, the preset's for a model built from scratch."""
    keys = COMMON + (PRETRAINING if pretraining else pipeline.options)
    keys += (SCRATCH if settings.get("from_scratch") else ()) + (
        LORA if settings.get("lora_r") else ()
    )
    if not str(settings.get("objective") or "mlm").startswith("mlm"):
        keys = tuple(k for k in keys if k not in ("mlm_probability", "whole_word_mask"))
    # As config.yaml writes them (5e-05, not a rounded 0.0001): `--config` takes them back.
    return [
        (f"`{k}`", ", ".join(map(str, v)) if isinstance(v := settings[k], list) else str(v))
        for k in dict.fromkeys(keys)
        if not (settings.get(k) is None or settings[k] is False or settings[k] == "")
        and OFF.get(k, object()) != settings[k]
    ]


def procedure_section(settings: dict, notes: list[str], metrics: dict, rows: list[tuple]) -> str:
    facts = []
    engine = settings.get("engine") or "native"
    facts.append(
        "- **Engine:** "
        + {"native": "warmstart's Accelerate loop", "trainer": "the Hugging Face Trainer"}.get(
            engine, engine
        )
    )
    precision = metrics.get("precision") or settings.get("precision")
    if precision:
        facts.append(f"- **Precision:** {precision}")
    epochs = metrics.get("epochs") or []
    if epochs:
        facts.append(
            f"- **Epochs:** {len(epochs)}"
            + (
                f", best {metrics['best_epoch']} (the model kept)"
                if metrics.get("best_epoch")
                else ""
            )
            + (", stopped early" if metrics.get("stopped_early") else "")
        )
    times = [
        (metrics.get("train_loop_seconds"), "training loop"),
        (metrics.get("total_seconds"), "whole run"),
    ]
    shown = [f"{duration(s)} {what}" for s, what in times if isinstance(s, (int, float))]
    if shown:
        facts.append("- **Time:** " + ", ".join(shown))
    params = metrics.get("parameters")
    if isinstance(params, dict) and params.get("total"):
        trained = params.get("trainable", params["total"])
        facts.append(
            f"- **Parameters:** {params['total'] / 1e6:.2f}M"
            + ("" if trained == params["total"] else f", {trained / 1e6:.2f}M trained")
        )
    elif isinstance(params, int):
        facts.append(f"- **Parameters:** {params / 1e6:.2f}M")
    facts += [f"- **Hardware:** {hardware()}", f"- **Software:** {software()}"]
    text = "\n".join(facts)
    if rows:
        text += "\n\n### Hyperparameters\n\n" + table(("option", "value"), rows)
    if notes:
        text += "\n\nChosen automatically (the header of `config.yaml`: each choice and why):\n\n"
        text += "\n".join(f"- {n}" for n in notes)
    return text


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def evaluation_section(
    evaluated: dict | None, figures: dict, split: str, data_name: str, metrics: dict
) -> str:
    if not figures and not metrics.get("valid_before"):
        return "No held-out part was scored."
    n = (evaluated or {}).get("n")
    parts = [
        f"On the {split} part of `{data_name}`"
        + (f" ({n:,} rows)" if isinstance(n, int) else "")
        + ", scored on the saved model"
        + (" (the figures of `metrics.json` and of the model-index above):" if figures else ":")
    ]
    if metrics.get("valid_before") and metrics.get("valid_after"):
        before, after = metrics["valid_before"], metrics["valid_after"]
        keys = [k for k in after if k in before]
        parts.append(
            table(
                ("metric", "before training", "after"),
                [(METRIC_NAMES.get(k, k), before[k], after[k]) for k in keys],
            )
        )
    elif figures:
        parts.append(
            table(("metric", "value"), [(METRIC_NAMES.get(k, k), v) for k, v in figures.items()])
        )
    for key in ("per_class", "per_label", "per_type"):
        per = (evaluated or {}).get(key)
        if isinstance(per, dict) and per:
            parts.append(per_item_table(per))
    return "\n\n".join(parts)


def limits_section(
    settings: dict, metrics: dict, pipeline: Pipeline, evaluated: dict | None, split: str
) -> str:
    lines = []
    rows = (metrics.get("rows") or metrics.get("documents") or {}).get("train")
    if rows:
        lines.append(
            f"- Trained on {rows:,} {'rows' if metrics.get('rows') else 'documents'}"
            f" and scored on the {split} part of the same source: expect lower scores on text"
            " unlike it (other domains, styles or periods)."
        )
    limit = settings.get("max_length") or settings.get("block_size")
    long_text = settings.get("long_text")
    if limit:
        how = {
            "head+tail": "longer texts are read as their head and tail",
            "chunk": "longer texts are read in overlapping windows",
        }.get(long_text or "", "longer texts are cut")
        if pipeline is QUESTION_ANSWERING:
            how = "a longer context is read in overlapping windows, the answer its best span"
        lines.append(f"- It reads at most {limit} tokens at a time: {how}.")
    if pipeline is TOKEN_CLASSIFICATION:
        lines.append("- Each word's tag is predicted on its first sub-token.")
    if pipeline is TEXT2TEXT or pipeline is TEXT_GENERATION:
        lines.append(
            "- Generated text can be fluent and wrong: check it where it matters; scores are of"
            " greedy decoding unless `num_beams` says otherwise."
        )
    lines.append(
        "- It inherits the biases of its base model and its training data; it was not evaluated"
        " for fairness or safety."
    )
    return "\n".join(lines)


def folder_card(model_dir: Path, ref: str | None = None) -> str:
    """The card of a model folder no run describes (copied, or saved by other code): what its
    config.json says, and how to use it."""
    model_dir = Path(model_dir)
    config = model_config(model_dir)
    pipeline = pipeline_of(config)
    adapter = is_adapter(model_dir)
    metadata = {
        "library_name": "peft" if adapter else "transformers",
        "pipeline_tag": pipeline.tag,
        "tags": [TAG, pipeline.tag],
    }
    card = Card(model_dir.name if model_dir.name != "model" else model_dir.parent.name, metadata)
    card.intro = (
        f"This model {pipeline.does(config)}. Its card was written by [warmstart]({REPO_URL})"
        " from the saved model alone: no run folder tells its training data or scores."
    )
    heading, outputs = outputs_section(config, pipeline)
    card.add(heading, outputs)
    if config.get("calibration_temperature"):
        card.add(
            "Calibration",
            calibration_text(config["calibration_temperature"], {}, "held-out labelled rows"),
        )
    card.add("Thresholds", thresholds_section(config))
    card.add(
        "How to use",
        usage_section(
            pipeline, config, ref or model_dir.name, pipeline.example, adapter_base(model_dir)
        ),
    )
    return card.text()


# --- reading, updating and writing a card -------------------------------------------------------


def read_metadata(path: Path) -> dict:
    """A README's YAML metadata ({} for none, or one that does not parse)."""
    text = Path(path).read_text(encoding="utf-8")
    found = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not found:
        return {}
    try:
        meta = yaml.safe_load(found.group(1))
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def is_ours(model_dir: Path) -> bool:
    """Whether the folder's README.md is a card warmstart wrote (its tags say so)."""
    path = Path(model_dir) / CARD
    return path.is_file() and TAG in (read_metadata(path).get("tags") or [])


def split_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(everything before the first "## " heading, [(heading, body)])."""
    pieces = re.split(r"(?m)^## ", text)
    head, sections = pieces[0], []
    for piece in pieces[1:]:
        heading, _, body = piece.partition("\n")
        sections.append((heading.strip(), body.strip("\n")))
    return head, sections


def join_sections(head: str, sections: list[tuple[str, str]]) -> str:
    return head.rstrip("\n") + "\n" + "".join(f"\n## {h}\n\n{b.strip()}\n" for h, b in sections)


def with_section(text: str, heading: str, body: str, before: tuple[str, ...] = ()) -> str:
    """``text`` with its section ``heading`` replaced by ``body`` (or added before the first of
    ``before`` there is, else at the end)."""
    head, sections = split_sections(text)
    for i, (h, _) in enumerate(sections):
        if h == heading:
            sections[i] = (heading, body)
            return join_sections(head, sections)
    at = next((i for i, (h, _) in enumerate(sections) if h in before), len(sections))
    sections.insert(at, (heading, body))
    return join_sections(head, sections)


def write(model_dir: Path, text: str) -> Path:
    """README.md into ``model_dir`` atomically; an up-to-date ONNX export of the folder stays up
    to date (a card changes nothing the graph depends on)."""
    from warmstart.inference.export import adopt_config, current_export

    model_dir = Path(model_dir)
    export = current_export(model_dir) if (model_dir / "config.json").is_file() else None
    atomic_write_text(model_dir / CARD, text)
    if export is not None:
        adopt_config(model_dir, export)
    return model_dir / CARD


def ensure(model_dir: Path) -> None:
    """A card for a model folder that has none: from its run folder when it is a finished run's
    model/, else from the folder alone."""
    model_dir = Path(model_dir)
    if (model_dir / CARD).exists():
        return
    run_dir = model_dir.parent
    finished = (run_dir / "config.yaml").is_file() and (run_dir / "metrics.json").is_file()
    write(model_dir, run_card(run_dir, model_dir) if finished else folder_card(model_dir))


def write_run_card(run: Any) -> Path | None:
    """model/README.md of a finished run (a runs.Run; metrics.json written), by its main process."""
    if not run.main or not run.model_dir.is_dir():
        return None
    return write(run.model_dir, run_card(run.dir, run.model_dir))


def note_calibration(model_dir: Path, calibration: Any, data: str) -> Path | None:
    """After `warmstart calibrate`: the card's calibration section says the new temperature. A
    folder without a card gets one (from the folder alone); a card warmstart did not write is left
    as it is (None)."""
    model_dir = Path(model_dir)
    if (model_dir / CARD).is_file() and not is_ours(model_dir):
        return None
    figures = {
        "ece_before": calibration.before.get("ece"),
        "ece_after": calibration.after.get("ece"),
        "nll_before": calibration.before.get("nll"),
        "nll_after": calibration.after.get("nll"),
    }
    body = calibration_text(
        calibration.temperature,
        {k: v for k, v in figures.items() if v is not None},
        f"{calibration.rows:,} rows of `{source_name(data)}` (`warmstart calibrate`)",
    )
    text = (
        (model_dir / CARD).read_text(encoding="utf-8")
        if (model_dir / CARD).is_file()
        else folder_card(model_dir)
    )
    return write(
        model_dir,
        with_section(text, "Calibration", body, before=("Thresholds", "Limits", "How to use")),
    )


def for_repo(model_dir: Path, repo_id: str) -> str | None:
    """The folder's card with the repo id as the model to load in its usage examples and as the
    model-index name, for `push`; None for a card warmstart did not write."""
    model_dir = Path(model_dir)
    if not is_ours(model_dir):
        return None
    text = (model_dir / CARD).read_text(encoding="utf-8")
    config = model_config(model_dir)
    pipeline = pipeline_of(config)
    run_dir = model_dir.parent if (model_dir.parent / "config.yaml").is_file() else None
    example = example_of(run_dir, pipeline)
    settings = read_settings(run_dir)[0] if run_dir else None
    text = with_section(
        text,
        "How to use",
        usage_section(pipeline, config, repo_id, example, adapter_base(model_dir, settings)),
    )
    meta = read_metadata(model_dir / CARD)
    if meta.get("model-index"):
        meta["model-index"][0]["name"] = repo_id
    body = re.sub(r"^---\s*\n.*?\n---\s*\n", "", text, count=1, flags=re.DOTALL)
    dumped = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{dumped}---\n{body}"
