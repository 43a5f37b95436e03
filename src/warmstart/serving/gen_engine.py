"""Concurrent generation requests batched by ONNX Runtime GenAI's Engine, for the server.

One thread owns the Engine (GenAI's objects are not shared between threads): it admits the
requests handed to it, runs one decoding step for every request in the batch, and hands each
request its new tokens. A request streams its text as it comes (text that may begin a stop string
is held back, as decoding.Streamer does, so the pieces add up to the final completion), ends at
its end-of-sequence token, its token budget or a stop string, and stops at the next step once
nobody waits for it (client gone, deadline passed).

GenAI 0.18 batches continuously only with paged attention, which its builder makes for CUDA and
WebGPU; on a CPU its Engine batches statically: the requests waiting when a batch starts decode
together (up to ``max_batch``), and those arriving meanwhile form the next batch. See
docs/quantised-generation.md for what that costs in time to first token."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from warmstart.inference.generation_options import (
    Generation,
    completion_text,
    finish,
    strategy,
)
from warmstart.inference.onnx_lm import OnnxLM

logger = logging.getLogger("warmstart.serving")


class Cancelled(Exception):
    """The request was given up (client gone, deadline passed) before it finished."""


def hold_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may not be sent yet: the start of a stop string,
    or a character still being decoded (a multi-byte character split across tokens)."""
    keep = max(
        (k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])),
        default=0,
    )
    tail = len(text) - len(text.rstrip("\ufffd"))
    return max(keep, tail)


