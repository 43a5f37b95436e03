"""The causal LM a server decodes with: ONNX Runtime GenAI's export where it applies (the server
batches its requests in GenAI's Engine: serving/gen_engine.py), else transformers.

Either way it is a models.causal.CausalLM: the server's routes read its name, its token limit,
`prompt_ids` and its transformers tokenizer (chat templates, token counts) alike; on the GenAI
route its `model` is the OnnxLM that decodes."""

from __future__ import annotations

import threading
from typing import Any

from warmstart.errors import UserError
from warmstart.inference import onnx_lm, quantize
from warmstart.models.causal import CausalLM


class LockedTokenizer:
    """A transformers tokenizer that one thread uses at a time: the server's generation pool has
    several threads on the GenAI route, and a fast tokenizer must not be used from two at once."""

    def __init__(self, tokenizer: Any) -> None:
        object.__setattr__(self, "_tokenizer", tokenizer)
        object.__setattr__(self, "_lock", threading.RLock())

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._tokenizer, name)
        if not callable(value) or isinstance(value, type):
            return value

        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tokenizer, name, value)

    def __call__(self, *args, **kwargs) -> Any:
        with self._lock:
            return self._tokenizer(*args, **kwargs)


def route(name: str, backend: str, cpu: bool) -> str | None:
    """Why the server cannot decode ``name`` with GenAI (None: it does)."""
    if backend == "torch":
        return "--backend torch"
    if backend == "auto" and onnx_lm.gpu_present() and not cpu:
        return "a GPU is present (transformers uses it)"
    return onnx_lm.model_why_not(name)


def load(name: str, options: dict) -> CausalLM:
    """The served causal LM for ``options`` (the server's backend, quantize, quant_block_size,
    max_batch_size and cpu)."""
    backend = options.get("backend") or "auto"
    weights = options.get("quantize") or "none"
    block_size = int(options.get("quant_block_size") or 32)
    cpu = bool(options.get("cpu"))
    reason = route(name, backend, cpu)
    if reason is None:
        folder = onnx_lm.model_folder(name)
        assert folder is not None
        if weights == "auto":  # serve settles it first; a direct ServedModel.load may not
            weights = quantize.decide(folder, block_size).quantize
        try:
            lm = onnx_lm.OnnxLM(
                folder,
                quantize=weights,
                block_size=block_size,
                max_batch=int(options.get("max_batch_size") or 16),
            )
        except onnx_lm.Unreadable as e:
            if backend == "onnx":
                raise UserError(f"--backend onnx cannot serve this model: {e}") from None
            reason = str(e)
        else:
            from warmstart.models.registry import load_tokenizer

            tokenizer = LockedTokenizer(load_tokenizer(str(folder)))
            return CausalLM(name, str(folder), lm, tokenizer, lm.max_positions, lm.weights)
    if backend == "onnx":
        raise UserError(f"--backend onnx cannot serve this model: {reason}; use --backend torch")
    quantize.refuse_on_torch(weights)
    lm = CausalLM.load(name, cpu=cpu, precision="fp32" if weights == "int8" else "auto")
    lm = quantize.torch_int8(lm) if weights == "int8" else lm
    # The torch engine's thread decodes while the generation pool's threads tokenize prompts.
    lm.tokenizer = LockedTokenizer(lm.tokenizer)
    return lm
