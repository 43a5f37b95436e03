"""What a `generate` request may ask and how long each completion may be: the rules every decoding
route shares (transformers' generate, ONNX Runtime GenAI, the server), without importing torch.

Length limits, per prompt:
- ``max_new_tokens`` alone: each completion has at most that many tokens;
- ``max_length`` alone: prompt + completion is at most that many tokens (the seed's meaning),
  counted on the prompt's own tokens, so left padding in a batch never shortens a completion;
- both: both hold, the stricter wins (HF's pipeline silently drops ``max_length`` when
  ``max_new_tokens`` is set);
- neither: 100 new tokens.
The prompt's tokens are those the model sees: with ``chat``, the chat template's tokens count too.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from warmstart.config import GenerateConfig, given_flags
from warmstart.errors import UserError

DEFAULT_NEW_TOKENS = 100
DEFAULT_BEAMS = 4


@dataclass
class Generation:
    prompt: str
    completions: list[str]
    prompt_tokens: int
    completion_tokens: list[
        int
    ]  # tokens generated for each completion (end-of-sequence token not counted)
    finish_reasons: list[
        str
    ]  # "eos": the model ended it, "stop": a stop string, "length": a length limit


def strategy(cfg: GenerateConfig, model_samples: bool = False) -> str:
    if cfg.strategy != "auto":
        return cfg.strategy
    if cfg.num_beams is not None and cfg.num_beams > 1:
        return "beam"
    if cfg.num_return_sequences > 1 or sampling_options(cfg) or model_samples:
        return "sample"
    return "greedy"


def sampling_options(cfg: GenerateConfig) -> list[str]:
    return given_flags(cfg, ("temperature", "top_k", "top_p", "typical_p"))


def check_options(cfg: GenerateConfig) -> list[str]:
    """Reject impossible combinations before any loading (each option's own range is checked when
    the config is built); returns the stop strings with escapes decoded."""
    how = strategy(cfg)
    if how == "greedy" and cfg.num_return_sequences > 1:
        raise UserError(
            "greedy decoding gives one completion per prompt; for several use --strategy sample or"
            " beam"
        )
    if how in ("greedy", "beam") and sampling_options(cfg):
        raise UserError(
            f"{', '.join(sampling_options(cfg))} only apply to sampling, not to {how} decoding"
        )
    if how == "beam":
        beams = cfg.num_beams or DEFAULT_BEAMS
        if beams < 2:
            raise UserError("beam search needs --num-beams 2 or more")
        if cfg.num_return_sequences > beams:
            raise UserError(
                f"beam search returns at most --num-beams ({beams}) completions per prompt"
            )
    elif cfg.num_beams is not None and cfg.num_beams > 1:
        raise UserError(f"--num-beams is for beam search, not {how} decoding")
    if cfg.system is not None and not cfg.chat:
        raise UserError("--system needs --chat")
    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in cfg.stop]
    if any(s == "" for s in stops):
        raise UserError("a stop string is empty")
    return stops


def token_budget(cfg: GenerateConfig, n_prompt: int, limit: int | None, label: str) -> int:
    """How many tokens this prompt may get (see the module docstring for the rule)."""
    new = cfg.max_new_tokens
    if cfg.max_length is not None:
        room = cfg.max_length - n_prompt
        if room < 1:
            raise UserError(
                f"{label} is {n_prompt} tokens, so --max-length {cfg.max_length} leaves no room "
                "for a completion"
            )
        new = room if new is None else min(new, room)
    if new is None:  # the default, shortened to what the model's positions allow
        new = min(DEFAULT_NEW_TOKENS, limit - n_prompt) if limit else DEFAULT_NEW_TOKENS
    if limit and (new < 1 or n_prompt + new > limit):
        raise UserError(
            f"{label} ({n_prompt} tokens) plus {max(new, 1)} new tokens is more than this model's "
            f"limit of {limit} tokens"
        )
    return new


def finish(
    decode: Callable[[list[int]], str],
    prompt_ids: list[int],
    row: list[int],
    budget: int,
    stops: list[str],
    eos_ids: set[int],
) -> tuple[str, int, str]:
    """(completion text, tokens generated, finish reason) for one generated row; ``decode`` turns
    ids into text (special tokens left out), whichever route generated them."""
    row = row[:budget]
    end = next((k for k, t in enumerate(row) if t in eos_ids), None)
    reason = "eos" if end is not None else "length"
    row = row[:end] if end is not None else row
    text = completion_text(decode, prompt_ids, row)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        cut, stop = min(hits)
        # tokens up to the one that completed the stop string: the shortest prefix whose text
        # contains it
        n = bisect.bisect_left(
            range(len(row) + 1),
            True,
            key=lambda k: stop in completion_text(decode, prompt_ids, row[:k]),
        )
        return text[:cut], n, "stop"
    return text, len(row), reason


def completion_text(
    decode: Callable[[list[int]], str], prompt_ids: list[int], row: list[int]
) -> str:
    # Decoding the completion alone drops a leading space for SentencePiece tokenizers; decode it
    # after the prompt and take the difference instead (as the pipeline does).
    prompt = decode(prompt_ids)
    full = decode(prompt_ids + row)
    return full[len(prompt) :] if full.startswith(prompt) else decode(row)
