"""`warmstart serve` under load vs the server users write by hand, side by side in one run.

Starts three servers on loopback (real uvicorn processes) with the same model: the hand-written
baseline (benchmarks/hf_pipeline_server.py: FastAPI calling `pipeline("text-classification")` per
request), then `warmstart serve` with --no-batching (one request per forward pass) and with dynamic
batching (the default). In alternating rounds, CLIENTS concurrent clients send REQUESTS requests in
all, one short IMDb review each, to /predict, and the run stops by itself. Prints requests/s,
p50/p99 latency and errors for each, and the throughput ratios to the hand-written server.

.venv/bin/python benchmarks/serve_load.py [--model runs/demo/model] [--clients 16] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"


def short_reviews(n: int, max_words: int) -> list[str]:
    """The first ``n`` IMDb reviews of at most ``max_words`` words (short, as chat-sized requests
    are)."""
    df = pd.read_csv(IMDB, nrows=20_000)
    short = df["review"][df["review"].str.split().str.len() <= max_words]
    return short.head(n).tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    model: str, port: int, extra: list[str], log=None, env: dict | None = None
) -> subprocess.Popen:
    """The server (warmstart's, or the hand-written one for --hf-pipeline), up once /health answers.
    Its stderr goes to ``log`` (a file; by default a temporary one): a pipe nobody reads would fill
    up and stall it."""
    if extra == ["--hf-pipeline"]:
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "hf_pipeline_server.py"),
            model,
            "--port",
            str(port),
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "warmstart",
            "serve",
            model,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ]
    log = log or tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {Path(log.name).read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


async def load(
    port: int,
    texts: list[str],
    clients: int,
    requests: int,
    limit_s: float,
    endpoint: str = "/predict",
) -> dict:
    """``clients`` workers share ``requests`` requests; each waits for its answer before sending the
    next. ``endpoint`` "/health" sends the same load without a model: what HTTP alone costs on this
    machine."""
    latencies: list[float] = []
    errors = 0
    next_i = 0
    stop_at = time.monotonic() + limit_s

    async def worker(c: httpx.AsyncClient) -> None:
        nonlocal next_i, errors
        while next_i < requests and time.monotonic() < stop_at:
            i, next_i = next_i, next_i + 1
            t = time.perf_counter()
            try:
                if endpoint == "/health":
                    r = await c.get("/health")
                    ok = r.status_code == 200
                else:
                    r = await c.post(endpoint, json={"texts": [texts[i % len(texts)]]})
                    ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - t)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
    ) as c:
        for text in texts[:clients]:  # warm-up: first passes allocate, the model's caches fill
            await c.post("/predict", json={"texts": [text]})
        before = (await c.get("/info")).json()["batching"]["forward_passes"]["predict"]
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        elapsed = time.perf_counter() - started
        info = (await c.get("/info")).json()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "elapsed": elapsed,
        "latencies": np.array(latencies) * 1000,
        "passes": info["batching"]["forward_passes"]["predict"] - before,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400, help="per mode, split over the rounds")
    ap.add_argument(
        "--rounds",
        type=int,
        default=4,
        help=(
            "alternate the modes this many times (on a shared "
            "machine a busy spell then hits both alike)"
        ),
    )
    ap.add_argument("--max-words", type=int, default=60, help="reviews of at most this many words")
    ap.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnx"),
        help="the server's --backend",
    )
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument(
        "--limit-s", type=float, default=20.0, help="end a round after this long, whatever is left"
    )
    args = ap.parse_args()

    texts = short_reviews(args.requests, args.max_words)
    print(
        f"model {args.model} (--backend {args.backend}); {args.clients} clients, {args.requests}"
        f" requests per mode of 1 review each (<= {args.max_words} words,"
        f" {np.mean([len(t.split()) for t in texts]):.0f} on average), in {args.rounds} alternating"
        f" rounds; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    modes = {
        "hand-written: FastAPI + HF pipeline": ["--hf-pipeline"],
        "warmstart, one at a time (--no-batching)": ["--no-batching", "--backend", args.backend],
        f"warmstart, batching (max {args.max_batch_size}, {args.max_wait_ms:g} ms)": [
            "--max-batch-size",
            str(args.max_batch_size),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--backend",
            args.backend,
        ],
    }
    servers: dict[str, tuple[int, subprocess.Popen]] = {}
    results: dict[str, list[dict]] = {name: [] for name in modes}
    try:
        for name, extra in modes.items():  # both up at once; only one is under load at a time
            port = free_port()
            servers[name] = (port, start(args.model, port, extra))
        per_round = -(-args.requests // args.rounds)
        for _ in range(args.rounds):
            for name in modes:
                results[name].append(
                    asyncio.run(
                        load(servers[name][0], texts, args.clients, per_round, args.limit_s)
                    )
                )
        # The ceiling no batching can lift: the same clients and server, GET /health, no model at
        # all.
        floor = asyncio.run(
            load(
                servers[list(modes)[1]][0],
                texts,
                args.clients,
                args.requests,
                args.limit_s,
                "/health",
            )
        )
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in servers.values():
            proc.wait(60)
    summary = {}
    for name, rounds in results.items():
        lat = np.concatenate([r["latencies"] for r in rounds])
        n = sum(r["requests"] for r in rounds)
        summary[name] = rps = n / sum(r["elapsed"] for r in rounds)
        each = ", ".join(f"{r['rps']:.1f}" for r in rounds)
        print(
            f"{name:<44} {rps:7.1f} req/s  p50 {np.percentile(lat, 50):7.1f} ms  p99"
            f" {np.percentile(lat, 99):7.1f} ms  errors {sum(r['errors'] for r in rounds)}/{n} "
            f" forward passes {sum(r['passes'] for r in rounds)}  (rounds: {each} req/s)"
        )
    hand, off, on = summary.values()
    print(
        f"{'HTTP alone (GET /health, no model)':<42} {floor['rps']:7.1f} req/s  p50"
        f" {np.percentile(floor['latencies'], 50):7.1f} ms  errors"
        f" {floor['errors']}/{floor['requests']}"
    )
    print(
        f"throughput vs the hand-written server: batching {on / hand:.2f}x, one at a time"
        f" {off / hand:.2f}x; batching / one at a time {on / off:.2f}x; load average now"
        f" {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
