"""`warmstart generate`: continue prompts with a causal LM (greedy, sampling or beam search).

Length limits, per prompt:
- ``max_new_tokens`` alone: each completion has at most that many tokens;
- ``max_length`` alone: prompt + completion is at most that many tokens (the seed's meaning), counted on the
  prompt's own tokens, so left padding in a batch never shortens a completion;
- both: both hold, the stricter wins (HF's pipeline silently drops ``max_length`` when ``max_new_tokens`` is set);
- neither: 100 new tokens.
The prompt's tokens are those the model sees: with ``chat``, the chat template's tokens count too.
"""

from __future__ import annotations

import bisect
import copy
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import torch
from tqdm.auto import tqdm

from warmstart.config import GenerateConfig, make
from warmstart.errors import UserError, where
from warmstart.lm import CausalLM
from warmstart.runs import atomic_write_text

# isort: off
# After warmstart.lm, which sets the offline environment and quiets transformers before it is first imported.
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextStreamer, set_seed
# isort: on

DEFAULT_NEW_TOKENS = 100
DEFAULT_BEAMS = 4


@dataclass
class Generation:
    prompt: str
    completions: list[str]
    prompt_tokens: int
    completion_tokens: list[int]  # tokens generated for each completion (end-of-sequence token not counted)
    finish_reasons: list[str]  # "eos": the model ended it, "stop": a stop string, "length": a length limit


def generate(config: GenerateConfig | None = None, *, stream_to: TextIO | None = None, **kwargs) -> list[Generation]:
    """Complete every prompt; with ``stream_to`` (and a streamable config) text is written there as it comes."""
    cfg = make(GenerateConfig, config, kwargs)
    stops = _check(cfg)
    prompts = read_prompts(cfg)
    lm = CausalLM.load(cfg.model, cfg.cpu)
    texts = [lm.chat_text(p, cfg.system) for p in prompts] if cfg.chat else prompts
    # A chat template writes its own special tokens (e.g. BOS); plain prompts get the tokenizer's usual ones.
    ids = [lm.tokenizer(t, add_special_tokens=not cfg.chat)["input_ids"] for t in texts]
    budgets = [_budget(cfg, len(x), lm.max_positions, f"prompt {i + 1}") for i, x in enumerate(ids)]
    if cfg.seed is not None:
        set_seed(cfg.seed)
    streaming = stream_to is not None and streamable(cfg)
    if streaming:  # one prompt at a time, in order, so that the text appears as it is produced
        batches = [[i] for i in range(len(ids))]
    else:  # similar lengths together: less padding
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[k:k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    gen_config = _generation_config(cfg, lm.model.generation_config, stops)
    results: list[Generation | None] = [None] * len(ids)
    eos_ids = _eos_ids(lm)
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not cfg.progress or streaming, leave=False):
        streamer = None
        if streaming:
            assert stream_to is not None
            i = batch[0]
            stream_to.write(_header(i, 0, len(ids), 1))
            if not cfg.chat:
                stream_to.write(prompts[i])
            streamer = Streamer(lm.tokenizer, stream_to, stops)
        with torch.inference_mode():
            rows = _run(lm, [ids[i] for i in batch], [budgets[i] for i in batch], gen_config, stops, streamer)
        n = cfg.num_return_sequences
        for k, i in enumerate(batch):
            outs = [_finish(lm.tokenizer, ids[i], row, budgets[i], stops, eos_ids) for row in rows[k * n:(k + 1) * n]]
            results[i] = Generation(prompts[i], [o[0] for o in outs], len(ids[i]), [o[1] for o in outs],
                                    [o[2] for o in outs])
        if streamer is not None:
            streamer.close()
    done = [r for r in results if r is not None]
    if cfg.out:
        atomic_write_text(Path(cfg.out), format_generations(done, cfg.format, cfg.chat))
    return done


def streamable(cfg: GenerateConfig) -> bool:
    """Whether text can be shown as it is produced: one sequence per prompt, plain text to the terminal."""
    return (cfg.stream and cfg.format == "text" and not cfg.out and cfg.num_return_sequences == 1
            and _strategy(cfg) != "beam")


def _strategy(cfg: GenerateConfig, model_samples: bool = False) -> str:
    if cfg.strategy != "auto":
        return cfg.strategy
    if cfg.num_beams is not None and cfg.num_beams > 1:
        return "beam"
    if cfg.num_return_sequences > 1 or _sampling_options(cfg) or model_samples:
        return "sample"
    return "greedy"


def _sampling_options(cfg: GenerateConfig) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in ("temperature", "top_k", "top_p", "typical_p")
            if getattr(cfg, k) is not None]


