"""Tokenise once, then batch by length: training batches come from shuffled length buckets,
evaluation batches are sorted by length, and every batch is padded only to its own longest text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from warmstart.data.tables import Examples
from warmstart.data.windows import head_tail, token_windows
from warmstart.errors import UserError

# The label of a position the loss skips (padding, a prompt, a word's later pieces), as
# transformers' losses expect.
IGNORE = -100


class Encoded(torch.utils.data.Dataset):
    """Token ids of every text (no padding), optionally with label ids."""

    def __init__(self, features: dict[str, list[list[int]]], labels: np.ndarray | None = None):
        self.features = features
        self.labels = labels
        self.lengths = np.array([len(x) for x in features["input_ids"]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, idx: np.ndarray | list[int]) -> Encoded:
        """Rows ``idx`` (features and labels), e.g. one process's shard under `accelerate
        launch`."""
        features = {k: [v[i] for i in idx] for k, v in self.features.items()}
        return Encoded(features, None if self.labels is None else np.asarray(self.labels)[idx])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        if (
            self.labels is not None
        ):  # a class id, or a row of floats (multi-hot labels, regression targets)
            label = self.labels[i]
            item["labels"] = label.tolist() if np.ndim(label) else int(label)
        return item


def encode(
    tokenizer: PreTrainedTokenizerBase,
    ex: Examples,
    max_length: int,
    labels: np.ndarray | None = None,
    long_text: str = "truncate",
) -> Encoded:
    """Tokenise all texts in one call of the fast (Rust, multi-threaded) tokenizer, unpadded, cut to
    ``max_length`` tokens: the first ones (truncate) or, with ``long_text`` head+tail, the first
    quarter and the last three quarters of the room left by the special tokens
    (data.windows.head_tail). chunk: see ``encode_chunks``."""
    if long_text == "head+tail":
        frame = special_frame(tokenizer)
        room = max(max_length - frame.size, 1)
        return Encoded(
            frame.features([head_tail(ids, room) for ids in text_ids(tokenizer, ex, long_text)]),
            labels,
        )
    if long_text != "truncate":
        raise ValueError(f"encode cuts texts by truncate or head+tail, not {long_text!r}")
    enc = tokenizer(
        ex.texts,
        ex.pairs,
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
    )
    features = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    return Encoded(features, labels)


def encode_chunks(
    tokenizer: PreTrainedTokenizerBase, ex: Examples, max_length: int, stride: int | None = None
) -> tuple[Encoded, np.ndarray]:
    """Every token of every text, in windows of at most ``max_length`` tokens (special tokens
    included) of which consecutive ones share ``stride`` tokens (data.windows.token_windows); and
    the number of windows of each text. A text's windows follow each other, in text order; a text
    that fits is one window, exactly as ``encode`` would give it."""
    frame = special_frame(tokenizer)
    room = max(max_length - frame.size, 1)
    pieces: list[list[int]] = []
    counts: list[int] = []
    for ids in text_ids(tokenizer, ex, "chunk"):
        spans = token_windows(len(ids), room, stride)
        pieces.extend(ids[s:e] for s, e in spans)
        counts.append(len(spans))
    return Encoded(frame.features(pieces)), np.array(counts, dtype=np.int64)


def text_ids(tokenizer: PreTrainedTokenizerBase, ex: Examples, long_text: str) -> list[list[int]]:
    """The token ids of each whole text, without special tokens: what head+tail and chunk cut by
    hand."""
    if ex.pairs is not None:
        raise UserError(
            f"--long-text {long_text} reads one text per row; text pairs (--text-pair-column) are "
            "truncated longest-first: use --long-text truncate"
        )
    # verbose=False: a text longer than the model is expected here, no warning about it.
    return tokenizer(
        ex.texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )["input_ids"]


@dataclass(frozen=True)
class Frame:
    """The special tokens a tokenizer puts around one text (BERT: [CLS] before, [SEP] after;
    RoBERTa: <s>, </s>) and the token type of the whole sequence, to wrap ids that were cut by
    hand."""

    before: list[int]
    after: list[int]
    token_type: int | None  # None: the tokenizer gives no token_type_ids

    @property
    def size(self) -> int:
        return len(self.before) + len(self.after)

    def features(self, pieces: list[list[int]]) -> dict[str, list[list[int]]]:
        ids = [[*self.before, *p, *self.after] for p in pieces]
        if self.token_type is None:
            return {"input_ids": ids}
        return {"input_ids": ids, "token_type_ids": [[self.token_type] * len(x) for x in ids]}


def special_frame(tokenizer: PreTrainedTokenizerBase) -> Frame:
    """Read the frame off the tokenizer's own output for a one-word text (its special-tokens mask):
    transformers 5's fast tokenizers no longer offer build_inputs_with_special_tokens or
    prepare_for_model to add them to ids."""
    enc = tokenizer("a", return_special_tokens_mask=True, return_attention_mask=False)
    ids, mask = enc["input_ids"], enc["special_tokens_mask"]
    own = [i for i, m in enumerate(mask) if not m]
    if not own or len(ids) - len(own) != tokenizer.num_special_tokens_to_add(pair=False):
        raise ValueError(
            f"cannot tell the special tokens of {type(tokenizer).__name__} from a text's own"
        )
    types = enc.get("token_type_ids")
    return Frame(ids[: own[0]], ids[own[-1] + 1 :], None if types is None else int(types[own[0]]))


def pad_multiple(cpu: bool = False) -> int | None:
    """What training batches are padded up to a multiple of: 8 on a GPU (tensor-core shapes),
    nothing on a CPU, where every padded token costs its share. A BART step on 96 spelling words of
    10 source and 9 target tokens took 72 ms (bf16; 176 ms fp32) as is and 109 ms (282) padded to 16
    and 16 (2 AMD EPYC cores)."""
    return 8 if torch.cuda.is_available() and not cpu else None


def collator(
    tokenizer: PreTrainedTokenizerBase, multiple: int | None = 8
) -> DataCollatorWithPadding:
    # Multiples of 8 keep tensor-core shapes on GPUs and cost < 8 tokens a row; training passes
    # pad_multiple().
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length in random order, a pure function of (seed, epoch).

    Shuffle all rows, cut them into buckets of ``bucket`` batches, sort each bucket by length, cut
    it into batches, then shuffle the batches. Padding waste drops to a few percent while each epoch
    stays random; and because the order depends only on (seed, epoch), a resumed run sees the same
    batches."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, bucket: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket = bucket
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.bucket
        out = []
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            out.extend(
                chunk[i : i + self.batch_size].tolist()
                for i in range(0, len(chunk), self.batch_size)
            )
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation order: longest first (a memory problem shows at once), each batch of similar
    length."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def budget_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[list[int]]:
    """Length-sorted batches (longest first) of at most ``batch_size`` texts and ``max_tokens``
    padded tokens.

    On a CPU, throughput falls once a batch's activations leave the cache (measured on MiniLM, 2
    cores: 512-token reviews run best a few at a time), while short texts gain from large batches
    (inference.backends.CPU_MAX_TOKENS)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out: list[list[int]] = []
    for i in order.tolist():
        if (
            out
            and len(out[-1]) < batch_size
            and (len(out[-1]) + 1) * max(int(lengths[out[-1][0]]), 1) <= max_tokens
        ):
            out[-1].append(i)
        else:
            out.append([i])
    return out
