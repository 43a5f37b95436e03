"""Task kinds: what `finetune` trains and what `evaluate`/`predict` read back. A kind brings its
data reading, labels, model head, encoding and collator, metrics and test evaluation; the engines,
run folder, resume, CLI and backends are shared. One module per kind, each with the same class shape
(``base.TaskKind``), registered in ``KINDS``.

    sequence   sequence classification: one label per text (or text pair)
    problems   the same for multi-label (a set of labels per text) and regression (numbers)
    tokens     token classification: a tag per word (named entities, part of speech)
    seq2seq    text to text: an encoder-decoder writes a target text for each source text
    causal_lm  instruction tuning of a causal LM on text pairs: the loss on the completion only
"""

from collections.abc import Callable

from warmstart.config import FinetuneConfig
from warmstart.kinds.base import TaskKind
from warmstart.kinds.causal_lm import CausalLMTuning
from warmstart.kinds.problems import sequence_kind
from warmstart.kinds.seq2seq import Seq2Seq
from warmstart.kinds.sequence import SequenceClassification
from warmstart.kinds.tokens import TokenClassification

# --task -> the kind for a config (sequence: single-label, multi-label or regression, from the
# labels).
KINDS: dict[str, Callable[[FinetuneConfig], TaskKind]] = {
    SequenceClassification.name: sequence_kind,
    TokenClassification.name: TokenClassification,
    Seq2Seq.name: Seq2Seq,
    CausalLMTuning.name: CausalLMTuning,
}
DEFAULT = SequenceClassification.name

__all__ = ["DEFAULT", "KINDS", "TaskKind"]
