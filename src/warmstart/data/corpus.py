"""Read a pre-training corpus into a list of documents (``read_corpus``) or as a stream
(``iter_corpus``, for corpora larger than memory), and split documents into sentences.

A corpus is one of
- a plain-text file (``.txt``, optionally ``.txt.gz``): if it has blank lines, each block of lines
  between blank lines is a document (paragraphs, books wrapped at 80 columns); otherwise each line
  is a document;
- a table (CSV, TSV, JSON Lines, JSON, Parquet; see :mod:`warmstart.data.tables`): one document per
  row of the text column, found by name (``text``, ``review``, …) or given as ``text_column``;
- a folder: every ``*.txt`` / ``*.txt.gz`` file below it, recursively, in sorted path order, each
  read as above;
- a dataset (data.hub: a save_to_disk folder or a Hub id, as a :class:`~warmstart.data.hub.DatasetRef`
  with its config, revision and ``streaming``): one document per row of its train split's text
  column, read in batches of rows, never whole (``streaming`` reads an IterableDataset: a Hub
  dataset is not even downloaded whole). Its validation split, if any, is the held-out part; else
  rows are held out as documents of a file are. Under several processes each tokenises its shard of
  the rows (``StreamedSplit.shard``: datasets' ``split_dataset_by_node``).

Documents are stripped of surrounding whitespace and empty ones are skipped (they separate nothing
in a corpus); everything else is kept verbatim. Problems become a
:class:`~warmstart.errors.UserError` naming the file (and line, row or column)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from warmstart.data.hub import DatasetRef, is_dataset, open_dataset, ref_of, rows
from warmstart.data.tables import TEXT_COLUMNS, file_format, find_column, read_table
from warmstart.errors import Place, UserError, where

Source = str | Path | DatasetRef  # what --data names: a corpus file or folder, or a dataset


def corpus_source(cfg: Any) -> str | DatasetRef:
    """What pretrain's --data names: the path of a corpus file or folder, or a dataset (a
    save_to_disk folder or a Hub id) with --data-config, --data-revision and --streaming."""
    ref = ref_of(cfg, cfg.data, folders=False)
    return ref if ref is not None else cfg.data


def _dataset(source: Source) -> DatasetRef | None:
    if isinstance(source, DatasetRef):
        return source
    if isinstance(source, (str, Path)) and is_dataset(str(source), folders=False):
        return DatasetRef(str(source))
    return None


def read_corpus(
    path: Source, text_column: str | None = None, limit: int | None = None
) -> list[str]:
    """The documents of a corpus file or folder, in order; at most ``limit`` of them (of a dataset:
    its train split's, from its first ``limit`` rows).

    Raises UserError for a missing path, an unknown format, undecodable bytes, a missing column, a
    ``text_column`` given for plain text, or a corpus without any text.
    """
    ref = _dataset(path)
    if ref is not None:
        corpus = DatasetCorpus.open(ref, text_column, limit)
        docs = [d for d in corpus.documents(corpus.train) if d is not None]
        if not docs:
            raise UserError(f"{corpus.place} contains no text: the corpus is empty")
        return docs
    path = _checked(path, limit)
    if path.is_dir():
        docs = _read_folder(path, text_column, limit)
    else:
        fmt, _ = file_format(path)
        if fmt == "txt":
            if text_column is not None:
                raise UserError(
                    f"{where(path)} is plain text, which has no columns; drop --text-column"
                )
            docs = _read_txt(path, limit)
        else:
            docs = _read_table_column(path, text_column, limit)
    if not docs:
        raise UserError(f"{where(path)} contains no text: the corpus is empty")
    return docs


def _read_folder(folder: Path, text_column: str | None, limit: int | None) -> list[str]:
    if text_column is not None:
        raise UserError(
            f"folder '{folder}' holds plain-text files, which have no columns; drop --text-column"
        )
    files = _txt_files(folder)
    docs: list[str] = []
    for f in files:
        docs.extend(_read_txt(f, None if limit is None else limit - len(docs)))
        if limit is not None and len(docs) >= limit:
            break
    return docs


def _read_txt(path: Path, limit: int | None) -> list[str]:
    return list(itertools.islice(iter_txt(path), limit))


def _lines(path: Path) -> Iterator[str]:
    """The lines of a text file (or .gz) without their line breaks, read as a stream; ``\r\n`` and a
    lone ``\r`` end lines too. UserError naming the line for bytes that are not UTF-8, or for broken
    gzip."""
    gz = path.name.lower().endswith(".gz")
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        number = 0
        try:
            for raw in f:
                number += 1
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(
                        f"{where(path)}, line {number} is not valid UTF-8 text: byte "
                        f"0x{raw[e.start]:02x} cannot be decoded"
                    ) from None
                line = line[:-1] if line.endswith("\n") else line
                line = line[:-1] if line.endswith("\r") else line
                yield from line.split("\r") if "\r" in line else (line,)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            if not gz:
                raise
            raise UserError(f"{where(path)} is not a valid gzip file ({e})") from None


def _blank(line: str) -> bool:
    return not line.strip(" \t\f\v")


def _has_paragraphs(path: Path) -> bool:
    """Whether a blank line separates two non-blank ones anywhere in the file (one streamed
    pass)."""
    seen_text = gap = False
    for line in _lines(path):
        if _blank(line):
            gap = seen_text
        elif gap:
            return True
        else:
            seen_text = True
    return False


def iter_txt(path: Path) -> Iterator[str]:
    """The documents of one plain-text file, streamed: blocks between blank lines if it has any
    (paragraphs, books wrapped at 80 columns), else one document per line. Memory stays at one
    document."""
    if not _has_paragraphs(path):
        yield from (line.strip() for line in _lines(path) if line.strip())
        return
    block: list[str] = []
    for line in _lines(path):
        if _blank(line):
            doc = "\n".join(block).strip()
            if doc:
                yield doc
            block = []
        else:
            block.append(line)
    doc = "\n".join(block).strip()
    if doc:
        yield doc


def _checked(path: str | Path, limit: int | None) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{where(path)} does not exist")
    if limit is not None and limit < 1:
        raise UserError(f"the document limit must be at least 1 (got {limit})")
    return path


def iter_corpus(
    path: str | Path, text_column: str | None = None, limit: int | None = None
) -> Iterator[str]:
    """The documents of :func:`read_corpus`, in the same order, as a stream: plain-text files and
    folders of them are read line by line, so a corpus larger than memory can be tokenised; tables
    are read whole. The same UserErrors as read_corpus (checked before the first document is yielded
    where possible)."""
    path = _checked(path, limit)
    if path.is_dir():
        if text_column is not None:
            raise UserError(
                f"folder '{path}' holds plain-text files, which have no columns; drop --text-column"
            )
        files = _txt_files(path)
        docs: Iterator[str] = itertools.chain.from_iterable(iter_txt(f) for f in files)
    elif file_format(path)[0] == "txt":
        if text_column is not None:
            raise UserError(
                f"{where(path)} is plain text, which has no columns; drop --text-column"
            )
        docs = iter_txt(path)
    else:
        docs = iter(_read_table_column(path, text_column, limit))
    n = 0
    for doc in itertools.islice(docs, limit):
        n += 1
        yield doc
    if not n:
        raise UserError(f"{where(path)} contains no text: the corpus is empty")


def _txt_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".txt", ".txt.gz"))
    )
    if not files:
        raise UserError(f"folder '{folder}' has no .txt files")
    return files


def fingerprint(path: Source) -> str:
    """Identifies a corpus file or folder by path, size and modification time of its files (cheap:
    no read); a dataset by datasets' fingerprint of its splits (and its Hub commit)."""
    ref = _dataset(path)
    if ref is not None:
        return DatasetCorpus.open(ref, None, None).fingerprint
    path = Path(path).expanduser().resolve()
    files = _txt_files(path) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _read_table_column(path: Path, text_column: str | None, limit: int | None) -> list[str]:
    df = read_table(path, limit)
    col = find_column(df, path, text_column, TEXT_COLUMNS, "text", "--text-column")
    docs = []
    for row, value in enumerate(df[col].tolist(), start=1):
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            continue  # a missing cell is an absent document, as a blank line is in plain text
        if not isinstance(value, str):
            raise UserError(
                f"{where(path, row, col)}: expected text, found {type(value).__name__} {value!r}"
            )
        if value.strip():
            docs.append(value.strip())
    return docs


# A sentence ends at '.', '!', '?' or '…' (repeats allowed, e.g. '?!' or '...'), optionally followed
# by closing quotes or brackets (group 1, kept with the sentence), then a gap of whitespace or HTML
# line breaks (scraped text such as IMDb reviews separates paragraphs with "<br /><br />"), when the
# next sentence visibly starts: an upper-case letter, a digit, or an opening quote/bracket.
# Lower-case continuations ("e.g. this") therefore never split.
_BOUNDARY = re.compile(r"""(?<=[.!?…])(["'”’)\]]*)(?:\s|<br\s*/?>)+(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")  # noqa: E501
# Words whose trailing period is not a sentence end, so a split right after them is undone.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc fig no vol ch inc ltd co corp dept gen gov sgt lt col"
    " capt".split()
)
_ENDS_WITH_INITIAL = re.compile(
    r"(?:^|[\s(])(?:[A-Z]|[A-Za-z]\.[A-Za-z])\.$"
)  # "J." in "J. R. R." / "U.S."


def sentence_spans(doc: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``doc``: stripped, in order, never
    empty.

    A rule-based splitter (see ``_BOUNDARY``), good enough for NSP pairs and sentence permutation,
    where a rare wrong split only costs a slightly odd training pair. Titles such as "Mr." and
    initials such as "J." or "U.S." do not end a sentence. Text without an end mark is one sentence.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(doc):
        head = doc[start : m.end(1)]
        last_word = head.rsplit(None, 1)[-1] if head.split() else ""
        if last_word.rstrip(".").lower() in _ABBREVIATIONS or _ENDS_WITH_INITIAL.search(head):
            continue
        spans.append((start, m.end(1)))
        start = m.end()
    spans.append((start, len(doc)))
    out = []
    for s, e in spans:
        # Trim surrounding whitespace so that a span is exactly the sentence's text.
        while s < e and doc[s].isspace():
            s += 1
        while e > s and doc[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def sentences(doc: str) -> list[str]:
    """The sentences of ``doc`` as stripped strings (see :func:`sentence_spans` for the rule)."""
    return [doc[s:e] for s, e in sentence_spans(doc)]


def held_out(n: int, fraction: float, seed: int, source: str) -> set[int]:
    """Indices of the documents held out for validation: a seeded random ``fraction`` of ``n`` (at
    least one)."""
    import numpy as np

    n_valid = max(1, int(round(fraction * n))) if fraction > 0 else 0
    if n_valid and n - n_valid < 1:
        raise UserError(
            f"{where(source)} has {n} document(s): too few to hold some out for validation"
        )
    return set(np.random.default_rng(seed).permutation(n)[:n_valid].tolist())


@dataclass
class StreamedSplit:
    """Training documents as a stream that can be read again (``train()``), held-out ones as a
    list."""

    train: Callable[[], Iterator[str]]
    n_train: int
    valid: list[str]
    held: str  # what decides the held-out part, for cache keys
    fingerprint: str = ""  # what identifies the corpus's contents, for cache keys
    # A dataset's rows dealt to process ``rank`` of ``world`` (every world-th row from its rank):
    # each a training document or None (a held-out or empty row), in order, so that the rows of
    # all processes can be put back in corpus order (objectives.stream.merge_parts).
    shard: Callable[[int, int], Iterator[str | None]] | None = None


def split_stream(
    data: Source,
    valid: str | None,
    text_column: str | None,
    limit: int | None,
    fraction: float,
    seed: int,
) -> StreamedSplit:
    """The train/valid split of ``read_corpus`` + :func:`held_out`, without holding the training
    part: one pass counts the documents, one collects the held-out ones; ``train()`` streams the
    rest."""
    ref = _dataset(data)
    if ref is not None:
        corpus = DatasetCorpus.open(ref, text_column, limit)
        return corpus.split(valid, fraction, seed, text_column, limit)
    path = Path(data).expanduser()
    table = path.is_file() and file_format(path)[0] != "txt"
    whole = (
        read_corpus(path, text_column, limit) if table else None
    )  # tables are read whole anyway: once

    def docs() -> Iterator[str]:
        return iter(whole) if whole is not None else iter_corpus(data, text_column, limit)

    n = sum(1 for _ in docs())
    if valid:
        return StreamedSplit(
            docs,
            n,
            read_corpus(valid, text_column, limit),
            _held_by(valid),
            fingerprint(data),
        )
    held = held_out(n, fraction, seed, data)
    return StreamedSplit(
        lambda: (d for i, d in enumerate(docs()) if i not in held),
        n - len(held),
        [d for i, d in enumerate(docs()) if i in held],
        f"fraction {fraction} seed {seed}",
        fingerprint(data),
    )


def _held_by(valid: str) -> str:
    """What identifies a --valid corpus (a file, a folder or a dataset) in cache keys."""
    ref = _dataset(valid)
    return f"file {fingerprint(valid)}" if ref is None else f"dataset {ref}"


@dataclass
class DatasetCorpus:
    """A dataset as a corpus: its train split (the first ``limit`` rows), the text column, and its
    validation split if it has one. Rows are read in batches, never the whole split."""

    place: Place
    train: Any  # Dataset, or IterableDataset with --streaming
    valid: Any | None
    column: str
    fingerprint: str
    stated_rows: int | None = None  # of a stream: the train split's rows as its metadata states

    @classmethod
    def open(cls, ref: DatasetRef, text_column: str | None, limit: int | None) -> DatasetCorpus:
        opened = open_dataset(ref)
        roles = opened.roles()
        if "train" not in roles:
            raise UserError(
                f"{ref.place(None)} has no train split to pre-train on (splits:"
                f" {opened.describe()})"
            )
        train = opened.splits[roles["train"]]
        place = opened.split(roles["train"]).place
        columns = train.column_names or list(next(iter(train), {}))
        column = find_column(
            pd.DataFrame(columns=columns), place, text_column, TEXT_COLUMNS, "text", "--text-column"
        )
        valid = opened.splits[roles["valid"]] if "valid" in roles else None
        if valid is not None and column not in (valid.column_names or [column]):
            raise UserError(
                f"{opened.split(roles['valid']).place} has no column '{column}' (the train split's"
                " text column)"
            )
        digest = hashlib.sha256(f"{opened.fingerprint}|{roles}".encode()).hexdigest()[:20]
        splits = getattr(getattr(train, "info", None), "splits", None) or {}
        stated = splits[roles["train"]].num_examples if roles["train"] in splits else None
        if stated is not None and limit is not None:
            stated = min(stated, limit)
        return cls(
            place, _head(train, limit), _head(valid, limit), column, f"dataset {digest}", stated
        )

    def documents(self, data: Any, rank: int = 0, world: int = 1) -> Iterator[str | None]:
        """The stripped text of each row of ``data`` (a split, or a process's shard of one: its row
        j is row j * world + rank); None for a missing or blank cell, an absent document as a blank
        line is in plain text."""
        for j, value in enumerate(rows(data, self.column)):
            if value is None:
                yield None
            elif not isinstance(value, str):
                row = j * world + rank + 1
                raise UserError(
                    f"{where(self.place, row, self.column)}: expected text, found"
                    f" {type(value).__name__} {value!r:.40}"
                )
            else:
                yield value.strip() or None

    def n_rows(self) -> int:
        """Rows of the train split: its length, the count its metadata states when streamed, else
        one pass that counts them."""
        if hasattr(self.train, "__len__"):
            return len(self.train)
        if self.stated_rows is not None:
            return self.stated_rows
        return sum(len(b[self.column]) for b in self.train.select_columns([self.column]).iter(1000))

    def split(
        self,
        valid: str | None,
        fraction: float,
        seed: int,
        text_column: str | None = None,
        limit: int | None = None,
    ) -> StreamedSplit:
        """The held-out part: --valid, else the dataset's validation split, else a seeded
        ``fraction`` of the train split's rows (:func:`held_out` over rows); the rest streamed."""
        n = self.n_rows()
        if valid:
            valid_docs, held, how = read_corpus(valid, text_column, limit), set(), _held_by(valid)
        elif self.valid is not None:
            valid_docs = [d for d in self.documents(self.valid) if d is not None]
            held, how = set(), "the dataset's validation split"
        else:
            held = held_out(n, fraction, seed, self.place)
            valid_docs = [
                d for i, d in enumerate(self.documents(self.train)) if i in held and d is not None
            ]
            how = f"fraction {fraction} seed {seed} of rows"

        def train() -> Iterator[str]:
            for i, d in enumerate(self.documents(self.train)):
                if d is not None and i not in held:
                    yield d

        def shard(rank: int, world: int) -> Iterator[str | None]:
            from datasets.distributed import split_dataset_by_node

            stream = self.train
            if hasattr(stream, "to_iterable_dataset"):  # a Dataset: dealt row by row, in order
                stream = stream.to_iterable_dataset()
            mine = split_dataset_by_node(stream, rank, world, strategy="examples")
            for j, d in enumerate(self.documents(mine, rank, world)):
                yield None if j * world + rank in held else d

        return StreamedSplit(train, n - len(held), valid_docs, how, self.fingerprint, shard)


def _head(data: Any, limit: int | None) -> Any:
    """The first ``limit`` rows of a Dataset or IterableDataset (all without a limit)."""
    if data is None or limit is None:
        return data
    if hasattr(data, "__len__"):
        return data.select(range(min(limit, len(data))))
    return data.take(limit)
