"""The one model registry: what a --model value names (alias, local folder, run folder, Hugging Face
id: from the cache, else downloaded unless offline), what kind of model it is, and its tokenizer.

Every command and the server resolve models here, so an alias means the same thing everywhere and a
model that cannot be had fails with the same sentence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from warmstart.errors import UserError
from warmstart.models import download, lora
from warmstart.models.bundled import ALIASES

if TYPE_CHECKING:
    from warmstart.config.options import ModelSourceOptions

# The "LOAD REPORT" table for a freshly added classification head is noise for our users.
hf_logging.set_verbosity_error()
# "Loading weights" / "Writing model shards" bars on every load and save
hf_logging.disable_progress_bar()

KINDS = ("classifier", "nli", "encoder", "causal-lm")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def resolve(name: str, want: str | None = None, *, hub: ModelSourceOptions | None = None) -> str:
    """Turn a --model value into a local folder path: an alias, a folder (a run folder's model/),
    else a Hugging Face id from the cache, downloaded there first unless offline.

    ``hub`` holds the command's --revision, --offline and --trust-remote-code (None: main, online
    unless HF_HUB_OFFLINE=1, no remote code). ``want="causal-lm"`` refuses an alias of another
    kind up front (``minilm`` for `generate`)."""
    if not name or not name.strip():
        raise UserError("no model given")
    if name.strip().lower() in ALIASES:  # aliases are names, not paths: SmolLM2 or " minilm" alike
        name = name.strip().lower()
        kind, folder = ALIASES[name]
        if want == "causal-lm" and kind != "causal-lm":
            raise UserError(
                f"'{name}' is an encoder, not a causal language model; use smollm2, gpt2 or a "
                "causal-LM folder"
            )
        return str(folder())
    local = _local_folder(name)
    if local is not None:
        if hub is not None:  # the user's --model: a folder's code runs only with their consent too
            _refuse_remote_code(name, local, hub)
        return str(local)
    return str(download.snapshot(name, hub).path)


def _local_folder(name: str) -> Path | None:
    """The model folder ``name`` is on disk, None when it names none (a Hugging Face id), or one
    sentence why a folder it names is not a model."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "model").is_dir():  # a run folder
            path = path / "model"
        if lora.is_adapter_folder(path):  # saved with --lora-save adapter: merged once, cached
            return lora.merged_copy(path)
        if not (path / "config.json").is_file():
            raise UserError(f"folder '{name}' has no config.json, so it is not a saved model")
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model folder '{name}' does not exist")
    if not download.is_hub_id(name):
        raise UserError(
            f"model '{name}' is not an alias ({download.aliases(name)}), a local folder, or a "
            "Hugging Face id (ORG/NAME)"
        )
    return None


def _config_json(folder: str | Path) -> dict:
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # load_config says what is wrong with it
    return config if isinstance(config, dict) else {}


def _refuse_remote_code(name: str, folder: Path, hub: ModelSourceOptions | None) -> None:
    download.check_code(name, _config_json(folder), bool(getattr(hub, "trust_remote_code", False)))


def load_options(path: str | Path) -> dict[str, bool]:
    """``from_pretrained``'s keyword arguments for a resolved model folder: its files only (never
    the network), and its own code where its config needs that. A --model needing code got past
    ``resolve`` only with --trust-remote-code; other folders are warmstart's own runs of one."""
    remote = download.needs_remote_code(_config_json(path))
    return {"local_files_only": True, **({"trust_remote_code": True} if remote else {})}


def load_config(path: str):
    """The model's config.json, or one sentence saying why it cannot be read."""
    try:
        return AutoConfig.from_pretrained(path, **load_options(path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}"
        ) from None


def is_causal(config: object) -> bool:
    """A decoder-only language model (GPT-2, Llama, Qwen...): reads left to right, generates."""
    archs = getattr(config, "architectures", None) or []
    return bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(CAUSAL_SUFFIXES) for a in archs
    )


def has_classifier_head(config: object) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any("ForSequenceClassification" in a for a in archs) and bool(
        getattr(config, "id2label", None)
    )


def has_tagger_head(config: object) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any("ForTokenClassification" in a for a in archs) and bool(
        getattr(config, "id2label", None)
    )


