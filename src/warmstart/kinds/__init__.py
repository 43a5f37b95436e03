"""Task kinds: what `finetune` trains and what `evaluate`/`predict` read back. A kind brings its data reading,
labels, model head, encoding and collator, metrics and test evaluation; the engines, run folder, resume,
CLI and backends are shared. One module per kind, each with the same class shape (``base.TaskKind``),
registered in ``KINDS``.

    sequence   sequence classification: one label per text (or text pair)
    tokens     token classification: a tag per word (named entities, part of speech)

Text-to-text is the next kind to add here.
"""

from warmstart.kinds.base import TaskKind
from warmstart.kinds.sequence import SequenceClassification
from warmstart.kinds.tokens import TokenClassification

KINDS: dict[str, type[TaskKind]] = {k.name: k for k in (SequenceClassification, TokenClassification)}
DEFAULT = SequenceClassification.name

__all__ = ["DEFAULT", "KINDS", "TaskKind"]
