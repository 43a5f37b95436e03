"""Token-tagged sentences: CoNLL files, JSON Lines ``{"tokens": [...], "tags": [...]}`` and tables
with list columns (Parquet/JSONL); the tag set's scheme (IOB2, IOBES or plain tags) and Brown-style
base tags.

A split of a dataset (data.hub: ``tokens`` + ``ner_tags`` as conll2003 has them) is read as a
table; its tags, a list of ClassLabel ids, are read as their names.

Every problem names the file and line (CoNLL) or row (tables) and column. Rows of a table are
1-based; lines of a CoNLL file are 1-based lines of the file, so an editor jumps to them."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from warmstart.data.hub import DatasetSplit
from warmstart.data.tables import file_format, read_table, source_of, splits_note
from warmstart.errors import Place, UserError, where

CONLL_SUFFIXES = (".conll", ".conllu", ".conll03", ".iob", ".iob2", ".bio", ".bioes", ".iobes")
TOKEN_COLUMNS = ("tokens", "words", "token", "word")
TAG_COLUMNS = ("tags", "ner_tags", "labels", "pos_tags", "tag", "label", "ner", "pos")
ENTITY_TAG = re.compile(r"^([BIES])-(.+)$")


@dataclass
class Sentences:
    """Sentences as lists of words, their tags (None for unlabelled input) and where each one starts
    in ``source`` (a line of a CoNLL file or a row of a table, as ``unit`` says)."""

    source: str
    tokens: list[list[str]]
    tags: list[list[str]] | None
    starts: list[int]
    unit: str = "line"
    # A dataset's ClassLabel tag names: all of them are tags the model can say, even those no
    # sentence here has.
    tag_names: list[str] | None = None
    tag_column: str | None = None  # the table column the tags came from

    def __len__(self) -> int:
        return len(self.tokens)

    def where(self, i: int) -> str:
        return f"{where(self.source)}, {self.unit} {self.starts[i]}"

    def where_word(self, i: int, j: int) -> str:
        """Where word ``j`` of sentence ``i`` is: its own line in a CoNLL file (a sentence's lines
        follow each other), else its row and position."""
        if self.unit == "line":
            return f"{where(self.source)}, line {self.starts[i] + j} (word '{self.tokens[i][j]}')"
        return f"{self.where(i)}, word {j + 1} ('{self.tokens[i][j]}')"

    def take(self, index: np.ndarray | list[int] | slice) -> Sentences:
        idx = (
            np.arange(len(self))[index]
            if isinstance(index, slice)
            else np.asarray(index, dtype=int)
        )
        return replace(
            self,
            tokens=[self.tokens[i] for i in idx],
            starts=[self.starts[i] for i in idx],
            tags=None if self.tags is None else [self.tags[i] for i in idx],
        )

    @property
    def n_words(self) -> int:
        return sum(len(t) for t in self.tokens)


def is_conll(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return bool(suffixes) and suffixes[-1] in CONLL_SUFFIXES


def read_sentences(
    path_like: str | Path | DatasetSplit,
    tag_column: int | str | None = None,
    labelled: bool = True,
    limit: int | None = None,
    base_tags: bool = False,
) -> Sentences:
    """Read ``path_like`` (a file, or a dataset's split); ``tag_column`` is a CoNLL column number
    (default: the last) or a table column name."""
    if isinstance(path_like, DatasetSplit):
        sents = sentences_from_table(
            read_table(path_like, limit), path_like.place, tag_column, labelled
        )
        if sents.tags is not None:
            sents.tag_names = _tag_names(path_like, sents)
    else:
        path = Path(path_like).expanduser()
        if not path.is_file():
            raise UserError(
                f"{where(path)} does not exist"
                if not path.exists()
                else f"{where(path)} is not a file"
            )
        if is_conll(path):
            sents = _read_conll(path, tag_column, labelled, limit)
        else:
            sents = _read_table(path, tag_column, labelled, limit)
    if base_tags and sents.tag_names is not None:
        sents.tag_names = list(dict.fromkeys(base_tag(t) for t in sents.tag_names))
    if base_tags and sents.tags is not None:
        sents.tags = [[base_tag(t) for t in tags] for tags in sents.tags]
    return sents


def _read_conll(
    path: Path, tag_column: int | str | None, labelled: bool, limit: int | None
) -> Sentences:
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{where(path)} is not a valid gzip file ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{where(path)}, line {line} is not valid UTF-8 text") from None
    if tag_column is not None and not (
        isinstance(tag_column, int) or str(tag_column).lstrip("-").isdigit()
    ):
        raise UserError(
            f"--tag-column '{tag_column}': a CoNLL file's columns are numbered (0 is the token, "
            "-1 the last)"
        )
    col = int(tag_column) if tag_column is not None else -1
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    starts: list[int] = []
    words: list[str] = []
    labels: list[str] = []
    n_columns = None

    def close() -> None:
        if words:
            tokens.append(words.copy())
            tags.append(labels.copy())
            words.clear()
            labels.clear()

    for n, line in enumerate(text.splitlines(), 1):
        if limit and len(tokens) >= limit:
            break
        line = line.rstrip("\r\n")
        if not line.strip():
            close()
            continue
        if line.startswith("-DOCSTART-"):
            close()
            continue
        if line.startswith("#") and not words and ("\t" not in line or line.startswith("# ")):
            continue  # a CoNLL-U style comment before a sentence
        parts = line.split("\t") if "\t" in line else line.split()
        if labelled and len(parts) < 2:
            raise UserError(
                f"{where(path)}, line {n}: expected a token and a tag separated by a tab, got "
                f"{line[:60]!r}"
            )
        if n_columns is None:
            n_columns = len(parts)
        elif len(parts) != n_columns:
            raise UserError(
                f"{where(path)}, line {n}: {len(parts)} columns where earlier lines have"
                f" {n_columns}"
            )
        if labelled and not -len(parts) <= col < len(parts):
            raise UserError(f"{where(path)}, line {n}: no column {col} (the line has {len(parts)})")
        if labelled and col % len(parts) == 0:
            raise UserError("--tag-column 0 is the token column; tags are in another one")
        if not words:
            starts.append(n)
        words.append(parts[0])
        labels.append(parts[col].strip() if labelled else "")
        if labelled and not labels[-1]:
            raise UserError(f"{where(path)}, line {n}: the tag is empty")
    close()
    if not tokens:
        raise UserError(f"{where(path)} has no sentences")
    return Sentences(str(path), tokens, tags if labelled else None, starts[: len(tokens)], "line")


def _as_list(value: object) -> list | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return value if isinstance(value, (list, tuple)) else None


def _read_table(
    path: Path, tag_column: int | str | None, labelled: bool, limit: int | None
) -> Sentences:
    fmt, _ = file_format(path)
    if fmt in ("txt", "csv", "tsv"):
        raise UserError(
            f"{where(path)}: token tagging reads CoNLL files ({', '.join(CONLL_SUFFIXES[:3])}, ...:"
            " a token and a tag per line, a blank line between sentences), JSON Lines or Parquet"
            " with a list of tokens and a list of tags per row"
        )
    return sentences_from_table(read_table(path, limit), path, tag_column, labelled)


def sentences_from_table(
    df, path: Path | Place, tag_column: int | str | None, labelled: bool
) -> Sentences:
    """The sentences of a table already read: a list of tokens and (``labelled``) a list of tags
    per row."""
    lower = {c.strip().lower(): c for c in df.columns}
    tcol = next((lower[c] for c in TOKEN_COLUMNS if c in lower), None)
    if tcol is None:
        raise UserError(
            f"{where(path)}: no tokens column (one of {', '.join(TOKEN_COLUMNS)}); columns: "
            f"{', '.join(df.columns)}{splits_note(path)}"
        )
    gcol = None
    if labelled:
        if tag_column is not None and not str(tag_column).lstrip("-").isdigit():
            if tag_column not in df.columns:
                raise UserError(
                    f"{where(path)} has no column '{tag_column}' (columns:"
                    f" {', '.join(df.columns)}{splits_note(path)})"
                )
            gcol = str(tag_column)
        else:
            gcol = next((lower[c] for c in TAG_COLUMNS if c in lower and lower[c] != tcol), None)
            if gcol is None:
                raise UserError(
                    f"{where(path)}: no tags column (one of {', '.join(TAG_COLUMNS)}); name it with"
                    f" --tag-column (columns: {', '.join(df.columns)}{splits_note(path)})"
                )
    tokens, tags = [], []
    for i, row in enumerate(df.itertuples(index=False), 1):
        rec = dict(zip(df.columns, row))
        words = _as_list(rec[tcol])
        if words is None or not all(isinstance(w, str) for w in words):
            raise UserError(f"{where(path, i, tcol)}: expected a list of strings")
        tokens.append([str(w) for w in words])
        if gcol is not None:
            labels = _as_list(rec[gcol])
            if labels is None:
                raise UserError(f"{where(path, i, gcol)}: expected a list of tags")
            tags.append([str(t) for t in labels])
    return Sentences(
        source_of(path),
        tokens,
        tags if labelled else None,
        list(range(1, len(tokens) + 1)),
        "row",
        tag_column=gcol,
    )


def _tag_names(split: DatasetSplit, sents: Sentences) -> list[str] | None:
    """The ClassLabel names of the tag column of a dataset's split (None for tags as strings)."""
    inner = getattr(split.feature(sents.tag_column), "feature", None)
    names = getattr(inner, "names", None)
    return list(names) if names is not None else None


def check_sentences(sents: Sentences) -> None:
    """Every sentence has words, no word is blank, and each word has exactly one tag."""
    for i, words in enumerate(sents.tokens):
        if not words:
            raise UserError(f"{sents.where(i)}: the sentence is empty")
        for j, w in enumerate(words):
            if not w.strip():
                raise UserError(f"{sents.where(i)}: word {j + 1} is blank")
        if sents.tags is not None:
            if len(sents.tags[i]) != len(words):
                raise UserError(
                    f"{sents.where(i)}: {len(words)} tokens but {len(sents.tags[i])} tags"
                )
            for j, t in enumerate(sents.tags[i]):
                if not t.strip():
                    raise UserError(
                        f"{sents.where(i)}: the tag of word {j + 1} ('{words[j]}') is empty"
                    )


# Brown corpus modifiers (../shared/data/README.md): fw- foreign word, -tl title, -hl headline, -nc
# cited word, a trailing * negation ("didn't": dod*). The base tag of a contraction joins the base
# tags ("vbz+rb").
def base_tag(tag: str) -> str:
    """A Brown tag without its modifiers: 'np-tl' -> 'np', 'fw-in' -> 'in', 'dod*' -> 'dod',
    'nn-hl+bez' -> 'nn+bez'. Tags that are only punctuation or '*' (the tag of 'not') stay as they
    are."""
    parts = []
    for part in tag.split("+"):
        if part.startswith("fw-"):
            part = part[3:]
        part = re.sub(r"(-(tl|hl|nc))+$", "", part)
        if len(part) > 1 and part.endswith("*"):
            part = part[:-1]
        parts.append(part or tag)
    return "+".join(parts)


def scheme_of(tags: list[str]) -> str:
    """'IOBES' when E-/S- tags occur, 'IOB2' when every tag is O or B-/I-X, else 'plain' (part of
    speech...)."""
    prefixes = set()
    for t in tags:
        if t == "O":
            continue
        m = ENTITY_TAG.match(t)
        if not m:
            return "plain"
        prefixes.add(m.group(1))
    if not prefixes:
        return "plain"
    return "IOBES" if prefixes & {"E", "S"} else "IOB2"


def orphan_inside_tags(tags: list[list[str]]) -> int:
    """I-X tags that follow neither B-X nor I-X: conlleval (and seqeval's default mode) count each
    as the start of an X entity; we leave them as they are and say how many there are."""
    n = 0
    for seq in tags:
        prev = "O"
        for t in seq:
            if t.startswith("I-") and prev[2:] != t[2:]:
                n += 1
            prev = t
    return n


def entity_types(tags: list[str]) -> list[str]:
    return sorted({m.group(2) for t in tags if (m := ENTITY_TAG.match(t))})


# Words of raw text, as tweets and news are tokenised in CoNLL data: a URL, an @mention or #hashtag,
# a word (letters/digits, inner hyphens kept: "state-of-the-art"), a clitic ('s, 're, n't stays with
# its word), or one other non-space character (punctuation, an emoji).
WORD = re.compile(r"https?://\S+|www\.\S+|[@#]\w+|\w+(?:-\w+)*|'\w+|[^\w\s]", re.UNICODE)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) for each word of ``text``; ``text[start:end] == word``."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
