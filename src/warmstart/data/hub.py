"""Datasets of the Hugging Face ``datasets`` library as input: ``--data`` may be a folder written by
``save_to_disk`` (a Dataset or a DatasetDict), a folder of data files or an ``.arrow`` file that
``load_dataset`` reads, or a dataset id on the Hub (``ORG/NAME`` or ``NAME``, when no such local
path exists; ``--data-config`` and ``--data-revision`` pick its configuration and revision).

A split is handed to the file readers (data.tables, data.tagged, data.pairs, data.corpus) as a
:class:`DatasetSplit` in place of a path: they read its rows as a table and keep their column
rules, and their messages name it ``dataset 'ID' split 'train', row N`` (rows are 1-based in split
order). The features carry their meaning: a ``ClassLabel`` column's names are the label names, a
list of ``ClassLabel`` (``ner_tags``) becomes tag names, a float column is regression targets, and a
struct column (``translation: {en, fr}``) is flattened into ``translation.en`` and
``translation.fr``.

Split names map onto warmstart's parts: train → train; validation, valid, dev → valid; test → test
(others, e.g. IMDb's ``unsupervised``, are not read). ``datasets`` is imported only when a dataset
is actually read: it takes seconds to import."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from warmstart.errors import Place, UserError

# A Hub id: NAME or ORG/NAME (letters, digits, '-', '_', '.'), which is only taken as one when no
# such local path exists and it does not end like a data file (so 'train.csv' that is missing stays
# a missing file).
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
FILE_SUFFIXES = (
    ".csv .tsv .tab .jsonl .ndjson .json .parquet .pq .txt .gz .conll .conllu .conll03 .iob .iob2"
    " .bio .bioes .iobes .dict .arrow .yaml .yml .toml .xml .zip .bz2 .xz .zst"
).split()
# Split names → warmstart's parts, the first of each role found wins (validation before dev).
ROLES = {"train": "train", "validation": "valid", "valid": "valid", "dev": "valid", "test": "test"}


def saved_folder(path: Path) -> bool:
    """A folder written by ``save_to_disk``: a DatasetDict (dataset_dict.json) or a Dataset
    (state.json with its Arrow files)."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    )


def is_hub_id(data: str) -> bool:
    path = Path(data).expanduser()
    return (
        not path.exists()
        and bool(HUB_ID.match(data))
        and not any(data.lower().endswith(s) for s in FILE_SUFFIXES)
    )


