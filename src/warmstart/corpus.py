"""Read a pre-training corpus into a list of documents, and split documents into sentences.

A corpus is one of
- a plain-text file (``.txt``, optionally ``.txt.gz``): if it has blank lines, each block of lines between
  blank lines is a document (paragraphs, books wrapped at 80 columns); otherwise each line is a document;
- a table (CSV, TSV, JSON Lines, JSON, Parquet; see :mod:`warmstart.data`): one document per row of the text
  column, found by name (``text``, ``review``, …) or given as ``text_column``;
- a folder: every ``*.txt`` / ``*.txt.gz`` file below it, recursively, in sorted path order, each read as
  above.

Documents are stripped of surrounding whitespace and empty ones are skipped (they separate nothing in a
corpus); everything else is kept verbatim. Problems become a :class:`~warmstart.errors.UserError` naming the
file (and line, row or column).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pandas as pd

from warmstart.data import TEXT_COLUMNS, file_format, find_column, read_table
from warmstart.errors import UserError, where

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


def read_corpus(path: str | Path, text_column: str | None = None, limit: int | None = None) -> list[str]:
    """The documents of a corpus file or folder, in order; at most ``limit`` of them.

    Raises UserError for a missing path, an unknown format, undecodable bytes, a missing column, a
    ``text_column`` given for plain text, or a corpus without any text.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{where(path)} does not exist")
    if limit is not None and limit < 1:
        raise UserError(f"the document limit must be at least 1 (got {limit})")
    if path.is_dir():
        docs = _read_folder(path, text_column, limit)
    else:
        fmt, _ = file_format(path)
        if fmt == "txt":
            if text_column is not None:
                raise UserError(f"{where(path)} is plain text, which has no columns; drop --text-column")
            docs = _read_txt(path, limit)
        else:
            docs = _read_table_column(path, text_column, limit)
    if not docs:
        raise UserError(f"{where(path)} contains no text: the corpus is empty")
    return docs


def _read_folder(folder: Path, text_column: str | None, limit: int | None) -> list[str]:
    if text_column is not None:
        raise UserError(f"folder '{folder}' holds plain-text files, which have no columns; drop --text-column")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".txt", ".txt.gz")))
    if not files:
        raise UserError(f"folder '{folder}' has no .txt files")
    docs: list[str] = []
    for f in files:
        docs.extend(_read_txt(f, None if limit is None else limit - len(docs)))
        if limit is not None and len(docs) >= limit:
            break
    return docs


def _read_txt(path: Path, limit: int | None) -> list[str]:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{where(path)} is not a valid gzip file ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{where(path)}, line {line} is not valid UTF-8 text: byte 0x{raw[e.start]:02x} "
                        "cannot be decoded") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Blank lines mean paragraphs (and a line break inside one is just wrapping); without any, the
    # common "one document per line" layout is the only reading that does not glue documents together.
    parts = _BLANK_LINE.split(text) if _BLANK_LINE.search(text.strip()) else text.split("\n")
    docs = [p.strip() for p in parts if p.strip()]
    return docs[:limit] if limit is not None else docs


def _read_table_column(path: Path, text_column: str | None, limit: int | None) -> list[str]:
    df = read_table(path, limit)
    col = find_column(df, path, text_column, TEXT_COLUMNS, "text", "--text-column")
    docs = []
    for row, value in enumerate(df[col].tolist(), start=1):
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            continue  # a missing cell is an absent document, as a blank line is in plain text
        if not isinstance(value, str):
            raise UserError(f"{where(path, row, col)}: expected text, found {type(value).__name__} {value!r}")
        if value.strip():
            docs.append(value.strip())
    return docs


# A sentence ends at '.', '!', '?' or '…' (repeats allowed, e.g. '?!' or '...'), optionally followed by
# closing quotes or brackets (group 1, kept with the sentence), then a gap of whitespace or HTML line breaks
# (scraped text such as IMDb reviews separates paragraphs with "<br /><br />"), when the next sentence
# visibly starts: an upper-case letter, a digit, or an opening quote/bracket. Lower-case continuations
# ("e.g. this") therefore never split.
_BOUNDARY = re.compile(r"""(?<=[.!?…])(["'”’)\]]*)(?:\s|<br\s*/?>)+(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
# Words whose trailing period is not a sentence end, so a split right after them is undone.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs etc fig no vol ch inc ltd co corp dept gen gov sgt lt col capt".split())
_ENDS_WITH_INITIAL = re.compile(r"(?:^|[\s(])(?:[A-Z]|[A-Za-z]\.[A-Za-z])\.$")  # "J." in "J. R. R." / "U.S."


def sentence_spans(doc: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the sentences of ``doc``: stripped, in order, never empty.

    A rule-based splitter (see ``_BOUNDARY``), good enough for NSP pairs and sentence permutation, where a
    rare wrong split only costs a slightly odd training pair. Titles such as "Mr." and initials such as
    "J." or "U.S." do not end a sentence. Text without an end mark is one sentence.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _BOUNDARY.finditer(doc):
        head = doc[start:m.end(1)]
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