def _check(cfg: GenerateConfig) -> list[str]:
    """Reject impossible options before any loading; returns the stop strings with escapes decoded."""
    for name in ("max_length", "max_new_tokens", "num_return_sequences", "num_beams", "batch_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name, ok, rule in (("temperature", lambda v: v > 0, "more than 0"),
                           ("top_k", lambda v: v >= 0, "0 or more"),
                           ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
                           ("typical_p", lambda v: 0 < v <= 1, "in (0, 1]"),
                           ("repetition_penalty", lambda v: v > 0, "more than 0"),
                           ("no_repeat_ngram_size", lambda v: v >= 0, "0 or more")):
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise UserError(f"--{name.replace('_', '-')} must be {rule}, got {value}")
    strategy = _strategy(cfg)
    if strategy == "greedy" and cfg.num_return_sequences > 1:
        raise UserError("greedy decoding gives one completion per prompt; for several use --strategy sample or beam")
    if strategy in ("greedy", "beam") and _sampling_options(cfg):
        raise UserError(f"{', '.join(_sampling_options(cfg))} only apply to sampling, not to {strategy} decoding")
    if strategy == "beam":
        beams = cfg.num_beams or DEFAULT_BEAMS
        if beams < 2:
            raise UserError("beam search needs --num-beams 2 or more")
        if cfg.num_return_sequences > beams:
            raise UserError(f"beam search returns at most --num-beams ({beams}) completions per prompt")
    elif cfg.num_beams is not None and cfg.num_beams > 1:
        raise UserError(f"--num-beams is for beam search, not {strategy} decoding")
    if cfg.system is not None and not cfg.chat:
        raise UserError("--system needs --chat")
    stops = [s.replace("\\n", "\n").replace("\\t", "\t") for s in cfg.stop]
    if any(s == "" for s in stops):
        raise UserError("a stop string is empty")
    return stops


def read_prompts(cfg: GenerateConfig) -> list[str]:
    if cfg.prompts and cfg.input:
        raise UserError("give prompts as arguments or with --input, not both")
    if cfg.input:
        return _read_file(Path(cfg.input))
    if cfg.prompts:
        for i, p in enumerate(cfg.prompts):
            if not p.strip():
                raise UserError(f"prompt {i + 1} is empty")
        return list(cfg.prompts)
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError("no prompts: pass them as arguments, with --input FILE, or on standard input")
    prompts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise UserError("no prompts on standard input")
    return prompts


def _read_file(path: Path) -> list[str]:
    """One prompt per line (blank lines skipped), or JSON Lines: a string or an object with 'prompt' or 'text'."""
    if not path.is_file():
        raise UserError(f"input file '{path}' does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"input file '{path}' is not UTF-8 text") from None
    jsonl = path.suffix in (".jsonl", ".ndjson")
    prompts = []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        prompt: object = line
        if jsonl:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{where(path, row)} is not valid JSON") from None
            prompt = item.get("prompt", item.get("text")) if isinstance(item, dict) else item
            if not isinstance(prompt, str):
                raise UserError(f"{where(path, row)} needs a string or an object with a 'prompt' string")
        if not prompt.strip():
            raise UserError(f"{where(path, row)} has an empty prompt")
        prompts.append(prompt)
    if not prompts:
        raise UserError(f"input file '{path}' has no prompts")
    return prompts


def _budget(cfg: GenerateConfig, n_prompt: int, limit: int | None, label: str) -> int:
    """How many tokens this prompt may get (see the module docstring for the rule)."""
    new = cfg.max_new_tokens
    if cfg.max_length is not None:
        room = cfg.max_length - n_prompt
        if room < 1:
            raise UserError(f"{label} is {n_prompt} tokens, so --max-length {cfg.max_length} leaves no room "
                            "for a completion")
        new = room if new is None else min(new, room)
    if new is None:  # the default, shortened to what the model's positions allow
        new = min(DEFAULT_NEW_TOKENS, limit - n_prompt) if limit else DEFAULT_NEW_TOKENS
    if limit and (new < 1 or n_prompt + new > limit):
        raise UserError(f"{label} ({n_prompt} tokens) plus {max(new, 1)} new tokens is more than this model's "
                        f"limit of {limit} tokens")
    return new


def _generation_config(cfg: GenerateConfig, model_config: GenerationConfig, stops: list[str]) -> GenerationConfig:
    """The GenerationConfig for model.generate; options left None fall back to the model's own defaults."""
    strategy = _strategy(cfg, bool(getattr(model_config, "do_sample", False)))
    gc = GenerationConfig(
        do_sample=strategy == "sample",
        num_beams=(cfg.num_beams or DEFAULT_BEAMS) if strategy == "beam" else 1,
        num_return_sequences=cfg.num_return_sequences,
        repetition_penalty=cfg.repetition_penalty,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size,
        stop_strings=stops or None,
        pad_token_id=model_config.pad_token_id,
    )
    if strategy == "sample":
        for name in ("temperature", "top_k", "top_p", "typical_p"):
            if getattr(cfg, name) is not None:
                setattr(gc, name, getattr(cfg, name))
    else:
        # The model's sampling defaults (e.g. temperature 0.7) mean nothing here; unset, they cannot trip checks.
        gc.temperature, gc.top_k, gc.top_p, gc.typical_p = 1.0, 50, 1.0, 1.0
    return gc


def _run(lm: CausalLM, prompt_ids: list[list[int]], budgets: list[int], gen_config: GenerationConfig,
         stops: list[str], streamer: TextStreamer | None) -> list[list[int]]:
    """Generated token ids for each prompt's each sequence (rows: prompt-major), padding included."""
    enc = lm.tokenizer.pad({"input_ids": prompt_ids}, return_tensors="pt")
    device = lm.model.device
    input_ids, attention = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    gc = copy.deepcopy(gen_config)
    gc.max_new_tokens = max(budgets)
    out = lm.model.generate(
        input_ids=input_ids, attention_mask=attention, generation_config=gc, streamer=streamer,
        stopping_criteria=StoppingCriteriaList([PerPromptBudget(budgets, input_ids.shape[1])]),
        tokenizer=lm.tokenizer if stops else None,
    )
    return out[:, input_ids.shape[1]:].tolist()


class PerPromptBudget(StoppingCriteria):
    """Ends each row at its own prompt's token budget: a batch shares one padded length, budgets differ."""

    def __init__(self, budgets: list[int], prompt_len: int):
        self.budgets, self.prompt_len = budgets, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: object, **kwargs) -> torch.Tensor:
        # Rows are prompt-major (the sequences or beams of prompt 0, then those of prompt 1, ...).
        per_prompt = input_ids.shape[0] // len(self.budgets)
        budget = torch.tensor(self.budgets, device=input_ids.device).repeat_interleave(per_prompt)
        return (input_ids.shape[1] - self.prompt_len) >= budget


