"""Dropout with a cheaper random mask on the CPU.

PyTorch draws a CPU dropout mask one Bernoulli float at a time on one thread (~20 ns an element
here), which is slow next to the matrix products it sits between: in a 3+3-layer BART of width 256
(spelling to phonemes), hidden dropout cost a fifth of every training step. Here the mask comes from
64-bit random integers cut into four 16-bit draws (one generator call per four elements); an element
is dropped when its draw falls below ``round(p * 65536)``, and kept ones are scaled by the inverse
of the keep rate actually used, so the output's expectation is the input's as with ``F.dropout``.
The draws come from torch's seeded generator: the same seed gives the same masks, and a checkpoint's
saved RNG state resumes them.

``cpu_dropout()`` is a ``TorchFunctionMode`` that answers ``torch.nn.functional.dropout`` (which
``nn.Dropout`` and transformers' functional calls both reach) this way for CPU tensors in training;
any other call, and any tensor on a GPU (whose kernel is fast), goes through unchanged. It is active
only around the forward pass."""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

LOW, HIGH = torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max
STEPS = 65536  # 16-bit draws


def dropout(x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """``x`` with each element zeroed with probability ``p`` (to 1/65536) and the rest scaled to
    keep the mean."""
    n = x.numel()
    draws = (
        torch.randint(LOW, HIGH, ((n + 3) // 4,), dtype=torch.int64)
        .view(torch.int16)[:n]
        .view(x.shape)
    )
    cut = round(p * STEPS)
    if cut >= STEPS:
        return x.mul_(0) if inplace else x * 0
    keep = (
        draws >= cut - STEPS // 2
    )  # a bool mask: what backward keeps is 1 byte an element, as F.dropout's
    scale = STEPS / (STEPS - cut)
    return (x.mul_(scale) if inplace else x * scale).mul_(keep)


def _bind(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False):
    return input, p, training, inplace


class cpu_dropout(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within it, ``F.dropout`` on a CPU tensor in training uses :func:`dropout`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout:
            x, p, training, inplace = _bind(*args, **kwargs)
            if training and p > 0 and x.device.type == "cpu" and isinstance(x, torch.Tensor):
                return dropout(x, p, inplace)
        return func(*args, **kwargs)


def faster_dropout(device: torch.device | str) -> contextlib.AbstractContextManager:
    """``cpu_dropout()`` for a model on the CPU; nothing on a GPU (the mode's per-call Python would
    only cost)."""
    return cpu_dropout() if torch.device(device).type == "cpu" else contextlib.nullcontext()
