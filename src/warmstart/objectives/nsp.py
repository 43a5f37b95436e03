"""Masked language modelling plus next-sentence prediction (BERT's original pre-training).

Examples are ``[CLS] A [SEP] B [SEP]``, built as in BERT's ``create_pretraining_data.py``: each
document's sentences are gathered into chunks of about ``max_length - 3`` tokens; A is the first
1…n-1 sentences of a chunk; with probability 1/2 B is the rest of the chunk (label 0, "is next"),
otherwise B is a run of sentences from a different, random document (label 1), and the unused
sentences of the chunk go back to start the next chunk. 10% of chunks get a random shorter target
length, so that the model also sees the short inputs of fine-tuning. Then :class:`NSPCollator` pads
and masks exactly as :mod:`.mlm` does and keeps ``next_sentence_label``: the batches fit
``BertForPreTraining``.

Two deliberate differences from BERT. A one-sentence chunk (a one-sentence document, a sentence
longer than the target) cannot form a true pair; BERT then forces a random pair, which skews the
labels (54% random on IMDb reviews when we did the same), so here such a chunk forms no pair and
every label is a fair coin. And a pair too long is cut at A's start and B's end, never at the A|B
junction, so that a true pair stays truly consecutive text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from warmstart.errors import UserError
from warmstart.objectives.common import Records, TokenizedDoc, tokenize, word_spans
from warmstart.objectives.mlm import check_tokenizer, collator


@dataclass(frozen=True)
class Pair:
    """Segment A = ``docs[a_doc].ids[a_start:a_end]``, B = ``docs[b_doc].ids[b_start:b_end]`` (token
    indices into the tokenised documents); ``is_random`` is False when B is the text that follows
    A."""

    a_doc: int
    a_start: int
    a_end: int
    b_doc: int
    b_start: int
    b_end: int
    is_random: bool

    @property
    def next_sentence_label(self) -> int:
        """BertForPreTraining's convention: 0 when B continues A, 1 when B is random."""
        return int(self.is_random)