def _eos_ids(lm: CausalLM) -> set[int]:
    """Every token that ends a sequence: the tokenizer's and the generation config's (Llama 3 has several)."""
    ids = {lm.tokenizer.eos_token_id}
    eos = lm.model.generation_config.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos])
    return ids - {None}


def _finish(tokenizer, prompt_ids: list[int], row: list[int], budget: int, stops: list[str],
            eos_ids: set[int]) -> tuple[str, int, str]:
    """(completion text, tokens generated, finish reason) for one generated row."""
    row = row[:budget]
    end = next((k for k, t in enumerate(row) if t in eos_ids), None)
    reason = "eos" if end is not None else "length"
    row = row[:end] if end is not None else row
    text = _completion_text(tokenizer, prompt_ids, row)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        cut, stop = min(hits)
        # tokens up to the one that completed the stop string: the shortest prefix whose text contains it
        n = bisect.bisect_left(range(len(row) + 1), True,
                               key=lambda k: stop in _completion_text(tokenizer, prompt_ids, row[:k]))
        return text[:cut], n, "stop"
    return text, len(row), reason


def _completion_text(tokenizer, prompt_ids: list[int], row: list[int]) -> str:
    # Decoding the completion alone drops a leading space for SentencePiece tokenizers; decode it after the
    # prompt and take the difference instead (as the pipeline does).
    prompt = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full = tokenizer.decode(prompt_ids + row, skip_special_tokens=True)
    return full[len(prompt):] if full.startswith(prompt) else tokenizer.decode(row, skip_special_tokens=True)


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
            self.out.write(self.pending[:min(hits)])
            self.pending, self.stopped = "", True
        else:
            keep = 0 if stream_end else max(
                (k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
            self.out.write(self.pending[:len(self.pending) - keep])
            self.pending = self.pending[len(self.pending) - keep:]
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def _header(i: int, j: int, n_prompts: int, n_seqs: int) -> str:
    parts = ([f"prompt {i + 1}"] if n_prompts > 1 else []) + ([f"completion {j + 1}"] if n_seqs > 1 else [])
    return f"{'' if i == 0 and j == 0 else chr(10)}--- {', '.join(parts)} ---\n" if parts else ""


def format_generations(gens: list[Generation], fmt: str, chat: bool = False) -> str:
    """JSON Lines (one object per prompt), or the texts: prompt + completion (the reply alone with chat)."""
    if fmt == "jsonl":
        return "".join(json.dumps(asdict(g), ensure_ascii=False) + "\n" for g in gens)
    parts = []
    for i, g in enumerate(gens):
        for j, c in enumerate(g.completions):
            parts.append(_header(i, j, len(gens), len(g.completions)) + (c if chat else g.prompt + c) + "\n")
    return "".join(parts)
