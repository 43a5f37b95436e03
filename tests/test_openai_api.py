"""`serve`'s OpenAI-compatible routes, driven by the official `openai` client (sync and streaming)
against a real uvicorn process on loopback serving a tiny random GPT-2 given a chat template: chat
and completions equal /generate's text, embeddings /embed's vectors; errors, the API key and the
queue bound answer in OpenAI's error shape. The bundled MiniLM's embeddings (a second server
process) are a slow test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key-123"
# ChatML, as SmolLM2 and Qwen write it: enough for the template to decide the prompt's tokens.
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_lm(tiny_gpt2, tmp_path_factory) -> Path:
    """The tiny random GPT-2 with a chat template, saved as a user's model folder."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-chat-lm")
    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    GPT2LMHeadModel.from_pretrained(tiny_gpt2).save_pretrained(folder)
    return folder


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m warmstart serve ...` on a free loopback port, until stopped."""

    def __init__(self, model: str, *flags: str):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warmstart", "serve", model, "--port", str(self.port)]
            + ["--api-key", KEY, "--log-level", "warning", "--cpu", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait(self) -> Server:
        deadline = time.monotonic() + 300  # a bound for a loaded machine, not a timing
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[1].decode()[-3000:]
            try:
                if httpx.get(f"{self.base}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, path: str, body: dict) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.post(f"{self.base}{path}", json=body, headers=headers, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:  # draining on SIGTERM is test_serve's: here, just stop
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers(chat_lm):
    """The chat LM, with a queue of one request and a batching wait (of /embed, which decoding does
    not use) long enough to hold an embedding request in flight."""
    # PyTorch decoding: the routes are under test here, the engines in test_onnx_generate and co.
    flags = ("--backend", "torch", "--max-new-tokens", "24", "--max-queue", "1")
    lm = Server(str(chat_lm), *flags, "--max-wait-ms", "800")
    try:
        yield {"lm": lm.wait()}
    finally:
        lm.stop()


MESSAGES = [
    {"role": "system", "content": "You answer in one word."},
    {"role": "user", "content": "Name a colour."},
]


def test_chat_completion_equals_generate_with_the_chat_template(servers, chat_lm):
    lm = servers["lm"]
    client = lm.client()
    assert [m.id for m in client.models.list().data] == [str(chat_lm)]
    reply = client.chat.completions.create(
        model=str(chat_lm), messages=MESSAGES, temperature=0, max_tokens=10
    )
    ours = lm.post(
        "/generate",
        {
            "prompt": MESSAGES[1]["content"],
            "system": MESSAGES[0]["content"],
            "chat": True,
            "strategy": "greedy",
            "max_new_tokens": 10,
        },
    ).json()
    assert reply.object == "chat.completion" and reply.model == str(chat_lm)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == ours["completions"][0]
    # The model's own end of sequence is OpenAI's "stop" too.
    expected = "length" if ours["finish_reasons"] == ["length"] else "stop"
    assert reply.choices[0].finish_reason == expected
    assert reply.usage.prompt_tokens == ours["prompt_tokens"]
    assert reply.usage.completion_tokens == ours["completion_tokens"][0]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chat_adds_up_to_the_whole_reply_and_ends_with_done(servers, chat_lm):
    lm = servers["lm"]
    whole = lm.client().chat.completions.create(
        model=str(chat_lm), messages=MESSAGES, temperature=0, max_tokens=12
    )
    chunks = list(
        lm.client().chat.completions.create(
            model=str(chat_lm),
            messages=MESSAGES,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # it came in pieces
    assert "".join(pieces) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == whole.choices[0].finish_reason and not any(finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # On the wire: server-sent `data:` lines, the last one [DONE].
    with httpx.stream(
        "POST",
        f"{lm.base}/v1/chat/completions",
        json={"model": str(chat_lm), "messages": MESSAGES, "max_tokens": 3, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_completions_take_n_seed_stop_and_lists_of_prompts(servers, chat_lm):
    lm = servers["lm"]
    client = lm.client()

    def sample(seed: int):
        return client.completions.create(
            model=str(chat_lm),
            prompt=["Once upon a time", "The weather"],
            n=2,
            temperature=1.0,
            top_p=0.9,
            seed=seed,
            max_tokens=6,
        )

    first, again = sample(7), sample(7)
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # seeded
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_lm)
    # Each prompt's tokens count once, however many completions it gets.
    assert first.usage.prompt_tokens == len(tok("Once upon a time").input_ids) + len(
        tok("The weather").input_ids
    )
    assert 0 < first.usage.completion_tokens <= 4 * 6
    greedy = client.completions.create(model=str(chat_lm), prompt="Once upon a time", temperature=0)
    text = greedy.choices[0].text
    assert greedy.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions
    cut = text[len(text) // 2 :].strip()[:3]
    stopped = client.completions.create(
        model=str(chat_lm), prompt="Once upon a time", temperature=0, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.find(cut)]
    streamed = client.completions.create(
        model=str(chat_lm), prompt="Once upon a time", temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == text


def test_unsupported_fields_and_bad_requests_get_openai_errors(servers, chat_lm):
    client = servers["lm"].client()
    ask = dict(model=str(chat_lm), messages=MESSAGES, max_tokens=4)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for extra, param in (
        ({"tools": [tool]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 500}, "max_tokens"),
        ({"extra_body": {"colour": "blue"}}, "colour"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{**ask, **extra})
        assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
        assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**{**ask, "messages": [{"role": "user", "content": image}]})
    assert e.value.body["param"] == "messages[0].content[0]"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(**{**ask, "model": "gpt-4o"})
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.AuthenticationError) as e:
        servers["lm"].client(key="wrong").chat.completions.create(**ask)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    metrics = httpx.get(
        f"{servers['lm'].base}/metrics", headers={"Authorization": f"Bearer {KEY}"}
    ).text
    counted = 'warmstart_http_requests_total{endpoint="/v1/chat/completions",status="%d"}'
    assert counted % 200 in metrics and counted % 400 in metrics  # what the clients saw
    assert counted % 422 not in metrics


def _embeddings_equal_the_embed_route(enc: Server, model: str) -> None:
    texts = ["A wonderful, moving film.", "Two hours I will never get back."]
    ours = np.array(enc.post("/embed", {"texts": texts}).json()["embeddings"], dtype=np.float32)
    client = enc.client()
    as_floats = client.embeddings.create(model=model, input=texts, encoding_format="float")
    # The client asks for base64 by default and decodes it itself.
    as_base64 = client.embeddings.create(model=model, input=texts)
    one = client.embeddings.create(model=model, input=texts[1])
    np.testing.assert_allclose([d.embedding for d in as_floats.data], ours, rtol=0, atol=1e-6)
    np.testing.assert_array_equal([d.embedding for d in as_base64.data], ours)
    np.testing.assert_allclose(one.data[0].embedding, ours[1], atol=1e-6)
    assert [d.index for d in as_floats.data] == [0, 1] and as_floats.usage.prompt_tokens > 2


def test_embeddings_equal_the_embed_route_as_floats_and_base64(servers, chat_lm):
    _embeddings_equal_the_embed_route(servers["lm"], str(chat_lm))


@pytest.mark.slow
def test_minilm_embeddings_equal_the_embed_route_and_it_does_not_chat():
    enc = Server("minilm").wait()
    try:
        _embeddings_equal_the_embed_route(enc, "minilm")
        with pytest.raises(openai.NotFoundError) as e:
            enc.client().chat.completions.create(model="minilm", messages=MESSAGES)
        assert e.value.body["code"] == "model_not_supported"
    finally:
        enc.stop()


def test_a_full_queue_answers_503_in_openai_shape(servers, chat_lm):
    enc = servers["lm"]
    first: dict = {}
    body = {"model": str(chat_lm), "input": "x"}
    t = threading.Thread(target=lambda: first.update(r=enc.post("/v1/embeddings", body)))
    t.start()
    time.sleep(0.4)  # the first request waits in the batcher (--max-wait-ms 800): the queue is full
    with pytest.raises(openai.InternalServerError) as e:
        enc.client().embeddings.create(model=str(chat_lm), input="y")
    t.join(30)
    assert e.value.status_code == 503 and e.value.body["type"] == "server_error"
    assert e.value.response.headers["retry-after"] == "1"
    assert first["r"].status_code == 200


def test_the_timeout_and_size_limits_answer_in_openai_shape(tiny_models):
    """In process (FastAPI's TestClient): an embedding request held in the batcher past
    --request-timeout gets 504, too many inputs 413, each in OpenAI's error shape."""
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving import ServedModel, create_app

    served = ServedModel.load(str(tiny_models["distilbert"]), cpu=True)
    cfg = ServeConfig(
        model=served.name, max_wait_ms=2000, request_timeout=0.3, max_texts_per_request=2
    )
    with TestClient(create_app(served, cfg)) as c:
        late = c.post("/v1/embeddings", json={"model": served.name, "input": "a lone text"})
        many = c.post("/v1/embeddings", json={"model": served.name, "input": ["a", "b", "c"]})
    assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
    assert many.status_code == 413 and many.json()["error"]["param"] == "input"
    assert set(many.json()["error"]) == {"message", "type", "param", "code"}
