"""Loading a classifier (of sequences or of tokens): the saved head and its labels, or a new head
for the labels of a training set."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.modeling_outputs import TokenClassifierOutput

from warmstart.errors import UserError
from warmstart.models.registry import (
    Dropout,
    has_classifier_head,
    has_qa_head,
    has_tagger_head,
    load_options,
    set_dropout,
)


class SpanLogits(torch.nn.Module):
    """A question-answering model whose output is one ``logits`` tensor (batch, tokens, 2: start
    and end), so that the backends, the batched loop and the ONNX export read it as they read a
    tagger's per-token logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.qa = model
        self.config = model.config

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> SpanLogits:
        return cls(AutoModelForQuestionAnswering.from_pretrained(path, **kwargs))

    def forward(self, **batch: torch.Tensor) -> TokenClassifierOutput:
        out = self.qa(**batch)
        return TokenClassifierOutput(logits=torch.stack((out.start_logits, out.end_logits), -1))


HEADS = {
    "sequence": (AutoModelForSequenceClassification, has_classifier_head, "classification"),
    "tokens": (AutoModelForTokenClassification, has_tagger_head, "token classification"),
    "qa": (SpanLogits, has_qa_head, "question-answering"),
}


def load_classifier(
    path: str,
    label_names: list[str] | None = None,
    label_values: list[str] | None = None,
    dropout: Dropout = (None, None),
    head: str = "sequence",
):
    """Load a classifier of sequences (``head="sequence"``) or of tokens (``"tokens"``). With
    ``label_names`` a head for that many labels is added (or replaced when the checkpoint's head has
    another size); without, the saved head and its labels are used."""
    try:
        return _load(path, label_names, label_values, dropout, head)
    except OSError as e:
        raise UserError(
            f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}"
        ) from None


def _load(
    path: str,
    label_names: list[str] | None,
    label_values: list[str] | None,
    dropout: Dropout,
    head: str,
):
    auto, has_head, what = HEADS[head]
    if label_names is None:
        config = AutoConfig.from_pretrained(path, **load_options(path))
        if not has_head(config):
            raise UserError(
                f"model '{path}' has no {what} head; fine-tune it first with `warmstart finetune`"
                + {"tokens": " --task tokens", "qa": " --task qa"}.get(head, "")
            )
        return auto.from_pretrained(path, **load_options(path))
    id2label = dict(enumerate(label_names))
    config = AutoConfig.from_pretrained(
        path,
        **load_options(path),
        num_labels=len(label_names),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    set_dropout(config, dropout)
    # Kept in config.json so `evaluate` maps the raw values of a data file (e.g. 0/1) onto ids.
    config.label_values = label_values or list(label_names)
    try:
        return auto.from_pretrained(
            path, config=config, ignore_mismatched_sizes=True, **load_options(path)
        )
    except ValueError as e:
        reason = str(e).strip().splitlines()[0]
        raise UserError(
            f"model '{path}' cannot be used for {'sequence ' if head == 'sequence' else ''}{what}: "
            f"{reason}"
        ) from None
