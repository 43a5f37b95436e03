"""LoRA (low-rank adapters, through peft) for any task kind: the one place a model is wrapped, saved
and read back.

`finetune` wraps the model a kind built (``wrap``) and the kind's save (``saver``); the engines
train the wrapped model like any other. A saved model is either merged (plain transformers weights:
every loader, and plain transformers, reads it as a fully fine-tuned model) or the adapter alone:
adapter_config.json and adapter_model.safetensors (the LoRA matrices and the trained head), loadable
with peft on the base model, plus the tokenizer and the merged model's config as
``merged_config.json``. warmstart reads such a folder everywhere (evaluate, predict, generate,
serve) through ``merged_copy``, which merges it once into its cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from warmstart.config.options import LoraOptions
from warmstart.errors import UserError
from warmstart.files import atomic_dir, cache_dir

ADAPTER_CONFIG = "adapter_config.json"
MERGED_CONFIG = (  # not config.json: transformers would then look for full weights here
    "merged_config.json"
)

# Attention projections to adapt where peft's own table (by model_type) has none. Query and value
# alone is the LoRA paper's choice (Hu et al. 2021, section 7.1): as good as all four projections at
# the same parameter count.
TARGETS = {
    "distilbert": ["q_lin", "v_lin"],
    "marian": ["q_proj", "v_proj"],
    "mbart": ["q_proj", "v_proj"],
    "encoder-decoder": ["query", "value"],
    "mpnet": ["q", "v"],
}


@dataclass
class LoraSummary:
    rank: int
    alpha: float
    dropout: float
    targets: list[str]
    head: list[str]  # modules trained in full (the new task head), saved with the adapter
    trainable: int
    total: int

    def describe(self) -> str:
        head = f" + head {', '.join(self.head)} in full" if self.head else ""
        return (
            f"LoRA r={self.rank} alpha={self.alpha:g} dropout={self.dropout:g} on"
            f" {', '.join(self.targets)}{head}: {self.trainable:,} of {self.total:,} parameters"
            f" trainable ({100 * self.trainable / self.total:.2f}%)"
        )


def default_targets(model: torch.nn.Module) -> list[str] | str:
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS,
    )

    kind = getattr(model.config, "model_type", "")
    return TARGETS.get(kind) or PEFT_TARGETS.get(kind) or "all-linear"


# Task models whose head is new (made for the task's labels): it trains in full beside the adapters.
# A language model's head (lm_head) is pre-trained, often tied to the embeddings, and stays frozen
# like the rest of the body.
NEW_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
)


def head_modules(model: torch.nn.Module) -> list[str]:
    """The modules of a classifier outside its pre-trained body that hold weights (BERT's pooler is
    in the body; DistilBERT's pre_classifier is not): the head the task adds."""
    body = getattr(model, "base_model_prefix", "")
    if not type(model).__name__.endswith(NEW_HEADS) or not body or not hasattr(model, body):
        return []
    return [
        name
        for name, module in model.named_children()
        if name != body and any(True for _ in module.parameters())
    ]


def wrap(model: torch.nn.Module, cfg: LoraOptions) -> tuple[torch.nn.Module, LoraSummary]:
    """``model`` with LoRA adapters from ``cfg`` (lora_r, lora_alpha, lora_dropout,
    lora_target_modules); only the adapters and the head train."""
    from peft import LoraConfig, get_peft_model

    targets: list[str] | str = (
        [t.strip() for t in cfg.lora_target_modules.split(",") if t.strip()]
        if cfg.lora_target_modules
        else default_targets(model)
    )
    if targets == ["all-linear"]:
        targets = "all-linear"
    head = head_modules(model)
    alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_r
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        modules_to_save=head or None,
        bias="none",
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        reason = str(e).strip().splitlines()[0]
        raise UserError(f"--lora-target-modules: {reason}") from None
    trainable, total = wrapped.get_nb_trainable_parameters()
    used = (
        sorted(wrapped.peft_config["default"].target_modules)
        if targets != "all-linear"
        else ["all-linear"]
    )
    return wrapped, LoraSummary(cfg.lora_r, alpha, cfg.lora_dropout, used, head, trainable, total)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters folded into its weights; ``model`` itself is
    untouched (it trains on: merging in place and unmerging after would leave rounding errors in the
    weights it trains). Only the adapted layers are copied (peft merges into their base weights);
    every other weight is shared with ``model``, not copied: a 135M model's save held a second
    540 MB."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = {
        id(t)
        for m in model.modules()
        if isinstance(m, BaseTunerLayer)
        for t in (*m.parameters(), *m.buffers())
    }
    # deepcopy returns what its memo holds for an object: these tensors themselves.
    shared = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in adapted}
    return copy.deepcopy(model, shared).merge_and_unload()


