"""Causal language modelling (GPT): predict every next token, with teacher forcing.

Documents are tokenised, each followed by the end-of-text token (so that the model learns where a
document ends and does not read one as the continuation of the previous), concatenated and cut into
full blocks: no padding, so no compute is spent on pad tokens. Labels are the inputs themselves; the
model (``GPT2LMHeadModel`` and every ``AutoModelForCausalLM``) shifts them by one position inside
its loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from transformers import PreTrainedTokenizerBase, default_data_collator

from warmstart.objectives.common import Blocks, pack, separator_id, tokenize


def dataset(
    tokenizer: PreTrainedTokenizerBase,
    docs: Sequence[str],
    block_size: int,
    source: str = "the corpus",
) -> Blocks:
    """Packed blocks of ``block_size`` tokens; each item is ``{"input_ids", "attention_mask",
    "labels"}`` with ``labels == input_ids``. UserError when the corpus is shorter than one
    block."""
    # A GPT-2 tokenizer has no separator token: separator_id falls back to its <|endoftext|>.
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else separator_id(tokenizer)
    blocks = pack([d.ids for d in tokenize(tokenizer, docs)], block_size, eos, source=source)
    return Blocks(blocks, labels=True)


def collator() -> Callable[[list[dict]], dict]:
    """Stacks the (equal-length) items into tensors: ``input_ids``, ``attention_mask``, ``labels``.

    Not ``DataCollatorForLanguageModeling(mlm=False)``: it sets labels equal to the pad id to -100,
    and GPT-2 tokenizers use <|endoftext|> as pad token, so the model would never learn to end a
    document."""
    return default_data_collator
