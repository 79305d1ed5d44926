"""Prometheus metrics of one app instance (own registry, so several apps can coexist in tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServiceMetrics:
    """Requests, latency, batch sizes, queue depth, errors, store activity."""

    def __init__(self, *, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "neg_api_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "neg_api_request_latency_seconds", "Request wall time", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter(
            "neg_api_errors", "Error answers by status and code", ["status", "error"], registry=r
        )
        self.batch_size = Histogram(
            "neg_api_batch_size", "Images per predictor call",
            buckets=tuple(range(1, max_batch + 1)), registry=r,
        )
        self.queue_depth = Gauge("neg_api_queue_depth", "Requests waiting for the worker", registry=r)
        self.generated = Counter("neg_api_negatives_generated", "Negatives generated", registry=r)
        self.store_hits = Counter(
            "neg_api_store_hits", "Requests answered from the store without generating", registry=r
        )
        self.store_corrupt = Counter(
            "neg_api_store_corrupt", "Corrupt store entries detected and regenerated", registry=r
        )
        self.cancelled = Counter(
            "neg_api_cancelled", "Queued requests dropped (client gone or timed out)", registry=r
        )

    def bind_queue_depth(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def on_error(self, status: int, error: str) -> None:
        self.errors.labels(str(status), error).inc()


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP answer and observes its latency per route."""

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)
