"""The one batched inference loop: length-sorted batches, dynamic padding, inference_mode.

Behind predict, evaluate, embed, zeroshot and prompt scoring: each passes a ``forward(batch)`` that
returns one row per text (logits, pooled hidden states, label scores...)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from warmstart.data.batching import Encoded, budget_batches, sorted_batches
from warmstart.progress import progress_bar


def batched_outputs(
    forward: Callable[[dict], torch.Tensor | np.ndarray],
    data: Encoded,
    batch_size: int,
    collate: Callable,
    device: torch.device | None = None,
    progress: bool = False,
    desc: str = "predict",
    max_tokens: int | None = None,
    ragged: bool = False,
    workers: int = 1,
) -> np.ndarray | list[np.ndarray]:
    """``forward(batch)`` over length-sorted, dynamically padded batches; one float32 row per input,
    in input order.

    The one loop behind predict, evaluate, embed and zeroshot: ``forward`` gets a padded batch
    (moved to ``device`` when given) and returns one row per text (logits, pooled hidden states,
    scores...). With ``max_tokens``, a batch also stops growing at that many (padded) tokens: see
    ``budget_batches``. With ``ragged``, ``forward`` returns one row per token (a token classifier's
    logits) and each input gets back a list entry of its own length, padding cut off. With
    ``workers`` > 1, that many batches run at once in threads (for a ``forward`` that releases the
    GIL and runs single-threaded, e.g. ONNX Runtime)."""
    out: np.ndarray | None = None
    rows_of: list[np.ndarray] = [np.empty(0)] * len(data) if ragged else []
    order = (
        budget_batches(data.lengths, batch_size, max_tokens)
        if max_tokens
        else sorted_batches(data.lengths, batch_size)
    )

    def run(idx: list[int]) -> tuple[list[int], np.ndarray]:
        with torch.inference_mode():  # per thread: grad mode is thread-local
            batch = collate([{k: v[i] for k, v in data.features.items()} for i in idx])
            if device is not None:
                batch = {k: v.to(device) for k, v in batch.items()}
            rows = forward(batch)
            return idx, rows.float().cpu().numpy() if isinstance(rows, torch.Tensor) else rows

    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            progress_bar(total=len(data), desc=desc, unit="text", enabled=progress, leave=False)
        )
        if workers > 1:
            results = stack.enter_context(ThreadPoolExecutor(workers)).map(run, order)
        else:
            results = map(run, order)
        for idx, rows in results:
            if ragged:
                for j, i in enumerate(idx):
                    rows_of[i] = rows[j, : data.lengths[i]]
            else:
                if out is None:
                    out = np.empty((len(data), *rows.shape[1:]), dtype=np.float32)
                out[idx] = rows
            bar.update(len(idx))
    if ragged:
        return rows_of
    if out is None:  # no rows at all
        return np.empty((0, 0), dtype=np.float32)
    return out


def predict_logits(
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    collate: Callable,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: bool = False,
    desc: str = "predict",
    ragged: bool = False,
) -> np.ndarray | list:
    """Logits of a classifier for every row of ``data``, in input order (``ragged``: per token, one
    array a row)."""
    was_training = model.training
    model.eval()

    def forward(batch: dict) -> torch.Tensor:
        with autocast() if autocast else contextlib.nullcontext():
            return model(**batch).logits

    try:
        return batched_outputs(
            forward, data, batch_size, collate, device, progress, desc, ragged=ragged
        )
    finally:
        model.train(was_training)
