"""What models read and what they write: labelled tables (tables), source/target text pairs (pairs),
texts from arguments, files or stdin (texts), raw corpora (corpus), tokenised batches (batching) and
predictions out (output)."""

import importlib

# Loaded on first use, so that importing a light module of this package (prompts) does not
# import pandas through tables.
_FROM_TABLES = (
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "Examples",
    "LabelMap",
    "load_splits",
    "read_examples",
    "read_table",
    "split_examples",
    "split_sizes",
)
__all__ = list(_FROM_TABLES)


def __getattr__(name: str):
    if name in _FROM_TABLES:
        return getattr(importlib.import_module("warmstart.data.tables"), name)
    raise AttributeError(f"module 'warmstart.data' has no attribute {name!r}")
