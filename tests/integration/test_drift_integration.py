"""Drift alarms end to end: the simulator feeds the IOC over CA; severities seen by pyepics and p4p.

Short windows and debounce times (a window of 8 s, updates every 0.25 s) keep this to seconds; the
limits are still the ones the IOC calibrates from the served version's reference.
"""

from __future__ import annotations

import math
import re

import pytest

from ioc.core.configfile import load_config
from ioc.generate.alarms import generate
from tests.conftest import write_yaml
from tests.support.demo import demo_inputs, demo_store_copy
from tests.support.phoebus import ALARM_SCHEMA

pytestmark = pytest.mark.integration


@pytest.fixture
def drift_demo(tmp_path, launch, prefix):
    s, p = f"{prefix}SIM:", f"{prefix}BEAM:"
    config = write_yaml(tmp_path / "drift.yaml", f"""
        ioc: {{protocols: [ca, pva], stats_hz: 2}}
        simulator: {{prefix: "{s}", rate_hz: 10, seed: 4}}
        models:
          - name: beam
            prefix: "{p}"
            description: "beam size surrogate"
            store: {demo_store_copy(tmp_path)}
            trigger: {{scan_hz: 10}}
            inputs: {demo_inputs(s, 2)}
            outputs:
              - {{name: sigma_x, units: mm, prec: 3, alarm: {{high: 3, hihi: 4}}, truth: "ca://{s}SIGMA:X"}}
              - {{name: sigma_y, units: mm, prec: 3, alarm: {{high: 3, hihi: 4}}}}
              - {{name: loss, units: "%", prec: 2}}
            drift: {{method: wasserstein, window_s: 8, update_s: 0.25, raise_s: 0.5, clear_s: 1.5,
                    correlation_s: 1.0, error: {{window_s: 6}}}}
        """)
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim])
    return sim, ioc, p, s, config


def _dedup(severities: list[int]) -> list[int]:
    return [v for i, v in enumerate(severities) if i == 0 or v != severities[i - 1]]


def test_drift_alarm_minor_then_major_names_the_input_and_clears_on_ca_and_pva(drift_demo, ca, pva):
    sim, ioc, p, s, _ = drift_demo
    client = pva(ioc)
    ca_drift, pva_drift = ca.monitor(f"{p}DRIFT"), client.monitor(f"{p}DRIFT")
    valid = lambda u: u.severity == 0 and isinstance(u.value, float) and math.isfinite(u.value)  # noqa: E731
    ca_drift.wait_for(valid, timeout=30)
    pva_drift.wait_for(valid, timeout=30)

    # The calibrated limits, served as record fields on CA and as valueAlarm on PVA.
    high, hihi, hyst = (ca.get(f"{p}DRIFT.{f}") for f in ("HIGH", "HIHI", "HYST"))
    assert 0 < high < hihi and 0 < hyst < high
    assert ca.get(f"{p}DRIFT.HSV", as_string=True) == "MINOR"
    assert ca.get(f"{p}DRIFT.HHSV", as_string=True) == "MAJOR"
    assert ca.get(f"{p}DRIFT:q2.HIGH") == pytest.approx(high)
    va = client.get(f"{p}DRIFT")
    assert va["valueAlarm.active"] is True
    assert va["valueAlarm.highWarningLimit"] == pytest.approx(high)
    assert va["valueAlarm.highAlarmLimit"] == pytest.approx(hihi)
    assert va["valueAlarm.hysteresis"] == pytest.approx(hyst)
    assert (va["valueAlarm.highWarningSeverity"], va["valueAlarm.highAlarmSeverity"]) == (1, 2)
    assert va["display.units"] == "sigma"

    # In distribution: 30 score updates (~7.5 s) without an alarm, on both protocols.
    mark_ca, mark_pva = ca_drift.mark(), pva_drift.mark()
    clean_ca = ca_drift.wait_count(mark_ca + 30, timeout=30)[mark_ca:]
    clean_pva = pva_drift.wait_count(mark_pva + 30, timeout=30)[mark_pva:]
    assert all(u.severity == 0 for u in clean_ca + clean_pva), [(u.value, u.severity) for u in clean_ca]
    assert all(u.value < high for u in clean_ca)

    # Q2 drifts by 5 reference std devs: MINOR first (as the window fills), then MAJOR.
    message = ca.monitor(f"{p}MESSAGE")
    mark_ca, mark_pva, mark_msg = ca_drift.mark(), pva_drift.mark(), message.mark()
    ca.put(f"{s}Q2:I_DRIFT", 5.0)
    ca_drift.wait_for(lambda u: u.severity == 2, timeout=30, since=mark_ca)
    pva_drift.wait_for(lambda u: u.severity == 2, timeout=30, since=mark_pva)
    assert message.wait_for(lambda u: "q2" in str(u.value), timeout=10, since=mark_msg).value.startswith("drift ")
    assert ca.get(f"{p}DRIFT:WORST") == "q2"
    assert ca.get_full(f"{p}DRIFT:q2").severity == 2
    assert "q2" in pva_drift.last.message  # PVA alarm.message: "HIHI: worst input q2"

    # Back in distribution: the alarm clears, but only after the score stayed below HIGH - HYST for clear_s.
    mark_drop = ca_drift.mark()
    ca.put(f"{s}Q2:I_DRIFT", 0.0)
    ca_drift.wait_for(lambda u: u.severity == 0, timeout=40, since=mark_drop)
    pva_drift.wait_for(lambda u: u.severity == 0, timeout=40, since=mark_pva)
    after = ca_drift.updates[mark_drop:]
    cleared = next(i for i, u in enumerate(after) if u.severity == 0)
    assert any(u.value < high and u.severity >= 1 for u in after[:cleared])  # held by HYST / clear_s
    assert after[cleared].value < high - hyst
    assert message.wait_for(lambda u: u.value == "drift cleared", timeout=10).value == "drift cleared"

    # The same severities, in the same order, through pyepics and the p4p client.
    seq_ca = _dedup([u.severity for u in ca_drift.updates[mark_ca:]])
    seq_pva = _dedup([u.severity for u in pva_drift.wait_for(lambda u: True, since=mark_pva) and
                      pva_drift.updates[mark_pva:]])
    assert seq_ca[:3] == [0, 1, 2] and seq_ca[-1] == 0
    assert seq_ca == seq_pva[: len(seq_ca)]

    # The rest of the monitoring PVs are alive: output drift, the error vs the measured beam size.
    assert math.isfinite(ca.get(f"{p}DRIFT:OUT"))
    rmse = ca.monitor(f"{p}RMSE:sigma_x").wait_for(lambda u: u.severity < 3, timeout=30)
    assert 0 < rmse.value < 0.5


