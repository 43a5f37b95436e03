"""Self-supervised pre-training objectives: the data side of ``warmstart pretrain``.

Each objective turns documents (from :func:`warmstart.corpus.read_corpus`) into a torch ``Dataset`` and a
collator whose batches go straight into a transformers model (``model(**batch).loss``):

- ``clm`` (AutoModelForCausalLM; from scratch: gpt2): ``input_ids``, ``attention_mask``, ``labels``
  (= input_ids; the model shifts them by one);
- ``mlm`` (AutoModelForMaskedLM; bert): ``input_ids`` (masked), ``attention_mask``, ``labels`` (the original
  token at masked positions, -100 elsewhere);
- ``mlm+nsp`` (AutoModelForPreTraining, i.e. BertForPreTraining; bert): as mlm plus ``token_type_ids`` and
  ``next_sentence_label`` (0: B follows A, 1: B is random);
- ``denoise`` (AutoModelForSeq2SeqLM; bart): ``input_ids`` and ``attention_mask`` of the noised text,
  ``labels`` the original text (-100 on padding); the model builds its decoder inputs from the labels.

:func:`prepare` builds both for an objective name; the modules :mod:`.clm`, :mod:`.mlm`, :mod:`.nsp` and
:mod:`.denoise` hold the pieces. This package module holds what they share: tokenising documents (with
sentence boundaries), packing token streams into fixed blocks, and the dataset classes.

Randomness (masks, pairs, noise) comes from seeded generators, so a run is repeatable. Collators keep their
generator between calls; a resume that must see the same masks as an uninterrupted run has to save and
restore it: ``.generator`` (a torch.Generator, created at the first batch) of the mlm collator and of
``NSPCollator.mlm``, ``.rng.bit_generator.state`` of the denoising collator. transformers' masking collator
seeds each DataLoader worker apart, the denoising collator does not: use it in the main process
(``num_workers=0``, the right choice on a small CPU anyway).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from warmstart.corpus import sentence_spans
from warmstart.errors import UserError


@dataclass(frozen=True)
class Objective:
    name: str
    arch: str  # architecture of the from-scratch preset (warmstart.scratch.preset)
    model_class: str  # the transformers class whose forward takes this objective's batches
    description: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (
        Objective("clm", "gpt2", "AutoModelForCausalLM", "next-token prediction with teacher forcing (GPT)"),
        Objective("mlm", "bert", "AutoModelForMaskedLM", "masked language modelling, 15% of tokens (BERT)"),
        Objective("mlm+nsp", "bert", "AutoModelForPreTraining",
                  "masked language modelling plus next-sentence prediction (BertForPreTraining)"),
        Objective("denoise", "bart", "AutoModelForSeq2SeqLM",
                  "text infilling and sentence permutation, reconstructed by the decoder (BART)"),
    )
}


def objective(name: str) -> Objective:
    """The objective called ``name``; UserError listing the choices otherwise."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective '{name}'; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


@dataclass
class TokenizedDoc:
    """One document as tokens, without special tokens.

    ``words[i]`` is the index of the word token ``i`` belongs to, as the tokenizer's pre-tokenizer splits
    words (BERT: at whitespace and punctuation; byte-level BPE: GPT-2's regex), for whole-word masking;
    ``sentence_starts`` the token index at which each sentence begins (first is 0), so that sentence ``k`` is
    ``ids[sentence_starts[k]:sentence_starts[k + 1]]``. The whole document is tokenised at once and only then
    cut at sentence boundaries, so joining the sentences gives back exactly the document's tokens (a
    sentence tokenised alone would lose the space before it in byte-level BPE).
    """

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
        raise UserError("pre-training needs a fast tokenizer (a tokenizer.json); this one is a slow Python one")
    tok = tokenizer.backend_tokenizer
    if tok.truncation is not None or tok.padding is not None:
        # A copy, so that the caller's tokenizer keeps its settings; documents must not be cut at
        # model_max_length here: packing and sentence chunking decide the lengths.
        tok = Tokenizer.from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    return tok


def tokenize(tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], sentences: bool = False,
             batch_size: int = 1000) -> list[TokenizedDoc]:
    """Tokenise documents without special tokens or truncation, keeping each token's word index.

    With ``sentences=True`` the sentence boundaries of :func:`warmstart.corpus.sentence_spans` are mapped to
    token indices (a token belongs to the sentence holding its last character); otherwise the whole
    document counts as one sentence.
    """
    tok = backend(tokenizer)
    out = []
    for i in range(0, len(docs), batch_size):
        chunk = list(docs[i:i + batch_size])
        for doc, enc in zip(chunk, tok.encode_batch(chunk, add_special_tokens=False)):
            starts = [0]
            if sentences and enc.ids:
                span_starts = [s for s, _ in sentence_spans(doc)]
                # The last character, not the first: a byte-level token such as "ĠThe" may start on the
                # space that precedes its sentence.
                owner = [max(0, bisect.bisect_right(span_starts, max(e - 1, s)) - 1) for s, e in enc.offsets]
                starts += [t for t in range(1, len(owner)) if owner[t] != owner[t - 1]]
            words = [-1 if w is None else w for w in enc.word_ids]
            out.append(TokenizedDoc(ids=list(enc.ids), words=words, sentence_starts=starts))
    return out


