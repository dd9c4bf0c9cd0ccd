"""``mlioc generate grafana``: a Grafana dashboard over the IOC's Prometheus metrics, its provisioning
files, and a Prometheus scrape example.

The dashboard names only metrics that :mod:`ioc.edges.metrics` exports (a test compares every metric name in
its PromQL with a live scrape of the IOC). It is generic over models: a ``model`` variable lists the
models Prometheus has seen (``label_values(mlioc_model_up, model)``) and a ``datasource`` variable
picks the Prometheus data source, so the same file works for every IOC and site.
"""

from __future__ import annotations

import json
from pathlib import Path

from ioc.core.config import Config
from ioc.generate import GenerateOptions

DASHBOARD = "mlioc-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = '{model=~"$model"}'


def _target(expr: str, legend: str, ref: str, *, instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": not instant,
         "instant": instant}
    if table:
        t["format"] = "table"
    return t


def _panel(pid: int, kind: str, title: str, grid: tuple[int, int, int, int], targets: list[dict],
           unit: str = "short", description: str = "", **extra) -> dict:
    x, y, w, h = grid
    panel = {
        "id": pid, "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {},
    }
    panel.update(extra)
    return panel


def _action_panels(y: int) -> list[dict]:
    """Closed-loop actions (docs/how-to/actions.md): only on dashboards of configs that have them."""
    return [
        _panel(10, "stat", "Actions armed", (0, y, 6, 8), [_target(f"mlioc_actions_armed{SEL}", "{{model}}", "A")],
               description="1 while $(P)ACTIONS is on; a trip or an operator switches it off.",
               fieldConfig={"defaults": {"unit": "none", "mappings": [
                   {"type": "value", "options": {"0": {"text": "OFF"}, "1": {"text": "ARMED", "color": "orange"}}}]},
                   "overrides": []}),
        _panel(11, "timeseries", "Action trips and writes", (6, y, 6, 8), [
            _target(f"sum by (model) (increase(mlioc_action_trips_total{SEL}[$__rate_interval]))",
                    "{{model}} trips", "A"),
            _target(f"sum by (model, action) (increase(mlioc_action_writes_total{SEL}[$__rate_interval]))",
                    "{{model}} {{action}} writes", "B")],
               description="Trips (the reason is in $(P)ACTIONS:TRIP) and setpoint writes sent."),
        _panel(12, "timeseries", "Action decisions by state", (12, y, 12, 8), [
            _target(f"sum by (model, action, state) (rate(mlioc_action_decisions_total{SEL}[$__rate_interval]))",
                    "{{model}} {{action}} {{state}}", "A")], unit="reqps",
               description="Cycles per second by the state each action took: writing / dry_run, or the guard "
                           "that held (held_range, held_step, held_drift ...)."),
    ]


def _load_panels(y: int) -> list[dict]:
    """Is the IOC keeping up? Late and missed cycles, input storms, a slow challenger (docs/how-to/operations.md)."""
    return [
        _panel(13, "timeseries", "Missed cycles and cycle lateness (p99)", (0, y, 12, 8), [
            _target(f"sum by (model) (increase(mlioc_missed_cycles_total{SEL}[$__rate_interval]))",
                    "{{model}} missed", "A"),
            _target("histogram_quantile(0.99, sum by (le, model) "
                    f"(rate(mlioc_cycle_lateness_seconds_bucket{SEL}[$__rate_interval])))", "{{model}} lateness p99",
                    "B")],
               description="A scan cycle is missed when it starts more than one period after its tick (ticks "
                           "skipped, triggers coalesced). Lateness: how long after its tick a cycle started."),
        _panel(14, "timeseries", "Input updates: received and coalesced", (12, y, 12, 8), [
            _target(f"sum by (model) (rate(mlioc_input_updates_total{SEL}[$__rate_interval]))",
                    "{{model}} received", "A"),
            _target(f"sum by (model) (rate(mlioc_input_updates_coalesced_total{SEL}[$__rate_interval]))",
                    "{{model}} coalesced", "B"),
            _target("rate(mlioc_source_held_back_seconds_total[$__rate_interval])", "held back (s/s, all sources)",
                    "C")], unit="reqps",
               description="Source updates per second; coalesced = replaced by a newer one before a cycle used "
                           "it; held back = the process-wide source budget pausing the client threads (a storm)."),
        _panel(15, "timeseries", "Challenger cycles skipped", (0, y + 8, 12, 8), [
            _target(f"sum by (model) (increase(mlioc_shadow_cycles_skipped_total{SEL}[$__rate_interval]))",
                    "{{model}}", "A")],
               description="Shadow (challenger) cycles skipped while its previous one still ran: a challenger "
                           "slower than the champion's rate. The champion is never held up."),
    ]


