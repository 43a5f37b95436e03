"""Text-to-text inference: an encoder-decoder writes a target for each source text, in length-sorted
batches, greedy or with beam search, with an explicit limit on new tokens (never transformers'
default of 20 in all: a translation cut at 20 tokens scores as a bad one). Also the teacher-forced
loss of the targets, the valid loss that finetune logs each epoch. finetune's evaluation, its test
pass, evaluate, predict and generate all write through ``write_texts``."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from warmstart.config.options import ModelSourceOptions
from warmstart.data.batching import IGNORE, Encoded, sorted_batches
from warmstart.errors import UserError
from warmstart.inference.decoding import DEFAULT_BEAMS, complete_all
from warmstart.models.causal import CausalLM
from warmstart.models.device import pick_device
from warmstart.models.registry import (
    load_config,
    load_options,
    load_tokenizer,
    max_length_of,
    resolve,
)
from warmstart.progress import progress_bar


@dataclass
class Written:
    """One source's output: the text, the tokens generated (end-of-sequence not counted) and whether
    the model ended it itself (``eos``) or the token limit did (``length``)."""

    text: str
    tokens: int
    finish_reason: str


# What a text-to-text model does not do (it writes one output per text, greedy or with beam search):
# `generate`'s flags and /generate's fields that only a causal LM honours, refused by name rather
# than ignored.
CAUSAL_ONLY = (
    "max_length",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "seed",
    "system",
)


def causal_only_options(options: dict) -> list[str]:
    """The options given in ``options`` (generate's config or a /generate request, as a dict) that a
    text-to-text model cannot honour."""
    refused = [k for k in CAUSAL_ONLY if options.get(k) is not None]
    refused += [k for k in ("chat", "stream") if options.get(k)] + (
        ["stop"] if options.get("stop") else []
    )
    refused += ["num_return_sequences"] if (options.get("num_return_sequences") or 1) > 1 else []
    return refused + (["strategy"] if options.get("strategy") == "sample" else [])


def beams_of(options: dict) -> int:
    """Beams for a text-to-text request: num_beams, else DEFAULT_BEAMS for strategy beam, else
    greedy."""
    return options.get("num_beams") or (DEFAULT_BEAMS if options.get("strategy") == "beam" else 1)


def decoder_positions(config: object) -> int | None:
    """How many positions the decoder can read (learned position tables: BART, Marian, a BERT2BERT's
    decoder), or None where positions are relative (T5): a longer output would index past the
    table."""
    n = getattr(getattr(config, "decoder", None) or config, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def new_token_limit(config: object, wanted: int) -> int:
    """``wanted`` new tokens, or fewer where the decoder's positions end first (its start token
    takes one)."""
    n = decoder_positions(config)
    return max(1, min(wanted, n - 1)) if n else wanted


def write_texts(
    model,
    tokenizer,
    sources: list[str],
    max_length: int,
    max_new_tokens: int,
    num_beams: int = 1,
    batch_size: int = 32,
    device: torch.device | None = None,
    autocast: Callable | None = None,
    progress: bool = False,
    desc: str = "generate",
) -> list[Written]:
    """Generate a target for every source (cut to ``max_length`` tokens), in the sources' order.
    Deterministic: greedy (``num_beams`` 1) or beam search, never sampling, so a resumed run scores
    what an uninterrupted one does."""
    device = device or next(model.parameters()).device
    ids = tokenizer(
        sources,
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    gen = copy.deepcopy(model.generation_config)
    gen.max_new_tokens, gen.max_length, gen.min_length = (
        new_token_limit(model.config, max_new_tokens),
        None,
        0,
    )
    gen.num_beams, gen.do_sample, gen.num_return_sequences = num_beams, False, 1
    gen.early_stopping = num_beams > 1  # beam search stops when every beam has ended
    for key in (
        "temperature",
        "top_k",
        "top_p",
    ):  # sampling settings a checkpoint may carry; unused here
        setattr(gen, key, None)

    specials = set(tokenizer.all_special_ids)
    end = gen.eos_token_id if isinstance(gen.eos_token_id, int) else (gen.eos_token_id or [None])[0]
    out: list[Written | None] = [None] * len(sources)
    batches = sorted_batches(np.array([len(x) for x in ids]), batch_size)
    was_training = model.training
    model.eval()
    for idx in progress_bar(batches, desc=desc, unit="batch", enabled=progress, leave=False):
        batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt").to(device)
        # BART's configs force </s> as the last token the limit allows, so that an output cut at the
        # limit looks finished; without it a cut output says so (finish reason "length"). (Only a
        # keyword overrides it: a None in the generation config falls back to the model's.)
        with torch.inference_mode(), autocast() if autocast else contextlib.nullcontext():
            rows = model.generate(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                generation_config=gen,
                forced_eos_token_id=None,
            )
        for i, row in zip(
            idx, rows[:, 1:].tolist()
        ):  # the decoder's start token is not the model's output
            stop = row.index(end) if end in row else None
            kept = row[:stop] if stop is not None else [t for t in row if t != gen.pad_token_id]
            out[i] = Written(
                tokenizer.decode(
                    kept, skip_special_tokens=True, clean_up_tokenization_spaces=False
                ),
                sum(t not in specials for t in kept),
                "eos" if stop is not None else "length",
            )
    model.train(was_training)
    return [w for w in out if w is not None]


def target_loss(
    model,
    data: Encoded,
    batch_size: int,
    collate: Callable,
    device: torch.device,
    autocast: Callable | None = None,
) -> float:
    """Mean cross-entropy per target token (teacher forcing), padding excluded: the valid loss."""
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for idx in sorted_batches(data.lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate([data[i] for i in idx]).items()}
        with torch.inference_mode(), autocast() if autocast else contextlib.nullcontext():
            logits = model(**batch).logits
        labels = batch["labels"]
        total += torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        ).item()
        count += int((labels != IGNORE).sum())
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class TextToText:
    """A saved encoder-decoder with its tokenizer, for evaluate, predict, generate and finetune's
    test pass."""

    path: str
    model: object
    tokenizer: object
    max_length: int
    max_new_tokens: int  # the model's saved default (finetune: 1.5x its longest training target)

    @classmethod
    def load(
        cls,
        name: str,
        cpu: bool = False,
        precision: str = "auto",
        max_length: int | None = None,
        *,
        hub: ModelSourceOptions | None = None,
    ) -> TextToText:
        from transformers import AutoModelForSeq2SeqLM

        path = resolve(name, hub=hub)
        config = load_config(path)
        if not getattr(config, "is_encoder_decoder", False):
            arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
            raise UserError(
                f"model '{name}' is a {arch}, not an encoder-decoder (text-to-text) model"
            )
        tokenizer = load_tokenizer(path)
        device = pick_device(cpu)
        model = AutoModelForSeq2SeqLM.from_pretrained(path, **load_options(path))
        # On a CPU fp32 unless bf16 is asked for: the measured choice (models.precision) times
        # classifiers and causal LMs, not an encoder-decoder's decoding.
        if precision == "bf16" or (
            precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
        ):
            model = model.to(torch.bfloat16)
        model.to(device).eval()
        saved = getattr(model.generation_config, "max_new_tokens", None)
        return cls(
            path, model, tokenizer, max_length_of(tokenizer, config, max_length), saved or 256
        )

    def write(
        self,
        sources: list[str],
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[Written]:
        return write_texts(
            self.model,
            self.tokenizer,
            sources,
            self.max_length,
            max_new_tokens or self.max_new_tokens,
            num_beams,
            batch_size or 32,
            progress=progress,
        )


def instruction_tuned(config: object) -> bool:
    """A causal LM from `finetune --task causal-lm`: its prompt format is saved in its config."""
    return getattr(config, "instruction_template", None) is not None


@dataclass
class InstructionWriter:
    """A causal LM tuned by `finetune --task causal-lm` writing the target of each source, prompted
    as it was trained (its template, chat and system message, from its config) and decoded as its
    test pass decoded: the same ``write`` as TextToText, for evaluate and predict."""

    path: str
    lm: CausalLM
    max_length: int
    max_new_tokens: (
        int  # the model's saved default (finetune: 1.5x its longest training completion)
    )

    @classmethod
    def load(
        cls,
        name: str,
        cpu: bool = False,
        precision: str = "auto",
        max_length: int | None = None,
        *,
        hub: ModelSourceOptions | None = None,
    ) -> InstructionWriter:
        lm = CausalLM.load(name, cpu, precision, hub=hub)
        config = lm.model.config
        window = max_length or getattr(config, "train_max_length", None) or lm.max_positions or 1024
        return cls(
            lm.path, lm, window, getattr(lm.model.generation_config, "max_new_tokens", None) or 256
        )

    def write(
        self,
        sources: list[str],
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[Written]:
        # The prompt's end is kept where it is too long, as in training: the completion starts
        # there.
        ids = [self.lm.prompt_ids(s)[-(self.max_length - 1) :] for s in sources]
        gens = complete_all(
            self.lm,
            ids,
            max_new_tokens or self.max_new_tokens,
            batch_size or 32,
            num_beams,
            progress,
        )
        return [
            Written(g.completions[0], g.completion_tokens[0], g.finish_reasons[0]) for g in gens
        ]


def load_writer(
    name: str,
    cpu: bool = False,
    precision: str = "auto",
    max_length: int | None = None,
    *,
    hub: ModelSourceOptions | None = None,
) -> TextToText | InstructionWriter:
    """What evaluate and predict run on text pairs: an encoder-decoder, or an instruction-tuned
    causal LM."""
    if instruction_tuned(load_config(resolve(name, hub=hub))):
        return InstructionWriter.load(name, cpu, precision, max_length, hub=hub)
    return TextToText.load(name, cpu, precision, max_length, hub=hub)
