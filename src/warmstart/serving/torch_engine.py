"""Concurrent generation requests on the server's torch route, batched at step boundaries
(continuous batching): where ONNX Runtime GenAI does not apply (``--backend torch``, a GPU, an
architecture its builder does not export, e.g. GPT-2).

One thread owns the model. Each step runs one forward pass for every live sequence with its
key-value cache (a transformers DynamicCache, left-padded, with an attention mask and position ids
per row, so that padding changes nothing a row sees). A request that arrives is prefilled alone and
its cache joins the batch at the next step boundary (the shorter side padded on the left); a row
that ends (end-of-sequence token, token budget, stop string) or whose client is gone leaves the
batch at once. Each row decodes with its own options (transformers' logits processors) and, when
sampling, its own torch.Generator, so that a seeded request gives the same text in a batch as
alone. Requests are gen_engine.Job objects, streamed and finished by gen_engine's own functions,
so that both engines answer the server alike. At most ``max_batch`` rows decode at once; the
others wait in arrival order. Beam search is not batched here (serving/generation.py runs it one
request at a time)."""

from __future__ import annotations

import logging
import queue
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.cache_utils import DynamicCache, DynamicLayer

from warmstart.config import GenerateConfig
from warmstart.inference.decoding import decode_of, eos_ids, strategy
from warmstart.models.causal import CausalLM
from warmstart.serving.gen_engine import EngineThread, Job, end_row, notify, take_token

logger = logging.getLogger("warmstart.serving")


@dataclass(eq=False)  # rows compare by identity
class _Row:
    """One sequence in the batch: ``length`` real (unpadded) tokens are in the cache."""

    job: Job
    row: int
    length: int
    processors: LogitsProcessorList
    sample: bool
    generator: torch.Generator | None