def is_dataset(data: object, folders: bool = True) -> bool:
    """Whether ``--data`` names a dataset rather than a file of our own formats: a save_to_disk
    folder, an ``.arrow`` file, a Hub id, or (``folders``: finetune and evaluate, where a folder is
    no file of ours; pretrain reads a folder as .txt files) any other folder, which load_dataset
    reads by its data files."""
    if isinstance(data, (DatasetRef, DatasetSplit)):
        return True
    if not isinstance(data, str) or not data:
        return False
    path = Path(data).expanduser()
    if path.is_file():
        return path.suffix.lower() == ".arrow"
    if path.is_dir():
        return folders or saved_folder(path)
    return is_hub_id(data)


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as the user named it: the path or Hub id, and the options that pick a version of
    it. ``streaming`` reads it as an IterableDataset (pretrain --streaming)."""

    name: str
    config: str | None = None
    revision: str | None = None
    streaming: bool = False

    def place(self, split: str | None, splits: tuple[str, ...] = ()) -> Place:
        config = f" config '{self.config}'" if self.config else ""
        return Place(
            f"dataset '{self.name}'{config}" + (f" split '{split}'" if split else ""), splits
        )


def ref_of(cfg: Any, data: str | None, folders: bool = True) -> DatasetRef | None:
    """The dataset that ``data`` (``cfg``'s --data or --input) names, with ``cfg``'s --data-config,
    --data-revision and --streaming; None for a file of our own formats (or no data). Options of a
    dataset given for a file are refused."""
    config = getattr(cfg, "data_config", None)
    revision = getattr(cfg, "data_revision", None)
    streaming = bool(getattr(cfg, "streaming", False))
    if not is_dataset(data, folders):
        given = [
            flag
            for flag, value in (
                ("--data-config", config),
                ("--data-revision", revision),
                ("--streaming", streaming),
            )
            if value
        ]
        if given and data:
            raise UserError(
                f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to a dataset"
                f" (a Hub id or a save_to_disk folder); '{data}' is a file"
            )
        return None
    return DatasetRef(str(data), config, revision, streaming)


class DatasetSplit:
    """One split of a dataset, read by the file readers in place of a path (see the module's
    docstring). ``place`` names it in messages and ``data`` is the (flattened) Dataset."""

    def __init__(self, place: Place, data: Any):
        self.place, self.data = place, data

    def __str__(self) -> str:
        return str(self.place)

    def __len__(self) -> int:
        return len(self.data)

    def __bool__(self) -> bool:  # given, however many rows (an empty split fails when read)
        return True

    @property
    def columns(self) -> list[str]:
        return list(self.data.column_names)

    def feature(self, column: str | None) -> Any:
        return self.data.features.get(column) if column else None

    def class_names(self, column: str | None) -> list[str] | None:
        """The names of a ClassLabel column (a label id's name is ``names[id]``), else None."""
        from datasets import ClassLabel

        feature = self.feature(column)
        return list(feature.names) if isinstance(feature, ClassLabel) else None

    def floats(self, column: str | None) -> bool:
        """Whether ``column`` holds floating-point numbers (regression targets)."""
        from datasets import Value

        feature = self.feature(column)
        return isinstance(feature, Value) and feature.dtype.startswith(("float", "double"))

    def frame(self, limit: int | None = None, lists: str = "keep") -> pd.DataFrame:
        """The first ``limit`` rows as a DataFrame, columns as in the dataset. A list of ClassLabel
        ids becomes a list of their names; ``lists='json'`` writes list cells as JSON text (how a
        table file holds a multi-label row)."""
        import json

        data = self.data
        if limit is not None and limit < len(data):
            data = data.select(range(limit))
        df = data.to_pandas()
        for column in df.columns:
            feature = self.feature(column)
            inner = getattr(feature, "feature", None)
            names = getattr(inner, "names", None)
            if names is not None:
                df[column] = [
                    None if ids is None else [names[int(i)] if i >= 0 else str(i) for i in ids]
                    for ids in df[column]
                ]
            if lists == "json" and inner is not None:
                df[column] = [
                    None if v is None else json.dumps([_plain(x) for x in v], ensure_ascii=False)
                    for v in df[column]
                ]
        return df


def _plain(x: Any) -> Any:
    """A numpy scalar as the Python value json writes."""
    return x.item() if hasattr(x, "item") else x


def _not_found(name: str) -> str:
    from huggingface_hub import constants

    return (
        f"dataset '{name}' not found: no such file or folder here, and no dataset '{name}' on the"
        f" Hub ({constants.ENDPOINT}) that you can read (a private or gated one needs `hf auth"
        " login` or HF_TOKEN)"
    )


def _explain(ref: DatasetRef, e: Exception) -> str:
    """One line for why ``load_dataset`` failed on ``ref``."""
    from huggingface_hub import constants

    name, kind = ref.name, type(e).__name__
    first = (str(e).strip().splitlines() or [kind])[0]
    offline = constants.is_offline_mode()
    if kind == "DatasetNotFoundError":
        return _not_found(name)
    if isinstance(e, ConnectionError) or kind in (
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
    ):
        if offline:
            return (
                f"no file or folder '{name}' here, and dataset '{name}' is not in the local cache:"
                " HF_HUB_OFFLINE=1 keeps warmstart off the network; load it once where there is a"
                " network (HF_HUB_OFFLINE unset), or give a file or a save_to_disk folder"
            )
        return (
            f"no file or folder '{name}' here, and dataset '{name}' is not in the local cache: the"
            f" Hub ({constants.ENDPOINT}) cannot be reached; check the network (or HF_ENDPOINT), or"
            " load it once where there is one"
        )
    found = re.match(r"BuilderConfig '(.*)' not found\. Available: \[(.*)\]", first)
    if found:
        configs = found.group(2).replace("'", "")
        return f"dataset '{name}' has no config '{found.group(1)}' (configs: {configs})"
    missing = re.match(r"Config name is missing.*\[(.*)\]", first)
    if missing:
        configs = missing.group(1).replace("'", "")
        return f"dataset '{name}' has several configs ({configs}): pick one with --data-config"
    return f"dataset '{name}' could not be loaded: {first}"


def _check_hub(ref: DatasetRef) -> str | None:
    """The commit a Hub dataset's revision resolves to, asked before loading: ``load_dataset``
    would otherwise fall back to a cached copy of another revision when the one asked for does not
    exist. None when offline or the Hub cannot be reached (load_dataset then uses the cache or says
    why not)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.is_offline_mode():
        return None
    api = HfApi()
    no_revision = UserError(
        f"dataset '{ref.name}' has no revision '{ref.revision}' (a branch, tag or commit)"
    )
    try:
        return _info(api, ref.name, ref.revision).sha
    except GatedRepoError:
        raise UserError(
            f"dataset '{ref.name}' is gated on the Hub: accept its terms on its page, then log in"
            " (`hf auth login`, or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise no_revision from None
    except RepositoryNotFoundError:
        # Some Hub servers answer an unknown revision as an unknown repository: ask without it.
        if ref.revision is not None and _exists(api, ref.name):
            raise no_revision from None
        raise UserError(_not_found(ref.name)) from None
    except Exception:  # the network: load_dataset decides between the cache and a clear error
        return None


def _info(api: Any, name: str, revision: str | None) -> Any:
    """The Hub's dataset_info of ``name`` at ``revision`` (default: main, asked by name where a
    server, such as a mirror, only answers by revision)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.dataset_info(name, revision=revision)
    except RepositoryNotFoundError:
        if revision is not None:
            raise
        return api.dataset_info(name, revision="main")


def _exists(api: Any, name: str) -> bool:
    try:
        _info(api, name, None)
        return True
    except Exception:
        return False


@dataclass
class Opened:
    """A dataset's splits by name (None: a lone Dataset), and what identifies its contents (for
    pretrain's token cache)."""

    ref: DatasetRef
    splits: dict[str | None, Any]
    fingerprint: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n in self.splits if n)

    def roles(self) -> dict[str, str | None]:
        """warmstart's part → the split that is it (train, valid, test; a lone Dataset is
        train)."""
        if None in self.splits:
            return {"train": None}
        found: dict[str, str | None] = {}
        for name in self.splits:
            role = ROLES.get(str(name).lower())
            if role and role not in found:
                found[role] = name
        return found

    def split(self, name: str | None) -> DatasetSplit:
        return DatasetSplit(self.ref.place(name, self.names), self.splits[name])

    def describe(self) -> str:
        return ", ".join(self.names) or "one unnamed split"


