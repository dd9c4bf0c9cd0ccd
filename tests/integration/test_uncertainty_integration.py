"""Uncertainty through the running IOC, seen by real clients: pyepics (libca) and p4p.

A real EPICS C IOC (epicscorelibs' softIoc) plays the machine: ``X`` is a sawtooth processed at 10 Hz,
and its forward link processes the measured truth ``Y = 2 X + 1 + OFFSET``; ``OFFSET`` is an ``ao`` the
test writes to push the truth out of the model's band. The model is ``y = 2 x + 1`` with a band of
half-width 0.5: a conformal interval (LO/HI), or an ensemble of two members ``2 x + 1 +- 0.25`` (STD
0.25, so 2 STD = 0.5).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tests.support.configs import model, write_config
from tests.support.models import publish_conformal, publish_ensemble
from tests.support.procs import ServerProcess, server_env

pytestmark = pytest.mark.integration

MACHINE_DB = """\
record(calc, "$(P)X") {
    field(SCAN, ".1 second")
    field(INPA, "$(P)X")
    field(CALC, "A>=9.5?0:A+0.37")
    field(FLNK, "$(P)Y")
}
record(ao, "$(P)OFFSET") {
    field(VAL, "0.2")
    field(PINI, "YES")
}
record(calc, "$(P)Y") {
    field(INPA, "$(P)X")
    field(INPB, "$(P)OFFSET")
    field(CALC, "2*A+1+B")
    field(EGU, "mm")
}
"""


def _machine(tmp_path, port_pool, launch, c: str) -> ServerProcess:
    (tmp_path / "machine.db").write_text(MACHINE_DB)
    ports = port_pool.take()
    cioc = ServerProcess([str(tmp_path / "machine.db"), f"P={c}"], server_env(ports), "cioc",
                         module="tests.support.cioc")
    cioc.ports = ports
    launch.started.append(cioc)
    cioc.start()
    cioc.wait_for_line("CIOC READY", timeout=30)
    return cioc


@pytest.mark.slow
@pytest.mark.parametrize("method", ["conformal", "ensemble"])
def test_bands_served_on_both_protocols_invalid_with_the_output_and_coverage_alarms(
        tmp_path, prefix, launch, ca, pva, port_pool, method):
    p, c = prefix, f"C{prefix}"
    machine = _machine(tmp_path, port_pool, launch, c)
    if method == "conformal":
        publish_conformal(tmp_path / "store", ["x"], ["y"], [[2.0]], [1.0], [0.5], coverage=0.9)
        band = {"LO": -0.5, "HI": 0.5}
        out = {"name": "y", "units": "mm", "prec": 3, "alarm": {"high": 18, "hihi": 20}, "truth": f"ca://{c}Y"}
    else:
        publish_ensemble(tmp_path / "store", ["x"], ["y"], [np.array([[2.0]]), np.array([[2.0]])],
                         [np.array([1.25]), np.array([0.75])])
        band = {"STD": 0.25}
        out = {"name": "y", "units": "mm", "prec": 3, "truth": f"ca://{c}Y", "uncertainty": {"high": 0.2, "hihi": 1.0}}
    config = write_config(tmp_path / "ioc.yaml", model(
        p, inputs=[{"name": "x", "source": f"ca://{c}X", "units": "mm"}], outputs=[out], trigger={"scan_hz": 10},
        training={"uncertainty": {"method": method}},
        drift={"rate_hz": 10, "update_s": 0.25, "raise_s": 0.5, "clear_s": 1.0, "error": {"window_s": 3},
               "coverage": {"window_s": 4}}), ioc={"metrics_port": 0})
    ioc = launch.ioc(config, sources=[machine])
    client = pva(ioc)

    # Each band beside its prediction: the same moment, the same version, on CA and on PVA.
    out_ca = ca.monitor(f"{p}OUT:y")
    band_ca = {k: ca.monitor(f"{p}OUT:y:{k}") for k in band}
    band_pva = {k: client.monitor(f"{p}OUT:y:{k}") for k in band}
    valid = lambda u: u.severity < 3 and math.isfinite(u.value)  # noqa: E731
    since = max(m.wait_for(valid, timeout=20).timestamp for m in (*band_ca.values(), *band_pva.values()))
    y = out_ca.wait_for(lambda u: valid(u) and u.timestamp > since, timeout=20)  # every client sees this one
    for k, offset in band.items():
        if k == "STD":
            # A constant STD posts only when it changes (MDEL 0, as any ai): the value in force at y's cycle
            # is the promise, and every post it makes comes with a prediction of the same cycle.
            b = [u for u in band_ca[k].updates if u.timestamp <= y.timestamp][-1]
            first = out_ca.updates[0].timestamp
            posted = [u.timestamp for u in band_ca[k].updates if valid(u) and u.timestamp >= first]
            assert posted and set(posted) <= {u.timestamp for u in out_ca.updates}, posted
            v = [u for u in band_pva[k].updates if u.timestamp <= y.timestamp + 1e-6][-1]
        else:
            b = band_ca[k].wait_for(lambda u, ts=y.timestamp: u.timestamp == ts, timeout=10)
            v = band_pva[k].wait_for(lambda u, ts=y.timestamp: abs(u.timestamp - ts) < 1e-6, timeout=10)
        assert b.value == pytest.approx(y.value + offset if k != "STD" else offset, abs=1e-4)
        assert v.value == pytest.approx(b.value) and v.version == "1"
    k0 = next(iter(band))
    ctrl = ca.ctrl(f"{p}OUT:y:{k0}")
    assert ctrl["units"] == "mm" and ctrl["precision"] == (4 if method == "ensemble" else 3)
    full = client.get(f"{p}OUT:y:{k0}")
    assert full["display.units"] == "mm"
    if method == "ensemble":  # its own limits (outputs[].uncertainty): 0.25 > HIGH 0.2 is MINOR
        assert (ca.get(f"{p}OUT:y:STD.HIGH"), ca.get(f"{p}OUT:y:STD.HIHI")) == (0.2, 1.0)
        assert full["valueAlarm.highWarningLimit"] == pytest.approx(0.2)
        assert band_ca["STD"].last.severity == 1
    else:  # the output's own limits
        assert (ca.get(f"{p}OUT:y:HI.HIGH"), ca.get(f"{p}OUT:y:HI.HIHI")) == (18.0, 20.0)
        assert full["valueAlarm.highAlarmLimit"] == pytest.approx(20.0)

    # COVERAGE: the truth inside the band (OFFSET 0.2 < 0.5) ...
    cov_ca, cov_pva = ca.monitor(f"{p}COVERAGE:y"), client.monitor(f"{p}COVERAGE:y")
    def full_window(u) -> bool:  # the message says k/n inside; ~40 paired samples fill a 4 s window at 10 Hz
        m = re.match(r"(\d+)/(\d+) ", u.message)
        return u.severity == 0 and m is not None and int(m[2]) >= 35 and u.value >= 0.99

    good = cov_pva.wait_for(full_window, timeout=30)
    assert "promise" in good.message
    low, lolo = ca.get(f"{p}COVERAGE:y.LOW"), ca.get(f"{p}COVERAGE:y.LOLO")
    assert 0 < lolo < low < 0.9, (low, lolo)  # from the binomial rule for ~40 samples and the 0.9 / 0.9545 promise
    assert cov_ca.last.severity == 0 and cov_ca.last.value >= 0.99
    # ... then pushed outside it: the coverage falls, MINOR then MAJOR, on both protocols.
    mark_ca, mark_pva = cov_ca.mark(), cov_pva.mark()
    ca.put(f"{c}OFFSET", 3.0)
    major = cov_ca.wait_for(lambda u: u.severity == 2, timeout=30, since=mark_ca)
    assert major.value <= lolo and major.timestamp > good.timestamp
    cov_pva.wait_for(lambda u: u.severity == 2, timeout=10, since=mark_pva)
    ca.put(f"{c}OFFSET", 0.0)
    cov_ca.wait_for(lambda u: u.severity == 0, timeout=30, since=cov_ca.mark())

    # INVALID together with the output: same severity, status and message, on both protocols.
    mark = {k: band_pva[k].mark() for k in band}
    ca.put(f"{p}ENABLE", 0)
    o = out_ca.wait_for(lambda u: u.severity == 3, timeout=10)
    for k in band:
        b = band_ca[k].wait_for(lambda u: u.severity == 3, timeout=10)
        assert b.status == o.status
        v = band_pva[k].wait_for(lambda u: u.severity == 3, timeout=10, since=mark[k])
        assert v.message.startswith("DISABLE: disabled by")
    assert client.get(f"{p}OUT:y")["alarm.message"] == client.get(f"{p}OUT:y:{k0}")["alarm.message"]
