"""Prometheus metrics of a model server, shared across LitServe's processes.

LitServe runs the HTTP server and the inference workers in different processes (forked and
spawned), so metrics use prometheus_client's multiprocess mode: every process writes its own
mmap files under PROMETHEUS_MULTIPROC_DIR and `GET /metrics` merges them at scrape time. The
inference worker records model-side metrics directly (no queue hop through LitServe's logger
process); the HTTP process records request latency by status code.

prometheus_client is imported lazily: `prepare_metrics_dir()` must run before the first metric
exists in a process, and spawned workers inherit the environment variable it sets.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["ServerMetrics", "cleanup_metrics_dir", "prepare_metrics_dir", "render_metrics", "server_metrics"]

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def prepare_metrics_dir(name: str = "server") -> Path:
    """Give this server a fresh multiprocess metrics directory and switch prometheus_client to it.

    Sets PROMETHEUS_MULTIPROC_DIR in `os.environ` (LitServe's workers inherit it) and resets
    prometheus_client's value class in case it was imported before the variable existed.
    """
    path = Path(tempfile.mkdtemp(prefix=f"tandem-metrics-{name}-"))
    os.environ[METRICS_DIR_ENV] = str(path)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return path


def cleanup_metrics_dir(path: Path) -> None:
    """Remove a directory made by `prepare_metrics_dir` and leave multiprocess mode."""
    if os.environ.get(METRICS_DIR_ENV) == str(path):
        del os.environ[METRICS_DIR_ENV]
    shutil.rmtree(path, ignore_errors=True)


class ServerMetrics:
    """The model server's metrics; labels are bounded (model, served version or "unknown", code)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        # registry=None: values live in the multiprocess files (or in memory in tests) and the
        # exposition side builds its own registry, so constructing twice never collides.
        self.batch_size = Histogram(
            "tandem_server_batch_size",
            "Instances per model call (one call per version per batch).",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=None,
        )
        self.requests_per_batch = Histogram(
            "tandem_server_requests_per_batch",
            "Requests LitServe collected into one batch.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=None,
        )
        self.queue_wait = Histogram(
            "tandem_server_queue_wait_seconds",
            "Time a request waited in the queue before a worker took it.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.inference = Histogram(
            "tandem_server_inference_seconds",
            "Duration of one model call (predict_batch).",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )
        self.requests = Counter(
            "tandem_server_requests",
            "Requests answered by an inference worker, by HTTP status code.",
            ["model", "version", "code"],
            registry=None,
        )
        self.errors = Counter(
            "tandem_server_errors",
            "Requests that failed, by reason.",
            ["model", "version", "reason"],
            registry=None,
        )
        self.http_latency = Histogram(
            "tandem_server_http_request_seconds",
            "HTTP request latency at the server, by path and code.",
            ["model", "path", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=None,
        )

    def all(self) -> list:
        return [
            self.batch_size,
            self.requests_per_batch,
            self.queue_wait,
            self.inference,
            self.requests,
            self.errors,
            self.http_latency,
        ]


@functools.cache
def server_metrics() -> ServerMetrics:
    """This process's metrics (created on first use, after `prepare_metrics_dir`)."""
    return ServerMetrics()


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus text exposition of every process's metrics and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    if os.environ.get(METRICS_DIR_ENV):
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry)
    else:  # single process (tests): this process's own metrics
        for metric in server_metrics().all():
            registry.register(metric)
    return generate_latest(registry), CONTENT_TYPE_LATEST