def open_dataset(ref: DatasetRef) -> Opened:
    """Load ``ref`` (its every split; a stream of each with ``ref.streaming``): a save_to_disk
    folder, a folder or an .arrow file through load_dataset, or a Hub id. Every failure is one
    UserError line."""
    import datasets

    path = Path(ref.name).expanduser()
    local = path.exists()
    given = [f for f, v in (("--data-config", ref.config), ("--data-revision", ref.revision)) if v]
    if local and (ref.revision or (ref.config and (saved_folder(path) or path.is_file()))):
        raise UserError(
            f"{', '.join(given)} {'picks' if len(given) == 1 else 'pick'} a version of a Hub"
            f" dataset; '{ref.name}' is a local"
            f" {'folder' if path.is_dir() else 'file'}"
        )
    sha = None if local else _check_hub(ref)
    try:
        if saved_folder(path):
            loaded = datasets.load_from_disk(str(path))
            mark = _fingerprint(loaded)
            if ref.streaming:
                loaded = _streams(loaded)
        elif path.is_file():
            loaded = datasets.load_dataset("arrow", data_files=str(path), streaming=ref.streaming)
            mark = _fingerprint(loaded)
        else:
            loaded = datasets.load_dataset(
                str(path) if local else ref.name,
                ref.config,
                revision=ref.revision,
                streaming=ref.streaming,
            )
            mark = _fingerprint(loaded)
    except UserError:
        raise
    except Exception as e:  # datasets and huggingface_hub raise many types; one line each
        raise UserError(_explain(ref, e)) from None
    splits = dict(loaded) if isinstance(loaded, dict) else {None: loaded}
    splits = {name: _flat(ds) for name, ds in splits.items()}
    # Streamed or not, the same rows: the same fingerprint (pretrain's token cache is shared).
    return Opened(
        ref, splits, "|".join(str(x) for x in (ref.name, ref.config, ref.revision, sha, mark))
    )


def _streams(loaded: Any) -> Any:
    """A loaded Dataset(Dict) as IterableDataset(s): read row by row, nothing held whole."""
    if isinstance(loaded, dict):
        return {name: ds.to_iterable_dataset() for name, ds in loaded.items()}
    return loaded.to_iterable_dataset()


def _fingerprint(loaded: Any) -> str:
    """datasets' own fingerprint of each split's contents (a streamed Hub dataset has none: its
    commit, from _check_hub, identifies it)."""
    parts = loaded.values() if isinstance(loaded, dict) else [loaded]
    return ",".join(str(getattr(ds, "_fingerprint", "")) for ds in parts)


def _flat(ds: Any) -> Any:
    """Struct columns flattened (``translation.en``), so columns are named as --*-column takes
    them."""
    features = getattr(ds, "features", None) or {}
    if any(isinstance(f, dict) for f in features.values()):
        return ds.flatten()
    return ds


def dataset_parts(ref: DatasetRef, split: str | None) -> dict[str, DatasetSplit]:
    """The train/valid/test parts of a dataset for finetune: each split named train, validation
    (valid, dev) or test; with ``split`` (--split) only the train split, which --split cuts."""
    opened = open_dataset(ref)
    roles = opened.roles()
    if "train" not in roles:
        raise UserError(
            f"{ref.place(None)} has no train split (splits: {opened.describe()}); a dataset"
            " to train on needs one named train"
        )
    if split:
        return {"train": opened.split(roles["train"])}
    return {role: opened.split(name) for role, name in roles.items()}


def evaluated(cfg: Any, data: str | None) -> Any:
    """What evaluate or predict reads: ``data`` itself when it is a file; of a dataset its test
    split, else its valid split, else its only split."""
    ref = ref_of(cfg, data)
    if ref is None:
        return data
    opened = open_dataset(ref)
    roles = opened.roles()
    for role in ("test", "valid"):
        if role in roles:
            return opened.split(roles[role])
    if len(opened.splits) == 1:
        return opened.split(next(iter(opened.splits)))
    raise UserError(
        f"{ref.place(None)} has no test or validation split to read (splits: {opened.describe()})"
    )


def rows(stream: Any, column: str) -> Iterator[Any]:
    """The values of ``column`` of a Dataset or IterableDataset, row by row (batches of Arrow
    rows, never the whole split)."""
    for batch in stream.select_columns([column]).iter(batch_size=1000):
        yield from batch[column]
