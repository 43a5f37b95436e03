"""Corpora larger than memory: tokenise a stream of documents into a token file on disk, once, and
train on memory-mapped blocks of it.

The in-memory path (``objectives.tokenize`` + ``pack``) keeps every token as a Python int (~36 bytes
each) and the packed blocks as int64; here documents arrive one chunk at a time, their ids (each
document followed by the separator) are appended to an int32 file, and the blocks are views into
that file mapped with ``np.memmap``: resident memory stays at one chunk of documents plus the pages
the OS chooses to keep, whatever the corpus size. The blocks are exactly those of the in-memory path
(same ids, same packing).

The token file is a cache: its name is a hash of everything that decides its contents (the corpus
files' paths, sizes and modification times, which documents are held out, the tokenizer's full JSON,
the separator), so a later run with the same corpus, tokenizer and settings maps it at once instead
of tokenising again, and any change gives a new file. Block size is not part of it: blocks are cut
on load."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from warmstart import files
from warmstart.errors import UserError
from warmstart.objectives.common import backend

CHUNK_CHARS = (
    1_000_000  # documents tokenised together: ~1 MB of text, a few tens of MB of encodings
)


def cache_dir() -> Path:
    """``$WARMSTART_TOKEN_CACHE``, else the tokens/ folder of warmstart's cache (files.cache_dir)."""
    if os.environ.get("WARMSTART_TOKEN_CACHE"):
        return Path(os.environ["WARMSTART_TOKEN_CACHE"]).expanduser()
    return files.cache_dir() / "tokens"


def cache_key(tokenizer: PreTrainedTokenizerBase, sep: int, **settings) -> str:
    h = hashlib.sha256(backend(tokenizer).to_str().encode())
    h.update(json.dumps({"sep": sep, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


class TokenFile:
    """A token stream on disk: ``ids`` (int32 memmap), ``documents`` and ``tokens`` counts."""

    def __init__(self, path: Path):
        self.path = path
        meta = json.loads(path.with_suffix(".json").read_text())
        self.documents, self.tokens = meta["documents"], meta["tokens"]
        self.ids = (
            np.memmap(path, dtype=np.int32, mode="r", shape=(self.tokens,))
            if self.tokens
            else np.zeros(0, dtype=np.int32)
        )


def token_file(key: str) -> Path:
    return cache_dir() / f"{key}.i32"


def cached(key: str) -> TokenFile | None:
    path = token_file(key)
    return TokenFile(path) if path.is_file() and path.with_suffix(".json").is_file() else None


def write_tokens(
    tokenizer: PreTrainedTokenizerBase, docs: Iterable[str], sep: int, key: str, progress=None
) -> TokenFile:
    """Tokenise ``docs`` (no special tokens, no truncation), each followed by ``sep``, into the
    cache file of ``key`` (written under a temporary name and renamed, so a killed run leaves no
    half file)."""
    tok = backend(tokenizer)
    path = token_file(key)
    n_docs = n_tokens = 0
    sep_arr = np.asarray([sep], dtype=np.int32)

    def flush(chunk: list[str], f) -> None:
        nonlocal n_tokens
        parts = []
        for enc in tok.encode_batch(chunk, add_special_tokens=False):
            if enc.ids:
                parts += [np.asarray(enc.ids, dtype=np.int32), sep_arr]
        if parts:
            block = np.concatenate(parts)
            f.write(block.tobytes())
            n_tokens += len(block)
        if progress is not None:
            progress(len(chunk))

    with files.atomic_file(path) as tmp, open(tmp, "wb") as f:
        chunk: list[str] = []
        size = 0
        for doc in docs:
            chunk.append(doc)
            size += len(doc)
            n_docs += 1
            if size >= CHUNK_CHARS:
                flush(chunk, f)
                chunk, size = [], 0
        if chunk:
            flush(chunk, f)
        f.flush()
        os.fsync(f.fileno())
    # Last: marks the cache entry complete.
    files.atomic_write_json(
        path.with_suffix(".json"), {"documents": n_docs, "tokens": n_tokens, "sep": sep}
    )
    return TokenFile(path)


class StreamBlocks(torch.utils.data.Dataset):
    """Blocks of ``body`` consecutive tokens of a token file, optionally wrapped as ``[CLS] …
    [SEP]``; items as :class:`warmstart.objectives.Blocks` gives them (``input_ids``,
    ``attention_mask``, ``labels``)."""

    def __init__(
        self,
        ids: np.ndarray,
        block_size: int,
        wrap: tuple[int, int] | None = None,
        labels: bool = False,
        source: str = "the corpus",
    ):
        body = block_size - 2 if wrap else block_size
        if body < 1:
            raise UserError(
                f"the block size must be at least {3 if wrap else 1} (got {block_size})"
            )
        if len(ids) < body:
            raise UserError(
                f"{source} has {len(ids)} tokens (separators included), fewer than one block of "
                f"{body}; give more text or a smaller block size"
            )
        self.ids, self.body, self.wrap, self.labels = ids, body, wrap, labels
        self.block_size = block_size
        self.n = len(ids) // body

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, list]:
        ids = self.ids[i * self.body : (i + 1) * self.body].tolist()
        if self.wrap:
            ids = [self.wrap[0], *ids, self.wrap[1]]
        item = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self.labels:
            item["labels"] = list(ids)
        return item