class _ConfigOnly:
    """Stands in for the model in a kind's save when only its config is wanted (the adapter holds
    the weights): the kind sets what it records on ``config`` and calls save_pretrained as usual."""

    def __init__(self, model: torch.nn.Module):
        self.config = model.config
        self.architecture = type(model).__name__
        self.generation_config = model.generation_config if model.can_generate() else None

    def save_pretrained(self, folder: Path, state_dict: dict | None = None, **kwargs: Any) -> None:
        self.config.architectures = [
            self.architecture
        ]  # as the model's own save_pretrained records it
        self.config.save_pretrained(folder)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(folder)


def saver(save, how: str):
    """The kind's ``save(model, folder, weights)`` for a LoRA model: the merged model through the
    kind's own save, or the adapter alone (``how`` adapter) with the kind's config and tokenizer
    beside it."""

    def save_lora(model: torch.nn.Module, folder: Path, weights: dict | None = None) -> None:
        if not is_lora(model):
            return save(model, folder, weights)
        if how == "merged":
            return save(merged(model), folder, None)
        base = model.get_base_model()
        save(_ConfigOnly(base), folder, None)
        (folder / "config.json").rename(folder / MERGED_CONFIG)
        model.save_pretrained(
            folder
        )  # adapter_config.json + adapter_model.safetensors (LoRA and the head)
        # The base is named by its absolute folder, so peft (and merged_copy) find it from anywhere.
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = str(Path(base.name_or_path).resolve())
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    return save_lora


def is_adapter_folder(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def merged_copy(folder: Path) -> Path:
    """A folder saved with ``--lora-save adapter``, merged onto its base once into warmstart's cache
    (keyed by the adapter's files), so every command loads it as a plain model folder."""
    folder = folder.resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file())
    key = hashlib.sha256(
        json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / "merged" / key
    if (target / "config.json").is_file():
        return target
    if not (folder / MERGED_CONFIG).is_file():
        raise UserError(
            f"adapter folder '{folder}' has no {MERGED_CONFIG}: it was not saved by warmstart; load"
            " it with peft on its base model"
        )
    base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    if not base or not (Path(base) / "config.json").is_file():
        raise UserError(
            f"adapter folder '{folder}': its base model '{base}' is not there any more; the adapter"
            " needs it (save with --lora-save merged for a model that stands alone)"
        )
    atomic_dir(target, lambda tmp: _merge_into(folder, Path(base), tmp))
    return target


def _merge_into(folder: Path, base: Path, out: Path) -> None:
    import transformers
    from peft import PeftModel
    from transformers import AutoConfig

    config_dict = json.loads((folder / MERGED_CONFIG).read_text(encoding="utf-8"))
    config = AutoConfig.for_model(**config_dict)
    arch = (config_dict.get("architectures") or [None])[0]
    cls = getattr(transformers, arch or "", None)
    if cls is None:
        raise UserError(
            f"adapter folder '{folder}': unknown architecture {arch!r} in {MERGED_CONFIG}"
        )
    model = cls.from_pretrained(
        base, config=config, local_files_only=True, ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for p in folder.iterdir():
        if (
            p.is_file()
            and p.name not in (ADAPTER_CONFIG, MERGED_CONFIG)
            and not p.name.startswith("adapter_model")
        ):
            shutil.copy2(p, out / p.name)  # tokenizer files, generation config
