"""Prometheus metrics, in a registry owned by one app (so several apps can share a process).

`MetricsMiddleware` counts every HTTP request by route template and status and times it
until the last byte is sent (for a stream, the whole stream). The scheduler reports queue
depth, batch sizes, time to first token and tokens generated; the runtime's model-call hook
reports prefill and decode step durations.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """The server's metrics; `render()` is what GET /metrics returns."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fst_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "fst_http_request_duration_seconds",
            "time from request to the last byte of the response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "fst_time_to_first_token_seconds",
            "time from a generation request entering the queue to its first text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "fst_queue_wait_seconds",
            "time a generation request waited for a batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.generated_tokens = Counter(
            "fst_generated_tokens", "tokens generated (all sequences)", registry=r
        )
        self.prompt_tokens = Counter("fst_prompt_tokens", "prompt tokens processed", registry=r)
        self.prefix_cache = Counter(
            "fst_prefix_cache_lookups",
            "prompts by whether they reused a cached prefix's KV ('hit') or not ('miss')",
            ["result"],
            registry=r,
        )
        self.cached_tokens = Counter(
            "fst_prefix_cache_cached_tokens",
            "prompt tokens whose KV came from the prefix cache (not recomputed)",
            registry=r,
        )
        self.queue_depth = Gauge(
            "fst_queue_depth", "generation requests waiting for a batch", registry=r
        )
        self.running_sequences = Gauge(
            "fst_running_sequences", "sequences in the batch being decoded", registry=r
        )
        self.batch_size = Histogram(
            "fst_batch_size_sequences",
            "sequences per generation batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "fst_batch_size_requests",
            "HTTP requests merged into one generation batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.cancelled = Counter(
            "fst_cancelled_requests",
            "generation requests stopped early, by reason",
            ["reason"],
            registry=r,
        )
        self.rejected = Counter(
            "fst_rejected_requests",
            "generation requests refused before queuing, by reason",
            ["reason"],
            registry=r,
        )

        self.model_calls = Histogram(
            "fst_model_call_duration_seconds",
            "one ONNX Runtime run of the model (input binding, run, logits copy), by kind",
            ["kind"],
            buckets=STEP_BUCKETS,
            registry=r,
        )

    def observe_model_call(self, kind: str, batch_size: int, start: float, end: float) -> None:
        """`Generator.on_model_call` hook: prefill and decode step durations."""
        self.model_calls.labels(kind=kind).observe(end - start)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (no buffering, so streams stay streams)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            # FastAPI puts the matched route on the scope; label by its template, never by
            # the raw path, so label cardinality stays bounded.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
