"""Encoder-decoder models for text-to-text (`finetune --task seq2seq`): a saved one (BART, T5,
Marian, mBART, a BART from `pretrain --objective denoise`, an EncoderDecoderModel), one warm-started
from two copies of an encoder, or a small BART from scratch.

Warm-starting follows Rothe et al. (2020, "Leveraging Pre-trained Checkpoints for Sequence
Generation Tasks"): the encoder and the decoder both start from the encoder's weights; the decoder
gains causal self-attention and freshly initialised cross-attention, and its output layer is tied to
its input embeddings (BERT2BERT, their best BERT setting on translation, rather than one set of
weights shared by both halves). The decoder starts from the tokenizer's [CLS] and ends with [SEP],
as that encoder saw them framing every text."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    BartForConditionalGeneration,
    EncoderDecoderModel,
    PreTrainedTokenizerBase,
)

from warmstart.errors import UserError
from warmstart.models import scratch
from warmstart.models.registry import Dropout, is_causal, load_config, load_options, set_dropout

# EncoderDecoderModel warns on its first forward pass that since transformers 4.12 it derives the
# decoder's inputs from the labels: the behaviour warmstart relies on, nothing for a user to act on.
warnings.filterwarnings(
    "ignore", message="Version v4.12.0 introduces a better way", category=FutureWarning
)


def is_encoder_decoder(config: object) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def load_seq2seq(
    path: str, name: str, tokenizer: PreTrainedTokenizerBase, dropout: Dropout = (None, None)
) -> torch.nn.Module:
    """The text-to-text model at ``path``: itself if it is an encoder-decoder, else warm-started
    from the encoder. A decoder-only model, or an encoder transformers cannot turn into a decoder,
    fails with one sentence."""
    config = load_config(path)
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if is_encoder_decoder(config):
        set_dropout(config, dropout)
        try:
            return AutoModelForSeq2SeqLM.from_pretrained(path, config=config, **load_options(path))
        except (OSError, ValueError) as e:
            raise UserError(
                f"model '{name}' cannot be loaded as an encoder-decoder: "
                f"{str(e).strip().splitlines()[0]}"
            ) from None
    if is_causal(config):
        raise UserError(
            f"model '{name}' is a {arch}, a decoder-only language model: --task seq2seq needs an"
            " encoder-decoder (BART, T5, Marian) or an encoder to warm-start one from (BERT,"
            " RoBERTa); fine-tune a decoder on pairs with --task causal-lm"
        )
    return warm_start(path, name, arch, tokenizer, dropout)


def warm_start(
    path: str, name: str, arch: str, tokenizer: PreTrainedTokenizerBase, dropout: Dropout
) -> EncoderDecoderModel:
    """An EncoderDecoderModel whose encoder and decoder are both loaded from the encoder at
    ``path``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    enc_config = AutoConfig.from_pretrained(path, **load_options(path))
    if enc_config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"model '{name}' is a {arch}, an encoder that cannot be warm-started as a decoder "
            f"(transformers has no causal-LM form of {enc_config.model_type}); use a BERT- or "
            "RoBERTa-style encoder "
            "(minilm), an encoder-decoder (BART, T5, Marian) or --from-scratch"
        )
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        raise UserError(
            f"the tokenizer of '{name}' has no start ([CLS] or <s>), end ([SEP] or </s>) or padding"
            " token, which a decoder warm-started from it needs"
        )
    set_dropout(enc_config, dropout)
    dec_config = AutoConfig.from_pretrained(
        path, is_decoder=True, add_cross_attention=True, **load_options(path)
    )
    set_dropout(dec_config, dropout)
    try:
        encoder = AutoModel.from_pretrained(path, config=enc_config, **load_options(path))
        decoder = AutoModelForCausalLM.from_pretrained(
            path, config=dec_config, **load_options(path)
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"model '{name}' cannot be loaded: {str(e).strip().splitlines()[0]}"
        ) from None
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    set_special_tokens(model, start, end, tokenizer.pad_token_id)
    return model


def set_special_tokens(model: Any, start: int, end: int, pad: int) -> None:
    """The ids generation and the loss need, on the config and on the generation config that
    generate() reads."""
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = start, end, pad
    model.config.vocab_size = model.config.decoder.vocab_size


def new_bart(
    texts: list[str],
    tokenizer_kind: str,
    size: str,
    vocab_size: int,
    max_length: int,
    dropout: Dropout = (None, None),
) -> tuple[BartForConditionalGeneration, PreTrainedTokenizerBase]:
    """A BART of the ``size`` preset with a tokenizer trained on ``texts`` (the training sources and
    targets): byte-level BPE, one token per character, or characters and recurring symbols
    (phonemes)."""
    if tokenizer_kind == "char":
        tokenizer = scratch.char_tokenizer(texts, max_length)
    elif tokenizer_kind == "symbols":
        tokenizer = scratch.symbol_tokenizer(texts, max_length)
    else:
        tokenizer = scratch.train_tokenizer(
            "bpe", texts, vocab_size=vocab_size, max_length=max_length, arch="bart"
        )
    config = scratch.preset("bart", size, tokenizer, max_length)
    set_dropout(config, dropout)
    # BART's own checkpoints force <s> as the first generated token; ours learns it from the labels.
    config.forced_bos_token_id = None
    return BartForConditionalGeneration(config), tokenizer
