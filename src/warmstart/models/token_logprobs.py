"""A causal LM's logits at the labelled positions only.

A causal LM's head turns every position's hidden state into logits over the whole vocabulary
(49,152 for SmolLM2), and the loss then takes a log-softmax over each: for a 135M model that is a
fifth of the forward's multiply-adds and, in fp32, its largest activations (batch x length x
vocabulary, kept for the backward). Only the positions whose next token is labelled (the
completion, the assistant turns, a preference pair's replies) enter a loss, so the head is run
there alone: a pre-hook on the output embeddings hands the head the hidden states at those
positions, gathered into one (tokens, hidden) matrix, and the model returns (tokens, vocabulary)
logits. The hook runs inside the model's own forward, so peft's wrapper, Accelerate's (DDP) and
sharded heads see an ordinary call; the loss and the token log-probabilities are the same as
from the full logits (tests/test_chat_sft.py, tests/test_dpo.py check them against those)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from warmstart.data.batching import IGNORE


@dataclass
class Labelled:
    """A forward's outputs at the labelled positions: row ``rows[k]`` predicts ``targets[k]`` with
    ``logits[k]`` from column ``cols[k]``; ``shape`` the (rows, columns) they come from; ``loss``
    the mean cross-entropy over them (the training loss, where asked)."""

    logits: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    shape: tuple[int, int]
    loss: torch.Tensor | None = None


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, targets) of the positions whose next token is labelled: the logits at
    column i predict the label at i + 1."""
    nxt = labels[:, 1:]
    rows, cols = (nxt != IGNORE).nonzero(as_tuple=True)
    return rows, cols, nxt[rows, cols]


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The output embeddings (the LM head) of a causal LM, through Accelerate's (DDP) and peft's
    wrappers."""
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):
        inner = inner.module
    head = inner.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings")
    return head


@contextmanager
def head_at(model: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> Iterator[None]:
    """While inside, ``model``'s head sees the hidden states at (``rows``, ``cols``) alone."""

    def gather(module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.dim() != 3:  # not the (batch, length, hidden) call: left alone
            return args
        return (hidden[rows, cols], *args[1:])

    handle = output_head(model).register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def labelled_forward(
    model: torch.nn.Module, inputs: dict, labels: torch.Tensor, smoothing: float | None = None
) -> Labelled:
    """``model(**inputs)`` with logits at the labelled positions of ``labels`` only; with
    ``smoothing`` (0: none) their mean cross-entropy as ``loss``, the value the model's own loss
    gives on the full logits."""
    rows, cols, targets = labelled_positions(labels)
    with head_at(model, rows, cols):
        logits = model(**inputs).logits
    if logits.dim() == 3:  # a model whose head does not take the hidden states directly
        logits = logits[rows, cols]
    out = Labelled(logits, rows, cols, targets, (len(labels), labels.shape[1] - 1))
    if smoothing is not None:
        out.loss = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
    return out


def row_logps(out: Labelled) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed log-probability of its labelled tokens (fp32), and how many there are."""
    token = -F.cross_entropy(out.logits.float(), out.targets, reduction="none")
    # Laid back at their places and summed along each row: the order (and so the rounding) of
    # the sum over the full logits, and deterministic where a scatter-add would not be.
    grid = token.new_zeros(out.shape).index_put((out.rows, out.cols), token)
    counts = torch.zeros(out.shape, dtype=torch.long, device=token.device)
    counts[out.rows, out.cols] = 1
    return grid.sum(-1), counts.sum(-1)
