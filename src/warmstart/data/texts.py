"""Texts to run a model on, from command-line arguments, a file or a dataset's split (data.hub), or
standard input (one per line); for a tagger also pre-split words (a CoNLL file or a table with a
tokens column)."""

from __future__ import annotations

from pathlib import Path

from warmstart.data.hub import DatasetSplit
from warmstart.data.prompts import stdin_lines
from warmstart.data.tables import Examples, file_format, read_examples, read_table
from warmstart.data.tagged import TOKEN_COLUMNS, check_sentences, is_conll, read_sentences
from warmstart.errors import UserError


def check_given(items: list[str], what: str, source: str) -> None:
    for i, t in enumerate(items):
        if not t.strip():
            raise UserError(f"{what} {i + 1} of the {source} is empty")


def read_texts(
    texts: list[str],
    input: str | DatasetSplit | None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    limit: int | None = None,
) -> Examples:
    """Texts given as arguments, else an --input file (.txt: one per line; a table: its text
    column), else standard input; as unlabelled Examples numbered from 1."""
    if texts and input:
        raise UserError("give texts as arguments or with --input, not both")
    if input:
        return read_examples(input, text_column, text_pair_column, labelled=False, limit=limit)
    texts, source = list(texts), "arguments"
    if not texts:
        texts, source = stdin_lines("texts"), "<stdin>"
    if not texts:
        raise UserError(f"no texts to predict on {source}")
    check_given(texts, "text", source)
    return Examples(
        source=source, texts=texts, pairs=None, labels=None, rows=list(range(1, len(texts) + 1))
    )


def read_words(input: str | DatasetSplit, limit: int | None = None) -> list[list[str]] | None:
    """Pre-split words for a tagger from ``input``: a CoNLL file, or a JSONL/Parquet table (or a
    dataset's split) with a tokens column (tags, if any, are ignored); None when ``input`` holds
    whole texts instead."""
    if isinstance(input, DatasetSplit):
        if not {c.strip().lower() for c in input.columns} & set(TOKEN_COLUMNS):
            return None
        sents = read_sentences(input, labelled=False, limit=limit)
        check_sentences(sents)
        return sents.tokens
    path = Path(input)
    if not is_conll(path):
        if file_format(path)[0] not in ("jsonl", "json", "parquet") or not path.is_file():
            return None
        columns = {c.strip().lower() for c in read_table(path, limit=1).columns}
        if not columns & set(TOKEN_COLUMNS):
            return None
    sents = read_sentences(path, labelled=False, limit=limit)
    check_sentences(sents)
    return sents.tokens
