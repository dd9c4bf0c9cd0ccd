"""Prometheus metrics: what Grafana shows and what alerting rules watch.

Names follow Prometheus conventions (``mlioc_`` namespace, base units, ``_total`` for counters,
``_seconds`` / ``_timestamp_seconds`` for times, ``_info`` for a constant-1 gauge carrying labels).
Each IOC process owns one registry, served at ``/metrics`` on ``ioc.metrics_port`` (0 = off).

Nothing here runs per cycle. Runners count outcomes and keep latencies in plain Python objects;
other parts of the IOC report drift scores through :meth:`Metrics.set_drift` (a dict store) and
reload results through :meth:`Metrics.reload_result`; :meth:`Metrics.collect` moves it all into the
Prometheus objects at ``stats_hz``, off the latency-critical path, and computes input ages then.

Exported (labels in braces):

- ``mlioc_inference_duration_seconds{model}`` histogram: time in ONNX Runtime per cycle
- ``mlioc_cycles_total{model,outcome}``: inference requests by outcome (ok, disabled, no_model,
  input_invalid, fault)
- ``mlioc_cycle_lateness_seconds{model}`` histogram: how long after its tick each scan cycle started
- ``mlioc_missed_cycles_total{model}``: scan cycles started more than one period late, ticks skipped,
  triggers coalesced
- ``mlioc_model_up{model}``: 1 while STATUS is OK
- ``mlioc_model_info{model,version,sha256,provider}``: the served version (value 1)
- ``mlioc_last_inference_timestamp_seconds{model}``: input time of the last successful inference
- ``mlioc_shadow_cycles_skipped_total{model}``: challenger cycles skipped while its previous one ran
- ``mlioc_input_updates_total{model}`` / ``mlioc_input_updates_coalesced_total{model}``: source updates
  received, and those replaced by a newer value of the same input before being applied (input storms)
- ``mlioc_source_held_back_seconds_total``: time the sources' client threads held updates back (storm)
- ``mlioc_input_age_seconds{model,input}``: seconds since each input's own timestamp
- ``mlioc_drift_score{model}`` / ``mlioc_input_drift_score{model,input}``: drift, as $(P)DRIFT / DRIFT:<input>
- ``mlioc_model_reloads_total{model,result}``: store reloads by result
- ``mlioc_actions_armed{model}``: 1 while a model's ACTIONS switch is on (models with actions only)
- ``mlioc_action_trips_total{model}``: trips of a model's actions
- ``mlioc_action_writes_total{model,action}``: setpoint writes sent
- ``mlioc_action_decisions_total{model,action,state}``: cycles decided by each action, by the state
  it took (``dry_run``, ``writing``, ``off``, ``tripped``, ``refused`` or the guard that held: ``held_range`` ...)
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ioc.core.layout import ModelStatus

if TYPE_CHECKING:
    from ioc.core.engine import LoadedModel
    from ioc.edges.actions.controller import ActionController
    from ioc.runtime.runner import CycleStats, ModelRunner

log = logging.getLogger("mlioc.metrics")

LATENCY_BUCKETS = (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0)
LATENESS_BUCKETS = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inference_seconds = Histogram(
            "mlioc_inference_duration_seconds", "Time spent in ONNX Runtime per cycle", ["model"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.cycles = Counter("mlioc_cycles_total", "Inference requests (model cycles) by outcome",
                              ["model", "outcome"], registry=r)
        self.last_inference = Gauge("mlioc_last_inference_timestamp_seconds",
                                    "Unix time of the input snapshot of the last successful inference",
                                    ["model"], registry=r)
        self.model_info = Gauge("mlioc_model_info", "The model version being served (value is always 1)",
                                ["model", "version", "sha256", "provider"], registry=r)
        self.up = Gauge("mlioc_model_up", "1 when the model's STATUS is OK", ["model"], registry=r)
        self.missed = Counter("mlioc_missed_cycles_total",
                              "Scan cycles started more than one period after their tick, scan ticks skipped, "
                              "triggers coalesced into one already waiting", ["model"], registry=r)
        self.lateness = Histogram(
            "mlioc_cycle_lateness_seconds", "How long after its tick each scan cycle started", ["model"],
            buckets=LATENESS_BUCKETS, registry=r)
        self.shadow_skipped = Counter(
            "mlioc_shadow_cycles_skipped_total",
            "Challenger (shadow) cycles skipped because its previous one was still running", ["model"], registry=r)
        self.input_updates = Counter("mlioc_input_updates_total", "Updates received from the inputs' sources",
                                     ["model"], registry=r)
        self.input_coalesced = Counter(
            "mlioc_input_updates_coalesced_total",
            "Source updates replaced by a newer value of the same input before the IOC applied them", ["model"],
            registry=r)
        self.held_back = Counter(
            "mlioc_source_held_back_seconds",
            "Seconds the CA/PVA client threads held source updates back: more arrived than the IOC takes "
            "(an input storm; the sources' servers then keep only the newest value)", registry=r)
        self.input_age = Gauge("mlioc_input_age_seconds",
                               "Seconds since the timestamp of each input's latest value (at collection time)",
                               ["model", "input"], registry=r)
        self.drift = Gauge("mlioc_drift_score", "Overall drift score of the model's inputs (as $(P)DRIFT)",
                           ["model"], registry=r)
        self.input_drift = Gauge("mlioc_input_drift_score", "Drift score of one input (as $(P)DRIFT:<input>)",
                                 ["model", "input"], registry=r)
        self.reloads = Counter("mlioc_model_reloads_total",
                               "Model versions loaded or rejected, by result (loaded, challenger, rejected)",
                               ["model", "result"], registry=r)
        self.actions_armed = Gauge("mlioc_actions_armed", "1 while the model's ACTIONS switch is on",
                                   ["model"], registry=r)
        self.action_trips = Counter("mlioc_action_trips", "Trips of the model's closed-loop actions",
                                    ["model"], registry=r)
        self.action_writes = Counter("mlioc_action_writes", "Setpoint writes sent by an action",
                                     ["model", "action"], registry=r)
        self.action_decisions = Counter(
            "mlioc_action_decisions", "Cycles decided by an action, by the state it took (the guard that held)",
            ["model", "action", "state"], registry=r)
        self._seen: dict[tuple[str, ...], int] = {}  # last totals moved into counters, by series
        self._held_back = 0.0
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._drift: dict[tuple[str, str | None], float] = {}
        self._server = None

    # ------------------------------------------------------------------ called by other parts of the IOC

    def set_drift(self, model: str, input_name: str | None, value: float) -> None:
        """Record a drift score: ``input_name`` None is the overall score. Cheap (a dict store); the gauge
        is set at the next :meth:`collect`, so this may be called every cycle."""
        self._drift[(model, input_name)] = value

    def reload_result(self, model: str, result: str) -> None:
        """Count one store reload of ``model`` with its ``result`` (e.g. loaded, unchanged, rejected)."""
        self.reloads.labels(model, result).inc()

    def set_model(self, model: str, loaded: LoadedModel | None) -> None:
        old = self._info_labels.pop(model, None)
        if old is not None:
            self.model_info.remove(*old)
        if loaded is not None:
            labels = (model, loaded.version, loaded.sha256, loaded.provider)
            self.model_info.labels(*labels).set(1)
            self._info_labels[model] = labels

    # ------------------------------------------------------------------ at stats_hz

    def collect(self, runner: ModelRunner, stats: CycleStats, now: float | None = None) -> None:
        """Move one runner's statistics (:meth:`ModelRunner.take_stats`) into the metrics, at stats_hz."""
        model = runner.config.name
        histogram = self.inference_seconds.labels(model)
        for seconds in stats.latencies:
            histogram.observe(seconds)
        if stats.lateness or runner.scan_period is not None:
            late = self.lateness.labels(model)  # created at 0 for a scanned model: "never late" is visible
            for seconds in stats.lateness:
                late.observe(seconds)
        for status, total in stats.outcomes.items():
            if total:
                outcome = status.name.lower()
                self._advance(self.cycles.labels(model, outcome), ("cycles", model, outcome), total)
        # labels() creates the series at 0, so "no missed cycle" is visible
        self._advance(self.missed.labels(model), ("missed", model), stats.overruns)
        self._advance(self.shadow_skipped.labels(model), ("shadow_skipped", model), stats.shadow_skipped)
        self._advance(self.input_updates.labels(model), ("input_updates", model), stats.input_updates)
        self._advance(self.input_coalesced.labels(model), ("input_coalesced", model), stats.input_coalesced)
        if stats.last_ok_timestamp:
            self.last_inference.labels(model).set(stats.last_ok_timestamp)
        self.up.labels(model).set(1 if stats.status is ModelStatus.OK else 0)
        now = time.time() if now is None else now
        for state in runner.inputs:
            if state.defined:
                self.input_age.labels(model, state.config.name).set(max(0.0, now - state.timestamp))
        for (name, input_name), value in list(self._drift.items()):
            if name != model:
                continue
            if input_name is None:
                self.drift.labels(model).set(value)
            else:
                self.input_drift.labels(model, input_name).set(value)

    def collect_sources(self, held_back_s: float) -> None:
        """The process-wide source update budget (:class:`ioc.edges.sources.UpdateBudget`), at stats_hz."""
        delta = held_back_s - self._held_back
        if delta > 0:
            self.held_back.inc(delta)
            self._held_back = held_back_s

    def collect_actions(self, controller: ActionController) -> None:
        """Move one model's action bookkeeping (plain ints kept per cycle) into the metrics."""
        model = controller.model_name
        self.actions_armed.labels(model).set(1 if controller.armed else 0)
        self._advance(self.action_trips.labels(model), ("trips", model), controller.trips)
        for action in controller.actions:
            self._advance(self.action_writes.labels(model, action.name), ("writes", model, action.name),
                          action.writes)
            for state, total in list(action.decisions.items()):
                name = state.name.lower()
                self._advance(self.action_decisions.labels(model, action.name, name),
                              ("decisions", model, action.name, name), total)

    def _advance(self, counter, key: tuple[str, ...], total: int) -> None:
        """Bring ``counter`` up to ``total`` (a running count kept elsewhere); creates the series at 0."""
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = total

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
