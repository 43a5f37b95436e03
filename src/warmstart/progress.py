"""Progress bars: tqdm on a terminal, nothing when the output goes to a file or a pipe.

A log wants one line every --logging-steps (the run log writes those), not the hundreds of
carriage-return frames a bar redraws per line (`make demo > log`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm.auto import tqdm


def on_terminal() -> bool:
    """Whether stderr, where bars are drawn, is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless ``enabled`` (--progress) and on a terminal."""
    # Imported here: tqdm.auto costs 50 ms, which a short `generate` should not pay for no bar.
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and on_terminal()), **kwargs)