def dashboard(config: Config) -> dict:
    name = config.path.stem
    panels = [
        _panel(1, "stat", "Model up (STATUS OK)", (0, 0, 6, 5),
               [_target(f"mlioc_model_up{SEL}", "{{model}}", "A")],
               description="1 while $(P)STATUS is OK; 0 when disabled, without a model, on invalid inputs or a fault.",
               fieldConfig={"defaults": {"unit": "none", "mappings": [
                   {"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                                 "1": {"text": "UP", "color": "green"}}}],
                   "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                                {"color": "green", "value": 1}]}},
                   "overrides": []}),
        _panel(2, "stat", "Seconds since the last inference", (6, 0, 6, 5),
               [_target(f"time() - mlioc_last_inference_timestamp_seconds{SEL}", "{{model}}", "A")], unit="s",
               description="Age of the input snapshot of the last successful prediction."),
        _panel(3, "table", "Served model version", (12, 0, 12, 5),
               [_target(f"mlioc_model_info{SEL}", "", "A", instant=True, table=True)],
               description="Version, ONNX sha256 and execution provider of the champion each model serves.",
               transformations=[{"id": "organize", "options": {
                   "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
                   "indexByName": {"model": 0, "version": 1, "provider": 2, "sha256": 3, "instance": 4}}}]),
        _panel(4, "timeseries", "Inference duration (p50, p99)", (0, 5, 12, 8), [
            _target("histogram_quantile(0.5, sum by (le, model) "
                    f"(rate(mlioc_inference_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{model}} p50", "A"),
            _target("histogram_quantile(0.99, sum by (le, model) "
                    f"(rate(mlioc_inference_duration_seconds_bucket{SEL}[$__rate_interval])))", "{{model}} p99", "B"),
        ], unit="s", description="Time spent in ONNX Runtime per cycle."),
        _panel(5, "timeseries", "Inference requests by outcome", (12, 5, 12, 8), [
            _target(f"sum by (model, outcome) (rate(mlioc_cycles_total{SEL}[$__rate_interval]))",
                    "{{model}} {{outcome}}", "A")], unit="reqps",
               description="Cycles per second: ok, disabled, no_model, input_invalid, fault."),
        _panel(6, "timeseries", "Drift score (overall)", (0, 13, 12, 8),
               [_target(f"mlioc_drift_score{SEL}", "{{model}}", "A")],
               description="As $(P)DRIFT; its alarm limits are on the PV (the alarm handler watches it)."),
        _panel(7, "timeseries", "Drift score per input", (12, 13, 12, 8),
               [_target(f"mlioc_input_drift_score{SEL}", "{{model}} {{input}}", "A")],
               description="As $(P)DRIFT:<input>: which input moved away from the training distribution."),
        _panel(8, "timeseries", "Input age", (0, 21, 12, 8),
               [_target(f"mlioc_input_age_seconds{SEL}", "{{model}} {{input}}", "A")], unit="s",
               description="Seconds since each input's own timestamp: a source that stopped updating climbs here."),
        _panel(9, "timeseries", "Model reloads by result", (12, 21, 12, 8), [
            _target(f"sum by (model, result) (increase(mlioc_model_reloads_total{SEL}[$__rate_interval]))",
                    "{{model}} {{result}}", "A")],
               description="Store reloads (new champion, rollback, promotion) and whether the version was loaded."),
    ]
    panels += _load_panels(29)
    if any(o.action is not None for m in config.models for o in m.outputs):
        panels += _action_panels(45)
    return {
        "title": f"mlioc: {name}",
        "uid": f"mlioc-{name}"[:40],
        "description": f"ML IOC models of {config.path.name}: inference, outcomes, drift, input age, versions.",
        "tags": ["mlioc", "epics"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            {"name": "model", "label": "Model", "type": "query", "datasource": DS,
             "definition": "label_values(mlioc_model_up, model)",
             "query": {"query": "label_values(mlioc_model_up, model)", "refId": "models"},
             "includeAll": True, "multi": True, "refresh": 2, "current": {"text": "All", "value": "$__all"},
             "sort": 1, "hide": 0},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def provisioning_dashboards() -> str:
    return """\
# Grafana dashboard provisioning: copy to /etc/grafana/provisioning/dashboards/ and put
# mlioc-dashboard.json into the folder named by `path`.
apiVersion: 1
providers:
  - name: mlioc
    folder: EPICS
    type: file
    disableDeletion: false
    allowUiUpdates: true
    options:
      path: /var/lib/grafana/dashboards/mlioc
"""


def provisioning_datasource() -> str:
    return """\
# Grafana data source provisioning example: copy to /etc/grafana/provisioning/datasources/
# (skip it if your Grafana already has a Prometheus data source: the dashboard lets you pick one).
apiVersion: 1
datasources:
  - name: Prometheus
    type: prometheus
    access: proxy
    url: http://localhost:9090
    isDefault: true
"""


def scrape_config(config: Config) -> str:
    port = config.ioc.metrics_port
    return f"""\
# Prometheus scrape job for the mlioc IOC of {config.path.name} (metrics port {port or "disabled"}).
# Add it under `scrape_configs:` in prometheus.yml; list every host that runs the IOC.
scrape_configs:
  - job_name: mlioc
    scrape_interval: 5s
    static_configs:
      - targets: ["ioc-host:{port or 9105}"]
"""


def generate(config: Config, out: Path, options: GenerateOptions) -> list[Path]:
    files = {
        DASHBOARD: json.dumps(dashboard(config), indent=2) + "\n",
        "provisioning/dashboards/mlioc.yaml": provisioning_dashboards(),
        "provisioning/datasources/prometheus.yaml": provisioning_datasource(),
        "prometheus-scrape.yml": scrape_config(config),
    }
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
