"""Self-supervised pre-training objectives: the data side of ``warmstart pretrain``.

Each objective turns documents (from :func:`warmstart.data.corpus.read_corpus`) into a torch
``Dataset`` and a collator whose batches go straight into a transformers model
(``model(**batch).loss``):

- ``clm`` (AutoModelForCausalLM; from scratch: gpt2): ``input_ids``, ``attention_mask``, ``labels``
  (= input_ids; the model shifts them by one);
- ``mlm`` (AutoModelForMaskedLM; bert): ``input_ids`` (masked), ``attention_mask``, ``labels`` (the original
  token at masked positions, -100 elsewhere);
- ``mlm+nsp`` (AutoModelForPreTraining, i.e. BertForPreTraining; bert): as mlm plus ``token_type_ids`` and
  ``next_sentence_label`` (0: B follows A, 1: B is random);
- ``denoise`` (AutoModelForSeq2SeqLM; bart): ``input_ids`` and ``attention_mask`` of the noised text,
  ``labels`` the original text (-100 on padding); the model builds its decoder inputs from the labels.

:func:`prepare` builds both for an objective name; the modules :mod:`.clm`, :mod:`.mlm`, :mod:`.nsp`
and :mod:`.denoise` hold the pieces. :mod:`.common` holds what they share: tokenising documents
(with sentence boundaries), packing token streams into fixed blocks, and the dataset classes;
:mod:`.stream` the on-disk token cache that lets clm and mlm train on corpora larger than memory.

Randomness (masks, pairs, noise) comes from seeded generators, so a run is repeatable. Collators
keep their generator between calls; a resume that must see the same masks as an uninterrupted run
has to save and restore it: ``.generator`` (a torch.Generator, created at the first batch) of the
mlm collator and of ``NSPCollator.mlm``, ``.rng.bit_generator.state`` of the denoising collator.
transformers' masking collator seeds each DataLoader worker apart, the denoising collator does not:
use it in the main process (``num_workers=0``, the right choice on a small CPU anyway)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from warmstart.errors import UserError
from warmstart.objectives import clm, denoise, mlm, nsp
from warmstart.objectives.common import pack, separator_id, tokenize

__all__ = [
    "OBJECTIVES",
    "Objective",
    "clm",
    "denoise",
    "mlm",
    "nsp",
    "objective",
    "pack",
    "prepare",
    "separator_id",
    "tokenize",
]


@dataclass(frozen=True)
class Objective:
    name: str
    arch: str  # architecture of the from-scratch preset (warmstart.scratch.preset)
    model_class: str  # the transformers class whose forward takes this objective's batches
    description: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "clm",
            "gpt2",
            "AutoModelForCausalLM",
            "next-token prediction with teacher forcing (GPT)",
        ),
        Objective(
            "mlm", "bert", "AutoModelForMaskedLM", "masked language modelling, 15% of tokens (BERT)"
        ),
        Objective(
            "mlm+nsp",
            "bert",
            "AutoModelForPreTraining",
            "masked language modelling plus next-sentence prediction (BertForPreTraining)",
        ),
        Objective(
            "denoise",
            "bart",
            "AutoModelForSeq2SeqLM",
            "text infilling and sentence permutation, reconstructed by the decoder (BART)",
        ),
    )
}


def objective(name: str) -> Objective:
    """The objective called ``name``; UserError listing the choices otherwise."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective '{name}'; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def prepare(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    block_size: int,
    *,
    seed: int = 0,
    whole_word_mask: bool = False,
    mlm_probability: float = 0.15,
    source: str = "the corpus",
) -> tuple[torch.utils.data.Dataset, Callable[[list[dict]], dict]]:
    """Dataset and collator of objective ``name`` for documents ``docs``.

    ``block_size`` is the block length for clm and mlm and the maximum sequence length (special
    tokens included) for mlm+nsp and denoise. ``seed`` seeds pair sampling, masking and noise."""
    objective(name)
    if whole_word_mask and name not in ("mlm", "mlm+nsp"):
        raise UserError(f"whole-word masking applies to mlm and mlm+nsp, not to {name}")
    if name == "clm":
        return clm.dataset(tokenizer, docs, block_size, source=source), clm.collator()
    if name == "mlm":
        return (
            mlm.dataset(
                tokenizer, docs, block_size, whole_word_mask=whole_word_mask, source=source
            ),
            mlm.collator(
                tokenizer,
                whole_word_mask=whole_word_mask,
                mlm_probability=mlm_probability,
                seed=seed,
            ),
        )
    if name == "mlm+nsp":
        return (
            nsp.dataset(
                tokenizer,
                docs,
                block_size,
                seed=seed,
                whole_word_mask=whole_word_mask,
                source=source,
            ),
            nsp.NSPCollator(
                tokenizer,
                whole_word_mask=whole_word_mask,
                mlm_probability=mlm_probability,
                seed=seed,
            ),
        )
    return (
        denoise.dataset(tokenizer, docs, block_size, source=source),
        denoise.DenoisingCollator(tokenizer, seed=seed),
    )