def word_spans(words: Sequence[int]) -> list[tuple[int, int]]:
    """Spans that tell ``DataCollatorForLanguageModeling(whole_word_mask=True)`` where words start.

    That collator reads words from an ``offset_mapping``: a token whose span starts where the previous one
    ends continues its word. Real character offsets get this wrong where the normaliser deletes a character
    inside a word (IMDb's stray control bytes: "gentlemen\\x96in" is one WordPiece word with a gap in its
    offsets) and where punctuation touches a word ("film." would be one word). So the spans given to it are
    built from the tokenizer's own word indices instead: the pieces of a word touch, every new word starts
    one position after the previous token's end. They are not character positions.
    """
    spans, end, previous = [], 0, None
    for w in words:
        start = end if w == previous and w != -1 else end + 1
        spans.append((start, start + 1))
        end, previous = start + 1, w
    return spans


def pack(sequences: Sequence[Sequence], block_size: int, sep: int | tuple[int, int],
         source: str = "the corpus") -> np.ndarray:
    """Concatenate sequences, each followed by ``sep``, and cut the stream into blocks of ``block_size``.

    Returns an int64 array ``(n_blocks, block_size)`` (or ``(n_blocks, block_size, 2)`` when packing
    ``(start, end)`` spans with ``sep=(0, 0)``): every block is full, tokens keep their order, there is no
    padding; only the last, incomplete block (fewer than ``block_size`` items) is dropped. A document longer
    than a block simply continues into the next one. Raises UserError when the corpus has fewer tokens than
    one block.
    """
    if block_size < 1:
        raise UserError(f"the block size must be at least 1 (got {block_size})")
    sep_arr = np.asarray([sep], dtype=np.int64)
    parts: list[np.ndarray] = []
    for seq in sequences:
        if len(seq):
            parts += [np.asarray(seq, dtype=np.int64).reshape(-1, *sep_arr.shape[1:]), sep_arr]
    total = sum(len(p) for p in parts)
    if total < block_size:
        raise UserError(f"{source} has {total} tokens (separators included), fewer than one block of "
                        f"{block_size}; give more text or a smaller block size")
    stream = np.concatenate(parts)
    n = total // block_size
    return stream[:n * block_size].reshape(n, block_size, *sep_arr.shape[1:])


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token put between packed documents: the separator of BERT-like tokenizers, else end-of-text."""
    for name in ("sep_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise UserError("the tokenizer has neither a separator nor an end-of-text token to put between documents")


class Blocks(torch.utils.data.Dataset):
    """Fixed-length blocks: item ``i`` is ``{"input_ids", "attention_mask"}`` (all ones: blocks have no
    padding), plus ``"labels"`` (a copy of ``input_ids``) when ``labels=True``, plus one entry per array in
    ``extra`` (e.g. ``offset_mapping``), all as Python lists."""

    def __init__(self, input_ids: np.ndarray, labels: bool = False, extra: dict[str, np.ndarray] | None = None):
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


def prepare(name: str, tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], block_size: int, *,
            seed: int = 0, whole_word_mask: bool = False, mlm_probability: float = 0.15,
            source: str = "the corpus") -> tuple[torch.utils.data.Dataset, Callable[[list[dict]], dict]]:
    """Dataset and collator of objective ``name`` for documents ``docs``.

    ``block_size`` is the block length for clm and mlm and the maximum sequence length (special tokens
    included) for mlm+nsp and denoise. ``seed`` seeds pair sampling, masking and noise.
    """
    from warmstart.objectives import clm, denoise, mlm, nsp  # here, not at the top: they import this module

    objective(name)
    if whole_word_mask and name not in ("mlm", "mlm+nsp"):
        raise UserError(f"whole-word masking applies to mlm and mlm+nsp, not to {name}")
    if name == "clm":
        return clm.dataset(tokenizer, docs, block_size, source=source), clm.collator()
    if name == "mlm":
        return (mlm.dataset(tokenizer, docs, block_size, whole_word_mask=whole_word_mask, source=source),
                mlm.collator(tokenizer, whole_word_mask=whole_word_mask, mlm_probability=mlm_probability,
                             seed=seed))
    if name == "mlm+nsp":
        return (nsp.dataset(tokenizer, docs, block_size, seed=seed, whole_word_mask=whole_word_mask, source=source),
                nsp.NSPCollator(tokenizer, whole_word_mask=whole_word_mask, mlm_probability=mlm_probability,
                                seed=seed))
    return (denoise.dataset(tokenizer, docs, block_size, source=source),
            denoise.DenoisingCollator(tokenizer, seed=seed))
