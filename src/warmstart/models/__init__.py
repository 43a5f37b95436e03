"""Finding and loading models offline: one registry (aliases, resolve, kind, tokenizer, pad token), the bundled
models, device and precision, classifiers, causal LMs and from-scratch presets.

    registry    resolve a --model value, tell its kind, load its tokenizer
    bundled     the aliases minilm and smollm2 (GGUF converted once into the cache)
    device      the device, and what --precision auto means there
    classifier  a sequence classifier with its saved or a new head
    causal      a causal LM set up for batched generation
    scratch     tokenizers trained on a corpus and model presets for pre-training from scratch
"""

from warmstart.models.classifier import load_classifier
from warmstart.models.device import auto_precision, pick_device
from warmstart.models.registry import (
    ALIASES,
    KINDS,
    Dropout,
    dropout_of,
    ensure_pad_token,
    is_causal,
    kind,
    load_config,
    load_tokenizer,
    max_length_of,
    resolve,
    set_dropout,
)

__all__ = ["ALIASES", "KINDS", "Dropout", "auto_precision", "dropout_of", "ensure_pad_token", "is_causal", "kind",
           "load_classifier", "load_config", "load_tokenizer", "max_length_of", "pick_device", "resolve", "set_dropout"]
