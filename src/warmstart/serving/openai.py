"""OpenAI-compatible routes beside the server's own, so that the clients that already speak OpenAI's
API (the `openai` package, LangChain, LlamaIndex, chat UIs) work unchanged:

- ``POST /v1/chat/completions``: messages through the model's chat template (causal LMs);
- ``POST /v1/completions``: a prompt continued as it is (causal LMs);
- ``POST /v1/embeddings``: what ``/embed`` returns, as floats or base64 (every model that embeds);
- ``GET /v1/models`` and ``GET /v1/models/{model}``: the one model this server serves.

Decoding goes through the same pieces as ``/generate`` (serving.generation: prepare,
result_of, TextStream; requests and streams wait in the event loop, not in threads), and
embeddings through ``/embed``'s batcher. A field this server cannot honour (tools, logprobs,
images, a JSON schema...) is refused by name rather than ignored. Every error on these paths, those
of the middleware included (401 key, 413 limits, 503 queue full, 504 deadline), has OpenAI's
shape ``{"error": {"message", "type", "param", "code"}}``: `OpenAIErrors` rewrites them on the way
out."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from warmstart.config import ServeConfig
from warmstart.errors import UserError
from warmstart.inference.generation_options import token_budget
from warmstart.models.registry import load_tokenizer
from warmstart.serving import generation
from warmstart.serving.model import ServedModel

logger = logging.getLogger("warmstart.serving")

# The routes that run the model: the queue bound and the deadline apply to them.
MODEL_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
PREFIX = "/v1/"
# Our finish reasons in OpenAI's words: the model's end-of-sequence token is a natural stop too.
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
# /v1/completions' default length when max_tokens is absent, as in OpenAI's API.
COMPLETIONS_DEFAULT_TOKENS = 16

# Fields accepted and ignored: they change nothing about the answer.
IGNORED = frozenset(
    {"user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"}
)
# Fields accepted only with a value that asks for nothing this server lacks.
NEUTRAL: dict[str, tuple] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "dimensions": (None,),
}


class OpenAIError(HTTPException):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(status, message)
        self.message, self.param, self.code, self.kind = message, param, code, kind


def error_body(message: str, kind: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = Field(None, description="the request field it is about, e.g. messages[0]")
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# The statuses the /v1/ routes answer besides 200, for the OpenAPI schema.
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "a malformed request, or a field this server does not support (param names it)"),
        (401, "no API key, or a wrong one (servers started with --api-key)"),
        (404, "another model than the one served, or a route this model cannot serve"),
        (413, "too many texts, too long a text, or too large a body"),
        (500, "the model failed on this request (the message has the request id)"),
        (503, "busy: --max-queue requests are already in; retry after Retry-After seconds"),
        (504, "the request took longer than --request-timeout"),
    )
}


# The server's own statuses in OpenAI's words: (status sent, type, code).
_STATUS = {
    400: (400, "invalid_request_error", None),
    401: (401, "invalid_request_error", "invalid_api_key"),
    404: (404, "invalid_request_error", "not_found"),
    405: (405, "invalid_request_error", "method_not_allowed"),
    413: (413, "invalid_request_error", "request_too_large"),
    # FastAPI's 422 for a malformed body is OpenAI's 400.
    422: (400, "invalid_request_error", None),
    429: (429, "rate_limit_error", "rate_limit_exceeded"),
    503: (503, "server_error", "server_busy"),
    504: (504, "server_error", "timeout"),
}


def openai_error(status: int, body: bytes) -> tuple[int, bytes]:
    """The server's ``{"error": sentence, "field": ...}`` body as OpenAI's; bodies already in
    OpenAI's shape pass unchanged."""
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": body.decode("utf-8", "replace") or "error"}
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return status, body
    message = str(data.get("error", "error")) if isinstance(data, dict) else str(data)
    if isinstance(data, dict) and data.get("request_id") and status >= 500:
        message += f" (request id {data['request_id']})"
    sent, kind, code = _STATUS.get(status, (status, "server_error", None))
    if 400 <= status < 500 and status not in _STATUS:
        kind = "invalid_request_error"
    param = data.get("field") if isinstance(data, dict) else None
    return sent, json.dumps(error_body(message, kind, param, code)).encode()


