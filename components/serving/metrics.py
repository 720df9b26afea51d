"""Prometheus metrics of the server, in a registry of its own (what `/metrics` exports).

tipsv2_serve_requests_total{model, route, status}       counter
tipsv2_serve_request_seconds{model, route, status}      histogram (whole request)
tipsv2_serve_batch_size{model}                          histogram (rows per model call)
tipsv2_serve_batch_seconds{model}                       histogram (one model call)
tipsv2_serve_queue_depth{model}                         gauge (rows waiting)
tipsv2_serve_model_info{name, version, precision}       gauge, 1 for the served version
tipsv2_serve_swaps_total{result}                        counter (ok | refused)
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """The server's metrics; `queue_depth(model, fn)` reads the depth when scraped."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tipsv2_serve_requests", "Requests answered", ["model", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "tipsv2_serve_request_seconds",
            "Request latency, from routing to the response",
            ["model", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tipsv2_serve_batch_size", "Rows per model call", ["model"], buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "tipsv2_serve_batch_seconds", "Duration of one model call", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.depth = Gauge("tipsv2_serve_queue_depth", "Rows waiting", ["model"], registry=r)
        self.info = Gauge(
            "tipsv2_serve_model_info", "The served model version (1)",
            ["name", "version", "precision"], registry=r,
        )  # fmt: skip
        self.swaps = Counter("tipsv2_serve_swaps", "Model swap attempts", ["result"], registry=r)

    def queue_depth(self, model: str, read: Callable[[], int]) -> None:
        self.depth.labels(model).set_function(read)

    def observe(self, model: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(model, route, str(status)).inc()
        self.latency.labels(model, route, str(status)).observe(seconds)

    def batch(self, model: str) -> Callable[[int, float], None]:
        def hook(rows: int, seconds: float) -> None:
            self.batch_size.labels(model).observe(rows)
            self.batch_seconds.labels(model).observe(seconds)

        return hook

    def served(self, name: str, version: str, precision: str) -> None:
        self.info.clear()
        self.info.labels(name, version, precision).set(1)

    def export(self) -> bytes:
        return generate_latest(self.registry)
