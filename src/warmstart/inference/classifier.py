"""A saved sequence classifier ready for batched prediction on the fastest backend for the device."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from warmstart.data.batching import collator, encode
from warmstart.data.tables import Examples, LabelMap
from warmstart.errors import UserError
from warmstart.inference import backends
from warmstart.inference.batched import batched_outputs
from warmstart.inference.export import ensure_export, is_export, onnx_file
from warmstart.metrics import softmax
from warmstart.models.classifier import load_classifier
from warmstart.models.device import pick_device
from warmstart.models.registry import has_tagger_head, load_config, load_tokenizer, max_length_of, resolve


@dataclass
class Classifier:
    """A saved sequence classifier with its tokenizer, ready for batched prediction on one of the backends."""

    path: str
    model: torch.nn.Module | None  # the PyTorch model; None on the onnx backend
    tokenizer: object
    labels: LabelMap
    device: torch.device
    max_length: int
    forward: Callable[[dict], torch.Tensor | np.ndarray] | None = None
    plan: backends.Plan | None = None

    @classmethod
    def load(cls, name: str, max_length: int | None = None, cpu: bool = False, backend: str = "torch",
             quantize: str = "none", precision: str = "fp32") -> Classifier:
        """Load ``name`` for ``backend`` (auto|torch|onnx), ``quantize`` (auto|none|int8) and ``precision``.

        The defaults keep the fine-tuned model exactly as trained (fp32 PyTorch); predict and evaluate pass
        auto, which picks the fastest backend for the device (see backends.plan).
        """
        path, forward, config, p = open_backend(name, cpu, backend, quantize, precision, head="sequence")
        tokenizer = load_tokenizer(path)
        model = forward.model if isinstance(forward, backends.TorchBackend) else None
        return cls(path, model, tokenizer, LabelMap.from_model_config(config), p.device,
                   max_length_of(tokenizer, config, max_length), forward, p)

    def probabilities(self, ex: Examples, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Class probabilities, one row per example; ``batch_size`` None: tuned for the device."""
        data = encode(self.tokenizer, ex, self.max_length)
        p = self.plan or backends.plan("torch", "none", "fp32", self.device)
        forward = self.forward or backends.TorchBackend(self.model, p)
        size, max_tokens, workers = backends.auto_batching(p, batch_size)
        logits = batched_outputs(forward, data, size, collator(self.tokenizer), self.device, progress,
                                 max_tokens=max_tokens, workers=workers)
        return softmax(logits)


def open_backend(name: str, cpu: bool, backend: str, quantize: str, precision: str, head: str
                 ) -> tuple[str, backends.TorchBackend | backends.OnnxBackend, object, backends.Plan]:
    """(path, forward, config, plan) of the saved classifier ``name`` (``head``: sequence or tokens) on the
    backend ``backend``/``quantize``/``precision`` resolve to; auto falls back to PyTorch when ONNX fails."""
    path = resolve(name)
    if is_export(path):
        if backend == "torch":
            raise UserError(f"'{name}' is an ONNX export: run it with --backend onnx (or auto)")
        backend = "onnx"
    p = backends.plan(backend, quantize, precision, pick_device(cpu))
    if p.backend == "onnx":
        try:
            forward, config = _onnx_backend(path, p)
            if head == "tokens" and not has_tagger_head(config) or head == "sequence" and has_tagger_head(config):
                load_classifier(path, head=head)  # the torch path's message for a model without this head
            return path, forward, config, p
        except UserError:
            raise
        except Exception as e:
            if backend != "auto":
                raise
            # auto promised the fastest working backend, not ONNX: a model the exporter cannot handle runs on torch
            print(f"note: running on PyTorch, the ONNX export failed ({str(e).strip().splitlines()[0][:200]})",
                  file=sys.stderr)
            p = backends.plan("torch", "none" if quantize == "auto" else quantize, precision, pick_device(cpu))
    forward = backends.TorchBackend(load_classifier(path, head=head), p)
    return path, forward, forward.model.config, forward.plan


def _onnx_backend(path: str, p: backends.Plan) -> tuple[backends.OnnxBackend, object]:
    """The ONNX Runtime session for ``path``: an export folder itself, else its (cached) export."""
    # The cache holds both precisions, so switching --quantize never exports again.
    folder = Path(path) if is_export(path) else ensure_export(path, int8=True)[0]
    file = onnx_file(folder, p.quantize)
    if not file.is_file():
        raise UserError(f"the export '{folder}' has no {file.name}: export it again with "
                        f"`warmstart export MODEL --onnx --quantize {p.quantize}`")
    return backends.OnnxBackend(file, p), load_config(str(folder))
