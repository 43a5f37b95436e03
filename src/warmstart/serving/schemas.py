"""Request and response bodies: the OpenAPI schema at /docs is generated from these."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from warmstart.config import GenerateConfig

# Some character that is not white space (str.isspace), spelt out so that the JSON schema's regex
# engine and Python's agree on what "blank" means.
NOT_BLANK = (
    "[^\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
)


def _not_blank(s: str) -> str:
    if not re.search(NOT_BLANK, s):
        raise ValueError("is empty")
    return s


Text = Annotated[
    str, AfterValidator(_not_blank), WithJsonSchema({"type": "string", "pattern": NOT_BLANK})
]
Strict = ConfigDict(extra="forbid")  # a misspelt option is an error, not silently ignored


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, in one sentence")
    field: str | None = Field(None, description="the request field it is about, e.g. texts[2]")
    errors: list[dict] | None = Field(
        None, description="every problem found, for malformed requests"
    )
    request_id: str | None = Field(
        None,
        description=(
            "for a 500 or 504: the id the server log files it under "
            "(also the X-Request-ID header of every response)"
        ),
    )


ERRORS = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "the model cannot do this (e.g. two labels tokenise the same way for a causal LM)"),
        (404, "this model does not serve this endpoint"),
        (413, "too many texts, too long a text, or too large a body"),
        (422, "malformed request: the field is named"),
        (
            401,
            (
                "no API key, or a wrong one (servers started with --api-key): send Authorization:"
                " Bearer KEY"
            ),
        ),
        (
            500,
            (
                "the model failed on this request (the server keeps running; the body has the"
                " request id)"
            ),
        ),
        (
            503,
            (
                "busy: --max-queue requests are already waiting or running; retry after the"
                " Retry-After seconds"
            ),
        ),
        (504, "the request took longer than --request-timeout"),
    )
}


class TextsRequest(BaseModel):
    model_config = Strict
    texts: list[Text] = Field(
        min_length=1,
        description="texts to process, answered in the same order",
        examples=[["A wonderful, moving film.", "Two hours I will never get back."]],
    )


class Prediction(BaseModel):
    """Single-label: label, score, probabilities; multi-label: labels, scores; regression: value or
    values."""

    label: str | None = Field(None, description="the predicted class (single-label)")
    score: float | None = Field(
        None, description="probability of the predicted label (single-label)"
    )
    probabilities: dict[str, float] | None = Field(
        None, description="every class's probability (single-label)"
    )
    labels: list[str] | None = Field(
        None, description="the labels at or above their thresholds (multi-label)"
    )
    scores: dict[str, float] | None = Field(
        None, description="every label's probability (multi-label)"
    )
    value: float | None = Field(None, description="the predicted number (regression, one target)")
    values: dict[str, float] | None = Field(
        None, description="each target's predicted number (regression)"
    )


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class TagRequest(TextsRequest):
    aggregation: Literal["first", "average", "max"] = Field(
        "average",
        description=(
            "an entity's score from its words' scores: the first word's, the mean, or the max"
        ),
    )


class TaggedWord(BaseModel):
    word: str
    start: int = Field(description="offset of the word's first character in the text")
    end: int = Field(
        description="offset just after its last character: text[start:end] is the word"
    )
    tag: str
    score: float = Field(description="probability of the tag")


class Entity(BaseModel):
    type: str
    text: str = Field(description="the entity as it stands in the text: text[start:end]")
    start: int
    end: int
    score: float


class TaggedText(BaseModel):
    text: str
    entities: list[Entity] = Field(
        description="entity spans read from the tags (none for part-of-speech tags)"
    )
    words: list[TaggedWord]


class TagResponse(BaseModel):
    model: str
    results: list[TaggedText]


class AnswerRequest(BaseModel):
    model_config = Strict
    question: Text = Field(examples=["Where do water deer live?"])
    context: Text = Field(
        description="the text the answer is taken from",
        examples=["The water deer is native to China and Korea."],
    )
    max_answer_length: int | None = Field(
        None, ge=1, le=512, description="the longest answer span in tokens (default: the server's)"
    )


class AnswerResponse(BaseModel):
    model: str
    answer: str = Field(description="context[start:end]; empty: no answer in the context (v2)")
    start: int = Field(
        description="offset of the answer's first character in the context (-1: none)"
    )
    end: int
    score: float = Field(description="probability among the n best candidate spans")
    null_score_diff: float | None = Field(
        None, description="SQuAD v2 models: null score minus the best span's"
    )


class EmbedRequest(TextsRequest):
    normalize: bool = Field(
        False, description="scale each vector to length 1 (cosine similarity = dot product)"
    )


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]


class RerankRequest(BaseModel):
    """As text-embeddings-inference's /rerank: a query and the passages to order by relevance."""

    model_config = Strict
    query: Text = Field(examples=["what is the lift of a wing in a slipstream"])
    texts: list[Text] = Field(
        min_length=1,
        description="the passages to score against the query",
        examples=[["the lift increase due to a propeller slipstream", "heat transfer in slabs"]],
    )
    return_text: bool = Field(False, description="repeat each passage in its result")


