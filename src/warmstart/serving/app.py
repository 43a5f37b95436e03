"""The FastAPI app: one route per thing the model can do, limits, and JSON errors that name the
field.

Every error is ``{"error": sentence, "field": name-or-null}``: 413 for too much (texts, characters,
bytes), 422 for a malformed request, 404 for an endpoint this model does not serve, 401 without the
API key, 503 when --max-queue requests are already in, 504 past --request-timeout. A request that
fails inside the model gets a 500 of the same shape with the request id (the details go to the log
only); the server keeps answering the others. The middleware in front of the routes is in
serving.middleware; /metrics in serving.metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from warmstart import __version__
from warmstart.config import ServeConfig
from warmstart.errors import UserError
from warmstart.serving import generation, playground
from warmstart.serving import openai as openai_api
from warmstart.serving.batcher import Batcher
from warmstart.serving.metrics import CONTENT_TYPE, ServerMetrics
from warmstart.serving.middleware import (
    Admission,
    Queue,
    RequestContext,
    RequireKey,
    error_response,
)
from warmstart.serving.model import NEEDS, ServedModel
from warmstart.serving.schemas import (
    ERRORS,
    AnswerRequest,
    AnswerResponse,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    PredictResponse,
    RerankRequest,
    RerankResponse,
    TagRequest,
    TagResponse,
    TextsRequest,
    ZeroshotRequest,
    ZeroshotResponse,
)


class ApiError(HTTPException):
    """An HTTP error with a sentence and the request field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(status, message)
        self.field = field


API_KEY_VARIABLE = "WARMSTART_API_KEY"


def api_key(cfg: ServeConfig) -> str | None:
    """The key requests must carry: --api-key, else the environment variable (which keeps it out of
    `ps`)."""
    return cfg.api_key or os.environ.get(API_KEY_VARIABLE) or None


