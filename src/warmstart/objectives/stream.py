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
on load.

A dataset's rows (data.corpus.DatasetCorpus) can be tokenised by every process of `accelerate
launch` at once (``write_sharded``): each takes every N-th row from its rank (datasets'
``split_dataset_by_node``), writes its tokens and each row's token count to a part file, and the
main process puts the rows back in corpus order: the same token file one process writes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from warmstart import distributed, files
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


def _part(key: str, rank: int, world: int, what: str) -> Path:
    return cache_dir() / f"{key}.part{rank}-of-{world}.{what}"


def write_part(
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[str | None],
    sep: int,
    key: str,
    rank: int,
    world: int,
    progress=None,
) -> None:
    """Process ``rank``'s part of a token file: the ids of its ``rows`` (each a document or None,
    tokenised as write_tokens does), and every row's token count (0 for None or a document that
    tokenises to nothing), so that :func:`merge_parts` can interleave the parts."""
    tok = backend(tokenizer)
    sep_arr = np.asarray([sep], dtype=np.int32)
    n_docs = 0

    def flush(chunk: list[str | None], ids_file, lengths_file) -> None:
        encodings = iter(
            tok.encode_batch([d for d in chunk if d is not None], add_special_tokens=False)
        )
        parts, lengths = [], []
        for doc in chunk:
            ids = next(encodings).ids if doc is not None else []
            if ids:
                parts += [np.asarray(ids, dtype=np.int32), sep_arr]
            lengths.append(len(ids) + 1 if ids else 0)
        if parts:
            ids_file.write(np.concatenate(parts).tobytes())
        lengths_file.write(np.asarray(lengths, dtype=np.int32).tobytes())
        if progress is not None:
            progress(sum(d is not None for d in chunk))

    cache_dir().mkdir(parents=True, exist_ok=True)
    with (
        open(_part(key, rank, world, "i32"), "wb") as ids_file,
        open(_part(key, rank, world, "len"), "wb") as lengths_file,
    ):
        chunk: list[str | None] = []
        size = 0
        for doc in rows:
            chunk.append(doc)
            size += len(doc) if doc is not None else 0
            n_docs += doc is not None
            if size >= CHUNK_CHARS or len(chunk) >= 100_000:
                flush(chunk, ids_file, lengths_file)
                chunk, size = [], 0
        if chunk:
            flush(chunk, ids_file, lengths_file)
    files.atomic_write_json(_part(key, rank, world, "json"), {"documents": n_docs})


def merge_parts(key: str, world: int, sep: int, rows_per_step: int = 1 << 16) -> TokenFile:
    """The token file of ``key`` from the ``world`` parts of write_part: row j of part r is row
    j * world + r of the corpus, so rows are taken from the parts in turn. Blocks of rows are moved
    with vectorised index arithmetic, and memory stays at one block; the parts are removed."""
    lengths = [np.fromfile(_part(key, r, world, "len"), dtype=np.int32) for r in range(world)]
    ids = [
        np.memmap(_part(key, r, world, "i32"), dtype=np.int32, mode="r")
        if _part(key, r, world, "i32").stat().st_size
        else np.zeros(0, dtype=np.int32)
        for r in range(world)
    ]
    docs = sum(
        json.loads(_part(key, r, world, "json").read_text())["documents"] for r in range(world)
    )
    offsets = [0] * world
    n_tokens = 0
    path = token_file(key)
    with files.atomic_file(path) as tmp, open(tmp, "wb") as f:
        for j0 in range(0, max(len(n) for n in lengths), rows_per_step):
            # counts[j, r]: tokens of row j0 + j of part r; written row by row, part by part
            counts = np.zeros((min(rows_per_step, len(lengths[0]) - j0), world), dtype=np.int64)
            for r in range(world):
                mine = lengths[r][j0 : j0 + rows_per_step]
                counts[: len(mine), r] = mine
            starts = (np.cumsum(counts.reshape(-1)) - counts.reshape(-1)).reshape(counts.shape)
            out = np.empty(int(counts.sum()), dtype=np.int32)
            for r in range(world):
                n = int(counts[:, r].sum())
                if n:
                    # each token of part r goes to its row's start in ``out`` plus its place in the row
                    own = np.cumsum(counts[:, r]) - counts[:, r]
                    at = np.repeat(starts[:, r] - own, counts[:, r]) + np.arange(n)
                    out[at] = ids[r][offsets[r] : offsets[r] + n]
                    offsets[r] += n
            f.write(out.tobytes())
            n_tokens += len(out)
        f.flush()
        os.fsync(f.fileno())
    files.atomic_write_json(
        path.with_suffix(".json"), {"documents": docs, "tokens": n_tokens, "sep": sep}
    )
    del ids
    for r in range(world):
        for what in ("i32", "len", "json"):
            _part(key, r, world, what).unlink(missing_ok=True)
    return TokenFile(path)


def write_sharded(
    tokenizer: PreTrainedTokenizerBase,
    rows: Iterable[str | None],
    sep: int,
    key: str,
    progress=None,
) -> None:
    """Every process writes its part of the token file of ``key`` (its ``rows``: see write_part),
    then the main process merges them; all return once the file is complete."""
    rank, world = distributed.rank(), distributed.world_size()
    write_part(tokenizer, rows, sep, key, rank, world, progress)
    distributed.barrier()
    if distributed.is_main():
        merge_parts(key, world, sep)
    distributed.barrier()


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
