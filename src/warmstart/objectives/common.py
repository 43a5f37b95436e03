"""What the objectives share: tokenising documents (with word and sentence boundaries), packing
token streams into fixed blocks, and the two dataset shapes (blocks of one stream, records of one
example each)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from warmstart.data.corpus import sentence_spans
from warmstart.errors import UserError


@dataclass
class TokenizedDoc:
    """One document as tokens, without special tokens.

    ``words[i]`` is the index of the word token ``i`` belongs to, as the tokenizer's pre-tokenizer
    splits words (BERT: at whitespace and punctuation; byte-level BPE: GPT-2's regex), for
    whole-word masking; ``sentence_starts`` the token index at which each sentence begins (first is
    0), so that sentence ``k`` is ``ids[sentence_starts[k]:sentence_starts[k + 1]]``. The whole
    document is tokenised at once and only then cut at sentence boundaries, so joining the sentences
    gives back exactly the document's tokens (a sentence tokenised alone would lose the space before
    it in byte-level BPE)."""

    ids: list[int]
    words: list[int]
    sentence_starts: list[int]

    def sentence_bounds(self) -> list[tuple[int, int]]:
        """``(start, end)`` token ranges of the sentences."""
        ends = self.sentence_starts[1:] + [len(self.ids)]
        return list(zip(self.sentence_starts, ends))


def backend(tokenizer: PreTrainedTokenizerBase) -> Tokenizer:
    """The Rust tokenizer of a fast tokenizer, with no truncation or padding configured."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            "pre-training needs a fast tokenizer (a tokenizer.json); this one is a slow Python one"
        )
    tok = tokenizer.backend_tokenizer
    if tok.truncation is not None or tok.padding is not None:
        # A copy, so that the caller's tokenizer keeps its settings; documents must not be cut at
        # model_max_length here: packing and sentence chunking decide the lengths.
        tok = Tokenizer.from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    return tok


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    sentences: bool = False,
    batch_size: int = 1000,
) -> list[TokenizedDoc]:
    """Tokenise documents without special tokens or truncation, keeping each token's word index.

    With ``sentences=True`` the sentence boundaries of :func:`warmstart.corpus.sentence_spans` are
    mapped to token indices (a token belongs to the sentence holding its last character); otherwise
    the whole document counts as one sentence."""
    tok = backend(tokenizer)
    out = []
    for i in range(0, len(docs), batch_size):
        chunk = list(docs[i : i + batch_size])
        for doc, enc in zip(chunk, tok.encode_batch(chunk, add_special_tokens=False)):
            starts = [0]
            if sentences and enc.ids:
                span_starts = [s for s, _ in sentence_spans(doc)]
                # The last character, not the first: a byte-level token such as "ĠThe" may start on
                # the space that precedes its sentence.
                owner = [
                    max(0, bisect.bisect_right(span_starts, max(e - 1, s)) - 1)
                    for s, e in enc.offsets
                ]
                starts += [t for t in range(1, len(owner)) if owner[t] != owner[t - 1]]
            words = [-1 if w is None else w for w in enc.word_ids]
            out.append(TokenizedDoc(ids=list(enc.ids), words=words, sentence_starts=starts))
    return out


def word_spans(words: Sequence[int]) -> list[tuple[int, int]]:
    """Spans that tell ``DataCollatorForLanguageModeling(whole_word_mask=True)`` where words start.

    That collator reads words from an ``offset_mapping``: a token whose span starts where the
    previous one ends continues its word. Real character offsets get this wrong where the normaliser
    deletes a character inside a word (IMDb's stray control bytes: "gentlemen\\x96in" is one
    WordPiece word with a gap in its offsets) and where punctuation touches a word ("film." would be
    one word). So the spans given to it are built from the tokenizer's own word indices instead: the
    pieces of a word touch, every new word starts one position after the previous token's end. They
    are not character positions."""
    spans, end, previous = [], 0, None
    for w in words:
        start = end if w == previous and w != -1 else end + 1
        spans.append((start, start + 1))
        end, previous = start + 1, w
    return spans


def pack(
    sequences: Sequence[Sequence],
    block_size: int,
    sep: int | tuple[int, int],
    source: str = "the corpus",
) -> np.ndarray:
    """Concatenate sequences, each followed by ``sep``, and cut the stream into blocks of
    ``block_size``.

    Returns an int64 array ``(n_blocks, block_size)`` (or ``(n_blocks, block_size, 2)`` when packing
    ``(start, end)`` spans with ``sep=(0, 0)``): every block is full, tokens keep their order, there
    is no padding; only the last, incomplete block (fewer than ``block_size`` items) is dropped. A
    document longer than a block simply continues into the next one. Raises UserError when the
    corpus has fewer tokens than one block."""
    if block_size < 1:
        raise UserError(f"the block size must be at least 1 (got {block_size})")
    sep_arr = np.asarray([sep], dtype=np.int64)
    parts: list[np.ndarray] = []
    for seq in sequences:
        if len(seq):
            parts += [np.asarray(seq, dtype=np.int64).reshape(-1, *sep_arr.shape[1:]), sep_arr]
    total = sum(len(p) for p in parts)
    if total < block_size:
        raise UserError(
            f"{source} has {total} tokens (separators included), fewer than one block of "
            f"{block_size}; give more text or a smaller block size"
        )
    stream = np.concatenate(parts)
    n = total // block_size
    return stream[: n * block_size].reshape(n, block_size, *sep_arr.shape[1:])


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token put between packed documents: the separator of BERT-like tokenizers, else
    end-of-text."""
    for name in ("sep_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise UserError(
        "the tokenizer has neither a separator nor an end-of-text token to put between documents"
    )


class Blocks(torch.utils.data.Dataset):
    """Fixed-length blocks: item ``i`` is ``{"input_ids", "attention_mask"}`` (all ones: blocks have
    no padding), plus ``"labels"`` (a copy of ``input_ids``) when ``labels=True``, plus one entry
    per array in ``extra`` (e.g. ``offset_mapping``), all as Python lists."""

    def __init__(
        self,
        input_ids: np.ndarray,
        labels: bool = False,
        extra: dict[str, np.ndarray] | None = None,
    ):
        self.input_ids = input_ids
        self.labels = labels
        self.extra = extra or {}

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, list]:
        ids = self.input_ids[i].tolist()
        item = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self.labels:
            item["labels"] = list(ids)
        item.update({k: v[i].tolist() for k, v in self.extra.items()})
        return item


class Records(torch.utils.data.Dataset):
    """A list of ready feature dicts (NSP pairs, denoising segments), one per item."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self.records[i]
