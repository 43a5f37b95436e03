"""User errors: one sentence naming the file, row and column, exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, column, flag, model name).

    The CLI prints ``error: <message>`` and exits with code 2. Anything else that escapes is a bug
    and keeps its traceback.
    """

    exit_code = 2


def where(path: object, row: int | None = None, column: str | None = None) -> str:
    """Format the location of a problem: ``file 'x.csv', row 12, column 'review'``."""
    parts = [f"file '{path}'"]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column '{column}'")
    return ", ".join(parts)
