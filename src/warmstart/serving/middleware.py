"""What stands between the network and the model: plain ASGI middleware (no BaseHTTPMiddleware, so
streams pass through untouched), outermost first as create_app stacks them:

- `RequestContext`: a request id on every request (``X-Request-ID``: the client's if it is a sane
  short token), Prometheus counts and latency, and a 500 that carries the id, never the exception
  text (the traceback goes to the log with the id);
- CORS (Starlette's CORSMiddleware), only for the origins given;
- `RequireKey`: ``Authorization: Bearer KEY`` on every route but /health, else 401;
- `Admission`: at most ``max_queue`` model requests waiting or running (more get 503 with
  Retry-After at once) and at most ``timeout`` seconds each (504; the request's work is dropped
  where it has not started).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from warmstart.serving.metrics import ServerMetrics
from warmstart.serving.schemas import ErrorBody

logger = logging.getLogger("warmstart.serving")

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# A request id we echo into headers and logs: short, and nothing that could split a log line or a
# header.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# The status counted for a request whose client went away (or the server stopped) before the answer:
# nginx's.
CLIENT_CLOSED = 499


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    errors: list | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> JSONResponse:
    """Every error the server sends: ``{"error": sentence, "field": name-or-null, ...}``."""
    body = ErrorBody(error=message, field=field, errors=errors, request_id=request_id).model_dump(
        exclude_none=True
    )
    return JSONResponse(body, status_code=status, headers=headers)


def request_id(scope: Scope) -> str:
    """The id set by `RequestContext` (for handlers that log or answer with it)."""
    return scope.get("state", {}).get("request_id", "-")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _incoming_id(scope: Scope) -> str:
    given = _header(scope, b"x-request-id")
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestContext:
    """Request id, metrics and the last word on exceptions, around everything else."""

    def __init__(self, app, metrics: ServerMetrics, endpoints: frozenset[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = _incoming_id(scope)
        scope.setdefault("state", {})["request_id"] = rid  # request.state.request_id in handlers
        status, started = 500, False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        began = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status if started else CLIENT_CLOSED
            raise
        except Exception as exc:  # noqa: BLE001 - the client gets an id to quote, the log gets the traceback
            logger.error(
                "request %s (%s %s) failed",
                rid,
                scope.get("method"),
                scope.get("path"),
                exc_info=exc,
            )
            if not started:  # else the headers are out: the connection just ends
                message = f"internal error: the server log has the details under request id {rid}"
                await error_response(500, message, request_id=rid)(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            # Paths outside the app's routes (scanners) share one label: a label per path would grow
            # unbounded.
            self.metrics.observe(
                path if path in self.endpoints else "other", status, time.perf_counter() - began
            )


def _digest(key: str) -> bytes:
    # Equal-length digests: compare_digest then leaks nothing, not even the key's length.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class RequireKey:
    """401 (with ``WWW-Authenticate: Bearer``) for requests without ``Authorization: Bearer
    KEY``."""

    def __init__(self, app, key: str, open_paths: frozenset[str] = frozenset({"/health"})):
        self.app, self.key, self.open_paths = app, _digest(key), open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        scheme, _, given = (_header(scope, b"authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            message, challenge = (
                "this server needs an API key: send the header Authorization: Bearer KEY",
                "Bearer",
            )
        elif not hmac.compare_digest(_digest(given.strip()), self.key):
            message, challenge = "wrong API key", 'Bearer error="invalid_token"'
        else:
            return await self.app(scope, receive, send)
        response = error_response(
            401, message, headers={"WWW-Authenticate": challenge}, request_id=request_id(scope)
        )
        await response(scope, receive, send)


@dataclass
class Queue:
    """The model requests admitted and not yet answered: what --max-queue bounds and /metrics
    shows."""

    limit: int | None = None
    depth: int = 0

    def full(self) -> bool:
        return self.limit is not None and self.depth >= self.limit


class Admission:
    """Bounds the model requests (``paths``) waiting or running and the time each may take. Only
    model requests count: /health, /info and /metrics must answer while the model is busy."""

    def __init__(
        self, app, paths: frozenset[str], queue: Queue, timeout: float | None, stream_error
    ):
        self.app, self.paths, self.queue, self.timeout = app, paths, queue, timeout
        self.stream_error = (
            stream_error  # (message, request id) -> the last server-sent event of a cut stream
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        rid = request_id(scope)
        if self.queue.full():  # answered at once: a client should not wait in a queue it cannot see
            message = (
                f"the server is busy: {self.queue.limit} requests are already waiting or running; "
                "retry after the Retry-After seconds"
            )
            return await error_response(503, message, headers={"Retry-After": "1"}, request_id=rid)(
                scope, receive, send
            )
        self.queue.depth += 1
        try:
            await self._within_deadline(scope, receive, send, rid)
        finally:
            self.queue.depth -= 1

    async def _within_deadline(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        started: dict | None = None

        async def tracked(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = message
            await send(message)

        deadline = asyncio.timeout(self.timeout)  # None: no deadline
        try:
            async with deadline:
                # Cancelling the handler cancels its await: a request still queued in the batcher
                # (or the generation pool) is skipped; a forward pass already running finishes and
                # is discarded.
                await self.app(scope, receive, tracked)
        except TimeoutError:
            if not deadline.expired():  # a TimeoutError of the handler's own: not ours to answer
                raise
            message = f"the request took longer than this server's limit of {self.timeout:g} s"
            logger.warning(
                "request %s (%s %s) timed out after %g s",
                rid,
                scope.get("method"),
                scope["path"],
                self.timeout,
            )
            if started is None:
                return await error_response(504, message, request_id=rid)(scope, receive, send)
            # A stream already under way: end it with an error event (others just end), so the
            # client can tell.
            event_stream = any(
                k == b"content-type" and v.startswith(b"text/event-stream")
                for k, v in started.get("headers", [])
            )
            tail = self.stream_error(message, rid).encode() if event_stream else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
