"""`warmstart serve`: every endpoint through FastAPI's TestClient with tiny models, dynamic batching
(batched results equal one-at-a-time results), limits and JSON errors, a bounded schemathesis run
against the OpenAPI schema, and one real uvicorn process on loopback that drains its requests on
SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.config import ServeConfig

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from warmstart.serving import ServedModel, create_app  # noqa: E402
from warmstart.serving.batcher import Batcher  # noqa: E402

LABELS = ["negative", "positive"]
TEXTS = [
    "A wonderful, moving film.",
    "Two hours I will never get back.",
    "ok",
    "The plot was thin but the acting saved it, mostly.",
    "Terrible.",
    "I laughed, I cried, I bought the soundtrack.",
]
LIMITS = dict(max_texts_per_request=8, max_text_chars=300, max_body_bytes=20_000)


def _save_classifier(base: Path, folder: Path, labels: list[str]) -> Path:
    import torch
    from transformers import AutoTokenizer

    from warmstart.models import load_classifier

    torch.manual_seed(0)
    load_classifier(str(base), label_names=labels).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clf(tiny_models, tmp_path_factory) -> Path:
    return _save_classifier(tiny_models["bert"], tmp_path_factory.mktemp("tiny-clf"), LABELS)


@pytest.fixture(scope="module")
def clf_served(tiny_clf) -> ServedModel:
    return ServedModel.load(
        str(tiny_clf), cpu=True, backend="torch"
    )  # exactly the model (the CLI's default: auto)


def clf_served_examples(texts: list[str]):
    from warmstart.data import Examples

    return Examples(
        source="test", texts=texts, pairs=None, labels=None, rows=list(range(1, len(texts) + 1))
    )


def client(served: ServedModel, **kw) -> TestClient:
    return TestClient(create_app(served, ServeConfig(model=served.name, **{**LIMITS, **kw})))


def test_model_kind_decides_the_endpoints(tiny_clf, tiny_models, tiny_gpt2, tmp_path):
    nli = _save_classifier(
        tiny_models["bert"], tmp_path / "nli", ["entailment", "neutral", "contradiction"]
    )
    kinds = {
        p: ServedModel.load(str(p), cpu=True)
        for p in (tiny_clf, nli, tiny_models["distilbert"], tiny_gpt2)
    }
    assert [(m.kind, m.endpoints) for m in kinds.values()] == [
        ("classifier", ("predict", "embed")),
        ("nli", ("predict", "embed", "zeroshot")),
        ("encoder", ("embed", "zeroshot")),
        ("causal-lm", ("generate", "embed", "zeroshot")),
    ]
    with client(kinds[tiny_gpt2]) as c:
        r = c.post("/predict", json={"texts": ["hi"]})
        assert r.status_code == 404 and "causal language model" in r.json()["error"]
        assert "/generate" in r.json()["error"]
        paths = set(c.get("/openapi.json").json()["paths"])
        assert paths == {
            "/health",
            "/info",
            "/generate",
            "/embed",
            "/zeroshot",
            "/v1/models",
            "/v1/models/{model}",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
        }  # docs show what it serves


def test_predict_equals_the_classifier_and_info_describes_the_server(clf_served, tiny_clf):
    from warmstart.inference.classifier import Classifier

    with client(clf_served) as c:
        r = c.post("/predict", json={"texts": TEXTS})
        assert r.status_code == 200
        preds = r.json()["predictions"]
        info = c.get("/info").json()
        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/docs").status_code == 200
    expected = Classifier.load(str(tiny_clf), cpu=True).probabilities(clf_served_examples(TEXTS))
    assert [p["label"] for p in preds] == [LABELS[int(e.argmax())] for e in expected]
    assert all(list(p["probabilities"]) == LABELS for p in preds)
    assert np.allclose([list(p["probabilities"].values()) for p in preds], expected, atol=1e-5)
    assert (
        info["kind"] == "classifier"
        and info["labels"] == LABELS
        and info["endpoints"] == ["/predict", "/embed"]
    )
    assert info["limits"]["max_texts_per_request"] == 8 and info["version"]


def test_embed_equals_the_embedder_and_normalizes_on_request(clf_served, tiny_models):
    from warmstart.inference.features import Embedder

    encoder = ServedModel.load(str(tiny_models["distilbert"]), cpu=True)
    for served, path in ((clf_served, clf_served.path), (encoder, str(tiny_models["distilbert"]))):
        with client(served) as c:
            plain = c.post("/embed", json={"texts": TEXTS[:3]}).json()
            unit = c.post("/embed", json={"texts": TEXTS[:3], "normalize": True}).json()
        expected = Embedder.load(path, cpu=True).embed(TEXTS[:3])
        assert plain["dim"] == 32 and np.allclose(plain["embeddings"], expected, atol=1e-5)
        assert np.allclose(np.linalg.norm(unit["embeddings"], axis=1), 1.0, atol=1e-5)


def test_zeroshot_scores_the_given_labels(tiny_models, tmp_path):
    nli = ServedModel.load(
        str(
            _save_classifier(
                tiny_models["bert"], tmp_path / "nli", ["entailment", "neutral", "contradiction"]
            )
        ),
        cpu=True,
    )
    encoder = ServedModel.load(str(tiny_models["distilbert"]), cpu=True)
    for served, method in ((nli, "nli"), (encoder, "similarity")):
        with client(served) as c:
            r = c.post(
                "/zeroshot", json={"texts": TEXTS[:3], "labels": ["sports", "movies", "food"]}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            one = c.post("/zeroshot", json={"texts": TEXTS[:2], "labels": ["movies"]}).json()
            twice = c.post("/zeroshot", json={"texts": ["x"], "labels": ["a", "b", "a "]})
        assert body["method"] == method and len(body["results"]) == 3
        for res in body["results"]:
            assert list(res["scores"]) == ["sports", "movies", "food"]
            assert abs(sum(res["scores"].values()) - 1) < 1e-4 and res["label"] == max(
                res["scores"], key=res["scores"].get
            )
        assert all(
            0 < r["score"] < 1 for r in one["results"]
        )  # a single label is scored on its own, not 1.0
        assert twice.status_code == 422 and twice.json()["field"] == "labels"


def test_generate_equals_the_generate_command_and_streams_the_same_text(tiny_gpt2):
    from warmstart import generate

    served = ServedModel.load(str(tiny_gpt2), cpu=True)
    prompt = "Once upon a time"
    expected = generate(prompts=[prompt], model=str(tiny_gpt2), max_new_tokens=12)[0]
    with client(served, max_new_tokens=50) as c:
        r = c.post("/generate", json={"prompt": prompt, "max_new_tokens": 12})
        with c.stream(
            "POST", "/generate", json={"prompt": prompt, "max_new_tokens": 12, "stream": True}
        ) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            events = [block for block in s.read().decode().split("\n\n") if block]
        sampled = c.post(
            "/generate",
            json={"prompt": prompt, "max_new_tokens": 5, "num_return_sequences": 2, "seed": 1},
        ).json()
        too_many = c.post("/generate", json={"prompt": prompt, "max_new_tokens": 51})
        beam_stream = c.post("/generate", json={"prompt": prompt, "num_beams": 2, "stream": True})
        greedy_temp = c.post(
            "/generate", json={"prompt": prompt, "strategy": "greedy", "temperature": 0.5}
        )
    assert r.status_code == 200 and r.json()["completions"] == expected.completions
    assert r.json()["completion_tokens"] == [12] and r.json()["finish_reasons"] == ["length"]
    parsed = [
        (
            b.split("\n")[0].removeprefix("event: "),
            json.loads(b.split("\n")[1].removeprefix("data: ")),
        )
        for b in events
    ]
    assert [e for e, _ in parsed[:-1]] == ["token"] * (len(parsed) - 1) and len(
        parsed
    ) > 3  # piece by piece
    assert parsed[-1][0] == "done" and parsed[-1][1]["completions"] == expected.completions
    assert "".join(d["text"] for _, d in parsed[:-1]) == expected.completions[0]
    assert len(sampled["completions"]) == 2
    assert (too_many.status_code, too_many.json()["field"]) == (422, "max_new_tokens")
    assert (beam_stream.status_code, beam_stream.json()["field"]) == (422, "stream")
    assert (greedy_temp.status_code, greedy_temp.json()["field"]) == (422, "temperature")


async def _post_all(app, path: str, bodies: list[dict]) -> list[httpx.Response]:
    # Starlette answers a failing request with a 500 and re-raises for the server's log: keep the
    # answer.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


def test_concurrent_requests_share_passes_and_equal_one_at_a_time(clf_served):
    bodies = [{"texts": [TEXTS[i % len(TEXTS)]] * (1 + i % 3)} for i in range(24)]
    results = {}
    for batching in (True, False):
        app = create_app(
            clf_served,
            ServeConfig(model="x", batching=batching, max_batch_size=16, max_wait_ms=50, **LIMITS),
        )
        responses = asyncio.run(_post_all(app, "/predict", bodies))
        assert all(r.status_code == 200 for r in responses)
        results[batching] = [
            [list(p["probabilities"].values()) for p in r.json()["predictions"]] for r in responses
        ]
        passes = app.state.batchers["predict"].passes
        assert passes < len(bodies) if batching else passes == len(bodies)
    for batched, alone, body in zip(results[True], results[False], bodies):
        assert len(batched) == len(body["texts"])  # each request gets its own rows back, in order
        assert np.allclose(batched, alone, atol=1e-5)


def test_batcher_keeps_keys_apart_and_respects_the_batch_size():
    from concurrent.futures import ThreadPoolExecutor

    calls = []

    def fn(texts, key):
        calls.append((list(texts), key))
        return np.array([[len(t), hash(key) % 7] for t in texts], dtype=np.float32)

    async def go():
        b = Batcher(fn, ThreadPoolExecutor(1), max_batch_size=4, max_wait_ms=30)
        jobs = [b.submit(["a" * i, "b"], key=i % 2) for i in range(1, 7)]
        out = await asyncio.gather(*jobs)
        await b.close()
        return out

    out = asyncio.run(go())
    assert [r[:, 0].tolist() for r in out] == [[i, 1] for i in range(1, 7)]
    assert all(len({k}) == 1 and len(t) <= 4 for t, k in calls)
    assert all(r[0, 1] == hash(i % 2) % 7 for i, r in zip(range(1, 7), out))
    assert len(calls) < 6  # gathered


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"texts": ["x"] * 9}, 413, "texts"),
        ({"texts": ["ok", "x" * 301]}, 413, "texts[1]"),
        ({"texts": ["ok", "   "]}, 422, "texts[1]"),
        ({"texts": []}, 422, "texts"),
        ({"texts": ["ok", 3]}, 422, "texts[1]"),
        ({"text": ["ok"]}, 422, "texts"),
        ({"texts": ["ok"], "colour": "red"}, 422, "colour"),
        ([1, 2], 422, "body"),
    ],
)
def test_limits_and_malformed_input_are_json_errors_naming_the_field(
    clf_served, body, status, field
):
    with client(clf_served) as c:
        r = c.post("/predict", json=body)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert r.json()["field"] == field and field in r.json()["error"] or status == 413


def test_large_bodies_and_bad_json_are_refused_before_the_model(clf_served):
    with client(clf_served) as c:
        big = c.post(
            "/predict",
            content=b'{"texts": ["' + b"x" * 30_000 + b'"]}',
            headers={"content-type": "application/json"},
        )

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"texts": ["'
            for _ in range(30):
                yield b"x" * 1000
            yield b'"]}'

        chunked = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        bad = c.post(
            "/predict", content=b'{"texts": [', headers={"content-type": "application/json"}
        )
        wrong_method = c.get("/predict")
    assert (big.status_code, big.json()["field"]) == (413, "body")
    assert (chunked.status_code, chunked.json()["field"]) == (413, "body")
    assert (bad.status_code, bad.json()["field"]) == (
        422,
        "body",
    ) and "not valid JSON" in bad.json()["error"]
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_a_failing_request_fails_alone_and_the_server_goes_on(clf_served, monkeypatch):
    real = clf_served.predict

    def flaky(texts, batch_size=None):
        if "boom" in texts:
            raise RuntimeError("the model exploded")
        return real(texts, batch_size)

    monkeypatch.setattr(clf_served, "predict", flaky)
    app = create_app(clf_served, ServeConfig(model="x", max_wait_ms=50, **LIMITS))
    bodies = [{"texts": ["fine"]}, {"texts": ["boom"]}, {"texts": ["also fine", "ok"]}]
    responses = asyncio.run(_post_all(app, "/predict", bodies))
    assert [r.status_code for r in responses] == [
        200,
        500,
        200,
    ]  # its batch-mates still get their answers
    assert (
        responses[1].json()["request_id"] == responses[1].headers["x-request-id"]
    )  # not the exception's text
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/predict", json={"texts": ["boom"]}).status_code == 500
        assert c.post("/predict", json={"texts": ["fine"]}).status_code == 200


def _fuzz(operation, excluded: list) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=operation.as_strategy())
    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        case.call_and_validate(excluded_checks=excluded)

    check()


def test_openapi_schema_fuzz_finds_no_server_errors(clf_served, tiny_gpt2, tiny_models):
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis.checks import positive_data_acceptance

    encoder = ServedModel.load(str(tiny_models["distilbert"]), cpu=True)
    apps = [
        (clf_served, None, False),
        (encoder, ("/zeroshot",), False),
        (ServedModel.load(str(tiny_gpt2), cpu=True), ("/generate", "/zeroshot"), True),
    ]
    for served, only, lm in apps:
        app = create_app(served, ServeConfig(model="x", max_wait_ms=1, max_new_tokens=8, **LIMITS))
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        for result in schema.get_all_operations():
            op = result.ok()
            if only and op.path not in only:
                continue
            # Option combinations (temperature with greedy decoding, a prompt or labels longer than
            # the tiny model's 128 positions) are refused with 4xx although each value is
            # schema-valid: there only the other checks apply (no server error, documented status
            # codes and response schemas).
            _fuzz(op, [positive_data_acceptance] if lm else [])


def test_cli_rejects_a_bad_model_or_a_taken_port_in_one_line(tiny_clf, capsys):
    assert main(["serve", "no/such/model/x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(tiny_clf), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot listen on")
    assert main(["serve", str(tiny_clf), "--max-batch-size", "0"]) == 2
    import warmstart

    assert (
        callable(warmstart.serve) and warmstart.serve.__module__ == "warmstart.serving"
    )  # the function


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_on_loopback_answers_and_drains_on_sigterm(tiny_clf):
    port = _free_port()
    # A long batching wait keeps the last request in flight while SIGTERM arrives.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warmstart",
            "serve",
            str(tiny_clf),
            "--port",
            str(port),
            "--max-wait-ms",
            "1500",
            "--log-level",
            "warning",
            "--cpu",
            "--backend",
            "torch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()
            try:
                if httpx.get(f"{base}/health", timeout=1).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{base}/predict", json={"texts": TEXTS[:2]}, timeout=30)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2

        late: dict = {}
        t = threading.Thread(
            target=lambda: late.update(
                r=httpx.post(f"{base}/predict", json={"texts": ["x"]}, timeout=30)
            )
        )
        t.start()
        time.sleep(0.5)  # the request is waiting in the batcher
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert late["r"].status_code == 200  # drained, not dropped
        assert proc.wait(30) == 0
        assert "serving" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
