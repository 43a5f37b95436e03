"""`warmstart serve` facing a network: the API key, the queue bound (503 + Retry-After), the request
deadline (504), 500s that carry a request id and not the exception, /metrics, CORS, and an overload
of a real server on loopback. Most tests use a fake model whose forward pass waits at a gate the
test holds: a full queue or a request past its deadline is then a state the test sets up, not a
timing race."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.config import ServeConfig

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
prometheus_parser = pytest.importorskip("prometheus_client.parser")
from fastapi.testclient import TestClient  # noqa: E402

from warmstart.serving import ServedModel, create_app, generation, warn_if_open  # noqa: E402

KEY = "k3y-for-tests_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


class FakeClassifier(ServedModel):
    """A classifier without weights. Each forward pass waits until ``gate`` is open (tests close it
    to keep requests in flight), records its texts, and fails on a text containing "boom"."""

    def __init__(self) -> None:
        super().__init__(name="fake", path="fake", kind="classifier")
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.seen: list[str] = []

    @property
    def labels(self) -> list[str]:
        return ["negative", "positive"]

    def predict(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        self.seen.extend(texts)
        if any("boom" in t for t in texts):
            raise RuntimeError("secret detail: /home/alice/.ssh/id_rsa")
        return np.tile(np.array([0.25, 0.75], dtype=np.float32), (len(texts), 1))


@dataclass
class FakePrepared:
    stops: list[str]


def fake_lm(monkeypatch) -> tuple[ServedModel, threading.Event, list]:
    """A causal LM whose generation waits at a gate (or until abandoned); records each run's cancel
    event."""
    served = ServedModel(name="fake-lm", path="fake-lm", kind="causal-lm")
    served.causal_lm = SimpleNamespace(tokenizer=None)  # the stream's text decoder is never reached
    gate, runs = threading.Event(), []
    gate.set()

    def run(lm, p, streamer=None, cancelled=None):
        runs.append(cancelled)
        while not gate.wait(0.01):
            if cancelled is not None and cancelled.is_set():
                raise generation.Abandoned
        if p.stops == ["boom"]:
            raise RuntimeError("secret detail: generation exploded")
        return generation.Generation("hi", [" there"], 1, [1], ["length"])

    monkeypatch.setattr(
        generation, "prepare", lambda lm, options, limit: FakePrepared(options["stop"])
    )
    monkeypatch.setattr(generation, "run", run)
    return served, gate, runs


def app_for(served: ServedModel, **kw):
    return create_app(served, ServeConfig(model=served.name, **kw))


async def until(condition, timeout: float = 20) -> None:
    """Wait for a state (not for a time): ``condition()`` true, checked every few milliseconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server never reached the expected state"
        await asyncio.sleep(0.005)


def async_client(app) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30)


def test_requests_without_the_api_key_get_401_and_health_stays_open():
    with TestClient(app_for(FakeClassifier(), api_key=KEY)) as c:
        assert c.get("/health").status_code == 200
        missing = c.post("/predict", json={"texts": ["hi"]})
        wrong = c.post(
            "/predict", json={"texts": ["hi"]}, headers={"Authorization": "Bearer not-the-key"}
        )
        basic = c.post(
            "/predict", json={"texts": ["hi"]}, headers={"Authorization": f"Basic {KEY}"}
        )
        right = c.post("/predict", json={"texts": ["hi"]}, headers=AUTH)
        shut = {
            path: c.get(path).status_code
            for path in ("/info", "/metrics", "/docs", "/openapi.json", "/x")
        }
        schema = c.get("/openapi.json", headers=AUTH).json()
        assert c.get("/metrics", headers=AUTH).status_code == 200
    assert missing.status_code == wrong.status_code == basic.status_code == 401
    assert (
        missing.headers["www-authenticate"] == "Bearer"
        and "Authorization: Bearer" in missing.json()["error"]
    )
    assert (
        wrong.headers["www-authenticate"].startswith("Bearer error=")
        and wrong.json()["error"] == "wrong API key"
    )
    assert right.status_code == 200 and right.json()["predictions"][0]["label"] == "positive"
    assert set(shut.values()) == {401}  # even an unknown path: nothing is told without the key
    assert (
        schema["security"] == [{"bearer": []}]
        and schema["paths"]["/health"]["get"]["security"] == []
    )