@dataclass
class Job:
    """One request: ``rows`` sequences of one prompt, each at most ``budget`` new tokens."""

    ids: list[int]
    budget: int
    stops: list[str]
    options: dict  # TurnOptions: do_sample, temperature, top_k, top_p, repetition_penalty, seed
    rows: int = 1
    prompt: str = ""
    on_piece: Callable[[str], None] | None = None  # streaming (one row): called in the engine
    on_end: Callable[[], None] | None = None  # called in the engine once the job has ended
    tokens: list[list[int]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    sent: str = ""
    result: Generation | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.tokens = [[] for _ in range(self.rows)]
        self.ended = [False] * self.rows

    def cancel(self) -> None:
        self.cancelled.set()

    def wait(self, cancelled: threading.Event | None = None) -> Generation:
        """The result, once every row has ended (in the waiting thread); Cancelled when
        ``cancelled`` is set first."""
        while not self.done.wait(0.05):
            if cancelled is not None and cancelled.is_set():
                self.cancel()
                raise Cancelled
        if self.error is not None:
            raise RuntimeError(self.error)
        if self.result is None:
            raise Cancelled
        return self.result


class EngineThread:
    """What both engines share: an inbox of jobs (None: shut down) and the one thread that owns the
    model and runs ``_loop``."""

    name = "warmstart-engine"

    def start(self) -> None:
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        self.inbox.put(job)
        return job

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        raise NotImplementedError


class Engine(EngineThread):
    """GenAI's Engine for one exported model, and the thread that drives it."""

    name = "warmstart-genai"

    def __init__(self, lm: OnnxLM, max_batch: int):
        self.lm, self.og, self.max_batch = lm, lm.og, max_batch
        self.steps = 0
        # GenAI's Engine answers only the thread that made it: the loop's own.
        self.start()

    # --- the engine thread ---

    def _decode(self, ids: list[int]) -> str:
        return self.lm.text(ids)

    def _loop(self) -> None:
        self.engine = self.og.Engine(self.lm.model)
        self.events = self.engine.create_event_buffer(max(64, 4 * self.max_batch))
        live: dict[int, tuple[Job, int, object, int]] = {}  # id(request) -> job, row, request, turn
        stopping: set[int] = set()  # requests whose turn was cancelled (their end event follows)
        while True:
            idle = not live and not self.engine.has_pending_requests()
            try:
                # Wait for work when idle; otherwise take what has arrived without waiting.
                item = self.inbox.get() if idle else self.inbox.get_nowait()
            except queue.Empty:
                item = False
            while item is not False:
                if item is None:
                    return
                try:
                    self._admit(item, live)
                except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                    logger.error("GenAI's engine refused a request", exc_info=e)
                    item.error = f"generation failed: {e}"
                    item.done.set()
                    notify(item.on_end)
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    item = False
            for key, (job, row, request, turn) in live.items():
                if key not in stopping and (job.cancelled.is_set() or job.ended[row]):
                    stopping.add(key)
                    request.cancel_turn(turn)
            if not self.engine.has_pending_requests():
                for job, row, request, _ in live.values():
                    self._end_row(job, row, request)
                live.clear()
                stopping.clear()
                continue
            try:
                events = self.engine.run(self.events)
            except Exception as e:  # noqa: BLE001 - the requests in flight fail, the server lives
                logger.error("GenAI's engine failed a step", exc_info=e)
                for job, row, request, _ in live.values():
                    job.error = f"generation failed: {e}"
                    self._end_row(job, row, request)
                live.clear()
                stopping.clear()
                continue
            self.steps += 1
            for event in events:
                entry = live.get(id(event.request))
                if entry is None:
                    continue
                job, row, request, _ = entry
                flags = int(event.flags.value)
                if flags & int(self.og.EngineEventFlags.FAILED.value):
                    job.error = f"generation failed ({event.error_code.name})"
                if flags & int(self.og.EngineEventFlags.TOKEN.value) and not job.ended[row]:
                    self._token(job, row, int(event.token))
                if flags & int(
                    self.og.EngineEventFlags.TURN_FINISHED.value
                    | self.og.EngineEventFlags.FAILED.value
                ):
                    del live[id(event.request)]
                    stopping.discard(id(event.request))
                    self._end_row(job, row, request)

    def _admit(self, job: Job, live: dict) -> None:
        if job.cancelled.is_set():
            job.done.set()
            notify(job.on_end)
            return
        og = self.og
        if job.options.get("do_sample") and job.options.get("seed") is not None:
            # The CPU's static Engine takes no per-request seed: a seeded sample runs alone, on
            # GenAI's Generator (the batch waits for it), so that its seed reproduces it.
            self._run_alone(job)
            return
        for row in range(job.rows):
            # The request's own length: the static batch's key-value cache is sized by it (the
            # model's 8192 positions cost SmolLM2 377 MB a sequence, and seconds to allocate).
            limits = og.RequestOptions()
            limits.set_max_session_tokens(len(job.ids) + job.budget)
            request = self.engine.create_request(options=limits)
            turn = og.TurnOptions(request)
            turn.set_max_generated_tokens(job.budget)
            o = job.options
            turn.set_do_sample(bool(o.get("do_sample")))
            if o.get("do_sample"):
                turn.set_temperature(float(o["temperature"]))
                turn.set_top_k(int(o["top_k"]))
                turn.set_top_p(float(o["top_p"]))
            if o.get("repetition_penalty") is not None:
                turn.set_repetition_penalty(float(o["repetition_penalty"]))
            if o.get("no_repeat_ngram_size"):
                turn.set_no_repeat_ngram_size(int(o["no_repeat_ngram_size"]))
            turn_id = request.begin_turn(np.asarray(job.ids, dtype=np.int32), turn)
            live[id(request)] = (job, row, request, turn_id)

    def _run_alone(self, job: Job) -> None:
        og, o = self.og, job.options
        for row in range(job.rows):
            options = {
                "max_length": len(job.ids) + job.budget,
                "do_sample": True,
                "temperature": float(o["temperature"]),
                "top_k": int(o["top_k"]) or 1 << 30,  # transformers' 0: every token
                "top_p": float(o["top_p"]),
                "random_seed": (int(o["seed"]) + row) % 2**31,  # each row its own stream
            }
            if o.get("repetition_penalty") is not None:
                options["repetition_penalty"] = float(o["repetition_penalty"])
            params = og.GeneratorParams(self.lm.model)
            params.set_search_options(**options)
            gen = og.Generator(self.lm.model, params)
            gen.append_tokens(job.ids)
            while not (gen.is_done() or job.ended[row] or job.cancelled.is_set()):
                if len(job.tokens[row]) >= job.budget:
                    break
                gen.generate_next_token()
                self._token(job, row, int(gen.get_next_tokens()[0]))
            self._end_row(job, row, None)

    def _token(self, job: Job, row: int, token: int) -> None:
        take_token(job, row, token, self._decode, self.lm.eos)

    def _end_row(self, job: Job, row: int, request) -> None:
        try:
            if request is not None:
                request.close()
        except RuntimeError:  # already released by the engine
            pass
        end_row(job, row, self._decode, self.lm.eos)


def take_token(
    job: Job, row: int, token: int, decode: Callable[[list[int]], str], eos: set[int]
) -> None:
    """A row's new token (in the engine's thread): a stop string in its text ends the row, text
    that cannot begin one streams (row 0). Shared by the GenAI and the torch engines."""
    job.tokens[row].append(token)
    if token in eos:
        return
    if not job.stops and job.on_piece is None:
        return
    text = completion_text(decode, job.ids, job.tokens[row])
    if any(s in text for s in job.stops):
        job.ended[row] = True  # the engine thread cancels its turn before the next step
        return
    if job.on_piece is not None and row == 0:
        ready = text[: len(text) - hold_back(text, job.stops)]
        if ready.startswith(job.sent) and len(ready) > len(job.sent):
            notify(job.on_piece, ready[len(job.sent) :])
            job.sent = ready


def end_row(job: Job, row: int, decode: Callable[[list[int]], str], eos: set[int]) -> None:
    """A row has ended (in the engine's thread); once every row of the job has, its result is
    set (unless cancelled or failed), the rest of its text streamed, and its waiter woken."""
    job.ended[row] = True
    if not all(job.ended) or job.done.is_set():
        return
    if not job.cancelled.is_set() and job.error is None:
        done = [finish(decode, job.ids, t, job.budget, job.stops, eos) for t in job.tokens]
        job.result = Generation(
            job.prompt,
            [d[0] for d in done],
            len(job.ids),
            [d[1] for d in done],
            [d[2] for d in done],
        )
        if job.on_piece is not None:
            text = job.result.completions[0]
            if text.startswith(job.sent) and len(text) > len(job.sent):
                notify(job.on_piece, text[len(job.sent) :])
                job.sent = text
    job.done.set()
    notify(job.on_end)


def notify(fn: Callable | None, *args) -> None:
    """A consumer's callback, in the engine thread: one whose reader is gone (a closed event loop)
    must not stop the engine for the others."""
    if fn is None:
        return
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001
        logger.debug("a generation consumer's callback failed: %s", e)


def turn_options(lm: OnnxLM, cfg) -> dict:
    """A request's decoding options as the Engine's turns take them (the model's own defaults
    where the request leaves them out, as OnnxLM.complete does)."""
    sample = strategy(cfg, bool(lm.defaults.get("do_sample"))) == "sample"
    options: dict = {"do_sample": sample}
    if sample:
        for name, default in (("temperature", 1.0), ("top_k", 50), ("top_p", 1.0)):
            value = getattr(cfg, name)
            options[name] = value if value is not None else lm.defaults.get(name, default)
    options["repetition_penalty"] = cfg.repetition_penalty
    options["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
    options["seed"] = cfg.seed
    return options


def refuses(cfg) -> str | None:
    """Why the Engine cannot decode this request (None: it can)."""
    if strategy(cfg) == "beam":
        return "num_beams: beam search"
    if cfg.typical_p is not None:
        return "typical_p: typical sampling"
    return None
