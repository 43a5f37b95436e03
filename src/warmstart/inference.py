"""The one batched inference path: length-sorted batches, dynamic padding, inference_mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from warmstart import models
from warmstart.batching import Encoded, collator, encode, sorted_batches
from warmstart.data import Examples, LabelMap


def pick_device(cpu: bool = False) -> torch.device:
    if not cpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def batched_outputs(forward: Callable[[dict], torch.Tensor | np.ndarray], data: Encoded, batch_size: int,
                    collate: Callable, device: torch.device | None = None, progress: bool = False,
                    desc: str = "predict") -> np.ndarray:
    """``forward(batch)`` over length-sorted, dynamically padded batches; one float32 row per input, in input order.

    The one loop behind predict, evaluate, embed and zeroshot: ``forward`` gets a padded batch (moved to
    ``device`` when given) and returns one row per text (logits, pooled hidden states, scores...).
    """
    out: np.ndarray | None = None
    with torch.inference_mode(), tqdm(total=len(data), desc=desc, unit="text", disable=not progress,
                                       leave=False) as bar:
        for idx in sorted_batches(data.lengths, batch_size):
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
    """A saved sequence classifier with its tokenizer, ready for batched prediction."""

    path: str
    model: torch.nn.Module
    tokenizer: object
    labels: LabelMap
    device: torch.device
    max_length: int

    @classmethod
    def load(cls, name: str, max_length: int | None = None, cpu: bool = False) -> Classifier:
        path = models.resolve(name)
        tokenizer = models.load_tokenizer(path)
        model = models.load_classifier(path)
        device = pick_device(cpu)
        model.to(device)
        return cls(path, model, tokenizer, LabelMap.from_model_config(model.config), device,
                   models.max_length_of(tokenizer, model.config, max_length))

    def probabilities(self, ex: Examples, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        data = encode(self.tokenizer, ex, self.max_length)
        logits = predict_logits(self.model, data, batch_size, collator(self.tokenizer), self.device,
                                progress=progress)
        return softmax(logits)
