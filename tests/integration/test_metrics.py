"""Prometheus metrics: scraped from a running IOC over HTTP and parsed with prometheus_client's own
text parser; the Grafana dashboard's PromQL names only metrics that scrape exports."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from ioc.core.configfile import load_config
from ioc.core.store import ModelStore
from ioc.generate import GenerateOptions, run
from ioc.generate.grafana import dashboard
from tests.support.generate import ROOT, linear_config
from tests.support.metrics import parse, samples, wait_scrape


def exported_names(families: dict) -> set[str]:
    """Every series name the exposition defines, also for families that have no sample yet."""
    names = set()
    for f in families.values():
        names |= {s.name for s in f.samples}
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("_sum", "_count", "_created")}.get(f.type, ("",))
        names |= {f.name + s for s in suffixes}
    return names


def _ok_cycles(families) -> float:
    return sum(s.value for s in samples(families, "mlioc_cycles_total") if s.labels.get("outcome") == "ok")


@pytest.fixture
def linear_ioc(tmp_path, launch, prefix, ca):
    config_path = linear_config(tmp_path, prefix)
    proc = launch.ioc(config_path)
    proc.prefix = prefix
    proc.config_path = config_path
    out = ca.monitor(f"{prefix}OUT:y1")
    put_at = time.time()
    ca.put(f"{prefix}IN:a", 2.0)  # y1 = 2a + b = 4
    out.wait_for(lambda u: u.value == pytest.approx(4.0) and u.severity == 0)
    proc.put_at = put_at
    return proc


@pytest.mark.integration
def test_scrape_of_a_running_ioc(linear_ioc):
    port = linear_ioc.ports.metrics
    families = wait_scrape(port, lambda f: _ok_cycles(f) >= 1 and samples(f, "mlioc_input_age_seconds"))
    model = "lin"
    count = [s for s in samples(families, "mlioc_inference_duration_seconds_count") if s.labels["model"] == model]
    assert count and count[0].value >= 1
    assert samples(families, "mlioc_model_up")[0].value == 1
    info, = samples(families, "mlioc_model_info")
    store = ModelStore(linear_ioc.config_path.parent / "store")
    manifest = json.loads((store.root / "versions" / "1" / "manifest.json").read_text())
    assert info.labels["version"] == "1" and info.labels["sha256"] == manifest["sha256"]
    assert "CPU" in info.labels["provider"] and info.value == 1
    last, = samples(families, "mlioc_last_inference_timestamp_seconds")
    assert linear_ioc.put_at - 1 <= last.value <= time.time() + 1
    ages = {s.labels["input"]: s.value for s in samples(families, "mlioc_input_age_seconds")}
    assert set(ages) == {"a", "b"}  # both defined: a by the put, b by its initial value
    assert all(0 <= v < 120 for v in ages.values())
    # Ages grow between collections while nothing is written: computed at collect time, not at put time.
    later = wait_scrape(port, lambda f: any(s.labels["input"] == "a" and s.value > ages["a"] + 0.2
                                            for s in samples(f, "mlioc_input_age_seconds")))
    assert later
    for name in ("mlioc_drift_score", "mlioc_input_drift_score", "mlioc_model_reloads"):
        assert name in families  # declared (HELP/TYPE) before anything reports one


@pytest.mark.integration
def test_metric_names_follow_prometheus_rules(linear_ioc):
    families = wait_scrape(linear_ioc.ports.metrics, lambda f: _ok_cycles(f) >= 1)
    # *_created families are prometheus_client's own creation-time series of counters and histograms
    ours = {n: f for n, f in families.items() if n.startswith("mlioc_") and not n.endswith("_created")}
    assert len(ours) >= 9
    for name, f in ours.items():
        assert re.fullmatch(r"mlioc_[a-z0-9_]+", name), name
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples), name
        else:
            assert not name.endswith("_total"), name
        if "timestamp" in name or "duration" in name or "age" in name:
            assert name.endswith("_seconds"), f"{name}: times in base units (seconds)"
        if f.type == "histogram":
            assert {s.name for s in f.samples} <= {name + "_bucket", name + "_count", name + "_sum", name + "_created"}
        assert f.documentation, f"{name} has no HELP"


@pytest.mark.integration
@pytest.mark.parametrize("config_name", ["demo.yaml", "demo-steering.yaml"])
def test_grafana_dashboard_queries_name_only_exported_metrics(linear_ioc, tmp_path, config_name):
    config = load_config(ROOT / "config" / config_name)
    written = run("grafana", config, tmp_path / "grafana", GenerateOptions())
    doc = json.loads((tmp_path / "grafana" / "mlioc-dashboard.json").read_text())
    assert doc == dashboard(config)
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in doc["templating"]["list"] if isinstance(v.get("query"), dict)]
    assert len(exprs) >= 10
    has_actions = any(o.action is not None for m in config.models for o in m.outputs)
    assert any("mlioc_action_decisions_total" in e for e in exprs) == has_actions == (config_name != "demo.yaml")
    exported = exported_names(wait_scrape(linear_ioc.ports.metrics, lambda f: _ok_cycles(f) >= 1))
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\b(mlioc_[a-zA-Z0-9_:]+)", expr))
        assert names, f"query names no mlioc metric: {expr}"
        used |= names
    assert used - exported == set(), f"dashboard queries metrics the IOC does not export: {used - exported}"
    assert {"mlioc_input_drift_score", "mlioc_model_reloads_total", "mlioc_input_age_seconds"} <= used
    # provisioning files are valid YAML of Grafana's shape; the scrape job uses the config's port
    providers = yaml.safe_load((tmp_path / "grafana" / "provisioning/dashboards/mlioc.yaml").read_text())
    assert providers["apiVersion"] == 1 and providers["providers"][0]["type"] == "file"
    sources = yaml.safe_load((tmp_path / "grafana" / "provisioning/datasources/prometheus.yaml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"
    scrape_job = yaml.safe_load((tmp_path / "grafana" / "prometheus-scrape.yml").read_text())
    assert scrape_job["scrape_configs"][0]["static_configs"][0]["targets"] == [f"ioc-host:{config.ioc.metrics_port}"]
    assert len(written) == 4
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


async def test_drift_and_reload_reports_reach_the_exposition(tmp_path, prefix):
    """The methods other parts of the IOC call (drift monitor, store reload) with a real runner."""
    import asyncio

    from prometheus_client import generate_latest

    from ioc.core.pvmodel import PVDatabase
    from ioc.edges.metrics import Metrics
    from ioc.runtime.runner import ModelRunner

    config = load_config(linear_config(tmp_path, prefix))
    runner = ModelRunner(config.models[0], PVDatabase(), config.ioc.inference, asyncio.get_running_loop())
    runner.start()
    metrics = Metrics()
    metrics.set_drift("lin", None, 1.5)
    metrics.set_drift("lin", "a", 2.5)
    metrics.set_drift("lin", "a", 3.0)  # the latest value wins
    metrics.set_drift("other", "x", 9.0)  # another model's score waits for that model's collect
    metrics.reload_result("lin", "loaded")
    metrics.reload_result("lin", "loaded")
    metrics.reload_result("lin", "rejected")
    text = generate_latest(metrics.registry).decode()
    assert "mlioc_drift_score{" not in text  # nothing is set before collect
    metrics.collect(runner, runner.take_stats(), now=runner.inputs[1].timestamp + 7.0)
    families = parse(generate_latest(metrics.registry).decode())
    drift = {s.labels["model"]: s.value for s in samples(families, "mlioc_drift_score")}
    assert drift == {"lin": 1.5}
    per_input = {(s.labels["model"], s.labels["input"]): s.value for s in samples(families, "mlioc_input_drift_score")}
    assert per_input == {("lin", "a"): 3.0}
    reloads = {s.labels["result"]: s.value for s in samples(families, "mlioc_model_reloads_total")}
    assert reloads == {"loaded": 2.0, "rejected": 1.0}
    ages = {s.labels["input"]: s.value for s in samples(families, "mlioc_input_age_seconds")}
    assert ages == {"b": pytest.approx(7.0)}  # a has no value yet: no age
    runner.close()