def test_the_api_key_can_come_from_the_environment_and_the_flag_wins(monkeypatch):
    monkeypatch.setenv("WARMSTART_API_KEY", "from-the-environment")
    with TestClient(app_for(FakeClassifier())) as c:
        assert c.post("/predict", json={"texts": ["hi"]}).status_code == 401
        env = {"Authorization": "Bearer from-the-environment"}
        assert c.post("/predict", json={"texts": ["hi"]}, headers=env).status_code == 200
    with TestClient(app_for(FakeClassifier(), api_key=KEY)) as c:
        assert c.post("/predict", json={"texts": ["hi"]}, headers=env).status_code == 401
        assert c.post("/predict", json={"texts": ["hi"]}, headers=AUTH).status_code == 200


def test_without_a_key_the_server_is_open_and_warns_only_off_loopback(caplog, monkeypatch):
    monkeypatch.delenv("WARMSTART_API_KEY", raising=False)
    with TestClient(app_for(FakeClassifier())) as c:
        assert c.post("/predict", json={"texts": ["hi"]}).status_code == 200
    warned = {}
    for host, key in (
        ("127.0.0.1", None),
        ("::1", None),
        ("localhost", None),
        ("0.0.0.0", None),
        ("192.0.2.7", None),
        ("0.0.0.0", KEY),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="warmstart.serving"):
            warn_if_open(ServeConfig(model="m", host=host, api_key=key))
        warned[host, key] = any("no API key" in r.getMessage() for r in caplog.records)
    assert warned == {
        ("127.0.0.1", None): False,
        ("::1", None): False,
        ("localhost", None): False,
        ("0.0.0.0", None): True,
        ("192.0.2.7", None): True,
        ("0.0.0.0", KEY): False,
    }


@pytest.mark.parametrize("batching", [True, False])
def test_a_full_queue_answers_503_with_retry_after_at_once_then_recovers(batching):
    model = FakeClassifier()
    app = app_for(model, max_queue=2, batching=batching, max_wait_ms=1)

    async def go():
        async with async_client(app) as c:
            # the two admitted requests stay in flight until the test opens the gate
            model.gate.clear()
            held = [
                asyncio.create_task(c.post("/predict", json={"texts": [f"held {i}"]}))
                for i in range(2)
            ]
            await until(lambda: app.state.queue.depth == 2)
            refused = await c.post("/predict", json={"texts": ["one too many"]})
            health = await c.get("/health")  # the queue bounds model requests only
            scrape = (await c.get("/metrics")).text
            model.gate.set()
            answered = await asyncio.gather(*held)
            after = await c.post("/predict", json={"texts": ["after"]})
            return refused, health, scrape, answered, after

    refused, health, scrape, answered, after = asyncio.run(go())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert (
        "busy" in refused.json()["error"] and "one too many" not in model.seen
    )  # refused, never queued
    assert health.status_code == 200 and "warmstart_queue_depth 2.0" in scrape
    assert [r.status_code for r in answered] == [200, 200] and after.status_code == 200
    assert app.state.queue.depth == 0


def test_the_queue_bound_holds_for_generate_too(monkeypatch):
    served, gate, _ = fake_lm(monkeypatch)
    app = app_for(served, max_queue=1)

    async def go():
        async with async_client(app) as c:
            gate.clear()
            held = asyncio.create_task(c.post("/generate", json={"prompt": "hi"}))
            await until(lambda: app.state.queue.depth == 1)
            refused = await c.post("/generate", json={"prompt": "hi"})
            gate.set()
            return refused, await held, await c.post("/generate", json={"prompt": "hi"})

    refused, held, after = asyncio.run(go())
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
    assert held.status_code == after.status_code == 200 and held.json()["completions"] == [" there"]