class OpenAIErrors:
    """Outermost ASGI middleware: error answers on /v1/ paths, whoever wrote them (the routes,
    validation, the API key, the queue bound, the deadline, a 500), leave in OpenAI's shape."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def translate(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message  # held until the body is complete
                return
            if start is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            status, body = openai_error(start["status"], b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, translate)


class _Open(BaseModel):
    # Unknown fields are kept and then refused by name (`refuse_unsupported`), with OpenAI's
    # message, rather than rejected by pydantic in the server's own words.
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str
    text: str | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class Sampling(_Open):
    model: str = Field(description="the id GET /v1/models lists")
    max_tokens: int | None = Field(None, ge=1, description="most tokens of each completion")
    max_completion_tokens: int | None = Field(None, ge=1, description="max_tokens' new name")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy decoding")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16, description="completions per prompt")
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    seed: int | None = Field(None, description="makes sampling reproducible")
    stream: bool = Field(False, description="server-sent events, ending data: [DONE]")
    stream_options: StreamOptions | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Open):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"


def refuse_unsupported(req: _Open) -> None:
    """Fields this server cannot honour, refused by name (400), as OpenAI refuses its unknown
    ones."""
    for name, value in (req.model_extra or {}).items():
        if name in IGNORED:
            continue
        if name not in NEUTRAL:
            raise OpenAIError(
                400, f"Unrecognized request argument supplied: {name}", name, "unknown_parameter"
            )
        if value not in NEUTRAL[name]:
            raise OpenAIError(
                400,
                f"{name} is not supported by this server (warmstart serves the model's text "
                "only: no tools, log probabilities, penalties or structured output)",
                name,
                "unsupported_parameter",
            )


def install(
    app: FastAPI,
    served: ServedModel,
    cfg: ServeConfig,
    *,
    generate_pool: Executor,
    embed: Callable[[list[str]], Awaitable[np.ndarray]],
    check_texts: Callable[[list[str]], None],
) -> None:
    """Add the /v1/ routes to ``app``: decoding in ``generate_pool`` (the thread /generate uses),
    embeddings through ``embed`` (/embed's batcher), ``check_texts`` the server's text limits."""
    created = int(time.time())
    tokenizers: dict[str, Any] = {}
    # The schema at /docs shows what this model serves; the other routes still answer (a 404 that
    # says why), as the server's own routes do.
    decodes, embeds = served.causal_lm is not None, "embed" in served.endpoints

    @app.exception_handler(OpenAIError)
    async def answer(_: Request, exc: OpenAIError) -> JSONResponse:
        body = error_body(exc.message, exc.kind, exc.param, exc.code)
        return JSONResponse(body, status_code=exc.status_code)

    own_invalid = app.exception_handlers[RequestValidationError]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # The server's sentence naming the field, as OpenAI's 400 here (not 422), so that
        # /metrics counts the status the client saw.
        response = own_invalid(request, exc)
        if not request.url.path.startswith(PREFIX):
            return response
        status, body = openai_error(response.status_code, bytes(response.body))
        return Response(body, status_code=status, media_type="application/json")

    def check_model(name: str) -> None:
        if name not in (served.name, served.path):
            raise OpenAIError(
                404,
                f"The model '{name}' does not exist on this server: it serves '{served.name}' "
                "(GET /v1/models)",
                "model",
                "model_not_found",
            )

    def need_lm(route: str) -> Any:
        if served.causal_lm is None:
            raise OpenAIError(
                404,
                f"model '{served.name}' is {served.description}: {route} needs a causal language "
                f"model (this server serves {', '.join('/' + e for e in served.endpoints)})",
                "model",
                "model_not_supported",
            )
        return served.causal_lm

    def model_card() -> dict:
        return {"id": served.name, "object": "model", "created": created, "owned_by": "warmstart"}

    @app.get("/v1/models", tags=["openai"], responses=RESPONSES)
    async def models() -> dict:
        """The model this server serves, as OpenAI lists models."""
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}", tags=["openai"], responses=RESPONSES)
    async def model(model: str) -> dict:
        check_model(model)
        return model_card()

    @app.post(
        "/v1/chat/completions", tags=["openai"], responses=RESPONSES, include_in_schema=decodes
    )
    async def chat_completions(req: ChatRequest, request: Request):
        """A reply to the messages, rendered with the model's chat template."""
        check_model(req.model)
        refuse_unsupported(req)
        lm = need_lm("/v1/chat/completions")
        messages = [_message(i, m) for i, m in enumerate(req.messages)]
        for i, m in enumerate(messages):
            if len(m["content"]) > cfg.max_text_chars:
                raise OpenAIError(
                    413,
                    f"messages[{i}] has {len(m['content'])} characters, more than this server's "
                    f"limit of {cfg.max_text_chars}",
                    f"messages[{i}].content",
                )

        def render(options: dict) -> generation.Prepared:
            return _prepare(lm, options, cfg.max_new_tokens, messages=messages)

        return await _answer(req, request, [render], "chat.completion", "chatcmpl")

    @app.post("/v1/completions", tags=["openai"], responses=RESPONSES, include_in_schema=decodes)
    async def completions(req: CompletionRequest, request: Request):
        """The prompt (or each of a list of prompts) continued as it is."""
        check_model(req.model)
        refuse_unsupported(req)
        lm = need_lm("/v1/completions")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise OpenAIError(400, "prompt must be a string or a list of strings", "prompt")
        _within_limits(check_texts, prompts, "prompt")

        def renderer(prompt: str) -> Callable[[dict], generation.Prepared]:
            return lambda options: _prepare(lm, {**options, "prompt": prompt}, cfg.max_new_tokens)

        return await _answer(
            req, request, [renderer(p) for p in prompts], "text_completion", "cmpl"
        )

    async def _answer(
        req: Sampling,
        request: Request,
        renders: list[Callable[[dict], generation.Prepared]],
        kind: str,
        id_prefix: str,
    ):
        """Decode each prompt ``n`` times and answer as ``kind`` (chat.completion or
        text_completion), streamed or whole."""
        lm = served.causal_lm
        options, copies = _decoding(req, kind)
        loop = asyncio.get_running_loop()
        rid = f"{id_prefix}-{uuid.uuid4().hex}"
        head = {"id": rid, "created": int(time.time()), "model": served.name}
        if req.stream:
            # One completion per stream pass (the decoding streamer follows one sequence): the
            # n choices of each prompt stream one after another, each with its own index.
            passes = []
            for render in renders:
                for j in range(req.n):
                    seeded = (
                        options
                        if options.get("seed") is None
                        else ({**options, "seed": (options["seed"] + j) % 2**32})
                    )
                    passes.append(
                        await loop.run_in_executor(
                            generate_pool, _checked, render, {**seeded, "num_return_sequences": 1}
                        )
                    )
            usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = _stream(
                lm, passes, req.n, generate_pool, request.state.request_id, head, kind, usage
            )
            return StreamingResponse(
                chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        results = []
        for render in renders:
            prepared = await loop.run_in_executor(generate_pool, _checked, render, options)
            # Cancelled (deadline passed, client gone): the generation is told to stop.
            results.append(await generation.result_of(lm, prepared, generate_pool))
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for result in results:
            prompt_tokens += result.prompt_tokens
            for _ in range(copies):  # greedy n > 1: the one completion, n times
                for text, tokens, reason in zip(
                    result.completions, result.completion_tokens, result.finish_reasons
                ):
                    completion_tokens += tokens
                    choices.append(_choice(kind, len(choices), text, FINISH[reason]))
        return {
            **head,
            "object": kind,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    @app.post("/v1/embeddings", tags=["openai"], responses=RESPONSES, include_in_schema=embeds)
    async def embeddings(req: EmbeddingRequest) -> dict:
        """One vector per input: /embed's vectors, as floats or base64 (little-endian float32)."""
        check_model(req.model)
        refuse_unsupported(req)
        if not embeds:
            raise OpenAIError(404, served.unsupported("embed"), "model", "model_not_supported")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or not all(isinstance(t, str) for t in texts):
            raise OpenAIError(
                400, "input must be a string or a list of strings (not token ids)", "input"
            )
        blank = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if blank is not None:
            raise OpenAIError(400, f"input[{blank}] is empty", f"input[{blank}]")
        _within_limits(check_texts, texts, "input")
        try:
            rows = np.asarray(await embed(texts), dtype=np.float32)
        except HTTPException as e:
            raise OpenAIError(e.status_code, str(e.detail), "input") from None
        tokens = _count_tokens(tokenizers, served, texts)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": (
                    base64.b64encode(row.astype("<f4").tobytes()).decode()
                    if req.encoding_format == "base64"
                    else row.tolist()
                ),
            }
            for i, row in enumerate(rows)
        ]
        return {
            "object": "list",
            "data": data,
            "model": served.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _within_limits(check: Callable[[list[str]], None], texts: list[str], param: str) -> None:
    """The server's limits on texts (how many, how long), naming the request's own field."""
    try:
        check(texts)
    except HTTPException as e:
        field = (getattr(e, "field", None) or "texts").replace("texts", param, 1)
        raise OpenAIError(e.status_code, str(e.detail), field, "request_too_large") from None


def _count_tokens(cache: dict[str, Any], served: ServedModel, texts: list[str]) -> int:
    # For usage only: the model's own tokenizer, loaded once (the embedder's is not reachable).
    if "tok" not in cache:
        cache["tok"] = load_tokenizer(served.path)
    tok = cache["tok"]
    return sum(len(ids) for ids in tok(texts, truncation=True)["input_ids"])


def _message(i: int, m: Message) -> dict:
    """One message as the chat template reads it: role and text ("developer" is OpenAI's newer
    name for system)."""
    where = f"messages[{i}]"
    if m.role in ("tool", "function"):
        raise OpenAIError(
            400,
            f"{where}: {m.role} messages need tools, which this server does not support",
            f"{where}.role",
            "unsupported_parameter",
        )
    extra = sorted(k for k in (m.model_extra or {}) if k != "refusal")
    if extra:
        raise OpenAIError(
            400,
            f"{where}.{extra[0]} is not supported by this server (no tool calls, audio or images)",
            f"{where}.{extra[0]}",
            "unsupported_parameter",
        )
    if isinstance(m.content, list):
        for j, part in enumerate(m.content):
            if part.type != "text" or part.text is None:
                raise OpenAIError(
                    400,
                    f"{where}.content[{j}] is of type '{part.type}': this server reads text only",
                    f"{where}.content[{j}]",
                    "unsupported_content",
                )
        text = "\n".join(part.text or "" for part in m.content)
    else:
        text = m.content or ""
    if not text and m.role != "assistant":
        raise OpenAIError(400, f"{where}.content is empty", f"{where}.content")
    return {"role": "system" if m.role == "developer" else m.role, "content": text}


def _decoding(req: Sampling, kind: str) -> tuple[dict, int]:
    """The request's sampling fields as /generate's options, and how many copies of each
    completion to send: temperature 0 is greedy decoding, whose n completions are one."""
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4:
        raise OpenAIError(400, "stop takes at most 4 strings", "stop")
    given = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    new = req.max_completion_tokens or req.max_tokens
    if new is None and kind == "text_completion":
        new = COMPLETIONS_DEFAULT_TOKENS
    options: dict[str, Any] = {"max_new_tokens": new, "stop": stops, "seed": req.seed}
    copies = 1
    # GenerateConfig's smallest temperature is 0.01: anything below samples like greedy decoding.
    if req.temperature is not None and req.temperature < 0.01:
        options["strategy"] = "greedy"
        copies, n = req.n, 1
    else:
        n = req.n
        options["temperature"], options["top_p"] = req.temperature, req.top_p
        if n > 1:
            options["strategy"] = "sample"
    options["num_return_sequences"] = n
    options["_max_param"] = given
    return options, copies


# The generate option a message names, in the request's own words.
_PARAMS = {"num_return_sequences": "n", "prompt": None, "chat": "messages", "system": "messages"}


def _checked(render: Callable[[dict], generation.Prepared], options: dict) -> generation.Prepared:
    """``render(options)`` with /generate's refusals as OpenAI's 400s, naming the request's
    field."""
    max_param = options.get("_max_param", "max_tokens")
    options = {k: v for k, v in options.items() if k != "_max_param"}
    try:
        return render(options)
    except generation.RequestError as e:
        param = _PARAMS.get(e.field, e.field) if e.field else None
        message = e.message
        if e.field == "max_new_tokens":
            param, message = max_param, message.replace("max_new_tokens", max_param)
        status = 413 if e.status == 413 else 400
        raise OpenAIError(status, message, param) from None


def _prepare(
    lm: Any,
    options: dict,
    limit: int,
    messages: list[dict] | None = None,
) -> generation.Prepared:
    """/generate's `prepare` for a prompt, or for ``messages`` rendered by the chat template (whose
    text already holds its special tokens, as in instruction_ids)."""
    if messages is None:
        return generation.prepare(lm, options, limit)
    tokenizer = lm.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise generation.RequestError(
            f"model '{lm.name}' has no chat template: use /v1/completions with a plain prompt",
            "chat",
        )
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a template may refuse a role order (jinja's exception)
        raise generation.RequestError(
            f"the model's chat template refused them: {e}", "chat"
        ) from None
    prepared = generation.prepare(lm, {**options, "prompt": text}, limit)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        budget = token_budget(prepared.cfg, len(ids), lm.max_positions, "the messages")
    except UserError as e:
        raise generation.RequestError(str(e).replace("--", ""), "chat") from None
    return replace(prepared, ids=ids, budget=min(budget, limit))


def _choice(kind: str, index: int, text: str, finish_reason: str | None) -> dict:
    if kind == "chat.completion":
        message = {"role": "assistant", "content": text, "refusal": None}
        return {
            "index": index,
            "message": message,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def _usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _data(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(
    lm: Any,
    passes: list[generation.Prepared],
    n: int,
    executor: Executor,
    request_id: str,
    head: dict,
    kind: str,
    usage: bool,
) -> AsyncIterator[str]:
    """OpenAI's chunks from each pass's text stream, one pass per choice: a chat reply starts with
    the assistant role; each piece of text is a chunk; the last chunk of a choice has its finish
    reason; ``data: [DONE]`` ends the stream. An async iterator fed by the engine's callbacks
    (generation.TextStream): a stream holds no thread while it waits for text, so that many
    streaming clients do not exhaust Starlette's thread pool; leaving early (client gone) cancels
    the generation."""
    chunk_kind = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"

    def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> dict:
        if kind == "chat.completion":
            delta = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**head, "object": chunk_kind, "choices": [choice]}

    prompt_tokens, completion_tokens = 0, 0
    for index, prepared in enumerate(passes):
        if kind == "chat.completion":
            yield _data(chunk(index, None, None, role=True))
        stream = generation.TextStream(lm, prepared, executor)
        try:
            async for piece in stream:
                yield _data(chunk(index, piece, None))
        except Exception as e:  # noqa: BLE001 - headers are out: the error ends the stream
            logger.error("request %s (streamed) failed", request_id, exc_info=e)
            message = (
                f"generation failed: the server log has the details under request id {request_id}"
            )
            # In OpenAI's shape: the openai client raises it.
            yield _data(error_body(message, "server_error", None, None))
            return
        result = stream.result
        assert result is not None
        if index % n == 0:  # a prompt's n passes read it once in usage
            prompt_tokens += result.prompt_tokens
        completion_tokens += sum(result.completion_tokens)
        yield _data(chunk(index, None, FINISH[result.finish_reasons[0]]))
    if usage:
        yield _data(
            {
                **head,
                "object": chunk_kind,
                "choices": [],
                "usage": _usage(prompt_tokens, completion_tokens),
            }
        )
    yield _data("[DONE]")
