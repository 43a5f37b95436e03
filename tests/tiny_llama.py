"""A tiny random Llama with SmolLM2's real tokenizer, shared by the quantisation and server-batching
tests (one folder per session, so that its GenAI exports are made once), and warmstart's cache in
the session's temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_llama_session(tmp_path_factory) -> Path:
    """A 2-layer Llama of width 64 (hidden sizes divisible by every int4 block size)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from warmstart.models.bundled import smollm2

    source, folder = smollm2(), tmp_path_factory.mktemp("llama-q") / "tiny"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    big = LlamaConfig.from_pretrained(source)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=big.vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=big.bos_token_id,
            eos_token_id=big.eos_token_id,
            pad_token_id=big.pad_token_id,
        )
    )
    model.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def session_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WARMSTART_HOME", str(tmp_path_factory.getbasetemp() / "warmstart-home"))
