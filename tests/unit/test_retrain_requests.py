"""The request/status file protocol in the store, and the retrain: config section."""

from __future__ import annotations

import json
import threading

import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names
from ioc.core.retrain_requests import RequestBox, RetrainRequest, RetrainState, RetrainStatus, shown_state
from tests.support.configs import model, write_config


def test_requests_round_trip_oldest_first_and_are_taken_once(tmp_path):
    box = RequestBox(tmp_path)
    assert box.pending() == [] and box.read_status() is None
    a = RetrainRequest.new("operator", user="ops", host="console1", protocol="ca", reason="RETRAIN written")
    b = RetrainRequest.new("drift", start=1.0, end=2.0, reference_since=1.5)
    box.submit(a)
    box.submit(b)
    pending = box.pending()
    assert [r for _, r in pending] == [a, b] and a.who == "ops@console1"
    box.take(pending[0][0])
    box.take(pending[0][0])  # twice: harmless
    assert [r for _, r in box.pending()] == [b]


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"id": "x"}', '{"id": "x", "time": 1, "trigger": "bogus"}',
                                     b"\xff\xfe"])
def test_a_corrupt_or_partial_request_is_skipped_reported_and_moved_aside(tmp_path, content):
    box = RequestBox(tmp_path)
    good = RetrainRequest.new("operator", user="u")
    box.submit(good)
    bad = box.dir / "request-00000000000000000001-bad.json"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert [r for _, r in box.pending()] == [good]
    assert len(box.problems) == 1 and box.problems[0].startswith(bad.name)
    assert box.discard_corrupt() == [bad.name]
    assert not bad.exists() and (box.dir / f"{bad.name}.bad").exists()
    assert [r for _, r in box.pending()] == [good] and box.problems == []


def test_status_round_trip_and_a_damaged_status_reads_as_none(tmp_path):
    box = RequestBox(tmp_path)
    st = RetrainStatus("RUNNING", "drift: training", 5.0, trigger="drift", host="h", pid=12, run_pid=13)
    box.write_status(st)
    assert box.read_status() == st and st.retrain_state is RetrainState.RUNNING
    doc = json.loads(box.status_path.read_text()) | {"future_field": 1}
    box.status_path.write_text(json.dumps(doc))
    assert box.read_status() == st  # fields it does not know are ignored (a newer watcher)
    box.status_path.write_text('{"state": "RUNN')
    assert box.read_status() is None and "not JSON" in box.problems[0]
    assert RetrainStatus("WHATEVER").retrain_state is RetrainState.IDLE


def test_concurrent_writers_never_expose_a_partial_status(tmp_path):
    box = RequestBox(tmp_path)
    box.write_status(RetrainStatus("IDLE", "x" * 5000))
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            box.write_status(RetrainStatus("RUNNING", str(n) * 3000, float(n)))
            n += 1

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        reads = [box.read_status() for _ in range(300)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(r is not None for r in reads)


def test_flush_handshake(tmp_path):
    box = RequestBox(tmp_path)
    assert box.flush_asked() is None
    token = box.ask_flush()
    assert box.flush_asked() == token and not box.flushed(token)
    box.ack_flush(token, ["a.parquet"])
    assert box.flushed(token) and box.flush_asked() is None
    assert box.ask_flush() != token and box.flush_asked() is not None


def test_shown_state():
    running = RetrainStatus("RUNNING", "drift: training 10 s")
    req = RetrainRequest.new("operator", user="ops", host="c")
    assert shown_state(None, []) == (RetrainState.IDLE, "")
    assert shown_state(None, [req]) == (RetrainState.REQUESTED, "operator by ops@c")
    assert shown_state(running, [req]) == (RetrainState.RUNNING, "drift: training 10 s (+1 waiting)")
    assert shown_state(RetrainStatus("FAILED", "exit 1"), []) == (RetrainState.FAILED, "exit 1")
    assert shown_state(RetrainStatus("DONE", "v2"), [req])[0] is RetrainState.REQUESTED


# ----------------------------------------------------------------------------- config

SIM = "ca://S:"


def _model(**retrain):
    return model("P:", inputs=["a"], outputs=[{"name": "y", "truth": f"{SIM}Y"}], trigger={"scan_hz": 10},
                 record={"dir": "rec", "targets": {"y": f"{SIM}Y"}},
                 drift={"window_s": 10}, retrain=retrain)


def test_retrain_defaults_and_pvs(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", _model()))
    r = cfg.models[0].retrain
    assert (r.schedule, r.on_drift_s, r.promote, r.runner, r.airflow) == (None, 600.0, "manual", "local", None)
    names = model_pv_names(cfg.models[0])
    for pv in ("P:RETRAIN", "P:RETRAIN:STATUS", "P:RETRAIN:MESSAGE", "P:PROMOTE:READY", "P:CHALLENGER:DRIFT",
               "P:CHALLENGER:MAE:y"):
        assert pv in names
    plain = load_config(write_config(tmp_path / "d.yaml", model("Q:", outputs=[{"name": "y", "truth": f"{SIM}Y"}])))
    names = model_pv_names(plain.models[0])
    assert "Q:CHALLENGER:MAE:y" in names and not any("RETRAIN" in n or "READY" in n for n in names)


def test_retrain_values(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", _model(
        schedule="0 2 * * *", on_drift_s=None, promote="auto", margin=0.1, min_samples=50, runner="airflow",
        airflow={"url": "http://af:8080/", "user": "admin", "password_env": "AF_PW"})))
    r = cfg.models[0].retrain
    assert r.schedule == "0 2 * * *" and r.on_drift_s is None and r.promote == "auto"
    assert r.airflow.url == "http://af:8080" and r.airflow.dag_id == "mlioc_retrain"


@pytest.mark.parametrize(("retrain", "keys", "fragment"), [
    ({"schedule": "daily 02:00"}, {}, "retrain.schedule: not a cron expression"),
    ({"promote": "sometimes"}, {}, "retrain.promote: expected manual or auto"),
    ({"runner": "airflow"}, {}, "retrain.airflow: missing required key 'url'"),
    ({"airflow": {"url": "af:8080"}}, {}, "expected an http(s) URL"),
    ({"margin": 1.5}, {}, "retrain.margin"),
    ({"min_samples": 0}, {}, "retrain.min_samples"),
    ({"on_drift_s": 5}, {"drift": None}, "needs a drift: section"),
    ({}, {"record": None}, "needs a record: section"),
    ({"promote": "auto"}, {"outputs": [{"name": "y"}]}, "auto needs a truth"),
    ({"cooldown": 5}, {}, "cooldown"),
])
def test_bad_retrain_sections(tmp_path, retrain, keys, fragment):
    entry = _model(**retrain)
    for k, v in keys.items():
        if v is None:
            entry.pop(k)
        else:
            entry[k] = v
    if "record" not in entry and "outputs" in keys:
        pass
    if keys.get("outputs"):
        entry["record"] = {"dir": "rec"}
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", entry))
    assert any(fragment in p for p in info.value.problems), info.value.problems
