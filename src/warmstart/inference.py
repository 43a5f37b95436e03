"""The one batched inference path: length-sorted batches, dynamic padding, inference_mode."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from warmstart import backends, models
from warmstart.batching import Encoded, collator, encode, sorted_batches
from warmstart.data import Examples, LabelMap
from warmstart.errors import UserError


def pick_device(cpu: bool = False) -> torch.device:
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def batched_outputs(forward: Callable[[dict], torch.Tensor | np.ndarray], data: Encoded, batch_size: int,
                    collate: Callable, device: torch.device | None = None, progress: bool = False,
                    desc: str = "predict", max_tokens: int | None = None) -> np.ndarray:
    """``forward(batch)`` over length-sorted, dynamically padded batches; one float32 row per input, in input order.

    The one loop behind predict, evaluate, embed and zeroshot: ``forward`` gets a padded batch (moved to
    ``device`` when given) and returns one row per text (logits, pooled hidden states, scores...).
    With ``max_tokens``, a batch also stops growing at that many (padded) tokens: see ``budget_batches``.
    """
    out: np.ndarray | None = None
    order = (budget_batches(data.lengths, batch_size, max_tokens) if max_tokens
             else sorted_batches(data.lengths, batch_size))
    with torch.inference_mode(), tqdm(total=len(data), desc=desc, unit="text", disable=not progress,
                                       leave=False) as bar:
        for idx in order:
            batch = collate([{k: v[i] for k, v in data.features.items()} for i in idx])
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            rows = forward(batch)
            if isinstance(rows, torch.Tensor):
                rows = rows.float().cpu().numpy()
            if out is None:
                out = np.empty((len(data), *rows.shape[1:]), dtype=np.float32)
            out[idx] = rows
            bar.update(len(idx))
    if out is None:  # no rows at all
        return np.empty((0, 0), dtype=np.float32)
    return out


def budget_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[list[int]]:
    """Length-sorted batches (longest first) of at most ``batch_size`` texts and ``max_tokens`` padded tokens.

    On a CPU, throughput falls once a batch's activations leave the cache (measured on MiniLM, 2 cores:
    512-token reviews run best a few at a time), while short texts gain from large batches (backends.CPU_MAX_TOKENS).
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out: list[list[int]] = []
    for i in order.tolist():
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * max(int(lengths[out[-1][0]]), 1) <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int, collate: Callable,
                   device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                   progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Logits of a sequence classifier for every row of ``data``, in input order."""
    was_training = model.training
    model.eval()

    def forward(batch: dict) -> torch.Tensor:
        with autocast() if autocast else contextlib.nullcontext():
            return model(**batch).logits

    try:
        return batched_outputs(forward, data, batch_size, collate, device, progress, desc)
    finally:
        model.train(was_training)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
        from warmstart.tasks import export as onnx_export

        path = models.resolve(name)
        if onnx_export.is_export(path):
            if backend == "torch":
                raise UserError(f"'{name}' is an ONNX export: run it with --backend onnx (or auto)")
            backend = "onnx"
        p = backends.plan(backend, quantize, precision, pick_device(cpu))
        tokenizer = models.load_tokenizer(path)
        if p.backend == "onnx":
            try:
                forward, config = _onnx_backend(path, p)
            except UserError:
                raise
            except Exception as e:
                if backend != "auto":
                    raise
                # auto promised the fastest working backend, not ONNX: a model the exporter cannot handle runs on torch
                print(f"note: running on PyTorch, the ONNX export failed ({str(e).strip().splitlines()[0][:200]})",
                      file=sys.stderr)
                p = backends.plan("torch", "none" if quantize == "auto" else quantize, precision, pick_device(cpu))
        if p.backend == "torch":
            forward = backends.TorchBackend(models.load_classifier(path), p)
            config = forward.model.config
        model = forward.model if isinstance(forward, backends.TorchBackend) else None
        return cls(path, model, tokenizer, LabelMap.from_model_config(config), p.device,
                   models.max_length_of(tokenizer, config, max_length), forward, p)

    def probabilities(self, ex: Examples, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Class probabilities, one row per example; ``batch_size`` None: tuned for the device."""
        data = encode(self.tokenizer, ex, self.max_length)
        p = self.plan or backends.plan("torch", "none", "fp32", self.device)
        forward = self.forward or backends.TorchBackend(self.model, p)
        size, max_tokens = backends.auto_batching(p, batch_size)
        logits = batched_outputs(forward, data, size, collator(self.tokenizer), self.device, progress,
                                 max_tokens=max_tokens)
        return softmax(logits)


def _onnx_backend(path: str, p: backends.Plan) -> tuple[backends.OnnxBackend, object]:
    """The ONNX Runtime session for ``path``: an export folder itself, else its (cached) export."""
    from transformers import AutoConfig

    from warmstart.tasks import export as onnx_export

    # The cache holds both precisions, so switching --quantize never exports again.
    folder = Path(path) if onnx_export.is_export(path) else onnx_export.ensure_export(path, int8=True)[0]
    file = onnx_export.onnx_file(folder, p.quantize)
    if not file.is_file():
        raise UserError(f"the export '{folder}' has no {file.name}: export it again with "
                        f"`warmstart export MODEL --onnx --quantize {p.quantize}`")
    return backends.OnnxBackend(file, p), AutoConfig.from_pretrained(folder, local_files_only=True)
