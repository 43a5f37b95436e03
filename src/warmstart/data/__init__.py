"""What models read and what they write: labelled tables (tables), source/target text pairs (pairs),
texts from arguments, files or stdin (texts), raw corpora (corpus), tokenised batches (batching) and
predictions out (output)."""

from warmstart.data.tables import (
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    Examples,
    LabelMap,
    load_splits,
    read_examples,
    read_table,
    split_examples,
    split_sizes,
)

__all__ = [
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "Examples",
    "LabelMap",
    "load_splits",
    "read_examples",
    "read_table",
    "split_examples",
    "split_sizes",
]