def test_a_request_past_the_deadline_gets_504_and_its_queued_work_is_dropped():
    model = FakeClassifier()
    app = app_for(model, request_timeout=1.0, max_queue=2, batching=False)

    async def go():
        async with async_client(app) as c:
            model.gate.clear()
            running = asyncio.create_task(c.post("/predict", json={"texts": ["running"]}))
            # Its pass has started and waits at the gate (or, on a machine too busy to start it
            # within the deadline, it was dropped before it began).
            await until(lambda: model.entered.is_set() or running.done())
            queued = await c.post(
                "/predict", json={"texts": ["queued"]}
            )  # waits behind it, past its deadline
            running = await running
            depth = (
                app.state.queue.depth
            )  # both places free again, though the forward thread is still busy
            model.gate.set()
            await until(lambda: app.state.batchers["predict"].passes == int(model.entered.is_set()))
            return running, queued, depth, await c.post("/predict", json={"texts": ["next"]})

    running, queued, depth, after = asyncio.run(go())
    assert running.status_code == queued.status_code == 504 and depth == 0
    assert (
        "1 s" in queued.json()["error"]
        and queued.json()["request_id"] == queued.headers["x-request-id"]
    )
    assert after.status_code == 200
    assert (
        "queued" not in model.seen and model.seen[-1] == "next"
    )  # the queued request's pass never ran


def test_a_generation_past_the_deadline_is_told_to_stop(monkeypatch):
    served, gate, runs = fake_lm(monkeypatch)
    gate.clear()  # never opened: the fake generation ends only when it is abandoned
    with TestClient(app_for(served, request_timeout=0.5)) as c:
        r = c.post("/generate", json={"prompt": "hi"})
        assert r.status_code == 504
    # The generation thread was told to stop (unless the deadline passed before it even began: then
    # it never ran).
    assert len(runs) <= 1 and all(cancelled.wait(20) for cancelled in runs)


def test_an_abandoned_generation_stops_at_the_next_token(tiny_gpt2):
    served = ServedModel.load(str(tiny_gpt2), cpu=True)
    prepared = generation.prepare(
        served.causal_lm, {"prompt": "Once upon a time", "max_new_tokens": 40}, 50
    )

    class SetAfter(threading.Event):  # set from the third look on: a few tokens in
        looks = 0

        def is_set(self) -> bool:
            self.looks += 1
            return self.looks > 3

    with pytest.raises(generation.Abandoned):
        generation.run(served.causal_lm, prepared, cancelled=SetAfter())
    assert (
        len(generation.run(served.causal_lm, prepared, cancelled=threading.Event()).completions)
        == 1
    )


