"""Masked language modelling (BERT): 15% of tokens are chosen; of these 80% become [MASK], 10% a
random token, 10% stay unchanged; the model predicts the original token at every chosen position.

Masking is transformers' ``DataCollatorForLanguageModeling``, applied per batch (a new mask every
epoch, as RoBERTa's dynamic masking). Its whole-word mode (``whole_word_mask=True``) chooses words
instead of tokens: "playing" = "play" + "##ing" is masked or kept as a whole. A word is what the
tokenizer's pre-tokenizer calls one (for BERT, split at whitespace and punctuation, as in the
original whole-word release), handed to the collator as ``offset_mapping`` (see
:func:`warmstart.objectives.word_spans`). Special tokens are never chosen."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from warmstart.errors import UserError
from warmstart.objectives.common import Blocks, pack, separator_id, tokenize, word_spans


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """UserError unless the tokenizer has a mask token (GPT-2's has none)."""
    if tokenizer.mask_token_id is None:
        raise UserError(
            "masked language modelling needs a tokenizer with a mask token (BERT's [MASK], "
            "RoBERTa's <mask>); this one has none"
        )


def dataset(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    block_size: int,
    whole_word_mask: bool = False,
    source: str = "the corpus",
) -> Blocks:
    """Packed blocks of exactly ``block_size`` tokens: ``[CLS] … [SEP]`` around ``block_size - 2``
    tokens of the stream (documents separated by [SEP]), when the tokenizer has those tokens.

    Items: ``{"input_ids", "attention_mask"}``, plus ``"offset_mapping"`` with ``whole_word_mask``.
    """
    check_tokenizer(tokenizer)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    # BERT's encoder reads [CLS] at position 0 and expects [SEP] at the end, as in fine-tuning; a
    # tokenizer without them (a RoBERTa-less BPE) gets bare blocks.
    wrap = cls is not None and sep is not None
    body = block_size - 2 if wrap else block_size
    if body < 1:
        raise UserError(
            f"the block size must be at least 3 for masked language modelling (got {block_size})"
        )
    tokenized = tokenize(tokenizer, docs)
    ids = pack([d.ids for d in tokenized], body, separator_id(tokenizer), source=source)
    extra = {}
    if whole_word_mask:
        # Documents are separated by a special token, and the collator starts a new word after every
        # special token, so per-document spans can simply be packed alongside the ids.
        offsets = pack([word_spans(d.words) for d in tokenized], body, (0, 0), source=source)
        if wrap:
            edge = np.zeros((len(offsets), 1, 2), dtype=np.int64)
            offsets = np.concatenate([edge, offsets, edge], axis=1)
        extra["offset_mapping"] = offsets
    if wrap:
        n = len(ids)
        ids = np.concatenate([np.full((n, 1), cls), ids, np.full((n, 1), sep)], axis=1)
    return Blocks(ids, extra=extra)


@dataclass
class WholeWordMaskingCollator(DataCollatorForLanguageModeling):
    """``DataCollatorForLanguageModeling(whole_word_mask=True)`` with BERT's 80/10/10 replacement
    kept.

    transformers 5 forces every chosen token of whole-word masking to [MASK]
    (``mask_replace_prob=1``). The original BERT whole-word release kept 80/10/10, decided per token
    within a chosen word, and the parent's masking code does exactly that when the two probabilities
    are left as given, so they are restored after its ``__post_init__``."""

    whole_word_mask: bool = True

    def __post_init__(self) -> None:
        probs = (self.mask_replace_prob, self.random_replace_prob)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Random token replacement is not supported")
            super().__post_init__()
        self.mask_replace_prob, self.random_replace_prob = (float(p) for p in probs)


def collator(
    tokenizer: PreTrainedTokenizerBase,
    whole_word_mask: bool = False,
    mlm_probability: float = 0.15,
    seed: int | None = 0,
    pad_to_multiple_of: int | None = None,
) -> DataCollatorForLanguageModeling:
    """The masking collator. Batches: ``input_ids`` (masked), ``attention_mask``, ``labels``
    (original id at chosen positions, -100 elsewhere), plus any other key of the items
    (``token_type_ids``) padded.

    With ``whole_word_mask`` the items must carry ``offset_mapping`` (as :func:`dataset` gives
    them)."""
    check_tokenizer(tokenizer)
    if not 0 < mlm_probability < 1:
        raise UserError(f"the masking probability must be between 0 and 1 (got {mlm_probability})")
    cls = WholeWordMaskingCollator if whole_word_mask else DataCollatorForLanguageModeling
    return cls(
        tokenizer=tokenizer,
        mlm=True,
        whole_word_mask=whole_word_mask,
        mlm_probability=mlm_probability,
        pad_to_multiple_of=pad_to_multiple_of,
        seed=seed,
        return_tensors="pt",
    )
