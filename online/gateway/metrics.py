"""Prometheus metrics of one gateway, on a registry of its own (several apps can share a process)."""

from __future__ import annotations

from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class GatewayMetrics:
    """Requests, latencies and errors by tenant, workflow, step, model, version and arm."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_requests_total", "Gateway requests.", ["tenant", "route", "workflow", "status"], registry=r
        )
        self.request_latency = Histogram(
            "tandem_request_latency_seconds", "Gateway request latency.", ["route", "workflow"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.step_latency = Histogram(
            "tandem_step_latency_seconds", "Latency of one workflow step (all attempts).",
            ["workflow", "step", "model", "version", "arm"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.step_errors = Counter(
            "tandem_step_errors_total", "Failed model calls by kind (retry, fallback, skipped, failed).",
            ["tenant", "workflow", "step", "model", "version", "arm", "kind"], registry=r,
        )
        self.cache = Counter("tandem_cache_total", "Prediction cache lookups.", ["model", "result"], registry=r)
        self.breaker_state = Gauge(
            "tandem_breaker_state", "Circuit breaker state per model server (0 closed, 1 half-open, 2 open).", ["endpoint"],
            registry=r,
        )
        self.log_depth = Gauge("tandem_log_buffer_depth", "Prediction-log rows waiting to be written.", registry=r)
        self.log_dropped = Gauge("tandem_log_dropped_rows", "Prediction-log rows dropped (buffer full).", registry=r)
        self.shadow = Counter("tandem_shadow_calls_total", "Shadow calls by outcome.", ["model", "result"], registry=r)
        self.model_calls = Histogram(
            "tandem_model_call_requests", "Gateway requests merged into one model-server call.", ["endpoint"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r,
        )
        self.registry_version = Gauge(
            "tandem_registry_refresh_timestamp", "When the registry state was last refreshed.", registry=r
        )

        for metric in (self.requests, self.request_latency, self.step_latency, self.step_errors, self.cache,
                       self.breaker_state, self.shadow, self.model_calls):
            _remember_children(metric)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _remember_children(metric: MetricWrapperBase) -> None:
    """`metric.labels(...)` answered from a dict after the first call with the same values.

    prometheus_client's `labels` converts every value with `str` and takes a lock on each call (a
    `labels(...).inc()` took 1.11 us, 0.35 with the memo; a cache hit makes four). The child it returns for the same values is
    always the same object (it keeps every child until `remove`/`clear`, which the gateway never calls),
    so the memo holds nothing prometheus_client does not hold already."""
    metric.labels = cache(metric.labels)
