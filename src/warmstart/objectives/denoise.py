"""Denoising (BART): corrupt the encoder's text, reconstruct the original with the decoder.

Two noises from the BART paper (its best combination): sentence permutation (the sentences of a
segment are shuffled) and text infilling (spans with Poisson(λ=3) lengths, covering 30% of the
tokens, are each replaced by ONE mask token; a zero-length span inserts a mask, so the model must
also learn how many tokens are missing). The permutation happens first and both touch only the
encoder input; ``labels`` are the original tokens, untouched, and ``BartForConditionalGeneration``
derives its decoder inputs from them (shifted right, starting with ``decoder_start_token_id``).

Segments never cross documents: each is a run of whole sentences of one document, ``<s> … </s>``, at
most ``max_length`` tokens (a single longer sentence is cut into pieces). Spans are counted in
tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from warmstart.errors import UserError
from warmstart.objectives.common import Records, tokenize


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """UserError unless the tokenizer has the begin, end, padding and mask tokens that BART uses."""
    missing = [
        name
        for name in ("bos_token", "eos_token", "pad_token", "mask_token")
        if getattr(tokenizer, f"{name}_id", None) is None
    ]
    if missing:
        raise UserError(
            f"denoising needs a tokenizer with {', '.join(missing)} (BART's <s>, </s>, <pad>,"
            " <mask>)"
        )


def dataset(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    max_length: int,
    source: str = "the corpus",
) -> Records:
    """Segments of whole sentences of at most ``max_length`` tokens. Each item is ``{"input_ids":
    [<s>, …, </s>], "sentence_starts": [...]}``, the starts being indices in ``input_ids`` (the
    first is 1)."""
    check_tokenizer(tokenizer)
    body = max_length - 2
    if body < 1:
        raise UserError(f"the maximum length must be at least 3 for denoising (got {max_length})")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    records = []
    for doc in tokenize(tokenizer, docs, sentences=True):
        pieces = [
            (s + o, min(s + o + body, e))
            for s, e in doc.sentence_bounds()
            for o in range(0, e - s, body)
        ]
        segment: list[tuple[int, int]] = []
        for piece in pieces + [None]:
            size = sum(e - s for s, e in segment)
            if segment and (piece is None or size + piece[1] - piece[0] > body):
                ids, starts = [bos], []
                for s, e in segment:
                    starts.append(len(ids))
                    ids += doc.ids[s:e]
                records.append({"input_ids": ids + [eos], "sentence_starts": starts})
                segment = []
            if piece is not None:
                segment.append(piece)
    if not records:
        raise UserError(f"{source} has no tokens to build denoising examples from")
    return Records(records)


def poisson_spans(
    n: int, rng: np.random.Generator, mask_ratio: float = 0.3, poisson_lambda: float = 3.0
) -> list[tuple[int, int]]:
    """Non-overlapping spans ``(start, length)``, sorted by start, over a sequence of ``n`` tokens.

    Lengths are drawn from Poisson(``poisson_lambda``) until they cover ``round(mask_ratio * n)``
    tokens (the last is shortened to hit it exactly); zero-length spans are insertion points. Their
    places are uniform among all arrangements of the spans and the ``n - masked`` kept tokens."""
    masked = int(round(mask_ratio * n))
    if masked == 0:
        return []
    lengths: list[int] = []
    total = 0
    while total < masked:
        lengths.append(int(rng.poisson(poisson_lambda)))
        total += lengths[-1]
    lengths[-1] -= total - masked
    k = len(lengths)
    # Stars and bars: a row of (n - masked) kept tokens and k spans; choosing which k of the n -
    # masked + k places hold spans fixes where every span starts.
    slots = np.sort(rng.choice(n - masked + k, size=k, replace=False))
    spans, covered = [], 0
    for j, slot in enumerate(slots):
        start = (
            int(slot) - j + covered
        )  # kept tokens before this span + tokens of the spans before it
        spans.append((start, lengths[j]))
        covered += lengths[j]
    return spans


def infill(
    tokens: Sequence[int],
    mask_id: int,
    rng: np.random.Generator,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
) -> tuple[list[int], list[tuple[int, int]]]:
    """Text infilling: ``tokens`` with each span of :func:`poisson_spans` replaced by one
    ``mask_id``. Returns the noised tokens and the spans (in the coordinates of ``tokens``)."""
    spans = poisson_spans(len(tokens), rng, mask_ratio, poisson_lambda)
    out: list[int] = []
    pos = 0
    for start, length in spans:
        out += tokens[pos:start]
        out.append(mask_id)
        pos = start + length
    out += tokens[pos:]
    return out, spans


def permute_sentences(
    ids: Sequence[int], sentence_starts: Sequence[int], rng: np.random.Generator
) -> list[int]:
    """The tokens of ``ids[1:-1]`` (the text between <s> and </s>) with its sentences in random
    order."""
    bounds = list(sentence_starts) + [len(ids) - 1]
    sents = [list(ids[bounds[i] : bounds[i + 1]]) for i in range(len(sentence_starts))]
    return [t for i in rng.permutation(len(sents)) for t in sents[i]]


class DenoisingCollator:
    """Noises segments and pads them. Batches: ``input_ids`` and ``attention_mask`` (permuted and
    infilled encoder input), ``labels`` (the original ``<s> … </s>``, -100 on padding) — the
    arguments of ``BartForConditionalGeneration.forward``.

    Holds one seeded numpy Generator, so the noise of a run is repeatable; use it in the main
    process."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        seed: int | None = 0,
        mask_ratio: float = 0.3,
        poisson_lambda: float = 3.0,
        permute: bool = True,
        pad_to_multiple_of: int | None = 8,
    ):
        check_tokenizer(tokenizer)
        if not 0 <= mask_ratio < 1:
            raise UserError(f"the mask ratio must be at least 0 and below 1 (got {mask_ratio})")
        self.tokenizer = tokenizer
        self.rng = np.random.default_rng(seed)
        self.mask_ratio = mask_ratio
        self.poisson_lambda = poisson_lambda
        self.permute = permute
        # Pads input_ids with <pad> (attention 0) and labels with -100, which the loss ignores.
        self.pad = DataCollatorForSeq2Seq(
            tokenizer,
            label_pad_token_id=-100,
            pad_to_multiple_of=pad_to_multiple_of,
            return_tensors="pt",
        )

    def noise(self, ids: Sequence[int], sentence_starts: Sequence[int]) -> list[int]:
        """The encoder input for one segment ``<s> … </s>``: sentences permuted, then spans
        infilled."""
        body = (
            permute_sentences(ids, sentence_starts, self.rng) if self.permute else list(ids[1:-1])
        )
        body, _ = infill(
            body, self.tokenizer.mask_token_id, self.rng, self.mask_ratio, self.poisson_lambda
        )
        noised = [ids[0], *body, ids[-1]]
        if len(noised) > len(ids):
            # Only possible when many zero-length spans fall on a very short segment; keep the input
            # within the segment's length, and so within the model's position table.
            noised = noised[: len(ids) - 1] + [ids[-1]]
        return noised

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        feats = [
            {
                "input_ids": self.noise(e["input_ids"], e["sentence_starts"]),
                "labels": list(e["input_ids"]),
            }
            for e in examples
        ]
        return dict(self.pad(feats))
