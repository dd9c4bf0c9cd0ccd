"""One PV model, two protocols: a running IOC checked through pyepics (libca) and the p4p client.

The IOC serves a linear model y1 = 2a + b, y2 = a - b + 1 on writable inputs, so every expected
value, severity and timestamp can be derived by hand.
"""

from __future__ import annotations

import math

import pytest

from tests.support.configs import model, write_config
from tests.support.models import publish_linear

pytestmark = pytest.mark.integration

W = [[2.0, 1.0], [1.0, -1.0]]
B = [0.0, 1.0]


@pytest.fixture
def linear_ioc(tmp_path, launch, prefix):
    publish_linear(tmp_path / "store", ["a", "b"], ["y1", "y2"], W, B, units_in=["A", "mm"])
    config = write_config(tmp_path / "ioc.yaml", model(
        prefix, name="lin",
        inputs=[{"name": "a", "units": "A", "range": [0, 10], "description": "input a"},
                {"name": "b", "units": "mm", "initial": 0}],
        outputs=[{"name": "y1", "units": "mm", "prec": 4, "description": "two a plus b", "display": [0, 30],
                  "alarm": {"high": 8, "hihi": 12}},
                 {"name": "y2", "units": "mm", "prec": 2, "alarm": {"lolo": -5, "low": -2}}]))
    proc = launch.ioc(config)
    proc.prefix = prefix
    return proc


def test_values_severities_and_timestamps_agree_on_ca_and_pva(linear_ioc, ca, pva):
    p = linear_ioc.prefix
    client = pva(linear_ioc)
    ca_y1, ca_y2 = ca.monitor(f"{p}OUT:y1"), ca.monitor(f"{p}OUT:y2")
    pva_y1, pva_y2 = client.monitor(f"{p}OUT:y1"), client.monitor(f"{p}OUT:y2")
    ca.put(f"{p}IN:b", 1.0)
    ca.put(f"{p}IN:a", 5.0)  # y1 = 11 (HIGH, MINOR); y2 = 5
    u1 = ca_y1.wait_for(lambda u: u.value == pytest.approx(11.0, abs=1e-4))
    v1 = pva_y1.wait_for(lambda u: u.value == pytest.approx(11.0, abs=1e-4))
    assert (u1.severity, v1.severity) == (1, 1)
    assert u1.status == 4  # HIGH
    assert v1.message == "HIGH"
    assert u1.timestamp == pytest.approx(v1.timestamp, abs=1e-6)
    ca_y2.wait_for(lambda u: u.value == pytest.approx(5.0, abs=1e-4) and u.severity == 0)
    pva_y2.wait_for(lambda u: u.value == pytest.approx(5.0, abs=1e-4) and u.severity == 0)

    client.put(f"{p}IN:a", 6.5)  # y1 = 14 (HIHI, MAJOR); y2 = 6.5
    u1 = ca_y1.wait_for(lambda u: u.value == pytest.approx(14.0, abs=1e-4))
    v1 = pva_y1.wait_for(lambda u: u.value == pytest.approx(14.0, abs=1e-4))
    assert (u1.severity, u1.status, v1.severity, v1.message) == (2, 3, 2, "HIHI")
    assert u1.timestamp == pytest.approx(v1.timestamp, abs=1e-6)
    client.put(f"{p}IN:b", 9.0)  # y2 = -1.5 : LOW (MINOR) -- the lower limit is real, not caproto's 0
    u2 = ca_y2.wait_for(lambda u: u.value == pytest.approx(-1.5, abs=1e-4))
    v2 = pva_y2.wait_for(lambda u: u.value == pytest.approx(-1.5, abs=1e-4))
    assert (u2.severity, u2.status, v2.severity, v2.message) == (0, 0, 0, "")  # -1.5 > LOW -2
    ca.put(f"{p}IN:b", 10.0)  # y2 = -2.5: LOW
    u2 = ca_y2.wait_for(lambda u: u.value == pytest.approx(-2.5, abs=1e-4))
    v2 = pva_y2.wait_for(lambda u: u.value == pytest.approx(-2.5, abs=1e-4))
    assert (u2.severity, u2.status, v2.severity, v2.message) == (1, 6, 1, "LOW")


