"""Read text pairs (a source text and the target text to generate from it) from a table: CSV, TSV,
JSON Lines, JSON or Parquet, optionally gzipped; or a pronouncing dictionary in CMUdict's format
(``.dict``: a word and its phonemes per line), read as the columns ``word`` and ``phonemes``. Every
problem is a UserError naming the file, row and column, with the table rules of data.tables (row
numbers are 1-based data rows). A split of a dataset (data.hub) is read as a table, its struct columns
flattened (``translation.en``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.data.hub import DatasetSplit
from warmstart.data.tables import column_texts, find_column, read_table, source_of
from warmstart.errors import UserError, where

# Looked for in this order when --source-column / --target-column are not given (case and spaces
# ignored).
SOURCE_COLUMNS = ("source", "src", "input", "prompt", "question", "text")
TARGET_COLUMNS = ("target", "tgt", "output", "completion", "answer", "response", "summary")


@dataclass
class Pairs:
    """Source texts with their targets (None when the table has none, e.g. for predict) and their
    row numbers in the file ``source`` (the name load_splits and split_examples read)."""

    source: str
    sources: list[str]
    targets: list[str] | None
    rows: list[int]
    source_column: str
    target_column: str | None = None

    def __len__(self) -> int:
        return len(self.sources)

    def take(self, index: np.ndarray | list[int] | slice) -> Pairs:
        idx = (
            np.arange(len(self))[index]
            if isinstance(index, slice)
            else np.asarray(index, dtype=int)
        )
        return replace(
            self,
            sources=[self.sources[i] for i in idx],
            rows=[self.rows[i] for i in idx],
            targets=None if self.targets is None else [self.targets[i] for i in idx],
        )

    def group_keys(self) -> list[str]:
        """What split_examples keeps in one part: the rows of one source (a word's pronunciations)
        are all trained on or all held out."""
        return self.sources

    def distinct(self) -> tuple[Pairs, list[list[str]] | None]:
        """One pair per distinct source (its first row, in order) and every target this part gives
        that source: a word with two pronunciations is written once and is right when it is either
        (how grapheme-to-phoneme is scored; a deterministic model writes the same text for the same
        source anyway)."""
        group: dict[str, int] = {}
        rows: list[int] = []
        refs: list[list[str]] = []
        for i, s in enumerate(self.sources):
            if s not in group:
                group[s] = len(rows)
                rows.append(i)
                refs.append([])
            if self.targets is not None:
                refs[group[s]].append(self.targets[i])
        return self.take(rows), refs if self.targets is not None else None

    def where(self, i: int, column: str | None = None) -> str:
        """The file, row and column of pair ``i`` (its source column unless another is named)."""
        return where(self.source, self.rows[i], column or self.source_column)


def pairs_from_table(
    df: pd.DataFrame,
    path: str | Path,
    source_column: str | None = None,
    target_column: str | None = None,
    targets: bool = True,
) -> Pairs:
    """The pairs of a table already read. ``targets=False`` reads the sources alone (the target
    column is then optional: read when named or found, else None)."""
    scol = find_column(df, path, source_column, SOURCE_COLUMNS, "source", "--source-column")
    tcol = find_column(
        df, path, target_column, TARGET_COLUMNS, "target", "--target-column", required=targets
    )
    if tcol is not None and tcol == scol:
        raise UserError(
            f"{where(path)}: the source and target columns are both '{scol}'; name them with "
            "--source-column and --target-column"
        )
    # A blank source or target is an error: an empty target teaches nothing and an empty reference
    # cannot be scored.
    return Pairs(
        source=source_of(path),
        sources=column_texts(df, path, scol, "source text"),
        targets=column_texts(df, path, tcol, "target text") if tcol is not None else None,
        rows=list(range(1, len(df) + 1)),
        source_column=scol,
        target_column=tcol,
    )


def read_pairs(
    path: str | DatasetSplit,
    source_column: str | None = None,
    target_column: str | None = None,
    limit: int | None = None,
    targets: bool = True,
) -> Pairs:
    """Source/target pairs from the table at ``path`` or a dataset's split (the first ``limit``
    rows)."""
    if isinstance(path, DatasetSplit):
        df = read_table(path, limit)
        return pairs_from_table(df, path.place, source_column, target_column, targets)
    if Path(path).suffix.lower() == ".dict":
        return pairs_from_table(
            read_pronunciations(path, limit),
            path,
            source_column or "word",
            target_column or "phonemes",
            targets,
        )
    return pairs_from_table(read_table(path, limit), path, source_column, target_column, targets)


def read_pronunciations(path: str, limit: int | None = None) -> pd.DataFrame:
    """CMUdict's lines ``word PH ON EMES`` as a table: an alternative pronunciation ``word(2)`` is a
    row of its own for ``word``, a trailing ``# comment`` is dropped. A row is a line, blank lines
    included, so errors name the line."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{where(path)} does not exist")
    rows = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines()[:limit]:
        word, _, phonemes = line.split("#", 1)[0].strip().partition(" ")
        rows.append((re.sub(r"\(\d+\)$", "", word), phonemes.strip()))
    if not rows:
        raise UserError(f"{where(path)} is empty")
    return pd.DataFrame(rows, columns=["word", "phonemes"])


def prediction_lines(
    pairs: Pairs,
    predictions: list[str],
    finish_reasons: list[str],
    references: list[list[str]] | None = None,
) -> str:
    """predictions.jsonl: one pair a line (its row in the file, source, reference, the model's
    output and why the output ended: eos, or length at the token limit); ``references`` too where a
    source has more than one."""
    refs = references or [[t] for t in pairs.targets or [None] * len(pairs)]
    return "".join(
        json.dumps(
            {
                "row": r,
                "source": s,
                "reference": t[0],
                "prediction": p,
                "finish_reason": f,
                **({"references": t} if len(t) > 1 else {}),
            },
            ensure_ascii=False,
        )
        + "\n"
        for r, s, t, p, f in zip(pairs.rows, pairs.sources, refs, predictions, finish_reasons)
    )
