"""Dynamic batching: concurrent requests gathered into one forward pass, results routed back in
order.

Each request submits its texts (and a key: requests only share a pass when their keys are equal,
e.g. the same zero-shot labels). One asyncio task gathers queued requests until ``max_batch_size``
texts are waiting or the oldest has waited ``max_wait_ms``, then runs the batch function in one
worker thread, so the event loop stays free to accept and answer other requests while the model
computes. While a pass runs, new requests queue up; the next pass takes them at once (their wait is
already over), so under load batches fill by themselves and the wait only costs anything when the
server is idle."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

BatchFn = Callable[[list[str], Hashable], np.ndarray]


@dataclass
class _Item:
    texts: list[str]
    key: Hashable
    future: asyncio.Future
    queued: float = field(default_factory=time.monotonic)


class Batcher:
    """Runs ``fn(texts, key) -> rows`` (one row per text, in order) over gathered requests.

    ``enabled=False`` runs each request alone: the one-request-at-a-time baseline. A request whose
    caller stopped waiting (cancelled: the client went away, or its deadline passed) is dropped if
    its pass has not started."""

    def __init__(
        self,
        fn: BatchFn,
        executor: Executor,
        max_batch_size: int = 32,
        max_wait_ms: float = 10.0,
        enabled: bool = True,
        on_pass: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.fn, self.executor = fn, executor
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.enabled = enabled
        self.passes = 0  # forward passes run (for tests and /info: how well requests were gathered)
        self.on_pass = (
            on_pass  # called with each pass's number of texts (the /metrics batch size histogram)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._held: deque[_Item] = (
            deque()
        )  # taken from the queue but with another key: first in the next pass

    async def submit(self, texts: Sequence[str], key: Hashable = None) -> np.ndarray:
        """The rows for ``texts``, computed together with whatever other requests are waiting."""
        self._start()
        assert self._queue is not None
        item = _Item(list(texts), key, asyncio.get_running_loop().create_future())
        await self._queue.put(item)
        return await item.future

    def _start(self) -> None:
        # Started on first use in the running loop (not at construction): test clients may run each
        # request in a fresh event loop, and a queue belongs to one loop.
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        self._loop, self._queue, self._held = loop, asyncio.Queue(), deque()
        self._task = loop.create_task(self._work(), name="warmstart-batcher")

    async def close(self) -> None:
        """Stop the worker (requests still queued get an error); called at server shutdown after
        draining."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None

    async def _next(self) -> _Item:
        assert self._queue is not None
        return self._held.popleft() if self._held else await self._queue.get()

    async def _gather(self) -> list[_Item]:
        first = await self._next()
        batch, size = [first], len(first.texts)
        if not self.enabled:
            return batch
        deadline = first.queued + self.max_wait
        assert self._queue is not None
        # Held requests with the first one's key join it; the others keep their place at the front.
        held, self._held = self._held, deque()
        for it in held:
            if it.key == first.key and size + len(it.texts) <= self.max_batch_size:
                batch.append(it)
                size += len(it.texts)
            else:
                self._held.append(it)
        while size < self.max_batch_size:
            try:
                if self._queue.empty():
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                else:
                    item = self._queue.get_nowait()
            except (TimeoutError, asyncio.QueueEmpty):
                break
            if item.key != first.key:  # another key (e.g. other zero-shot labels): a later pass
                self._held.append(item)
            elif (
                size + len(item.texts) > self.max_batch_size
            ):  # would overflow: it starts the next pass
                self._held.append(item)
                break
            else:
                batch.append(item)
                size += len(item.texts)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [
                it for it in batch if not it.future.done()
            ]  # a client that went away cancels its future
            if not live:
                continue
            texts = [t for it in live for t in it.texts]
            if self.on_pass is not None:
                self.on_pass(len(texts))
            try:
                rows = await loop.run_in_executor(self.executor, self.fn, texts, live[0].key)
            except Exception as e:  # noqa: BLE001 - routed to the request(s), never kills the worker
                if len(live) == 1:
                    _set_exception(live[0].future, e)
                else:
                    # One bad request must not fail its batch-mates: run each alone to find whose it
                    # was.
                    for it in live:
                        await self._run_alone(it)
                continue
            finally:
                self.passes += 1
            start = 0
            for it in live:
                _set_result(it.future, rows[start : start + len(it.texts)])
                start += len(it.texts)

    async def _run_alone(self, it: _Item) -> None:
        try:
            rows = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.fn, it.texts, it.key
            )
        except Exception as e:  # noqa: BLE001
            _set_exception(it.future, e)
        else:
            _set_result(it.future, rows)


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
