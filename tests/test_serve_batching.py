"""`serve` on ONNX Runtime GenAI's route: concurrent requests decoded together by GenAI's Engine, each
streamed on its own and equal to its text generated alone; a stream left early is cancelled while
the engine goes on; what the Engine cannot do is refused by name. A real uvicorn process on
loopback serves a tiny random Llama."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import tiny_llama
import warmstart
from warmstart.inference import onnx_lm, served_lm
from warmstart.serving import generation

httpx = pytest.importorskip("httpx")
# The session's tiny Llama and cache (fixtures, registered under their own names).
tiny_llama_session = tiny_llama.tiny_llama_session
cache_fixture = tiny_llama.session_cache
pytestmark = pytest.mark.skipif(
    not onnx_lm.installed(), reason="onnxruntime-genai is not installed"
)
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "Water boils at",
    "My favourite colour is",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_llama_session, tmp_path_factory):
    port = free_port()
    home = str(tmp_path_factory.getbasetemp() / "warmstart-home")
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmstart", "serve", str(tiny_llama_session), "--port", str(port)]
        + ["--backend", "onnx", "--quantize", "none", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "WARMSTART_HOME": home, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield base
    finally:
        proc.kill()
        proc.wait()


def stream(base: str, prompt: str, out: dict) -> None:
    body = {"prompt": prompt, "max_new_tokens": 12, "strategy": "greedy", "stream": True}
    pieces, done = [], None
    with httpx.stream("POST", f"{base}/generate", json=body, timeout=120) as r:
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                if event == "token":
                    pieces.append(data["text"])
                elif event == "done":
                    done = data
    out[prompt] = ("".join(pieces), done)


def test_concurrent_streams_each_equal_their_text_generated_alone(server, tiny_llama_session):
    info = httpx.get(f"{server}/info", timeout=10).json()
    assert info["backend"] == "onnx-genai fp32"
    out: dict = {}
    threads = [threading.Thread(target=stream, args=(server, p, out)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    alone = warmstart.generate(
        prompts=PROMPTS,
        model=str(tiny_llama_session),
        backend="onnx",
        quantize="none",
        max_new_tokens=12,
        strategy="greedy",
    )
    for prompt, solo in zip(PROMPTS, alone):
        streamed, done = out[prompt]
        assert streamed == done["completions"][0] == solo.completions[0]
        assert done["completion_tokens"] == solo.completion_tokens


def test_what_the_engine_cannot_do_is_refused_by_name(server):
    r = httpx.post(
        f"{server}/generate",
        json={"prompt": "Hello", "num_beams": 2, "strategy": "beam", "max_new_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 422
    assert r.json()["field"] == "num_beams" and "beam search" in r.json()["error"]


def test_a_stream_left_early_is_cancelled_and_the_engine_goes_on(tiny_llama_session):
    lm = served_lm.load(
        str(tiny_llama_session), {"backend": "onnx", "quantize": "none", "max_batch_size": 4}
    )
    long = generation.prepare(lm, {"prompt": PROMPTS[0], "max_new_tokens": 200}, 256)
    short = generation.prepare(lm, {"prompt": PROMPTS[1], "max_new_tokens": 5}, 256)

    async def main() -> tuple[list[str], generation.TextStream]:
        left = generation.TextStream(lm, long, None)
        seen = []
        async for piece in left:
            seen.append(piece)
            if len(seen) == 2:
                break
        return seen, left

    seen, left = asyncio.run(main())
    assert len(seen) == 2 and left.result is None
    engine = generation.engine_of(lm)
    steps = engine.steps
    result = generation.run(lm, short)  # answered: the abandoned one did not hold the engine
    assert result.completion_tokens == [5]
    assert engine.steps - steps < 100  # not the 200 steps the abandoned request asked for
