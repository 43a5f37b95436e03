"""Words to sub-word windows and back: what a token classifier reads and how its answers return to
words.

Each sentence is tokenised word by word (the fast tokenizer's ``word_ids``). A sentence longer than
the model allows is cut into overlapping windows at word boundaries (data.windows), so no word is
ever dropped; each word is answered for by one window, the one where it has the most context. A
word's label sits on its first sub-token (or, with ``all_subtokens``, on every sub-token, B-
becoming I- after the first as in HF's ``run_ner.py``); every other position is -100, which the loss
and the metrics skip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from warmstart.data.batching import IGNORE, Encoded
from warmstart.data.windows import overlap, owners, windows


@dataclass
class WordWindows:
    """The windows of a set of sentences, tokenised (``data``), and for each window: its sentence,
    its first word's index in that sentence, each token's word index in the window (-1 for special
    tokens), and which of its words it answers for."""

    data: Encoded
    sentence: np.ndarray
    first_word: np.ndarray
    word_ids: list[np.ndarray]
    owned: list[np.ndarray]  # bool per word of the window
    n_words: list[int]  # words per sentence
    windowed: int  # sentences that needed more than one window

    def word_scores(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Per sentence, one row per word (e.g. its class probabilities), from one row per token per
        window: each word takes the row of its first sub-token in the window that answers for it."""
        width = rows[0].shape[-1] if rows else 0
        out = [np.zeros((n, width), dtype=np.float32) for n in self.n_words]
        for k, r in enumerate(rows):
            wid = self.word_ids[k]
            first = np.flatnonzero((wid >= 0) & np.r_[True, wid[1:] != wid[:-1]])
            for pos in first:
                w = wid[pos]
                if self.owned[k][w]:
                    out[self.sentence[k]][self.first_word[k] + w] = r[pos]
        return out


def encode_words(
    tokenizer,
    sentences: list[list[str]],
    max_length: int,
    stride: int | None = None,
    tags: list[list[int]] | None = None,
    all_subtokens: bool = False,
    inside: dict[int, int] | None = None,
) -> WordWindows:
    """Tokenise ``sentences`` (lists of words) into windows of at most ``max_length`` tokens; with
    ``tags`` (label ids per word), the labels as described above. ``stride``: tokens shared by
    consecutive windows (default: a quarter of the window). ``inside`` maps a B- label id to its I-
    id for ``all_subtokens``."""
    specials = tokenizer.num_special_tokens_to_add(pair=False)
    budget = max(max_length - specials, 1)
    stride = overlap(budget, stride)
    # Pass 1: sub-tokens per word. A word the tokenizer turns into nothing (a zero-width space, a
    # control character) would have no position to be predicted from; it is read as the unknown
    # token instead.
    pieces = tokenizer(
        sentences,
        is_split_into_words=True,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    unk = tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    words_in: list[list[str]] = []
    sizes: list[np.ndarray] = []
    for i, words in enumerate(sentences):
        counts = np.bincount([w for w in pieces.word_ids(i) if w is not None], minlength=len(words))
        words_in.append([w if c else unk for w, c in zip(words, counts)])
        sizes.append(np.maximum(counts, 1))
    # Pass 2: each window's words, with the model's special tokens.
    spans, sentence, first_word, owned_by = [], [], [], []
    windowed = 0
    for i, size in enumerate(sizes):
        cuts = windows(size, budget, stride)
        windowed += len(cuts) > 1
        own = owners(size, cuts)
        for k, (s, e) in enumerate(cuts):
            spans.append(words_in[i][s:e])
            sentence.append(i)
            first_word.append(s)
            owned_by.append(own[s:e] == k)
    enc = tokenizer(
        spans,
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
    )
    features = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    word_ids = [
        np.array([-1 if w is None else w for w in enc.word_ids(k)], dtype=np.int64)
        for k in range(len(spans))
    ]
    labels = None
    if tags is not None:
        labels = []
        for k, wid in enumerate(word_ids):
            lab = np.full(len(wid), IGNORE, dtype=np.int64)
            prev = -1
            for pos, w in enumerate(wid):
                if w >= 0 and owned_by[k][w]:
                    tag = tags[sentence[k]][first_word[k] + w]
                    if w != prev:
                        lab[pos] = tag
                    elif all_subtokens:
                        lab[pos] = (inside or {}).get(tag, tag)
                prev = w
            labels.append(lab.tolist())
        features["labels"] = labels
    return WordWindows(
        TokenLabels(features),
        np.array(sentence, dtype=np.int64),
        np.array(first_word, dtype=np.int64),
        word_ids,
        owned_by,
        [len(s) for s in sentences],
        windowed,
    )


class TokenLabels(Encoded):
    """Encoded windows whose labels are one list per window (a label per token), padded by the
    collator."""

    def __init__(self, features: dict[str, list[list[int]]]):
        super().__init__(features, None)

    def take(self, idx) -> TokenLabels:
        return TokenLabels({k: [v[i] for i in idx] for k, v in self.features.items()})
