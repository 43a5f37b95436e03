"""/generate: one prompt through the decoding pieces `warmstart generate` uses (inference.decoding:
limits, decoding options, stop strings, finish reasons) with the model loaded once, and server-sent
events for streaming.

Two routes: a model served through ONNX Runtime GenAI (its `model` an OnnxLM, see
inference/served_lm.py) decodes in GenAI's Engine, which batches the requests in flight
(serving/gen_engine.py); a transformers model decodes in the torch engine, which joins requests
at step boundaries (serving/torch_engine.py), except beam search and models whose cache it cannot
batch, decoded one request at a time in the generation thread. ``prepare``, ``run`` (and
``result_of``, awaited), ``events`` (server-sent events, async) and ``TextStream`` (an async
iterator of a request's text pieces) work alike for all; the server's routes await, so that a
request waiting for an engine holds no thread."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

from warmstart.config import GenerateConfig, build
from warmstart.errors import UserError
from warmstart.inference.decoding import (
    Generation,
    Streamer,
    check_options,
    complete,
    generation_config,
    seed_all,
    strategy,
    token_budget,
)
from warmstart.inference.onnx_lm import OnnxLM
from warmstart.inference.seq2seq import TextToText, beams_of, causal_only_options
from warmstart.models.causal import CausalLM
from warmstart.serving import gen_engine, torch_engine

logger = logging.getLogger("warmstart.serving")

OPTIONS = (
    "max_length",
    "max_new_tokens",
    "strategy",
    "temperature",
    "top_k",
    "top_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "num_beams",
    "num_return_sequences",
    "stop",
    "seed",
    "chat",
    "system",
)


class RequestError(Exception):
    """A request the model cannot honour: answered with ``status`` and a sentence naming
    ``field``."""

    def __init__(self, message: str, field: str | None = None, status: int = 422):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


@dataclass
class Prepared:
    cfg: GenerateConfig
    stops: list[str]
    prompt: str
    ids: list[int]
    budget: int


def field_of(message: str, default: str | None = None) -> str | None:
    """The request field a generate UserError is about: its ``--flag``, else the prompt or chat."""
    m = re.search(r"--([a-z][a-z-]*)", message)
    if m:
        return m.group(1).replace("-", "_")
    if "chat" in message:
        return "chat"
    if "prompt" in message or "tokens" in message:
        return "prompt"
    return default


def prepare(lm: CausalLM, options: dict[str, Any], max_new_tokens_limit: int) -> Prepared:
    """Check one request's options the way `warmstart generate` checks its flags; tokenise the
    prompt."""
    prompt = options["prompt"]
    values = {k: options[k] for k in OPTIONS if options.get(k) is not None}
    if values.get("max_new_tokens", 0) > max_new_tokens_limit:
        raise RequestError(
            f"max_new_tokens must be at most {max_new_tokens_limit} on this server, "
            f"got {values['max_new_tokens']}",
            "max_new_tokens",
        )
    try:
        cfg = build(
            GenerateConfig,
            {**values, "prompts": [prompt], "model": lm.name, "stream": False},
            source="the request",
        )
        stops = check_options(cfg)
        refused = gen_engine.refuses(cfg) if isinstance(lm.model, OnnxLM) else None
        if refused is not None:
            field, what = refused.split(": ")
            raise RequestError(
                f"this server generates with ONNX Runtime GenAI, which has no {what} (serve "
                "--backend torch has it)",
                field,
            )
        if options.get("stream") and (cfg.num_return_sequences > 1 or strategy(cfg) == "beam"):
            raise RequestError(
                "stream needs one completion per prompt and no beam search", "stream"
            )
        ids = lm.prompt_ids(prompt, cfg.chat, cfg.system)
        budget = token_budget(cfg, len(ids), lm.max_positions, "the prompt")
    except UserError as e:
        # The CLI's flags (--top-p) become the request's field names (top_p).
        message = re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", "_"), str(e))
        raise RequestError(message, field_of(str(e))) from None
    return Prepared(cfg, stops, prompt, ids, min(budget, max_new_tokens_limit))


@dataclass
class PreparedText:
    prompt: str
    max_new_tokens: int
    num_beams: int


def prepare_text(
    t2t: TextToText, options: dict[str, Any], max_new_tokens_limit: int
) -> PreparedText:
    """Check one request for an encoder-decoder: the options `warmstart generate` accepts for one (a
    limit on new tokens, greedy or beam search); the others are refused by name rather than
    ignored."""
    refused = causal_only_options(options)
    if refused:
        raise RequestError(
            "model is a text-to-text model: it writes one output per prompt, greedy or with "
            f"num_beams; {', '.join(refused)} {'is' if len(refused) == 1 else 'are'} for"
            " causal LMs",
            refused[0],
        )
    asked = options.get("max_new_tokens")
    if asked is not None and asked > max_new_tokens_limit:
        raise RequestError(
            f"max_new_tokens must be at most {max_new_tokens_limit} on this server, got {asked}",
            "max_new_tokens",
        )
    beams = beams_of(options)
    if options.get("strategy") == "greedy" and beams > 1:
        raise RequestError(
            "greedy decoding uses one beam: leave num_beams out or use strategy beam", "num_beams"
        )
    return PreparedText(
        options["prompt"], asked or min(t2t.max_new_tokens, max_new_tokens_limit), beams
    )


def run_text(t2t: TextToText, p: PreparedText) -> Generation:
    """The encoder-decoder's output for one prepared request (in the generation thread)."""
    w = t2t.write([p.prompt], p.max_new_tokens, p.num_beams, 1)[0]
    return Generation(
        p.prompt,
        [w.text],
        len(t2t.tokenizer(p.prompt, truncation=True, max_length=t2t.max_length)["input_ids"]),
        [w.tokens],
        [w.finish_reason],
    )


