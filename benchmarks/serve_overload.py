"""`warmstart serve --max-queue` under overload: four times the clients the queue admits, on
loopback.

Starts `warmstart serve` (a real uvicorn process, an API key from WARMSTART_API_KEY) with a small
--max-queue, then CLIENTS = 4 x max-queue clients send /predict requests (one short IMDb review
each) back to back for DURATION seconds; a refused client retries at once (the harshest case;
--pause-on-503-ms for politer clients). The run stops by itself. Prints requests/s, the share of
each status (only 200 and 503 are expected), p50/p99 latency of the 200s and of the 503s (refusals
should be immediate), the server's peak RSS (VmHWM), the server's own counts from /metrics, and
whether a normal request succeeds right after the storm. `--unbounded-too` runs the same storm
against a server without --max-queue, for comparison.

.venv/bin/python benchmarks/serve_overload.py [--model runs/demo/model] [--max-queue 4] [--duration
20]"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import serve_load
from prometheus_client.parser import text_string_to_metric_families
from serve_load import ROOT, free_port, short_reviews

KEY = secrets.token_urlsafe(24)
AUTH = {"Authorization": f"Bearer {KEY}"}


def start(model: str, port: int, extra: list[str], log) -> subprocess.Popen:
    """The server with an API key from the environment, its log to ``log``, up once /health
    answers."""
    return serve_load.start(model, port, extra, log, env={"WARMSTART_API_KEY": KEY})


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in kB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def storm(
    port: int, texts: list[str], clients: int, duration: float, pause_s: float = 0.0
) -> dict:
    """``clients`` workers send requests back to back until ``duration`` has passed: bounded in
    time, and each request by a 60 s timeout."""
    records: list[tuple[int, float]] = []  # (status, seconds); 0 for a connection error
    stop_at = time.monotonic() + duration

    async def worker(c: httpx.AsyncClient, w: int) -> None:
        i = w
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                status = (
                    await c.post("/predict", json={"texts": [texts[i % len(texts)]]})
                ).status_code
            except httpx.HTTPError:
                status = 0
            records.append((status, time.perf_counter() - t))
            i += clients
            if status == 503 and pause_s:
                await asyncio.sleep(pause_s)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60, limits=limits
    ) as c:
        for text in texts[:4]:  # warm-up: the first passes allocate
            await c.post("/predict", json={"texts": [text]})
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, w) for w in range(clients)))
        elapsed = time.perf_counter() - started
    return {"records": records, "elapsed": elapsed}


def server_counts(port: int) -> tuple[dict[str, float], float]:
    """The server's own /predict counts by status, and its queue depth now."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH, timeout=30).text
    counts, depth = {}, float("nan")
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "warmstart_http_requests_total" and s.labels["endpoint"] == "/predict":
                counts[s.labels["status"]] = s.value
            elif s.name == "warmstart_queue_depth":
                depth = s.value
    return counts, depth


def run_one(name: str, args, texts: list[str], extra: list[str]) -> None:
    port = free_port()
    with tempfile.NamedTemporaryFile("w+", prefix="serve-overload-", suffix=".log") as log:
        proc = start(args.model, port, extra, log)
        try:
            before = memory_kb(proc.pid)
            result = asyncio.run(
                storm(port, texts, args.clients, args.duration, args.pause_on_503_ms / 1000)
            )
            after_storm = memory_kb(proc.pid)
            t = time.perf_counter()
            check = httpx.post(
                f"http://127.0.0.1:{port}/predict",
                json={"texts": [texts[0]]},
                headers=AUTH,
                timeout=60,
            )
            check_ms = (time.perf_counter() - t) * 1000
            counts, depth = server_counts(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        server_log = Path(log.name).read_text()
    report(name, result, before, after_storm, check, check_ms, counts, depth, code, server_log)


def report(
    name, result, before, after_storm, check, check_ms, counts, depth, code, server_log
) -> None:
    statuses = Counter(s for s, _ in result["records"])
    n = len(result["records"])
    lat = {s: np.array([t for st, t in result["records"] if st == s]) * 1000 for s in statuses}
    shares = ", ".join(
        f"{s or 'connection error'}: {c} ({c / n:.1%})" for s, c in sorted(statuses.items())
    )
    print(f"\n{name}")
    print(
        f"  {n} requests in {result['elapsed']:.1f} s: {n / result['elapsed']:.1f} req/s, "
        f"{statuses[200] / result['elapsed']:.1f} answered (200) per s; {shares}"
    )
    for status, label in ((200, "200s"), (503, "503s")):
        if status in lat:
            print(
                f"  latency of the {label}: p50 {np.percentile(lat[status], 50):.1f} ms, "
                f"p99 {np.percentile(lat[status], 99):.1f} ms, max {lat[status].max():.1f} ms"
            )
    print(
        f"  server RSS: {before['VmRSS'] / 1024:.0f} MB before, {after_storm['VmRSS'] / 1024:.0f}"
        f" MB after, peak (VmHWM) {after_storm['VmHWM'] / 1024:.0f} MB"
    )
    print(
        f"  server's own /predict counts: {dict(sorted(counts.items()))} (the storm's, plus warm-up"
        f" and check); queue depth now {depth:g}"
    )
    recovered = check.status_code == 200 and len(check.json().get("predictions", [])) == 1
    print(
        f"  after the storm: a normal request got {check.status_code} in {check_ms:.0f} ms "
        f"({'full recovery' if recovered else 'NOT RECOVERED'}); server exit status {code}; "
        f"tracebacks in its log: {server_log.count('Traceback')}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--max-queue", type=int, default=4)
    ap.add_argument("--clients", type=int, default=None, help="default: 4 x --max-queue")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of overload")
    ap.add_argument(
        "--request-timeout", type=float, default=None, help="the server's --request-timeout"
    )
    ap.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnx"),
        help="the server's --backend",
    )
    ap.add_argument(
        "--pause-on-503-ms",
        type=float,
        default=0.0,
        help="a refused client waits this long before its next request (default: retry at once)",
    )
    ap.add_argument(
        "--unbounded-too", action="store_true", help="also run the storm with no --max-queue"
    )
    args = ap.parse_args()
    args.clients = args.clients or 4 * args.max_queue

    texts = short_reviews(400, 60)
    print(
        f"model {args.model} (--backend {args.backend}); {args.clients} clients for"
        f" {args.duration:g} s against --max-queue {args.max_queue}, one short review per request,"
        f" refused clients retry after {args.pause_on_503_ms:g} ms; {os.cpu_count()} CPUs, load"
        f" average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    extra = ["--backend", args.backend]
    if args.request_timeout is not None:
        extra += ["--request-timeout", str(args.request_timeout)]
    run_one(
        f"--max-queue {args.max_queue}", args, texts, [*extra, "--max-queue", str(args.max_queue)]
    )
    if args.unbounded_too:
        run_one("no --max-queue (every request waits its turn)", args, texts, extra)
    print(f"\nload average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