def _field(loc: tuple) -> str:
    """('body', 'texts', 2) -> 'texts[2]'."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        field = _field(tuple(e.get("loc", ())))
        if e.get("type") == "json_invalid":
            field, message = "body", "the request body is not valid JSON"
        elif field == "body" and e.get("type") in ("missing", "dict_type", "model_attributes_type"):
            message = "the request body must be a JSON object"
        else:
            message = f"{field}: {str(e.get('msg', 'invalid')).removeprefix('Value error, ')}"
        errors.append({"field": field, "message": message})
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    return error_response(422, first["message"], first["field"], errors)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, whether or not they announce their
    length."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        length = dict(scope.get("headers", [])).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await error_response(413, message, "body")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if (
                seen > self.max_bytes
            ):  # FastAPI passes an HTTPException raised while reading the body through
                raise ApiError(413, message, "body")
            return msg

        return await self.app(scope, limited, send)


def create_app(served: ServedModel, cfg: ServeConfig | None = None) -> FastAPI:
    """The app serving ``served`` with ``cfg``'s limits, batching and protection (API key, queue
    bound, timeout, CORS); host and port are uvicorn's business."""
    cfg = cfg or ServeConfig(model=served.name)
    forward = ThreadPoolExecutor(
        1, thread_name_prefix="warmstart-forward"
    )  # one pass at a time: all cores each
    # An engine batches the generation requests in flight: the torch route's starts here with the
    # server's batch size (GenAI's has its own).
    generation.engine_of(served.causal_lm, cfg.max_batch_size if cfg.batching else 1)
    generate_pool = ThreadPoolExecutor(
        generation.workers(served.causal_lm), thread_name_prefix="warmstart-generate"
    )
    bs = cfg.max_batch_size
    queue = Queue(cfg.max_queue)
    metrics = ServerMetrics(lambda: queue.depth, bs)

    def batcher(name: str, fn) -> Batcher:
        on_pass = (
            metrics.batch(name) if name in served.endpoints else None
        )  # no empty series for the others
        return Batcher(
            fn,
            forward,
            max_batch_size=bs,
            max_wait_ms=cfg.max_wait_ms,
            enabled=cfg.batching,
            on_pass=on_pass,
        )

    batchers = {
        "predict": batcher("predict", lambda texts, key: served.predict(texts)),
        "tag": batcher("tag", lambda texts, key: served.tag(texts, key)),
        # (question, context) pairs; requests share a pass when they ask the same answer length.
        "answer": batcher(
            "answer", lambda pairs, key: served.answer(pairs, key, cfg.null_threshold)
        ),
        "embed": batcher("embed", lambda texts, key: served.embed(texts, batch_size=bs)),
        # Requests share a pass when they ask about the same query.
        "rerank": batcher("rerank", lambda texts, key: served.rerank(key, texts, batch_size=bs)),
        "zeroshot": batcher(
            "zeroshot",
            lambda texts, key: served.zeroshot(texts, list(key[0]), key[1], batch_size=bs),
        ),
    }

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        # uvicorn has stopped accepting and drained the requests in flight (SIGTERM) before this
        # runs.
        for b in batchers.values():
            await b.close()

    app = FastAPI(
        title="warmstart",
        version=__version__,
        lifespan=lifespan,
        description=(
            f"Serving `{served.name}` ({served.kind}): "
            f"{', '.join('/' + e for e in served.endpoints)}."
        ),
    )
    app.state.served, app.state.config, app.state.batchers = served, cfg, batchers
    app.state.queue, app.state.metrics = queue, metrics
    app.add_exception_handler(RequestValidationError, _validation_error)
    key = api_key(cfg)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _document_limits(FastAPI.openapi(app), cfg, key is not None)
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "field", None))

    # Other exceptions reach RequestContext: a 500 with the request id, the traceback in the log.

    def check_texts(texts: list[str]) -> None:
        if len(texts) > cfg.max_texts_per_request:
            raise ApiError(
                413,
                f"{len(texts)} texts is more than this server's limit of "
                f"{cfg.max_texts_per_request} per request",
                "texts",
            )
        for i, t in enumerate(texts):
            if len(t) > cfg.max_text_chars:
                raise ApiError(
                    413,
                    f"texts[{i}] has {len(t)} characters, more than this server's limit of "
                    f"{cfg.max_text_chars}",
                    f"texts[{i}]",
                )

    async def run(endpoint: str, texts: list[str], key: Hashable = None) -> np.ndarray:
        try:
            return await batchers[endpoint].submit(texts, key)
        except UserError as e:  # e.g. the embedder or zero-shot method cannot load for this model
            raise ApiError(400, str(e)) from None

    @app.get("/health", response_model=Health, tags=["server"])
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        """Prometheus text format: requests by endpoint and status, latency, batch sizes, queue
        depth."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/info", tags=["server"])
    async def info() -> dict:
        """The model, what it serves, its labels, and this server's limits."""
        return {
            "model": served.name,
            "path": served.path,
            "kind": served.kind,
            "version": __version__,
            "endpoints": [f"/{e}" for e in served.endpoints],
            "labels": served.labels,
            "backend": served.backend,
            "limits": {
                "max_texts_per_request": cfg.max_texts_per_request,
                "max_text_chars": cfg.max_text_chars,
                "max_body_bytes": cfg.max_body_bytes,
                "max_tokens": served.token_limit,
                "max_new_tokens": cfg.max_new_tokens if served.causal_lm is not None else None,
                "max_queue": cfg.max_queue,
                "request_timeout": cfg.request_timeout,
            },
            "batching": {
                "enabled": cfg.batching,
                "max_batch_size": bs,
                "max_wait_ms": cfg.max_wait_ms,
                "forward_passes": {
                    k: b.passes for k, b in batchers.items() if k in served.endpoints
                },
            },
        }

    if "predict" in served.endpoints:

        @app.post(
            "/predict",
            response_model=PredictResponse,
            response_model_exclude_none=True,
            responses=ERRORS,
            tags=["model"],
        )
        async def predict(req: TextsRequest) -> dict:
            """For each text: its label and class probabilities; a multi-label model's labels above
            their thresholds and every label's score; a regression model's value(s)."""
            check_texts(req.texts)
            probs = await run("predict", req.texts)
            return {"model": served.name, "predictions": served.records(probs)}

    if "tag" in served.endpoints:

        @app.post("/tag", response_model=TagResponse, responses=ERRORS, tags=["model"])
        async def tag(req: TagRequest) -> dict:
            """Each text split into words, each word's tag and score, and the entity spans they form
            (offsets index the text as sent)."""
            check_texts(req.texts)
            return {"model": served.name, "results": await run("tag", req.texts, req.aggregation)}

    if "answer" in served.endpoints:

        @app.post(
            "/answer",
            response_model=AnswerResponse,
            response_model_exclude_none=True,
            responses=ERRORS,
            tags=["model"],
        )
        async def answer(req: AnswerRequest) -> dict:
            """The answer to the question: the best span of the context, with its character
            offsets (context[start:end]) and score."""
            for name, text in (("question", req.question), ("context", req.context)):
                if len(text) > cfg.max_text_chars:
                    raise ApiError(
                        413,
                        f"{name} has {len(text)} characters, more than this server's limit of "
                        f"{cfg.max_text_chars}",
                        name,
                    )
            length = req.max_answer_length or cfg.max_answer_length
            (found,) = await run("answer", [(req.question, req.context)], length)
            return {"model": served.name, **found}

    if "embed" in served.endpoints:

        @app.post("/embed", response_model=EmbedResponse, responses=ERRORS, tags=["model"])
        async def embed(req: EmbedRequest) -> dict:
            """One vector per text: the model's pooled hidden states."""
            check_texts(req.texts)
            rows = await run("embed", req.texts)
            if req.normalize:
                rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
            return {"model": served.name, "dim": int(rows.shape[1]), "embeddings": rows.tolist()}

    if "rerank" in served.endpoints:

        @app.post("/rerank", response_model=RerankResponse, responses=ERRORS, tags=["model"])
        async def rerank(req: RerankRequest) -> dict:
            """The passages ordered by their relevance to the query (a cross-encoder's scores),
            as text-embeddings-inference's /rerank."""
            check_texts(req.texts)
            scores = await run("rerank", req.texts, req.query)
            order = sorted(range(len(req.texts)), key=lambda i: -float(scores[i]))
            results = [
                {"index": i, "score": float(scores[i])}
                | ({"text": req.texts[i]} if req.return_text else {})
                for i in order
            ]
            return {"model": served.name, "results": results}

    if "zeroshot" in served.endpoints:

        @app.post("/zeroshot", response_model=ZeroshotResponse, responses=ERRORS, tags=["model"])
        async def zeroshot(req: ZeroshotRequest) -> dict:
            """Scores of candidate labels for each text, with no training."""
            check_texts(req.texts)
            labels = [label.strip() for label in req.labels]
            twice = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
            if twice is not None:
                raise ApiError(422, f"labels: '{twice}' is given twice", "labels")
            # Scores over one label would all be 1: a single label is scored on its own (as HF's
            # pipeline does).
            multi_label = req.multi_label or len(labels) == 1
            # Prompt scoring picks one label among several.
            if multi_label and served.zeroshot_method == "prompt":
                raise ApiError(
                    422,
                    "a causal LM scores labels against each other: give two or more labels and "
                    "no multi_label (that needs an NLI model or an encoder)",
                    "multi_label" if req.multi_label else "labels",
                )
            # Requests with the same labels share a forward pass.
            scores = await run("zeroshot", req.texts, (tuple(labels), multi_label))
            return {
                "model": served.name,
                "method": served.zeroshot_method,
                "results": [
                    {
                        "label": labels[int(s.argmax())],
                        "score": float(s.max()),
                        "scores": {label: float(v) for label, v in zip(labels, s)},
                    }
                    for s in scores
                ],
            }

    if "generate" in served.endpoints:

        @app.post(
            "/generate",
            response_model=GenerateResponse,
            responses={
                **ERRORS,
                200: {
                    "content": {"text/event-stream": {}},
                    "description": "the result; with stream, server-sent events (token..., done)",
                },
            },
            tags=["model"],
        )
        async def generate(req: GenerateRequest, request: Request):
            """Continue a prompt (greedy, sampling or beam search); ``stream: true`` sends tokens as
            they come. A text-to-text model writes its output for the prompt (greedy or beam
            search)."""
            if len(req.prompt) > cfg.max_text_chars:
                raise ApiError(
                    413,
                    f"prompt has {len(req.prompt)} characters, more than this server's limit of "
                    f"{cfg.max_text_chars}",
                    "prompt",
                )
            loop = asyncio.get_running_loop()
            if served.text_to_text is not None:
                try:
                    text = generation.prepare_text(
                        served.text_to_text, req.model_dump(), cfg.max_new_tokens
                    )
                except generation.RequestError as e:
                    raise ApiError(e.status, e.message, e.field) from None
                return asdict(
                    await loop.run_in_executor(
                        generate_pool, generation.run_text, served.text_to_text, text
                    )
                )
            try:
                # In the generation thread too: a fast tokenizer must not be used from two threads
                # at once.
                prepared = await loop.run_in_executor(
                    generate_pool,
                    generation.prepare,
                    served.causal_lm,
                    req.model_dump(),
                    cfg.max_new_tokens,
                )
            except generation.RequestError as e:
                raise ApiError(e.status, e.message, e.field) from None
            if req.stream:
                events = generation.events(
                    served.causal_lm, prepared, generate_pool, request.state.request_id
                )
                return StreamingResponse(
                    events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
                )
            # Cancelled (deadline passed, client gone): the generation is told to stop.
            return asdict(await generation.result_of(served.causal_lm, prepared, generate_pool))

    openai_api.install(
        app,
        served,
        cfg,
        generate_pool=generate_pool,
        embed=lambda texts: run("embed", texts),
        check_texts=check_texts,
    )
    if cfg.ui:
        playground.install(app)
    # The other endpoints answer 404 with the reason, rather than a bare "Not Found".
    for endpoint in sorted(set(NEEDS) - set(served.endpoints)):
        app.add_api_route(
            f"/{endpoint}",
            _unsupported(served, endpoint),
            methods=["POST"],
            include_in_schema=False,
        )
    _protect(app, cfg, key, queue, metrics)
    return app