class Abandoned(Exception):
    """Raised in the generation thread once nobody waits for the result (deadline passed, client
    gone)."""


class _CancelCheck:
    """A streamer that streams nothing: transformers calls put() once per decoding step, which is
    where a generation whose request was abandoned stops instead of running to its token budget."""

    def __init__(self, cancelled: threading.Event) -> None:
        self.cancelled = cancelled

    def put(self, value: object) -> None:
        if self.cancelled.is_set():
            raise Abandoned

    def end(self) -> None:
        pass


def run(
    lm: CausalLM,
    p: Prepared,
    streamer: Streamer | None = None,
    cancelled: threading.Event | None = None,
) -> Generation:
    """Generate for one prepared request (in the generation thread: it blocks while the model runs);
    once ``cancelled`` is set it stops at the next token with `Abandoned` (beam search, which takes
    no streamer in transformers, runs to the end)."""
    if (
        cancelled is not None and cancelled.is_set()
    ):  # dropped while it waited for the generation thread
        raise Abandoned
    engine = engine_for(lm, p)
    if engine is not None:
        job = job_of(lm, p)
        if cancelled is not None:
            # The engine looks at it every step: the request stops at its next token.
            job.cancelled = cancelled
        try:
            return engine.submit(job).wait(cancelled)
        except gen_engine.Cancelled:
            raise Abandoned from None
    if p.cfg.seed is not None:
        seed_all(p.cfg.seed)
    gen_config = generation_config(p.cfg, lm.model.generation_config, p.stops)
    if streamer is None and cancelled is not None and (gen_config.num_beams or 1) == 1:
        streamer = _CancelCheck(cancelled)
    return complete(lm, [p.prompt], [p.ids], [p.budget], gen_config, p.stops, streamer)[0]


Engine = gen_engine.Engine | torch_engine.Engine
# Engines hold their model, so a model's id is never reused while its engine lives.
_engines: dict[int, Engine | None] = {}
_engines_lock = threading.Lock()
TORCH_MAX_BATCH = 32  # serve's --max-batch-size default, for an engine started without one


def engine_of(lm: CausalLM | None, max_batch: int | None = None) -> Engine | None:
    """The engine that decodes for ``lm``, started on first use: GenAI's for an OnnxLM (its own
    max_batch), else the torch engine with ``max_batch`` rows (the server starts it with its
    --max-batch-size); None for a model the torch engine cannot batch (or none at all)."""
    model = getattr(lm, "model", None)
    if model is None or not (isinstance(model, OnnxLM) or hasattr(model, "generation_config")):
        return None
    with _engines_lock:
        if id(model) not in _engines:
            if isinstance(model, OnnxLM):
                _engines[id(model)] = gen_engine.Engine(model, model.max_batch or 1)
            elif torch_engine.batchable(lm):
                _engines[id(model)] = torch_engine.Engine(lm, max_batch or TORCH_MAX_BATCH)
            else:
                _engines[id(model)] = None
        return _engines[id(model)]


def engine_for(lm: CausalLM, p: Prepared) -> Engine | None:
    """The engine that decodes this request, or None: the generation thread decodes it alone
    (beam search on the torch route, or a model the torch engine cannot batch)."""
    engine = engine_of(lm)
    if isinstance(engine, torch_engine.Engine) and torch_engine.refuses(p.cfg):
        return None
    return engine


