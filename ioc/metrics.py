"""Prometheus metrics: what Grafana shows and what alerting rules watch.

Names follow Prometheus conventions (``mlioc_`` namespace, base units, ``_total`` for counters).
Each IOC process owns one registry, served at ``/metrics`` on ``ioc.metrics_port`` (0 = off).
Runners count outcomes and keep latencies in plain Python objects per cycle; :meth:`Metrics.collect`
moves them into the Prometheus objects at ``stats_hz``, off the latency-critical path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ioc.layout import ModelStatus

if TYPE_CHECKING:
    from ioc.engine import LoadedModel
    from ioc.runner import ModelRunner

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
        self.missed = Counter("mlioc_missed_cycles_total",
                              "Triggers that found the previous cycle still running, or scan ticks dropped",
                              ["model"], registry=r)
        self.reloads = Counter("mlioc_model_reloads_total",
                               "Model versions loaded or rejected, by result (loaded, challenger, rejected)",
                               ["model", "result"], registry=r)
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._outcomes: dict[str, dict[ModelStatus, int]] = {}
        self._overruns: dict[str, int] = {}
        self._server = None

    def collect(self, runner: ModelRunner) -> None:
        """Move one runner's per-cycle bookkeeping into the metrics (called at stats_hz, not per cycle)."""
        model = runner.config.name
        latencies, runner.latencies = runner.latencies, []
        histogram = self.inference_seconds.labels(model)
        for seconds in latencies:
            histogram.observe(seconds)
        seen = self._outcomes.setdefault(model, {})
        for status, total in runner.outcomes.items():
            delta = total - seen.get(status, 0)
            if delta:
                self.cycles.labels(model, status.name.lower()).inc(delta)
                seen[status] = total
        missed = self.missed.labels(model)
        delta = runner.overruns - self._overruns.get(model, 0)
        missed.inc(max(delta, 0))  # also creates the series at 0, so "no missed cycle" is visible
        self._overruns[model] = runner.overruns
        if runner.last_ok_timestamp:
            self.last_inference.labels(model).set(runner.last_ok_timestamp)
        self.up.labels(model).set(1 if runner.status is ModelStatus.OK else 0)

    def reload_result(self, model: str, result: str) -> None:
        self.reloads.labels(model, result).inc()

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
