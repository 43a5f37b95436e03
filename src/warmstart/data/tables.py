"""Read labelled tables (CSV, TSV, JSON Lines, Parquet; gzipped or not) or a split of a dataset
(data.hub), pick columns, map labels, split. Every problem becomes a UserError naming the file (or
the dataset's split), row and column.

Row numbers are 1-based data rows in file order (the header does not count), so row 1 of a CSV is
its second line; a dataset's rows are numbered the same way in split order."""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from warmstart.data.hub import DatasetSplit, dataset_parts, ref_of
from warmstart.errors import Place, UserError, where

TEXT_COLUMNS = ("text", "review", "sentence", "sentence1", "content", "document", "comment", "body")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category", "y")
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}


def file_format(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    ext = (
        suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes and not gz else "")
    )
    if ext in (".conll", ".conllu", ".iob", ".iob2", ".bio", ".bioes", ".iobes"):
        raise UserError(
            f"{where(path)} is a CoNLL file of tagged tokens: read it with --task tokens"
            " (finetune), or evaluate/predict with a tagger"
        )
    if ext not in FORMATS:
        raise UserError(
            f"{where(path)} has an unknown format; use .csv, .tsv, .jsonl, .json, .parquet or .txt "
            "(optionally .gz)"
        )
    return FORMATS[ext], gz


