"""``mlioc generate archiver``: the archivePV list, its submission, and what the appliance reads from the IOC.

The appliance cannot run here, so ``--submit`` is tested against a loopback HTTP server that checks
the request exactly as the appliance's ArchivePVAction reads it (JSON content type compared with
equals, a JSON list, ``samplingperiod`` a string that parses as a float, method SCAN or MONITOR) and
answers in its format. The IOC side is real: pyepics (libca) reads DBR_CTRL and the fields the
appliance asks for, and subscribes with a DBE_LOG mask to check that ADEL decides what is archived.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_specs
from ioc.generate import GenerateOptions
from ioc.generate.archiver import archive_pv_url, entries
from tests.support.generate import ROOT, extended_specs, linear_config

DEMO = ROOT / "config" / "demo.yaml"


def test_every_served_pv_once_with_its_sampling_method():
    config = load_config(DEMO)
    model = config.models[0]
    body = entries(config, GenerateOptions())
    assert [e["pv"] for e in body] == [s.name for s in model_pv_specs(model)]
    method = {e["pv"].removeprefix(model.prefix): e["samplingmethod"] for e in body}
    assert {k for k, v in method.items() if v == "SCAN"} == {"LATENCY", "RATE", "COUNT"}
    assert method["OUT:sigma_x"] == method["IN:q1"] == method["STATUS"] == "MONITOR"
    for e in body:
        assert set(e) == {"pv", "samplingperiod", "samplingmethod"}
        assert isinstance(e["samplingperiod"], str) and float(e["samplingperiod"]) > 0  # the appliance casts to String
    period = {e["pv"].removeprefix(model.prefix): float(e["samplingperiod"]) for e in body}
    assert period["OUT:sigma_x"] == pytest.approx(1 / model.trigger.scan_hz)
    assert period["COUNT"] == pytest.approx(max(1.0, 1 / config.ioc.stats_hz))


def test_drift_and_challenger_pvs_are_monitored_once_the_layout_has_them():
    config = load_config(DEMO)
    body = entries(config, GenerateOptions(specs=extended_specs, protocol="pva"))
    p = "pva://" + config.models[0].prefix
    method = {e["pv"].removeprefix(p): e["samplingmethod"] for e in body}
    assert all(e["pv"].startswith(p) for e in body)
    for suffix in ("DRIFT", "DRIFT:q1", "DRIFT:charge", "CHALLENGER:OUT:loss", "CHALLENGER", "ROLLBACK", "ANOMALY"):
        assert method[suffix] == "MONITOR", suffix


def test_archive_pv_url_forms():
    assert archive_pv_url("http://a:17665") == "http://a:17665/mgmt/bpl/archivePV"
    assert archive_pv_url("http://a:17665/mgmt/bpl/") == "http://a:17665/mgmt/bpl/archivePV"
    assert archive_pv_url("http://a/mgmt/bpl/archivePV") == "http://a/mgmt/bpl/archivePV"


class _Appliance(BaseHTTPRequestHandler):
    """The request checks of the appliance's ArchivePVAction.processJSONRequest, and its answer."""

    requests: list = []
    fail_with: int | None = None
    refuse: str | None = None  # a PV the appliance answers nothing for (as for one it cannot parse)

    def do_POST(self):
        problems = []
        if self.path != "/mgmt/bpl/archivePV":
            problems.append(f"path {self.path}")
        if self.headers.get("Content-Type") != "application/json":
            problems.append(f"content type {self.headers.get('Content-Type')!r}")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((body, problems))
        if self.fail_with or problems:
            self.send_response(self.fail_with or 400)
            self.end_headers()
            self.wfile.write(b"Exception processing archiveJSON")
            return
        answers = []
        for item in body:
            try:  # the appliance's own parse; a PV that fails it is skipped without an answer
                assert item["samplingmethod"].upper() in ("SCAN", "MONITOR")
                float(item["samplingperiod"]) if isinstance(item["samplingperiod"], str) else int("x")
            except Exception:
                continue
            if item["pv"] == type(self).refuse:
                continue
            pv = item["pv"].removeprefix("pva://")
            answers.append(f'{{ "pvName": "{pv}", "status": "Archive request submitted" }}')
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(("[\n" + ",\n".join(answers) + "]\n").encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def appliance():
    _Appliance.requests = []
    _Appliance.fail_with = None
    _Appliance.refuse = None
    server = HTTPServer(("127.0.0.1", 0), _Appliance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Appliance
    server.shutdown()
    server.server_close()


def _mlioc(*args):
    return subprocess.run([sys.executable, "-m", "ioc", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_submit_posts_what_the_appliance_accepts(appliance, tmp_path):
    url, handler = appliance
    run = _mlioc("generate", "archiver", str(DEMO), "-o", str(tmp_path), "--submit", url + "/mgmt/bpl")
    assert run.returncode == 0, run.stderr
    (body, problems), = handler.requests
    assert problems == []
    assert body == json.loads((tmp_path / "archive-pvs.json").read_text())
    assert f"submitted {len(body)} PV(s)" in run.stdout
    assert "DEMO:BEAM:OUT:sigma_x: Archive request submitted" in run.stdout


def test_submit_failures_exit_non_zero_with_the_reason(appliance):
    url, handler = appliance
    handler.fail_with = 503
    run = _mlioc("generate", "archiver", str(DEMO), "--submit", url)
    assert run.returncode == 1
    assert "HTTP 503" in run.stderr and "Exception processing archiveJSON" in run.stderr
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = _mlioc("generate", "archiver", str(DEMO), "--submit", f"http://127.0.0.1:{port}")
    assert run.returncode == 1 and "cannot reach the appliance" in run.stderr
    handler.fail_with = None
    handler.refuse = "DEMO:BEAM:OUT:loss"
    run = _mlioc("generate", "archiver", str(DEMO), "--submit", url)
    assert run.returncode == 1 and "did not accept 1 PV(s): DEMO:BEAM:OUT:loss" in run.stderr


@pytest.mark.integration
def test_the_ioc_serves_what_the_appliance_reads(tmp_path, launch, prefix, ca):
    config_path = linear_config(tmp_path, prefix)
    config = load_config(config_path)
    launch.ioc(config_path)
    specs = {s.name: s for s in model_pv_specs(config.models[0])}
    for entry in entries(config, GenerateOptions()):
        name = entry["pv"]
        spec = specs[name]
        ctrl = ca.ctrl(name)  # DBR_CTRL_*: what the appliance stores as the PV's metadata
        assert ctrl is not None and ctrl.get("severity") is not None, name
        if spec.kind.is_numeric:
            assert ctrl["units"] == spec.egu
        assert ca.get(f"{name}.NAME") == name
        assert ca.get(f"{name}.RTYP") == spec.kind.value
        assert ca.get(f"{name}.DESC") == spec.desc
        assert ca.get(f"{name}.SCAN", as_string=True) == spec.scan
        if spec.kind.is_numeric:  # EPICS has MDEL/ADEL only on numeric records
            assert ca.get(f"{name}.MDEL") == pytest.approx(spec.mdel)
            assert ca.get(f"{name}.ADEL") == pytest.approx(spec.adel)


@pytest.mark.integration
def test_monitor_and_archive_deadbands_decide_what_each_subscriber_gets(tmp_path, launch, prefix, ca):
    """IN:a has MDEL 0.5, ADEL 2: a DBE_VALUE subscriber sees changes > 0.5, a DBE_LOG one (the archiver)
    only changes > 2, each measured from the last value it was sent."""
    import epics
    from epics import dbr

    config_path = linear_config(tmp_path, prefix)
    launch.ioc(config_path)
    name = f"{prefix}IN:a"
    ca.put(name, 0.0)
    seen: dict[int, list[float]] = {dbr.DBE_VALUE: [], dbr.DBE_LOG: []}
    done = threading.Condition()

    def subscriber(mask):
        def cb(value=None, **_):
            with done:
                seen[mask].append(round(float(value), 6))
                done.notify_all()

        pv = epics.PV(name, auto_monitor=mask, callback=cb)
        assert pv.wait_for_connection(timeout=10)
        with done:
            assert done.wait_for(lambda: seen[mask] == [0.0], timeout=10), seen
        return pv

    pvs = [subscriber(dbr.DBE_VALUE), subscriber(dbr.DBE_LOG)]
    steps = [0.3, 0.6, 1.0, 1.2, 2.1, 2.3, 4.0, 4.4, 9.0]
    for value in steps:
        ca.put(name, value)
    with done:
        assert done.wait_for(lambda: seen[dbr.DBE_VALUE][-1:] == [9.0] and seen[dbr.DBE_LOG][-1:] == [9.0],
                             timeout=10), seen
    assert seen[dbr.DBE_VALUE] == [0.0, 0.6, 1.2, 2.1, 4.0, 9.0]  # |step| > MDEL 0.5 from the last one sent
    assert seen[dbr.DBE_LOG] == [0.0, 2.1, 4.4, 9.0]  # |step| > ADEL 2
    assert ca.get(name) == pytest.approx(9.0)
    for pv in pvs:
        pv.disconnect()