def workers(lm: CausalLM | None) -> int:
    """Threads the server's generation pool needs: the torch engine's requests wait in the event
    loop (result_of, TextStream), so its pool only tokenizes prompts and runs beam searches;
    GenAI's Engine batches requests that wait in several threads at once; without an engine,
    transformers decodes one request at a time."""
    engine = engine_of(lm)
    if isinstance(engine, torch_engine.Engine):
        return 4
    model = getattr(lm, "model", None)
    return max(4, 4 * (model.max_batch or 1)) if isinstance(model, OnnxLM) else 1


def job_of(lm: CausalLM, p: Prepared, on_piece=None, on_end=None) -> gen_engine.Job:
    if isinstance(lm.model, OnnxLM):
        options = gen_engine.turn_options(lm.model, p.cfg)
    else:
        options = torch_engine.options_of(lm, p.cfg)
    return gen_engine.Job(
        p.ids,
        p.budget,
        p.stops,
        options,
        rows=p.cfg.num_return_sequences,
        prompt=p.prompt,
        on_piece=on_piece,
        on_end=on_end,
    )


async def result_of(lm: CausalLM, p: Prepared, executor: Executor) -> Generation:
    """``run``'s result, awaited: an engine's request holds no thread while it waits (its end is
    handed to the event loop); cancelling the await (deadline passed, client gone) cancels the
    request. Without an engine it runs in ``executor``, told to stop when cancelled."""
    loop = asyncio.get_running_loop()
    engine = engine_for(lm, p)
    if engine is None:
        cancelled = threading.Event()
        try:
            return await loop.run_in_executor(executor, run, lm, p, None, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
    ended = loop.create_future()

    def on_end() -> None:
        loop.call_soon_threadsafe(lambda: ended.done() or ended.set_result(None))

    job = engine.submit(job_of(lm, p, on_end=on_end))
    try:
        await ended
    except asyncio.CancelledError:
        job.cancel()
        raise
    try:
        return job.wait()  # ended: at once
    except gen_engine.Cancelled:
        raise Abandoned from None


class TextStream:
    """One request's text as it is generated, for an async consumer (an SSE route): ``async for
    piece in stream`` yields the pieces (they add up to the completion), then ``result`` holds the
    Generation. Leaving the loop early (client gone) stops the generation at its next token."""

    def __init__(self, lm: CausalLM, p: Prepared, executor: Executor):
        self.lm, self.p, self.executor = lm, p, executor
        self.result: Generation | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        engine = engine_for(self.lm, self.p)
        cancelled = threading.Event()
        if engine is not None:
            job = engine.submit(job_of(self.lm, self.p, put, lambda: put(_END)))
            cancel, outcome = job.cancel, lambda: job.wait()
        else:
            out = _QueueWriter(put)
            streamer = Streamer(self.lm.tokenizer, out, self.p.stops)
            future = self.executor.submit(run, self.lm, self.p, streamer, cancelled)
            future.add_done_callback(lambda _: put(_END))

            def cancel() -> None:
                out.abandoned = True
                cancelled.set()
                future.cancel()

            outcome = future.result
        try:
            while (piece := await items.get()) is not _END:
                yield piece
            self.result = outcome()
        finally:
            if self.result is None:
                cancel()


class _QueueWriter:
    """A text stream whose writes become queue items: what the decoding Streamer writes to. Once
    nobody reads (``abandoned``), a write stops the generation."""

    def __init__(self, put) -> None:
        self.put = put  # into an event loop's queue
        self.abandoned = False

    def write(self, s: str) -> int:
        if self.abandoned:
            raise Abandoned
        if s:
            self.put(s)
        return len(s)

    def flush(self) -> None:
        pass


_END = object()


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def failure_event(message: str, request_id: str) -> str:
    """The ``error`` event that ends a stream which failed or ran out of time after its headers were
    sent."""
    return sse("error", {"error": message, "request_id": request_id})


async def events(
    lm: CausalLM, p: Prepared, executor: Executor, request_id: str = "-"
) -> AsyncIterator[str]:
    """Server-sent events: ``token`` with each new piece of text, then ``done`` with the whole
    result (or ``error``); the pieces always add up to the final completion (text that may begin a
    stop string is held back). An async iterator: a stream waits in the event loop, not in a thread
    of Starlette's pool, so that many streaming clients do not exhaust it."""
    stream = TextStream(lm, p, executor)
    try:
        async for piece in stream:
            yield sse("token", {"text": piece})
    except Exception as e:  # noqa: BLE001 - headers are sent already: the error goes in the stream
        logger.error("request %s (POST /generate, streamed) failed", request_id, exc_info=e)
        yield failure_event(
            f"generation failed: the server log has the details under request id {request_id}",
            request_id,
        )
    else:
        assert stream.result is not None
        yield sse("done", asdict(stream.result))