def _decode(path: Path, raw: bytes, fmt: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        if fmt in ("csv", "tsv"):
            if line == 1:
                raise UserError(f"{where(path)}: the header line is not valid UTF-8") from None
            prefix = raw[:line_start].decode("utf-8-sig", errors="replace")
            row = (
                len(pd.read_csv(io.StringIO(prefix), sep="\t" if fmt == "tsv" else ",", dtype=str))
                + 1
            )
        else:
            row = line
        raise UserError(
            f"{where(path, row)} (line {line}) is not valid UTF-8 text: byte "
            f"0x{raw[e.start]:02x} cannot be decoded"
        ) from None


def read_table(path_like: str | Path | DatasetSplit, limit: int | None = None) -> pd.DataFrame:
    """Read a table into a DataFrame. CSV/TSV cells stay strings ('NA' is text, not missing). A
    dataset's split is read as it is (its first ``limit`` rows)."""
    if isinstance(path_like, DatasetSplit):
        if len(path_like) == 0:
            raise UserError(f"{path_like.place} has no rows")
        return path_like.frame(limit)
    path = Path(path_like).expanduser()
    if not path.is_file():
        raise UserError(
            f"{where(path)} does not exist" if not path.exists() else f"{where(path)} is not a file"
        )
    fmt, gz = file_format(path)
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise UserError(
                f"{where(path)} is not a readable Parquet file: {str(e).splitlines()[0]}"
            ) from None
        df = df.head(limit) if limit else df
    else:
        raw = path.read_bytes()
        if gz:
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:
                raise UserError(f"{where(path)} is not a valid gzip file ({e})") from None
        text = _decode(path, raw, fmt)
        if not text.strip():
            raise UserError(f"{where(path)} is empty")
        try:
            if fmt in ("csv", "tsv"):
                df = pd.read_csv(
                    io.StringIO(text),
                    sep="\t" if fmt == "tsv" else ",",
                    dtype=str,
                    keep_default_na=False,
                    nrows=limit,
                )
            elif fmt == "txt":
                # One text per line, as on standard input and in generate's prompt files: line ends
                # (\n, \r\n) are dropped and blank lines skipped, so the same file gives the same
                # texts to every command.
                lines = [ln for ln in text.splitlines() if ln.strip()]
                df = pd.DataFrame({"text": lines[:limit] if limit else lines})
            else:
                lines = fmt == "jsonl" or not text.lstrip().startswith("[")
                df = pd.read_json(
                    io.StringIO(text),
                    lines=lines,
                    nrows=limit if lines and limit else None,
                    dtype=False,
                )
                df = df.head(limit) if limit else df
        except (ValueError, pd.errors.ParserError) as e:
            raise UserError(
                f"{where(path)} is not valid {fmt.upper()}: {str(e).strip().splitlines()[-1]}"
            ) from None
    if len(df) == 0:
        raise UserError(f"{where(path)} has no data rows")
    df.columns = [str(c) for c in df.columns]
    return df


def source_of(path: Path | str) -> str:
    """What a reader records as where its rows come from: the file's name, or a dataset split's
    Place (which messages name as it reads)."""
    return path if isinstance(path, Place) else str(path)


def splits_note(path: object) -> str:
    """'; splits: train, test' for a dataset's split, so a missing column's message also says which
    splits there are; '' for a file."""
    return f"; splits: {', '.join(path.splits)}" if isinstance(path, Place) and path.splits else ""


def find_column(
    df: pd.DataFrame,
    path: Path | str,
    given: str | None,
    candidates: tuple[str, ...],
    what: str,
    flag: str,
    required: bool = True,
) -> str | None:
    """The column named by the user, else the first of ``candidates`` present (case and spaces
    ignored)."""
    columns = ", ".join(f"'{c}'" for c in df.columns) + splits_note(path)
    if given is not None:
        if given in df.columns:
            return given
        stripped = {c.strip(): c for c in df.columns}
        if given.strip() in stripped:
            return stripped[given.strip()]
        raise UserError(f"{where(path)} has no column '{given}' (columns: {columns})")
    lower = {c.strip().lower(): c for c in df.columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    if required:
        raise UserError(
            f"{where(path)}: no {what} column found; name it with {flag} (columns: {columns})"
        )
    return None


def label_value(v: object) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(v).lower()
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else str(v)
    if isinstance(v, (list, tuple, np.ndarray)):
        # a JSONL/Parquet list of labels (multi-label): the JSON list a CSV cell would hold
        return json.dumps([x.item() if isinstance(x, np.generic) else x for x in v])
    s = str(v).strip()
    return s or None


@dataclass
class Examples:
    """Texts (optionally pairs) with their raw label values and their row numbers in ``source``."""

    source: str
    texts: list[str]
    pairs: list[str] | None
    labels: list[str] | None
    rows: list[int]
    label_column: str | None = None
    # Regression on several columns (--label-column a,b), or a dataset's float column: (rows,
    # columns) numbers; ``labels`` then joins them.
    targets: np.ndarray | None = None
    # A dataset's ClassLabel names: label id i (the raw value 'i') is named label_names[i].
    label_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, index: np.ndarray | list[int] | slice) -> Examples:
        idx = (
            np.arange(len(self))[index]
            if isinstance(index, slice)
            else np.asarray(index, dtype=int)
        )

        def pick(xs: list | None) -> list | None:
            return None if xs is None else [xs[i] for i in idx]

        return replace(
            self,
            texts=pick(self.texts),
            pairs=pick(self.pairs),
            labels=pick(self.labels),
            rows=pick(self.rows),
            targets=None if self.targets is None else self.targets[idx],
        )


def column_texts(df: pd.DataFrame, path: Path | str, col: str, what: str = "text") -> list[str]:
    """The column's texts; a missing or blank cell fails naming its file, row and column."""
    s = df[col]
    bad = s.isna() | (s.astype(str).str.strip() == "")
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        state = "missing" if s.iloc[i] is None or pd.isna(s.iloc[i]) else "empty"
        raise UserError(f"{where(path, i + 1, col)}: {what} is {state}")
    return s.astype(str).tolist()


def examples_from_table(
    df: pd.DataFrame,
    path: Path | str,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    labelled: bool = True,
) -> Examples:
    tcol = find_column(df, path, text_column, TEXT_COLUMNS, "text", "--text-column")
    pcol = find_column(df, path, text_pair_column, (), "", "") if text_pair_column else None
    labels, lcol, targets = None, None, None
    if labelled and label_column and "," in label_column and label_column not in df.columns:
        targets, lcol = _numeric_columns(df, path, [c.strip() for c in label_column.split(",")])
        labels = [",".join(label_value(v) or "" for v in row) for row in targets]
    elif labelled:
        lcol = find_column(df, path, label_column, LABEL_COLUMNS, "label", "--label-column")
        labels = [label_value(v) for v in df[lcol].tolist()]
        if None in labels:
            raise UserError(f"{where(path, labels.index(None) + 1, lcol)}: label is missing")
    return Examples(
        source=source_of(path),
        texts=column_texts(df, path, tcol),
        pairs=column_texts(df, path, pcol) if pcol else None,
        labels=labels,
        rows=list(range(1, len(df) + 1)),
        label_column=lcol if labelled else None,
        targets=targets,
    )


def _numeric_columns(
    df: pd.DataFrame, path: Path | str, names: list[str]
) -> tuple[np.ndarray, str]:
    """Several label columns of numbers (regression with several targets), as a (rows, columns)
    array."""
    cols = [find_column(df, path, n, (), "label", "--label-column") for n in names]
    out = np.empty((len(df), len(cols)), dtype=np.float32)
    for k, c in enumerate(cols):
        values = pd.to_numeric(df[c].astype(str).str.strip(), errors="coerce").to_numpy(
            dtype=np.float64
        )
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(
                f"{where(path, i + 1, c)}: regression needs a number, got"
                f" '{str(df[c].iloc[i])[:40]}'"
            )
        out[:, k] = values
    return out, ",".join(cols)


def read_examples(
    path: str | DatasetSplit,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    labelled: bool = True,
    limit: int | None = None,
) -> Examples:
    if isinstance(path, DatasetSplit):
        read_table(path, 0)  # an empty split fails as an empty file does
        df = path.frame(limit, lists="json")  # a list of labels is a JSON list, as in a CSV cell
        ex = examples_from_table(
            df, path.place, text_column, text_pair_column, label_column, labelled
        )
        return typed(ex, path)
    df = read_table(path, limit)
    return examples_from_table(df, path, text_column, text_pair_column, label_column, labelled)


def typed(ex: Examples, split: DatasetSplit) -> Examples:
    """What the label column's feature says: a ClassLabel's names are the label names; a float
    column is regression targets (whatever its values look like)."""
    if ex.label_column is None or ex.targets is not None or ex.labels is None:
        return ex
    names = split.class_names(ex.label_column)
    if names is not None:
        return replace(ex, label_names=names)
    if split.floats(ex.label_column):
        targets = np.asarray([float(v) for v in ex.labels], dtype=np.float32)[:, None]
        return replace(ex, targets=targets)
    return ex


def _numeric(values: list[str]) -> bool:
    try:
        [int(v) for v in values]
        return True
    except ValueError:
        return False


@dataclass
class LabelMap:
    """Label ids 0..K-1 ↔ names (shown to users, saved as ``id2label``) ↔ raw values found in
    data."""

    names: list[str]
    values: list[str]

    @classmethod
    def from_examples(cls, ex: Examples, names: list[str] | None = None) -> LabelMap:
        assert ex.labels is not None
        column = ex.label_column
        values = sorted(set(ex.labels), key=int if _numeric(ex.labels) else str)
        if len(values) < 2:
            raise UserError(
                f"{where(ex.source)}, column '{column}': every row has the label '{values[0]}'; "
                "classification needs at least two classes"
            )
        if names is None and ex.label_names is not None:
            # A ClassLabel: its every class, in its order, whether or not the training rows have
            # each (ids are the raw values 0..K-1, as --label-names names them).
            return cls(
                names=list(ex.label_names), values=[str(i) for i in range(len(ex.label_names))]
            )
        if names is not None:
            if len(names) != len(values):
                raise UserError(
                    f"--label-names gives {len(names)} names but the training data has"
                    f" {len(values)} labels ({', '.join(values)})"
                )
            return cls(names=list(names), values=values)
        return cls(names=values, values=values)

    @classmethod
    def from_model_config(cls, config: object) -> LabelMap:
        id2label = {int(k): v for k, v in config.id2label.items()}
        names = [id2label[i] for i in range(len(id2label))]
        return cls(names=names, values=list(getattr(config, "label_values", None) or names))

    def encode(self, ex: Examples) -> np.ndarray:
        column = ex.label_column
        lookup = {v: i for i, v in enumerate(self.values)}
        for i, n in enumerate(self.names):
            lookup.setdefault(n, i)
        ids = np.empty(len(ex), dtype=np.int64)
        for j, v in enumerate(ex.labels or []):
            if v not in lookup:
                raise UserError(
                    f"{where(ex.source, ex.rows[j], column)}: unknown label '{v}' "
                    f"(known: {', '.join(self.values)})"
                )
            ids[j] = lookup[v]
        return ids


def split_sizes(spec: str, n: int, source: str) -> list[int]:
    """Sizes of consecutive parts from '35000,5000,10000' (counts) or '0.7,0.1,0.2' (fractions)."""
    try:
        parts = [float(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise UserError(
            f"--split '{spec}' must be counts like 35000,5000,10000 or fractions like 0.7,0.2,0.1"
        ) from None
    if not 1 <= len(parts) <= 3 or any(p <= 0 for p in parts):
        raise UserError(
            f"--split '{spec}' must have one to three positive parts (train, valid, test)"
        )
    if all(p.is_integer() and p >= 1 for p in parts) and not all(p == 1 for p in parts):
        sizes = [int(p) for p in parts]
        if sum(sizes) > n:
            raise UserError(
                f"--split '{spec}' asks for {sum(sizes)} rows but {where(source)} has {n}"
            )
        return sizes
    if any(p > 1 for p in parts) or sum(parts) > 1 + 1e-9:
        raise UserError(f"--split '{spec}': fractions must add up to at most 1")
    sizes = [int(round(p * n)) for p in parts]
    if abs(sum(parts) - 1) < 1e-9:
        sizes[-1] = n - sum(sizes[:-1])
    if min(sizes) == 0:
        raise UserError(f"--split '{spec}' leaves an empty part of {where(source)} ({n} rows)")
    return sizes


ROLES = ("train", "valid", "test")


def split_examples(ex: Any, spec: str, shuffle: bool, seed: int) -> list[Any]:
    """``ex`` cut into the parts of --split (shuffled first with --shuffle). Where ``ex`` has
    ``group_keys`` (text pairs: their sources), rows of one key stay in one part, each cut moving
    forward to the end of a group: a word's second pronunciation is not trained on while its first
    is held out."""
    order = np.random.default_rng(seed).permutation(len(ex)) if shuffle else np.arange(len(ex))
    keys = ex.group_keys() if hasattr(ex, "group_keys") else None
    if keys is not None:
        # Shuffle groups, not rows: ranking a group by its earliest row would draw many-row groups
        # to the front.
        group = {k: g for g, k in enumerate(dict.fromkeys(keys))}
        rank = (
            np.random.default_rng(seed).permutation(len(group))
            if shuffle
            else np.arange(len(group))
        )
        order = np.array(sorted(range(len(ex)), key=lambda i: (rank[group[keys[i]]], i)), dtype=int)
    parts, start = [], 0
    for role, size in zip(ROLES, split_sizes(spec, len(ex), ex.source)):
        end = min(start + size, len(order))
        while (
            keys is not None and 0 < end < len(order) and keys[order[end]] == keys[order[end - 1]]
        ):
            end += 1
        if size and end == start:
            why = (
                f": a source's rows stay in one part, and the {len(set(keys))} distinct sources"
                " ran out"
                if keys is not None
                else ""
            )
            raise UserError(
                f"{ex.source}: --split '{spec}' leaves the {role} part empty{why}; give it more"
                " rows"
            )
        parts.append(ex.take(order[start:end]))
        start = end
    return parts


def load_splits(cfg, read: Callable[[Any, int | None], Any] | None = None) -> dict[str, Any]:
    """The train (and valid/test) parts a config names: --data cut by --split, or --valid/--test
    files, or a dataset's train/validation/test splits (data.hub); then the --max-*-samples caps
    and --limit. ``cfg`` has finetune's data and split options (finetune, probe). ``read(path,
    limit)`` reads one file or a dataset's split (a DatasetSplit; default: a labelled table with
    the config's columns); what it returns has ``len``, ``take`` and ``source`` like Examples
    (data.tagged.Sentences does)."""
    if not cfg.data:
        raise UserError("no training data: pass --data FILE")
    if read is None:

        def read(path: str | DatasetSplit, limit: int | None) -> Examples:
            return read_examples(
                path, cfg.text_column, cfg.text_pair_column, cfg.label_column, limit=limit
            )

    # A dataset (data.hub): its train/validation/test splits are the parts, read by the same
    # ``read``; with --split its train split is cut as a file is.
    ref = ref_of(cfg, cfg.data)
    splits = dataset_parts(ref, cfg.split) if ref is not None else {"train": cfg.data}
    # --limit caps every split; with --split it applies after splitting so the parts keep their
    # places.
    ex = read(splits["train"], None if cfg.split else cfg.limit)
    parts = (
        dict(zip(ROLES, split_examples(ex, cfg.split, cfg.shuffle, cfg.seed)))
        if cfg.split
        else {"train": ex}
    )
    for role in ROLES[1:]:
        if role in splits:
            parts[role] = read(splits[role], cfg.limit)
    for role, path in (("valid", cfg.valid), ("test", cfg.test)):
        if path:
            if role in parts:
                made = (
                    f"--split '{cfg.split}' already makes"
                    if cfg.split
                    else f"{splits[role].place} is already"
                )
                raise UserError(f"--{role} is given but {made} a {role} part")
            parts[role] = read(path, cfg.limit)
    caps = {
        "train": cfg.max_train_samples,
        "valid": cfg.max_valid_samples,
        "test": cfg.max_test_samples,
    }
    for role, part in parts.items():
        cap = caps[role] or cfg.limit
        if cap and cap < len(part):
            parts[role] = part.take(slice(0, cap))
    return parts