def test_alarm_config_validates_and_names_only_served_pvs(drift_demo, ca, tmp_path):
    lxml = pytest.importorskip("lxml.etree")
    sim, ioc, p, s, config_path = drift_demo
    config = load_config(config_path)
    (path,) = generate(config, tmp_path / "alarms")
    doc = lxml.parse(str(path))
    schema = lxml.XMLSchema(lxml.parse(str(ALARM_SCHEMA)))
    assert schema.validate(doc), schema.error_log
    component = doc.getroot().find("component")
    assert component.get("name") == "beam"
    alarm_pvs = [pv.get("name") for pv in component.iter("pv")]
    assert alarm_pvs == [f"{p}DRIFT", f"{p}DRIFT:OUT", f"{p}STATUS", f"{p}AUDIT", f"{p}OUT:sigma_x", f"{p}RMSE:sigma_x",
                         f"{p}OUT:sigma_y"]
    for pv in component.iter("pv"):
        assert pv.findtext("description") and pv.findtext("guidance/details")
        assert pv.findtext("display/details") == "opi/beam_overview.bob"
        assert pv.findtext("latching") in ("true", "false") and pv.findtext("delay") is not None
    drift = component.find(f"pv[@name='{p}DRIFT']")
    guidance = drift.findtext("guidance/details")
    for needed in (f"{p}DRIFT:WORST", f"{p}DRIFT:q2", f"{p}ENABLE", f"{s}Q2:I"):
        assert needed in guidance
    # Every PV the file names (alarm PVs and the ones its guidance tells an operator to look at or write)
    # is served: by the IOC, or by the source IOC for the inputs' sources.
    text = path.read_text()
    named = set(alarm_pvs) | set(re.findall(rf"(?:{re.escape(p)}|{re.escape(s)})[A-Za-z0-9_:]*[A-Za-z0-9_]", text))
    assert len(named) > 15
    for name in sorted(named):
        ca.pv(name)  # raises TimeoutError if no server answers for it


def test_after_a_swap_drift_keeps_its_alarm_while_warming_up_and_message_shows_it(drift_demo, ca, pva):
    """An operator's action swaps the model (here RELOAD; ROLLBACK and PROMOTE swap the same way) while
    the machine is drifted: the drift window restarts, but DRIFT must not claim NO_ALARM while it
    warms up, and MESSAGE must not hide the active alarm (after the swap, or after re-enabling)."""
    sim, ioc, p, s, _ = drift_demo
    client = pva(ioc)
    ca_drift, pva_drift = ca.monitor(f"{p}DRIFT"), client.monitor(f"{p}DRIFT")
    ca_drift.wait_for(lambda u: u.severity == 0 and math.isfinite(u.value), timeout=30)
    ca.put(f"{s}Q2:I_DRIFT", 5.0)
    ca_drift.wait_for(lambda u: u.severity == 2, timeout=30)
    pva_drift.wait_for(lambda u: u.severity == 2 and "warming" not in u.message, timeout=30)
    message = ca.monitor(f"{p}MESSAGE")

    mark_ca, mark_pva, mark_msg = ca_drift.mark(), pva_drift.mark(), message.mark()
    ca.put(f"{p}RELOAD", 1)  # the champion is served afresh: its drift window restarts
    warming = pva_drift.wait_for(lambda u: "warming up" in u.message, timeout=15, since=mark_pva)
    full = pva_drift.wait_for(lambda u: "warming up" not in u.message, timeout=30,
                              since=pva_drift.updates.index(warming))
    during_pva = pva_drift.updates[mark_pva:pva_drift.updates.index(full) + 1]
    assert [u.severity for u in during_pva if u.severity < 2] == [], [(u.severity, u.message) for u in during_pva]
    assert [u.severity for u in ca_drift.updates[mark_ca:] if u.severity < 2] == []
    assert full.severity == 2  # the window is full again and the machine is still drifted
    swapped = message.wait_for(lambda u: u.value.startswith("loaded v"), timeout=10, since=mark_msg)
    assert "DRIFT MAJOR" in swapped.value

    ca.put(f"{p}ENABLE", 0)
    mark_msg = message.mark()
    ca.put(f"{p}ENABLE", 1)
    enabled = message.wait_for(lambda u: u.value.startswith("serving v"), timeout=10, since=mark_msg)
    assert "DRIFT MAJOR" in enabled.value
    assert ca.get_full(f"{p}DRIFT").severity == 2
