"""Finding and loading models offline: one registry (aliases, resolve, kind, tokenizer, pad token),
the bundled models, device and precision, classifiers, causal LMs and from-scratch presets.

    registry    resolve a --model value, tell its kind, load its tokenizer
    download    Hugging Face ids: the cache, else a download (unless offline), pinned to a commit
    bundled     the aliases minilm and smollm2 (GGUF converted once into the cache)
    device      the device, and what --precision auto means there
    classifier  a sequence classifier with its saved or a new head
    causal      a causal LM set up for batched generation
    scratch     tokenizers trained on a corpus and model presets for pre-training from scratch
"""

import importlib

# Loaded on first use (PEP 562): `warmstart.models.bundled` or the ONNX generation route can then be
# imported without transformers' model classes and torch behind them (seconds of a short `generate`
# process).
_WHERE = {
    "load_classifier": "classifier",
    "auto_precision": "device",
    "pick_device": "device",
    "pin": "download",
    "revision_of": "download",
    "snapshot": "download",
    **{
        name: "registry"
        for name in (
            "ALIASES",
            "KINDS",
            "Dropout",
            "dropout_of",
            "ensure_pad_token",
            "is_causal",
            "kind",
            "load_config",
            "load_options",
            "load_tokenizer",
            "max_length_of",
            "resolve",
            "set_dropout",
        )
    },
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'warmstart.models' has no attribute '{name}'")
    return getattr(importlib.import_module(f"warmstart.models.{_WHERE[name]}"), name)