def test_a_500_carries_the_request_id_not_the_exception_text_which_goes_to_the_log(
    caplog, monkeypatch
):
    app = app_for(FakeClassifier())
    with caplog.at_level(logging.ERROR, logger="warmstart.serving"), TestClient(app) as c:
        r = c.post("/predict", json={"texts": ["boom"]})
        given = c.post(
            "/predict", json={"texts": ["boom"]}, headers={"X-Request-ID": "client-id.42"}
        )
        odd = c.post(
            "/predict", json={"texts": ["boom"]}, headers={"X-Request-ID": "a b\tc" + "x" * 100}
        )
        ok = c.post("/predict", json={"texts": ["fine"]}, headers={"X-Request-ID": "ok-1"})
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and r.json()["request_id"] == rid and rid in r.json()["error"]
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert given.headers["x-request-id"] == given.json()["request_id"] == "client-id.42"
    assert (
        len(odd.headers["x-request-id"]) == 32 and " " not in odd.headers["x-request-id"]
    )  # replaced
    assert ok.headers["x-request-id"] == "ok-1"  # on every response, not only errors
    logged = {rec.getMessage(): rec for rec in caplog.records}
    failed = [rec for msg, rec in logged.items() if rid in msg]
    assert len(failed) == 1 and "secret detail" in str(
        failed[0].exc_info[1]
    )  # the traceback, filed under the id
    assert any("client-id.42" in msg for msg in logged)

    served, _, _ = fake_lm(
        monkeypatch
    )  # a stream whose headers are out: the error event says the same
    with (
        caplog.at_level(logging.ERROR, logger="warmstart.serving"),
        TestClient(app_for(served)) as c,
    ):
        s = c.post("/generate", json={"prompt": "hi", "stream": True, "stop": ["boom"]})
    assert s.status_code == 200 and "event: error" in s.text and s.headers["x-request-id"] in s.text
    assert "secret" not in s.text


def _samples(text: str) -> dict[str, list]:
    families = prometheus_parser.text_string_to_metric_families(text)
    return {f.name: f.samples for f in families}


def test_metrics_count_requests_by_endpoint_and_status_in_prometheus_format():
    model = FakeClassifier()
    apps = [
        app_for(model, api_key=KEY, max_batch_size=8),
        app_for(model),
    ]  # two registries, no clash
    with TestClient(apps[0]) as c:
        for texts in (["a"], ["b", "c"], ["d"]):
            assert c.post("/predict", json={"texts": texts}, headers=AUTH).status_code == 200
        assert c.post("/predict", json={"texts": []}, headers=AUTH).status_code == 422
        assert c.post("/predict", json={"texts": ["a"]}).status_code == 401
        assert c.get("/nowhere", headers=AUTH).status_code == 404
        scrape = c.get("/metrics", headers=AUTH)
    assert scrape.headers["content-type"].startswith("text/plain")
    m = _samples(scrape.text)
    requests = Counter(
        {
            (s.labels["endpoint"], s.labels["status"]): s.value
            for s in m["warmstart_http_requests"]
            if s.name.endswith("_total")
        }
    )
    assert requests == {
        ("/predict", "200"): 3,
        ("/predict", "422"): 1,
        ("/predict", "401"): 1,
        ("other", "404"): 1,
    }
    latency = {
        s.labels["endpoint"]: s.value
        for s in m["warmstart_http_request_duration_seconds"]
        if s.name.endswith("_count")
    }
    assert latency == {"/predict": 5, "other": 1}
    batches = {
        s.name.rsplit("_", 1)[-1]: s.value
        for s in m["warmstart_batch_size"]
        if s.labels.get("endpoint") == "predict" and "le" not in s.labels
    }
    assert (
        batches["count"] == apps[0].state.batchers["predict"].passes and batches["sum"] == 4
    )  # texts
    assert {s.labels["le"] for s in m["warmstart_batch_size"] if "le" in s.labels} >= {
        "1.0",
        "8.0",
        "+Inf",
    }
    assert m["warmstart_queue_depth"][0].value == 0
    with TestClient(apps[1]) as c:
        other = _samples(c.get("/metrics").text)["warmstart_http_requests"]
    assert [
        s for s in other if s.name.endswith("_total")
    ] == []  # its own counts: nothing answered before