def _protect(
    app: FastAPI, cfg: ServeConfig, key: str | None, queue: Queue, metrics: ServerMetrics
) -> None:
    """The middleware, innermost first (the last added runs first): body limit, queue bound and
    deadline, API key (before a request takes a queue place), CORS (so that a 401 carries its
    headers and preflights need no key), request id and metrics (around all, to count every
    answer)."""
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    model_paths = frozenset(f"/{e}" for e in app.state.served.endpoints) | openai_api.MODEL_PATHS
    app.add_middleware(
        Admission,
        paths=model_paths,
        queue=queue,
        timeout=cfg.request_timeout,
        stream_error=generation.failure_event,
    )
    if key is not None:
        # The playground's page loads without the key: it asks for it and sends it with each call.
        open_paths = frozenset({"/health"}) | (playground.PAGES if cfg.ui else frozenset())
        app.add_middleware(RequireKey, key=key, open_paths=open_paths)
    if cfg.cors_origin:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origin),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    routes = frozenset(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(RequestContext, metrics=metrics, endpoints=routes)
    app.add_middleware(openai_api.OpenAIErrors)  # outermost: /v1/ errors in OpenAI's shape


def _document_limits(schema: dict, cfg: ServeConfig, keyed: bool = False) -> dict:
    """Put this server's limits into the OpenAPI schema, so that a request the schema allows is one
    we accept; with an API key, the bearer scheme every operation but /health needs."""
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("TextsRequest", "EmbedRequest", "ZeroshotRequest", "RerankRequest"):
        texts = comps.get(name, {}).get("properties", {}).get("texts")
        if texts:
            texts["maxItems"] = cfg.max_texts_per_request
            texts["items"]["maxLength"] = cfg.max_text_chars
    props = comps.get("GenerateRequest", {}).get("properties", {})
    if props:
        props["prompt"]["maxLength"] = cfg.max_text_chars
        for branch in props["max_new_tokens"].get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = cfg.max_new_tokens
    if keyed:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the server's --api-key (or WARMSTART_API_KEY)",
        }
        schema["security"] = [{"bearer": []}]
        for operation in schema.get("paths", {}).get("/health", {}).values():
            operation["security"] = []
    return schema


def _unsupported(served: ServedModel, endpoint: str):
    async def handler() -> None:
        raise ApiError(404, served.unsupported(endpoint))

    return handler