class Engine(EngineThread):
    """The batch of sequences decoding on one transformers model, and the thread that drives it."""

    name = "warmstart-torch"

    def __init__(self, lm: CausalLM, max_batch: int):
        self.lm, self.model, self.max_batch = lm, lm.model, max(1, max_batch)
        self.eos = eos_ids(lm)
        self.decode = decode_of(lm.tokenizer)
        self.device = self.model.device
        self.steps = 0  # forward passes over the batch (prefills not counted)
        self.widest = 0  # most rows decoded in one step
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [rows, cached positions]: 0 where padded
        self.start()

    # --- the engine thread ---

    def _loop(self) -> None:
        waiting: deque[Job] = deque()
        with torch.inference_mode():
            while True:
                idle = not self.rows and not waiting
                try:
                    # Wait for work when idle; otherwise take what has arrived without waiting.
                    item = self.inbox.get() if idle else self.inbox.get_nowait()
                except queue.Empty:
                    item = False
                while item is not False:
                    if item is None:
                        self._fail_all("the server is shutting down", waiting)
                        return
                    waiting.append(item)
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        item = False
                self._leave([r for r in self.rows if r.job.cancelled.is_set()])
                self._admit(waiting)
                if self.rows:
                    try:
                        self._step()
                    except Exception as e:  # noqa: BLE001 - the rows in flight fail, the server lives
                        logger.error("the torch engine failed a step", exc_info=e)
                        self._fail_all(f"generation failed: {e}", deque())

    def _admit(self, waiting: deque[Job]) -> None:
        """Prefill the waiting jobs that fit in the batch, in arrival order (an empty batch takes
        the first whatever its size, so that n > max_batch still runs)."""
        while waiting:
            job = waiting[0]
            if job.cancelled.is_set():
                waiting.popleft()
                job.done.set()
                notify(job.on_end)
                continue
            if self.rows and len(self.rows) + job.rows > self.max_batch:
                return
            waiting.popleft()
            try:
                self._prefill(job)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                logger.error("the torch engine could not start a request", exc_info=e)
                job.error = f"generation failed: {e}"
                for row in range(job.rows):
                    end_row(job, row, self.decode, self.eos)

    def _prefill(self, job: Job) -> None:
        """The prompt's forward pass alone, its first token for each row, and its cache joined to
        the batch's (once per prompt: its n rows share it)."""
        ids = torch.tensor([job.ids], device=self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(len(job.ids), device=self.device)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float().expand(job.rows, -1)
        processors, sample = _processors(job.options), bool(job.options.get("do_sample"))
        seed = job.options.get("seed")
        rows = []
        for k in range(job.rows):
            generator = None
            if sample and seed is not None:
                # Each row its own stream, as the GenAI route's seeded rows: the text does not
                # depend on what else is in the batch.
                generator = torch.Generator(self.device).manual_seed((int(seed) + k) % 2**63)
            rows.append(_Row(job, k, len(job.ids), processors, sample, generator))
        kept = self._choose(rows, logits)
        if not kept:
            return
        once_each = torch.zeros(len(kept), dtype=torch.long, device=self.device)
        for layer in cache.layers:  # the prompt's cache, once per kept row
            layer.keys, layer.values = layer.keys[once_each], layer.values[once_each]
        self._join(cache, torch.ones(len(kept), len(job.ids), dtype=torch.long, device=self.device))
        self.rows.extend(kept)

    def _join(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """The new rows' cache appended to the batch's, the shorter side padded on the left."""
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left(old.keys, width, -2), _left(new.keys, width, -2)])
            old.values = torch.cat([_left(old.values, width, -2), _left(new.values, width, -2)])
        self.mask = torch.cat([_left(self.mask, width, -1), _left(mask, width, -1)])

    def _step(self) -> None:
        """One forward pass for every row: its last token in, its next token out."""
        assert self.cache is not None and self.mask is not None
        rows = self.rows
        last = [r.job.tokens[r.row][-1] for r in rows]
        self.mask = F.pad(self.mask, (0, 1), value=1)
        out = self.model(
            input_ids=torch.tensor(last, device=self.device)[:, None],
            attention_mask=self.mask,
            position_ids=torch.tensor([r.length for r in rows], device=self.device)[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.steps += 1
        self.widest = max(self.widest, len(rows))
        for r in rows:
            r.length += 1
        kept = self._choose(rows, out.logits[:, -1, :].float())
        self._leave([r for r in rows if r not in kept])

    def _choose(self, rows: list[_Row], logits: torch.Tensor) -> list[_Row]:
        """Each row's next token from its logits (greedy rows without processors in one argmax);
        returns the rows that go on."""
        plain = [i for i, r in enumerate(rows) if not r.sample and not r.processors]
        tokens: dict[int, int] = {}
        if plain:
            best = logits[plain].argmax(-1).tolist()
            tokens.update(zip(plain, best))
        # The other rows by job: a job's rows share their options and their length, so its
        # processors run once on all of them (each processor works row by row).
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            if i not in tokens:
                groups.setdefault(id(r.job), []).append(i)
        for group in groups.values():
            first = rows[group[0]]
            scores = logits[group]
            if first.processors:
                seen = [first.job.ids + first.job.tokens[rows[i].row] for i in group]
                scores = first.processors(torch.tensor(seen, device=self.device), scores)
            if not first.sample:
                tokens.update(zip(group, scores.argmax(-1).tolist()))
                continue
            probs = torch.softmax(scores, dim=-1)
            if first.generator is None:  # unseeded: one draw for the group
                tokens.update(zip(group, torch.multinomial(probs, 1)[:, 0].tolist()))
                continue
            for k, i in enumerate(group):  # seeded: each row from its own generator
                drawn = torch.multinomial(probs[k : k + 1], 1, generator=rows[i].generator)
                tokens[i] = int(drawn[0, 0])
        kept = []
        for i, r in enumerate(rows):
            job, token = r.job, tokens[i]
            take_token(job, r.row, token, self.decode, self.eos)
            over = token in self.eos or len(job.tokens[r.row]) >= job.budget
            if over or job.ended[r.row] or job.cancelled.is_set():
                end_row(job, r.row, self.decode, self.eos)
            else:
                kept.append(r)
        return kept

    def _leave(self, gone: list[_Row]) -> None:
        """Rows out of the batch: their cache and mask rows dropped, and the columns that are
        padding for every row left trimmed."""
        if not gone:
            return
        for r in gone:
            if not r.job.ended[r.row]:  # cancelled: its waiter learns it from end_row
                end_row(r.job, r.row, self.decode, self.eos)
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep or self.cache is None or self.mask is None:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        first = int(mask.any(0).nonzero()[0, 0])  # columns before it are padding in every row
        self.mask = mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]

    def _fail_all(self, message: str, waiting: deque[Job]) -> None:
        jobs = {id(r.job): r.job for r in self.rows} | {id(j): j for j in waiting}
        self.rows, self.cache, self.mask = [], None, None
        for job in jobs.values():
            job.error = job.error or message
            for row in range(job.rows):
                end_row(job, row, self.decode, self.eos)
        waiting.clear()


def _left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` padded with zeros on the left of ``dim`` to ``width``."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(t, pad)


def _processors(options: dict) -> LogitsProcessorList:
    """transformers' logits processors for a request's options, in generate's order (processors,
    then the sampling warpers)."""
    out = LogitsProcessorList()
    penalty = options.get("repetition_penalty")
    if penalty is not None and penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(penalty))
    ngram = options.get("no_repeat_ngram_size")
    if ngram:
        out.append(NoRepeatNGramLogitsProcessor(ngram))
    if options.get("do_sample"):
        if options["temperature"] != 1.0:
            out.append(TemperatureLogitsWarper(options["temperature"]))
        if options["top_k"]:
            out.append(TopKLogitsWarper(options["top_k"]))
        if options["top_p"] < 1.0:
            out.append(TopPLogitsWarper(options["top_p"]))
        if options.get("typical_p") is not None and options["typical_p"] < 1.0:
            out.append(TypicalLogitsWarper(options["typical_p"]))
    return out


def options_of(lm: CausalLM, cfg: GenerateConfig) -> dict:
    """A request's decoding options: its own, else the model's generation config's, else
    transformers' defaults (the order generate fills a GenerationConfig in)."""
    model = lm.model.generation_config

    def pick(name: str, default: object) -> object:
        value = getattr(cfg, name, None)
        value = getattr(model, name, None) if value is None else value
        return default if value is None else value

    sample = strategy(cfg, bool(getattr(model, "do_sample", False))) == "sample"
    options: dict = {
        "do_sample": sample,
        "seed": cfg.seed,
        "repetition_penalty": pick("repetition_penalty", None),
        "no_repeat_ngram_size": pick("no_repeat_ngram_size", None),
    }
    if sample:
        for name, default in (("temperature", 1.0), ("top_k", 50), ("top_p", 1.0)):
            options[name] = pick(name, default)
        options["typical_p"] = pick("typical_p", None)
    return options


def refuses(cfg: GenerateConfig) -> bool:
    """Whether this engine leaves the request to transformers' generate (beam search)."""
    return strategy(cfg) == "beam"


def batchable(lm: CausalLM) -> bool:
    """Whether the model keeps a plain DynamicCache (one key and value tensor per layer, no sliding
    window) that rows can be joined into and selected out of: tried on a two-token prompt."""
    model = lm.model
    try:
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(
                input_ids=torch.zeros(1, 2, dtype=torch.long, device=model.device),
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
    except Exception as e:  # noqa: BLE001 - a model that cannot: decoded one request at a time
        logger.info("the torch route decodes one request at a time for this model: %s", e)
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