def test_cors_headers_only_for_the_given_origins():
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with TestClient(app_for(FakeClassifier())) as c:
        closed = c.options("/predict", headers=preflight)
        plain = c.post(
            "/predict", json={"texts": ["hi"]}, headers={"Origin": "https://app.example"}
        )
    assert (
        "access-control-allow-origin" not in closed.headers
        and "access-control-allow-origin" not in plain.headers
    )
    with TestClient(
        app_for(FakeClassifier(), api_key=KEY, cors_origin=["https://app.example"])
    ) as c:
        opened = c.options(
            "/predict", headers=preflight
        )  # a preflight carries no key: answered before the check
        allowed = c.post(
            "/predict", json={"texts": ["hi"]}, headers={"Origin": "https://app.example", **AUTH}
        )
        unauthorised = c.post(
            "/predict", json={"texts": ["hi"]}, headers={"Origin": "https://app.example"}
        )
        stranger = c.options("/predict", headers={**preflight, "Origin": "https://evil.example"})
    assert (
        opened.status_code == 200
        and opened.headers["access-control-allow-origin"] == "https://app.example"
    )
    assert "authorization" in opened.headers["access-control-allow-headers"].lower()
    assert (
        allowed.status_code == 200
        and allowed.headers["access-control-allow-origin"] == "https://app.example"
    )
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert unauthorised.status_code == 401 and "access-control-allow-origin" in unauthorised.headers
    assert "access-control-allow-origin" not in stranger.headers


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cors-origin", "https://app.example/"], "--cors-origin"),
        (["--api-key", "has a space"], "--api-key"),
        (["--max-queue", "0"], "max_queue"),
        (["--request-timeout", "0"], "request_timeout"),
    ],
)
def test_bad_protection_settings_are_one_line_errors(flags, message, capsys):
    assert main(["serve", "some-model", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def _save_tiny_classifier(base: Path, folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer

    from warmstart.models import load_classifier

    torch.manual_seed(0)
    load_classifier(str(base), label_names=["negative", "positive"]).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, port: int, flags: list[str], env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warmstart",
            "serve",
            str(model),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--cpu",
            "--backend",
            "torch",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.communicate()[1].decode()
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            ):  # open: no key needed
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


def test_overload_on_loopback_gets_only_200_or_503_and_recovers(tiny_models, tmp_path):
    model = _save_tiny_classifier(tiny_models["bert"], tmp_path / "clf")
    port, queue_bound, clients, per_client = (
        _free_port(),
        2,
        8,
        6,
    )  # 4x the requests the queue admits
    proc = _start_server(model, port, ["--max-queue", str(queue_bound)], {"WARMSTART_API_KEY": KEY})
    statuses, retry_after = [], set()

    async def client(c: httpx.AsyncClient, i: int) -> None:
        for j in range(
            per_client
        ):  # bounded: clients * per_client requests in all, each at most 30 s
            r = await c.post("/predict", json={"texts": [f"review {i}-{j}: a fine film"]})
            statuses.append(r.status_code)
            if r.status_code == 503:
                retry_after.add(r.headers.get("retry-after"))

    async def storm() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30, limits=limits
        ) as c:
            await asyncio.gather(*(client(c, i) for i in range(clients)))

    try:
        asyncio.run(storm())
        after = httpx.post(
            f"http://127.0.0.1:{port}/predict",
            json={"texts": ["after the storm"]},
            headers=AUTH,
            timeout=30,
        )
        scrape = _samples(
            httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH, timeout=30).text
        )
        unauthorised = httpx.post(
            f"http://127.0.0.1:{port}/predict", json={"texts": ["x"]}, timeout=30
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    counts = Counter(statuses)
    assert (
        set(counts) <= {200, 503}
        and counts[200] >= 1
        and sum(counts.values()) == clients * per_client
    )
    assert retry_after <= {"1"}
    assert after.status_code == 200 and len(after.json()["predictions"]) == 1  # recovered
    assert unauthorised.status_code == 401
    served = {
        s.labels["status"]: s.value
        for s in scrape["warmstart_http_requests"]
        if s.name.endswith("_total") and s.labels["endpoint"] == "/predict"
    }
    assert (
        served.get("503", 0) == counts[503] and served["200"] == counts[200] + 1
    )  # the server saw the same
    assert scrape["warmstart_queue_depth"][0].value == 0
    assert "Traceback" not in proc.stderr.read().decode()