def test_record_fields_and_metadata(linear_ioc, ca, pva):
    p = linear_ioc.prefix
    y1 = f"{p}OUT:y1"
    assert ca.get(f"{y1}.EGU") == "mm"
    assert ca.get(f"{y1}.DESC") == "two a plus b"
    assert ca.get(f"{y1}.PREC") == 4
    assert (ca.get(f"{y1}.HOPR"), ca.get(f"{y1}.LOPR")) == (30.0, 0.0)
    assert (ca.get(f"{y1}.HIHI"), ca.get(f"{y1}.HIGH")) == (12.0, 8.0)
    assert ca.get(f"{y1}.HHSV", as_string=True) == "MAJOR"
    assert ca.get(f"{y1}.HSV", as_string=True) == "MINOR"
    assert ca.get(f"{y1}.LSV", as_string=True) == "NO_ALARM"  # no LOW limit configured
    assert ca.get(f"{y1}.RTYP") == "ai" and ca.get(f"{y1}.NAME") == y1
    assert ca.get(f"{p}OUT:y2.LOLO") == -5.0 and ca.get(f"{p}OUT:y2.LLSV", as_string=True) == "MAJOR"
    assert ca.get(f"{p}IN:a.EGU") == "A" and ca.get(f"{p}IN:a.DESC") == "input a"
    assert ca.get(f"{p}ENABLE.ZNAM") == "Disabled" and ca.get(f"{p}ENABLE.ONAM") == "Enabled"
    assert ca.get(f"{p}STATUS.TWST") == "NO_MODEL" and ca.get(f"{p}STATUS.TWSV", as_string=True) == "MAJOR"
    ctrl = ca.ctrl(y1)
    assert ctrl["units"] == "mm" and ctrl["precision"] == 4
    assert (ctrl["upper_disp_limit"], ctrl["lower_disp_limit"]) == (30.0, 0.0)
    assert (ctrl["upper_alarm_limit"], ctrl["upper_warning_limit"]) == (12.0, 8.0)
    assert math.isnan(ctrl["lower_alarm_limit"]) and math.isnan(ctrl["lower_warning_limit"])

    v = pva(linear_ioc).get(y1)
    assert v.getID() == "epics:nt/NTScalar:1.0"
    assert (v["display.units"], v["display.precision"], v["display.description"]) == ("mm", 4, "two a plus b")
    assert (v["display.limitLow"], v["display.limitHigh"]) == (0.0, 30.0)
    assert v["display.form.choices"][0] == "Default"
    assert (v["control.limitLow"], v["control.limitHigh"]) == (0.0, 30.0)
    assert v["valueAlarm.active"] is True
    assert (v["valueAlarm.highWarningLimit"], v["valueAlarm.highAlarmLimit"]) == (8.0, 12.0)
    assert (v["valueAlarm.highWarningSeverity"], v["valueAlarm.highAlarmSeverity"]) == (1, 2)
    assert math.isnan(v["valueAlarm.lowAlarmLimit"])
    e = pva(linear_ioc).get(f"{p}STATUS")
    assert e.getID() == "epics:nt/NTEnum:1.0"
    assert list(e["value.choices"]) == ["OK", "DISABLED", "NO_MODEL", "INPUT_INVALID", "FAULT"]


def test_enable_from_ca_and_pva(linear_ioc, ca, pva):
    p = linear_ioc.prefix
    client = pva(linear_ioc)
    ca.put(f"{p}IN:a", 1.0)
    out_ca, out_pva = ca.monitor(f"{p}OUT:y1"), client.monitor(f"{p}OUT:y1")
    out_ca.wait_for(lambda u: u.severity == 0)
    out_pva.wait_for(lambda u: u.severity == 0)
    mark_ca, mark_pva = out_ca.mark(), out_pva.mark()
    ca.put(f"{p}ENABLE", 0)
    u = out_ca.wait_for(lambda u: u.severity == 3, since=mark_ca)
    v = out_pva.wait_for(lambda u: u.severity == 3, since=mark_pva)
    assert u.status == 18  # DISABLE
    assert v.message.startswith("DISABLE: disabled by ")
    assert ca.get(f"{p}STATUS", as_string=True) == "DISABLED"
    assert client.get(f"{p}STATUS")["value.index"] == 1
    assert ca.get(f"{p}MESSAGE").startswith("disabled by ")
    mark = out_ca.mark()
    client.put(f"{p}ENABLE", 1)
    out_ca.wait_for(lambda u: u.severity == 0, since=mark)
    assert ca.get(f"{p}STATUS", as_string=True) == "OK"
    assert ca.get(f"{p}ENABLE", as_string=True) == "Enabled"
    assert "DEMO" not in linear_ioc.output() and "disabled by" in linear_ioc.output()  # audited in the log


def test_bad_puts_never_crash_the_ioc(linear_ioc, ca, pva):
    p = linear_ioc.prefix
    client = pva(linear_ioc)
    ca.put(f"{p}IN:a", 2.0)
    out = ca.monitor(f"{p}OUT:y1")
    out.wait_for(lambda u: u.severity == 0)
    for value, message in ((math.nan, "a: NaN"), (math.inf, "a: inf"), (-1.0, "a: -1 outside [0, 10]")):
        mark = out.mark()
        ca.put(f"{p}IN:a", value)
        out.wait_for(lambda u: u.severity == 3, since=mark)
        assert ca.get(f"{p}MESSAGE") == message
        assert ca.get(f"{p}STATUS", as_string=True) == "INPUT_INVALID"
        ca.put(f"{p}IN:a", 2.0)
        out.wait_for(lambda u: u.severity == 0, since=mark)
    # `caput P:IN:a abc` sends DBR_STRING; the IOC refuses it and keeps the last value.
    from epics import ca as libca
    from epics import dbr

    pv = ca.pv(f"{p}IN:a")
    libca.put(pv.chid, "abc", wait=True, timeout=5, ftype=dbr.STRING)
    assert ca.get(f"{p}IN:a") == 2.0
    assert "refused: not a number: 'abc'" in linear_ioc.wait_for_line("not a number")
    assert "Traceback" not in linear_ioc.output()
    with pytest.raises(Exception, match="not a valid index"):
        client.put(f"{p}ENABLE", 7)
    mark = out.mark()
    client.put(f"{p}IN:a", float("nan"))
    out.wait_for(lambda u: u.severity == 3, since=mark)
    ca.put(f"{p}IN:a", 3.0)
    out.wait_for(lambda u: u.severity == 0 and u.value == pytest.approx(6.0, abs=1e-4), since=mark)
    with pytest.raises(Exception, match="read-only"):
        client.put(f"{p}OUT:y1", 1.0)
    assert linear_ioc.proc.poll() is None
