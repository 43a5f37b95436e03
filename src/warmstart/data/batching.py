"""Tokenise once, then batch by length: training batches come from shuffled length buckets,
evaluation batches are sorted by length, and every batch is padded only to its own longest text."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from warmstart.data.tables import Examples


class Encoded(torch.utils.data.Dataset):
    """Token ids of every text (no padding), optionally with label ids."""

    def __init__(self, features: dict[str, list[list[int]]], labels: np.ndarray | None = None):
        self.features = features
        self.labels = labels
        self.lengths = np.array([len(x) for x in features["input_ids"]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, idx: np.ndarray | list[int]) -> Encoded:
        """Rows ``idx`` (features and labels), e.g. one process's shard under `accelerate launch`."""
        features = {k: [v[i] for i in idx] for k, v in self.features.items()}
        return Encoded(features, None if self.labels is None else np.asarray(self.labels)[idx])

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.features.items()}
        if self.labels is not None:
            item["labels"] = int(self.labels[i])
        return item


def encode(tokenizer: PreTrainedTokenizerBase, ex: Examples, max_length: int,
           labels: np.ndarray | None = None) -> Encoded:
    """Tokenise all texts in one call of the fast (Rust, multi-threaded) tokenizer, truncated, unpadded."""
    enc = tokenizer(ex.texts, ex.pairs, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False)
    features = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    return Encoded(features, labels)


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorWithPadding:
    # Multiples of 8 keep tensor-core shapes on GPUs and cost < 8 tokens a row.
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8, return_tensors="pt")


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of similar length in random order, a pure function of (seed, epoch).

    Shuffle all rows, cut them into buckets of ``bucket`` batches, sort each bucket by length, cut it
    into batches, then shuffle the batches. Padding waste drops to a few percent while each epoch stays
    random; and because the order depends only on (seed, epoch), a resumed run sees the same batches.
    """

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
            chunk = order[start:start + size]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            out.extend(chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation order: longest first (a memory problem shows at once), each batch of similar length."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def budget_batches(lengths: np.ndarray, batch_size: int, max_tokens: int) -> list[list[int]]:
    """Length-sorted batches (longest first) of at most ``batch_size`` texts and ``max_tokens`` padded tokens.

    On a CPU, throughput falls once a batch's activations leave the cache (measured on MiniLM, 2 cores:
    512-token reviews run best a few at a time), while short texts gain from large batches
    (inference.backends.CPU_MAX_TOKENS)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out: list[list[int]] = []
    for i in order.tolist():
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * max(int(lengths[out[-1][0]]), 1) <= max_tokens:
            out[-1].append(i)
        else:
            out.append([i])
    return out
