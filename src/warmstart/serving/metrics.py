"""/metrics in Prometheus' text format: requests by endpoint and status, latency, the dynamic
batcher's batch sizes and the queue depth. Each app has its own registry (not prometheus_client's
global one), so several apps in one process (tests, or two models behind one ASGI server) keep
separate counts."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds: from a cached /health to a long /generate on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to the batch limit, and the limit itself: 1, 2, 4, ..., max_batch_size."""
    sizes, size = {max_batch_size}, 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class ServerMetrics:
    def __init__(self, queue_depth: Callable[[], float], max_batch_size: int):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "warmstart_http_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "warmstart_http_request_duration_seconds",
            "time from request to the end of the answer, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "warmstart_batch_size",
            "texts per forward pass of the dynamic batcher, by endpoint",
            ["endpoint"],
            buckets=batch_buckets(max_batch_size),
            registry=self.registry,
        )
        queue = Gauge(
            "warmstart_queue_depth",
            "model requests waiting or running now (what --max-queue bounds)",
            registry=self.registry,
        )
        queue.set_function(queue_depth)  # read at scrape time: nothing to keep in step

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def batch(self, endpoint: str) -> Callable[[int], None]:
        """The callback a Batcher calls with the number of texts of each pass it runs."""
        child = self.batch_size.labels(endpoint)
        return child.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
