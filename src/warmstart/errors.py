"""User errors: one sentence naming the file, row and column, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, column, flag, model name).

    The CLI prints ``error: <message>`` and exits with code 2. Anything else that escapes is a bug
    and keeps its traceback.
    """

    exit_code = 2


class Place(str):
    """Where rows come from when that is not a file: a split of a dataset, named as it reads
    (``dataset 'imdb' split 'train'``), with the dataset's split names for messages that list
    them."""

    splits: tuple[str, ...]

    def __new__(cls, text: str, splits: tuple[str, ...] = ()) -> Place:
        self = super().__new__(cls, text)
        self.splits = tuple(splits)
        return self


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format the location of a problem: ``file 'x.csv', row 12, column 'review'`` (a
    :class:`Place` is named as it is: ``dataset 'imdb' split 'train', row 12``)."""
    parts = [path if isinstance(path, Place) else f"file '{path}'"]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)
