"""Prometheus metrics: what Grafana shows and what alerting rules watch.

Names follow Prometheus conventions (``mlioc_`` namespace, base units, ``_total`` for counters).
Each IOC process owns one registry, served at ``/metrics`` on ``ioc.metrics_port`` (0 = off).
Updates happen in cycle listeners: a few microseconds per cycle, no I/O on the loop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from ioc.engine import LoadedModel
    from ioc.runner import CycleRecord

log = logging.getLogger("mlioc.metrics")

LATENCY_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inference_seconds = Histogram(
            "mlioc_inference_duration_seconds", "Time spent in ONNX Runtime per cycle", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.cycles = Counter("mlioc_cycles_total", "Model cycles by outcome", ["model", "outcome"], registry=r)
        self.last_inference = Gauge("mlioc_last_inference_timestamp_seconds",
                                    "Unix time of the input snapshot of the last successful inference",
                                    ["model"], registry=r)
        self.model_info = Gauge("mlioc_model_info", "The model version being served (value is always 1)",
                                ["model", "version", "sha256", "provider"], registry=r)
        self.up = Gauge("mlioc_model_up", "1 when the model's STATUS is OK", ["model"], registry=r)
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._server = None

    def cycle_listener(self, model: str):
        histogram = self.inference_seconds.labels(model)
        last = self.last_inference.labels(model)
        up = self.up.labels(model)
        counters = {}

        def listener(record: CycleRecord) -> None:
            outcome = record.status.name.lower()
            counter = counters.get(outcome)
            if counter is None:
                counter = counters[outcome] = self.cycles.labels(model, outcome)
            counter.inc()
            if record.outputs is not None:
                histogram.observe(record.latency_s)
                last.set(record.timestamp)
                up.set(1)
            else:
                up.set(0)

        return listener

    def set_model(self, model: str, loaded: LoadedModel | None) -> None:
        old = self._info_labels.pop(model, None)
        if old is not None:
            self.model_info.remove(*old)
        if loaded is not None:
            labels = (model, loaded.version, loaded.sha256, loaded.provider)
            self.model_info.labels(*labels).set(1)
            self._info_labels[model] = labels

    def serve(self, port: int, address: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint on a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        bound = server.server_address[1]
        log.info("Prometheus metrics on http://%s:%d/metrics", address, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