class RankedText(BaseModel):
    index: int = Field(description="the passage's position in the request's texts")
    score: float = Field(
        description="relevance in (0, 1): the sigmoid of the cross-encoder's logit"
    )
    text: str | None = None


class RerankResponse(BaseModel):
    model: str
    results: list[RankedText] = Field(description="every passage, most relevant first")


class ZeroshotRequest(TextsRequest):
    labels: list[Text] = Field(
        min_length=1,
        max_length=100,
        description="candidate labels, each once",
        examples=[["positive", "negative"]],
        json_schema_extra={"uniqueItems": True},
    )
    multi_label: bool = Field(
        False,
        description=(
            "score each label on its own (else the scores sum to 1); always so with a single label"
        ),
    )


class ZeroshotResult(BaseModel):
    label: str = Field(description="the best-scoring label")
    score: float
    scores: dict[str, float] = Field(
        description="every label's score, in the request's label order"
    )


class ZeroshotResponse(BaseModel):
    model: str
    method: str
    results: list[ZeroshotResult]


def _like_generate(name: str):
    """A sampling setting with the range `warmstart generate` gives it (declared once, in
    GenerateConfig): outside it, e.g. a temperature or repetition penalty of 1e-300, the scores
    overflow and sampling fails."""
    bounds = next(f for f in fields(GenerateConfig) if f.name == name).metadata["bounds"]
    return Annotated[float, Field(**bounds, allow_inf_nan=False)]


Temperature = _like_generate("temperature")
Penalty = _like_generate("repetition_penalty")
Mass = _like_generate("top_p")


class GenerateRequest(BaseModel):
    model_config = Strict
    prompt: Text = Field(
        description="text to continue (a user message with chat)", examples=["Once upon a time"]
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="most tokens of the completion (capped by the server)"
    )
    max_length: int | None = Field(None, ge=1, description="most tokens of prompt + completion")
    strategy: Literal["auto", "greedy", "sample", "beam"] = "auto"
    temperature: Temperature | None = None
    top_k: int | None = Field(None, ge=0)
    top_p: Mass | None = None
    typical_p: Mass | None = None
    repetition_penalty: Penalty | None = None
    no_repeat_ngram_size: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=1, le=16)
    num_return_sequences: int = Field(1, ge=1, le=16)
    stop: list[str] = Field(
        [], max_length=16, description="stop strings: a completion ends just before one"
    )
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="makes sampling reproducible")
    chat: bool = Field(False, description="send the prompt through the model's chat template")
    system: str | None = Field(None, description="system message (with chat)")
    stream: bool = Field(
        False, description="answer with server-sent events: token pieces, then the result"
    )


class GenerateResponse(BaseModel):
    prompt: str
    completions: list[str]
    prompt_tokens: int
    completion_tokens: list[int]
    finish_reasons: list[Literal["eos", "stop", "length"]]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
