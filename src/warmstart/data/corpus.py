"""Read a pre-training corpus into a list of documents (``read_corpus``) or as a stream
(``iter_corpus``, for corpora larger than memory), and split documents into sentences.

A corpus is one of
- a plain-text file (``.txt``, optionally ``.txt.gz``): if it has blank lines, each block of lines
  between blank lines is a document (paragraphs, books wrapped at 80 columns); otherwise each line
  is a document;
- a table (CSV, TSV, JSON Lines, JSON, Parquet; see :mod:`warmstart.data.tables`): one document per
  row of the text column, found by name (``text``, ``review``, …) or given as ``text_column``;
- a folder: every ``*.txt`` / ``*.txt.gz`` file below it, recursively, in sorted path order, each
  read as above.

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

import pandas as pd

from warmstart.data.tables import TEXT_COLUMNS, file_format, find_column, read_table
from warmstart.errors import UserError, where


def read_corpus(
    path: str | Path, text_column: str | None = None, limit: int | None = None
) -> list[str]:
    """The documents of a corpus file or folder, in order; at most ``limit`` of them.

    Raises UserError for a missing path, an unknown format, undecodable bytes, a missing column, a
    ``text_column`` given for plain text, or a corpus without any text.
    """
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


def fingerprint(path: str | Path) -> str:
    """Identifies a corpus file or folder by path, size and modification time of its files (cheap:
    no read)."""
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
            f"file '{source}' has {n} document(s): too few to hold some out for validation"
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


def split_stream(
    data: str,
    valid: str | None,
    text_column: str | None,
    limit: int | None,
    fraction: float,
    seed: int,
) -> StreamedSplit:
    """The train/valid split of ``read_corpus`` + :func:`held_out`, without holding the training
    part: one pass counts the documents, one collects the held-out ones; ``train()`` streams the
    rest."""
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
            docs, n, read_corpus(valid, text_column, limit), f"file {fingerprint(valid)}"
        )
    held = held_out(n, fraction, seed, data)
    return StreamedSplit(
        lambda: (d for i, d in enumerate(docs()) if i not in held),
        n - len(held),
        [d for i, d in enumerate(docs()) if i in held],
        f"fraction {fraction} seed {seed}",
    )
