"""Overlapping windows over a sequence too long for the model, which window answers for each unit,
and the head+tail cut.

One helper for every kind of long input: words of a long sentence (token classification) and tokens
of a long document (sequence classification with --long-text chunk). A window holds at most
``budget`` tokens; consecutive windows overlap by about ``stride`` tokens, so a unit near a window's
edge also appears with context on both sides in the next window. Each unit is answered for by
exactly one window: the one where it has the most context (the larger of its smaller side), as in
BERT's SQuAD windows (Devlin et al. 2019, "maximum context"). A document's windows all answer for it
together: their logits are aggregated (inference.classifier.aggregate)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def windows(sizes: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` over units of ``sizes`` tokens: each at most ``budget`` tokens (a
    unit larger than the budget gets a window of its own), consecutive ones sharing at most
    ``stride`` tokens of units."""
    if budget < 1:
        raise ValueError("budget must be positive")
    n = len(sizes)
    cum = np.concatenate([[0], np.cumsum(sizes)])
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1
        end = min(max(end, start + 1), n)
        out.append((start, end))
        if end >= n:
            break
        # Step back over at most `stride` tokens, but never so far that the next unit no longer fits
        # in the next window (a large unit after small ones): that window would add nothing and
        # repeat until the start reached the large unit.
        nxt = end
        while (
            nxt - 1 > start
            and cum[end] - cum[nxt - 1] <= stride
            and cum[end + 1] - cum[nxt - 1] <= budget
        ):
            nxt -= 1
        start = nxt
    return out


def owners(sizes: Sequence[int], spans: list[tuple[int, int]]) -> np.ndarray:
    """For each unit, the index of the window that answers for it: of the windows holding it, the
    one where min(tokens before it, tokens after it) is largest; the earlier one on a tie. Never
    decreasing along the sequence, so reading each window's own units in window order gives every
    unit once, in order."""
    cum = np.concatenate([[0], np.cumsum(sizes)])
    best = np.full(len(sizes), -1, dtype=np.int64)
    score = np.full(len(sizes), -1.0)
    for k, (s, e) in enumerate(spans):
        units = np.arange(s, e)
        context = np.minimum(cum[units] - cum[s], cum[e] - cum[units + 1])
        better = context > score[s:e]
        best[s:e][better] = k
        score[s:e][better] = context[better]
    return best


def overlap(budget: int, stride: int | None) -> int:
    """Tokens consecutive windows share: ``stride``, by default a quarter of the window; at most
    half of it, since more would read most tokens three times or more for little extra context."""
    return budget // 4 if stride is None else min(stride, budget // 2)


def token_windows(n: int, budget: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` over a plain sequence of ``n`` tokens (a long document): ``windows``
    with every unit one token, sharing ``overlap(budget, stride)`` tokens. Never empty: a text of no
    tokens still gets one (empty) window, so that it gets an answer like any other."""
    return windows(np.ones(n, dtype=np.int64), budget, overlap(budget, stride)) or [(0, 0)]


def head_tail(ids: list[int], n: int) -> list[int]:
    """At most ``n`` of ``ids``: all of them when they fit, else the first quarter of ``n`` and the
    last three quarters: the best of the cuts Sun et al. (2019) compared for BERT on IMDb (128 + 382
    of 510 tokens), where a review sets out its subject at the start and gives its verdict at the
    end."""
    if len(ids) <= n:
        return list(ids)
    first = n // 4
    return list(ids[:first]) + list(ids[len(ids) - (n - first) :])