def has_qa_head(config: object) -> bool:
    """An extractive question-answering model: start and end logits over its tokens."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForQuestionAnswering") for a in archs)


def is_reranker(config: object) -> bool:
    """A cross-encoder: a one-logit sequence classifier saved as a reranker (sentence-transformers'
    CrossEncoder settings in its config, as `finetune --task rerank` writes them)."""
    archs = getattr(config, "architectures", None) or []
    return (
        any("ForSequenceClassification" in a for a in archs)
        and getattr(config, "num_labels", None) == 1
        and isinstance(getattr(config, "sentence_transformers", None), dict)
    )


def kind(config: object) -> str:
    """classifier, nli (a classifier whose labels include entailment), tagger (a token classifier),
    qa (extractive question answering), text-to-text (an encoder-decoder: BART, T5, Marian...),
    causal-lm or encoder."""
    if has_qa_head(config):
        return "qa"
    if has_tagger_head(config):
        return "tagger"
    if is_reranker(config):
        return "reranker"
    if has_classifier_head(config):
        labels = [str(x).lower() for x in getattr(config, "label2id", None) or {}]
        return "nli" if any(x.startswith("entail") for x in labels) else "classifier"
    if getattr(config, "is_encoder_decoder", False):
        return "text-to-text"
    return "causal-lm" if is_causal(config) else "encoder"


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(path, **load_options(path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load a tokenizer from '{path}': {str(e).strip().splitlines()[0]}"
        ) from None
    if not tok.is_fast:
        raise UserError(
            f"model '{path}' has no fast tokenizer (tokenizer.json); warmstart needs one"
        )
    return tok


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """GPT-2 and many other decoders have no pad token; padded positions are masked, so any token
    will do: eos by convention, else id 0. Set silently."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = (
            tokenizer.eos_token
            if tokenizer.eos_token is not None
            else tokenizer.convert_ids_to_tokens(0)
        )


def max_length_of(tokenizer: PreTrainedTokenizerBase, config: object, requested: int | None) -> int:
    """The truncation length: the user's, else the smaller of the tokenizer's and the position
    table's."""
    trained = getattr(config, "train_max_length", None)
    # A model fine-tuned by warmstart saves its training length as the tokenizer's model_max_length
    # (so plain transformers truncates where warmstart does); longer is still allowed up to the
    # position table.
    limits = [
        n
        for n in (
            None if trained else tokenizer.model_max_length,
            getattr(config, "max_position_embeddings", None),
        )
        if isinstance(n, int) and 0 < n < 100_000
    ]
    limit = min(limits) if limits else 512
    if requested is None:
        # A model fine-tuned by warmstart is evaluated at the length it was trained with.
        return min(trained or limit, limit)
    if requested < 8:
        raise UserError(f"--max-length {requested} is too small")
    if requested > limit:
        raise UserError(
            f"--max-length {requested} is more than this model's limit of {limit} tokens"
        )
    return requested


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")
# Dropout on hidden states (embeddings and residual branches): BERT, BART/Marian, GPT-2, T5,
# GPT-NeoX/Falcon.
HIDDEN_DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "dropout_rate",
    "hidden_dropout",
)
Dropout = tuple[
    float | None, float | None
]  # (attention probabilities, hidden states); None keeps the model's


def dropout_of(cfg: object) -> Dropout:
    """The (attention, hidden) dropout a training config asks for."""
    return getattr(cfg, "attention_dropout", None), getattr(cfg, "dropout", None)


def config_parts(config: object) -> list[PretrainedConfig]:
    """The config and, for an EncoderDecoderModel, its two halves."""
    return [
        c
        for c in [config] + [getattr(config, k, None) for k in ("encoder", "decoder")]
        if isinstance(c, PretrainedConfig)
    ]


def has_hidden_dropout(config: object) -> bool:
    """Whether the architecture has a hidden-state dropout --dropout can set."""
    return any(hasattr(p, k) for p in config_parts(config) for k in HIDDEN_DROPOUT_KEYS)


def set_dropout(config: object, dropout: Dropout = (None, None)) -> None:
    """Set attention-probability and hidden-state dropout under whichever names this architecture
    uses (None: keep), in an EncoderDecoderModel's two halves too. Call it before the model is
    built: layers copy the rate."""
    parts = config_parts(config)
    for keys, value in zip((ATTENTION_DROPOUT_KEYS, HIDDEN_DROPOUT_KEYS), dropout):
        found = [
            (part, key)
            for part in parts
            for key in keys
            if value is not None and hasattr(part, key)
        ]
        for part, key in found:
            setattr(part, key, value)
        if keys is HIDDEN_DROPOUT_KEYS and value is not None and not found:
            raise UserError(
                f"--dropout: a {type(config).__name__} has no dropout on its hidden states to set "
                "(LoRA's own is --lora-dropout)"
            )