def _fit(la: int, lb: int, limit: int) -> tuple[int, int]:
    """Lengths of A and B after trimming the longer one first until ``la + lb <= limit``."""
    if la + lb <= limit:
        return la, lb
    la2 = min(la, max(limit - lb, (limit + 1) // 2))
    return la2, min(lb, limit - la2)


def pairs(
    docs: Sequence[TokenizedDoc], max_length: int, seed: int = 0, short_seq_prob: float = 0.1
) -> list[Pair]:
    """Sentence pairs of at most ``max_length`` tokens once ``[CLS] A [SEP] B [SEP]`` is added,
    about half of them random (see the module doc). Deterministic for a given ``seed``."""
    limit = max_length - 3
    if limit < 2:
        raise UserError(
            f"the maximum length must be at least 5 for sentence pairs (got {max_length})"
        )
    usable = [i for i, d in enumerate(docs) if d.ids]
    if len(usable) < 2:
        raise UserError(
            "next-sentence prediction needs at least two documents with text, to draw random "
            f"sentences from another document (found {len(usable)})"
        )
    rng = np.random.default_rng(seed)
    out: list[Pair] = []
    for pos, i in enumerate(usable):
        sents = docs[i].sentence_bounds()
        target = limit if rng.random() >= short_seq_prob else int(rng.integers(2, limit + 1))
        chunk: list[int] = []
        length = 0
        k = 0
        while k < len(sents):
            chunk.append(k)
            length += sents[k][1] - sents[k][0]
            if k == len(sents) - 1 or length >= target:
                if len(chunk) >= 2:
                    is_random = bool(rng.random() < 0.5)
                    a_n = int(rng.integers(1, len(chunk)))
                    a_start, a_end = sents[chunk[0]][0], sents[chunk[a_n - 1]][1]
                    if is_random:
                        b_doc, b_start, b_end = _random_b(
                            docs, usable, pos, target - (a_end - a_start), rng
                        )
                        k -= len(chunk) - a_n  # the unused sentences start the next chunk
                    else:
                        b_doc, b_start, b_end = i, a_end, sents[chunk[-1]][1]
                    la, lb = _fit(a_end - a_start, b_end - b_start, limit)
                    out.append(Pair(i, a_end - la, a_end, b_doc, b_start, b_start + lb, is_random))
                chunk, length = [], 0
                target = (
                    limit if rng.random() >= short_seq_prob else int(rng.integers(2, limit + 1))
                )
            k += 1
    return out


def _random_b(
    docs: Sequence[TokenizedDoc],
    usable: list[int],
    current: int,
    target: int,
    rng: np.random.Generator,
) -> tuple[int, int, int]:
    """A run of whole sentences of about ``target`` tokens from a random document other than
    ``usable[current]``."""
    p = int(rng.integers(len(usable) - 1))
    j = usable[
        p + 1 if p >= current else p
    ]  # uniform over the other documents: skip the current one
    sents = docs[j].sentence_bounds()
    s = int(rng.integers(len(sents)))
    start, end = sents[s]
    while end - start < target and s + 1 < len(sents):
        s += 1
        end = sents[s][1]
    return j, start, end


def features(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[TokenizedDoc],
    pair: Pair,
    offsets: bool = False,
) -> dict[str, list]:
    """The model inputs of one pair: ``input_ids`` (``[CLS] A [SEP] B [SEP]``), ``token_type_ids``
    (0 for [CLS] A [SEP], 1 for B [SEP]), ``next_sentence_label``, and, if asked, ``offset_mapping``
    (word spans for whole-word masking, see :func:`warmstart.objectives.word_spans`)."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    a = docs[pair.a_doc].ids[pair.a_start : pair.a_end]
    b = docs[pair.b_doc].ids[pair.b_start : pair.b_end]
    item: dict[str, list] = {
        "input_ids": [cls, *a, sep, *b, sep],
        "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
        "next_sentence_label": pair.next_sentence_label,
    }
    if offsets:
        zero = (0, 0)  # special tokens: the collator starts a new word after each of them anyway
        item["offset_mapping"] = [
            zero,
            *word_spans(docs[pair.a_doc].words[pair.a_start : pair.a_end]),
            zero,
            *word_spans(docs[pair.b_doc].words[pair.b_start : pair.b_end]),
            zero,
        ]
    return item


def dataset(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    max_length: int,
    seed: int = 0,
    whole_word_mask: bool = False,
    short_seq_prob: float = 0.1,
    source: str = "the corpus",
) -> Records:
    """Sentence-pair examples of at most ``max_length`` tokens; items as :func:`features` gives
    them."""
    check_tokenizer(tokenizer)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise UserError(
            "next-sentence prediction needs a tokenizer with [CLS] and [SEP] tokens (BERT's)"
        )
    tokenized = tokenize(tokenizer, docs, sentences=True)
    found = pairs(tokenized, max_length, seed=seed, short_seq_prob=short_seq_prob)
    if not found:
        raise UserError(
            f"{source} yields no sentence pairs; give documents with more than one sentence"
        )
    return Records([features(tokenizer, tokenized, p, offsets=whole_word_mask) for p in found])


class NSPCollator:
    """Pads pairs, masks them like :func:`warmstart.objectives.mlm.collator` and keeps the NSP
    labels.

    Batches: ``input_ids`` (masked), ``token_type_ids``, ``attention_mask``, ``labels`` (-100 except
    at masked positions; never at [CLS], [SEP] or padding), ``next_sentence_label`` — the arguments
    of ``BertForPreTraining.forward``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        whole_word_mask: bool = False,
        mlm_probability: float = 0.15,
        seed: int | None = 0,
        pad_to_multiple_of: int | None = 8,
    ):
        self.mlm = collator(
            tokenizer,
            whole_word_mask=whole_word_mask,
            mlm_probability=mlm_probability,
            seed=seed,
            pad_to_multiple_of=pad_to_multiple_of,
        )
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        nsp_labels = torch.tensor([e["next_sentence_label"] for e in examples], dtype=torch.long)
        feats = [{k: v for k, v in e.items() if k != "next_sentence_label"} for e in examples]
        if "offset_mapping" in feats[0]:
            # tokenizer.pad pads ids, masks and type ids but not offsets; pad them to the same
            # length here.
            longest = max(len(f["input_ids"]) for f in feats)
            m = self.pad_to_multiple_of
            width = -(-longest // m) * m if m else longest
            left = self.mlm.tokenizer.padding_side == "left"
            for f in feats:
                fill = [(0, 0)] * (width - len(f["offset_mapping"]))
                f["offset_mapping"] = (
                    fill + list(f["offset_mapping"]) if left else list(f["offset_mapping"]) + fill
                )
        batch = self.mlm(feats)
        batch["next_sentence_label"] = nsp_labels
        return batch
