"""Decoding with a causal LM through transformers: greedy/sampling/beam search, per-prompt token
budgets, stop strings, finish reasons and streaming. Shared by `warmstart generate` and the server's
/generate. Which options a request may combine and how long a completion may be are in
inference/generation_options.py."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import TextIO

import numpy as np
import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextStreamer

from warmstart.config import GenerateConfig

# re-exported: decoding's callers use them
from warmstart.inference.generation_options import (  # noqa: F401
    DEFAULT_BEAMS,
    DEFAULT_NEW_TOKENS,
    Generation,
    check_options,
    finish,
    sampling_options,
    strategy,
    token_budget,
)
from warmstart.models.causal import CausalLM


def complete(
    lm: CausalLM,
    prompts: list[str],
    ids: list[list[int]],
    budgets: list[int],
    gen_config: GenerationConfig,
    stops: list[str],
    streamer: TextStreamer | None = None,
) -> list[Generation]:
    """One batch of prompts (their token ids and budgets) decoded into Generations, in the batch's
    order."""
    with torch.inference_mode():
        rows = generate_ids(lm, ids, budgets, gen_config, stops, streamer)
    n, ends = gen_config.num_return_sequences or 1, eos_ids(lm)
    out = []
    for k, (prompt, x, budget) in enumerate(zip(prompts, ids, budgets)):
        done = [
            finish(decode_of(lm.tokenizer), x, row, budget, stops, ends)
            for row in rows[k * n : (k + 1) * n]
        ]
        out.append(
            Generation(
                prompt, [d[0] for d in done], len(x), [d[1] for d in done], [d[2] for d in done]
            )
        )
    return out


def seed_all(seed: int) -> None:
    """What transformers.set_seed does for the CPU and CUDA (random, numpy, torch), without
    importing transformers.trainer_utils: that import alone took 1.3 s of a 7 s `generate`
    process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator, CUDA's included


def generation_config(
    cfg: GenerateConfig, model_config: GenerationConfig, stops: list[str]
) -> GenerationConfig:
    """The GenerationConfig for model.generate; options left None fall back to the model's own
    defaults."""
    how = strategy(cfg, bool(getattr(model_config, "do_sample", False)))
    gc = GenerationConfig(
        do_sample=how == "sample",
        num_beams=(cfg.num_beams or DEFAULT_BEAMS) if how == "beam" else 1,
        num_return_sequences=cfg.num_return_sequences,
        repetition_penalty=cfg.repetition_penalty,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        stop_strings=stops or None,
        pad_token_id=model_config.pad_token_id,
    )
    if how == "sample":
        for name in ("temperature", "top_k", "top_p", "typical_p"):
            if getattr(cfg, name) is not None:
                setattr(gc, name, getattr(cfg, name))
    else:
        # The model's sampling defaults (e.g. temperature 0.7) mean nothing here; unset, they cannot
        # trip checks.
        gc.temperature, gc.top_k, gc.top_p, gc.typical_p = 1.0, 50, 1.0, 1.0
    return gc


def generate_ids(
    lm: CausalLM,
    prompt_ids: list[list[int]],
    budgets: list[int],
    gen_config: GenerationConfig,
    stops: list[str],
    streamer: TextStreamer | None,
) -> list[list[int]]:
    """Generated token ids for each prompt's each sequence (rows: prompt-major), padding
    included."""
    enc = lm.tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt")
    device = lm.model.device
    input_ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    gc = copy.deepcopy(gen_config)
    gc.max_new_tokens = max(budgets)
    out = lm.model.generate(
        input_ids=input_ids,
        attention_mask=attention,
        generation_config=gc,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([PerPromptBudget(budgets, input_ids.shape[1])]),
        tokenizer=lm.tokenizer if stops else None,
    )
    return out[:, input_ids.shape[1] :].tolist()


class PerPromptBudget(StoppingCriteria):
    """Ends each row at its own prompt's token budget: a batch shares one padded length, budgets
    differ."""

    def __init__(self, budgets: list[int], prompt_len: int):
        self.budgets, self.prompt_len = budgets, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: object, **kwargs) -> torch.Tensor:
        # Rows are prompt-major (the sequences or beams of prompt 0, then those of prompt 1, ...).
        per_prompt = input_ids.shape[0] // len(self.budgets)
        budget = torch.tensor(self.budgets, device=input_ids.device).repeat_interleave(per_prompt)
        return (input_ids.shape[1] - self.prompt_len) >= budget


def decode_of(tokenizer) -> Callable[[list[int]], str]:
    """A transformers tokenizer's decoding as ``finish`` reads it: special tokens left out."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def eos_ids(lm: CausalLM) -> set[int]:
    """Every token that ends a sequence: the tokenizer's and the generation config's (Llama 3 has
    several)."""
    ids = {lm.tokenizer.eos_token_id}
    eos = lm.model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos])
    return ids - {None}


class Streamer(TextStreamer):
    """TextStreamer to any stream, holding back text that may be the start of a stop string."""

    def __init__(self, tokenizer, out: TextIO, stops: list[str]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.stops, self.pending, self.stopped = out, stops, "", False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.stopped:
            return
        self.pending += text
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            self.out.write(self.pending[: min(hits)])
            self.pending, self.stopped = "", True
        else:
            keep = (
                0
                if stream_end
                else max(
                    (
                        k
                        for s in self.stops
                        for k in range(1, len(s))
                        if self.pending.endswith(s[:k])
                    ),
                    default=0,
                )
            )
            self.out.write(self.pending[: len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep :]
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def complete_texts(
    lm: CausalLM,
    ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    num_beams: int = 1,
    progress: bool = False,
) -> list[str]:
    """The completion of each prompt (token ids): see ``complete_all``."""
    return [
        g.completions[0]
        for g in complete_all(lm, ids, max_new_tokens, batch_size, num_beams, progress)
    ]


def complete_all(
    lm: CausalLM,
    ids: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    num_beams: int = 1,
    progress: bool = False,
) -> list[Generation]:
    """Each prompt (token ids) completed without sampling: greedy, or beam search with
    ``num_beams``; at most ``max_new_tokens`` each, said outright (never generate's default of 20).
    Prompts of similar length are batched together; results come back in the prompts' order. For
    scoring generated text (finetune --task causal-lm, evaluate and predict on an instruction-tuned
    model)."""
    eos = sorted(eos_ids(lm))
    gen_config = GenerationConfig(
        do_sample=False,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        pad_token_id=lm.tokenizer.pad_token_id,
        eos_token_id=eos,
    )
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[Generation | None] = [None] * len(ids)
    from warmstart.progress import progress_bar

    for k in progress_bar(
        range(0, len(order), batch_size),
        desc="generate",
        unit="batch",
        enabled=progress,
        leave=False,
    ):
        batch = order[k : k + batch_size]
        gens = complete(
            lm,
            [""] * len(batch),
            [ids[i] for i in batch],
            [max_new_tokens] * len(batch),
            gen_config,
            [],
        )
        for i, g in zip(batch, gens):
            out[i] = g
    return [g for g in out if g is not None]
