"""The demo end to end: the simulator IOC feeds the ML IOC over CA; knobs, faults and a restart."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import write_yaml
from tests.support.demo import demo_inputs, demo_store_copy, shipped_champion

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo(tmp_path, launch, prefix):
    sim_prefix, p = f"{prefix}SIM:", f"{prefix}BEAM:"
    config = write_yaml(tmp_path / "demo.yaml", f"""
        ioc: {{protocols: [ca, pva], stats_hz: 5}}
        simulator: {{prefix: "{sim_prefix}", rate_hz: 20, seed: 3}}
        models:
          - name: beam
            prefix: "{p}"
            store: {demo_store_copy(tmp_path)}
            trigger: {{scan_hz: 10}}
            inputs: {demo_inputs(sim_prefix, 1)}
            outputs:
              - {{name: sigma_x, units: mm, prec: 3, display: [0, 5], alarm: {{high: 3, hihi: 4}}}}
              - {{name: sigma_y, units: mm, prec: 3, display: [0, 5], alarm: {{high: 3, hihi: 4}}}}
              - {{name: loss, units: "%", prec: 2, display: [0, 100], alarm: {{high: 25, hihi: 40}}}}
        """)
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim])
    return sim, ioc, p, sim_prefix, config


def test_simulator_knob_moves_the_prediction_on_ca_and_pva(demo, ca, pva):
    sim, ioc, p, s, _ = demo
    client = pva(ioc)
    ca_out = ca.monitor(f"{p}OUT:sigma_x")
    pva_out = client.monitor(f"{p}OUT:sigma_x")
    ca_out.wait_for(lambda u: u.severity == 0, timeout=15)
    assert ca.get(f"{p}STATUS", as_string=True) == "OK"
    assert ca.get(f"{p}CHAMPION") == str(shipped_champion())
    before = ca_out.last.value
    mark_ca, mark_pva = ca_out.mark(), pva_out.mark()
    # Q1 focuses in x: raising it from 5 A to 8 A over-focuses and blows sigma_x up (~3.9 mm).
    ca.put(f"{s}Q1:I_SP", 8.0)
    ca.monitor(f"{p}IN:q1").wait_for(lambda u: u.value > 7.0, timeout=15)
    moved = ca_out.wait_for(lambda u: u.value > before + 0.8, timeout=15, since=mark_ca)
    pva_out.wait_for(lambda u: u.value > before + 0.8, timeout=15, since=mark_pva)
    assert moved.severity >= 1  # the prediction crossed HIGH = 3 mm
    truth = ca.get(f"{s}SIGMA:X")
    assert abs(moved.value - truth) < 0.6  # the model tracks the simulated machine


def test_source_ioc_killed_and_restarted(demo, ca, launch):
    sim, ioc, p, s, config = demo
    out = ca.monitor(f"{p}OUT:sigma_x")
    out.wait_for(lambda u: u.severity == 0, timeout=15)
    mark = out.mark()
    sim.kill()
    out.wait_for(lambda u: u.severity == 3, timeout=10, since=mark)
    assert ca.get(f"{p}STATUS", as_string=True) == "INPUT_INVALID"
    assert ca.get(f"{p}MESSAGE").endswith(": disconnected")
    assert ca.get_full(f"{p}IN:q1").severity == 3
    mark = out.mark()
    launch.sim(config, ports=sim.ports)  # same ports: the IOC must find it again by itself
    out.wait_for(lambda u: u.severity == 0, timeout=30, since=mark)
    assert ca.get(f"{p}STATUS", as_string=True) == "OK"
    assert ioc.proc.poll() is None


def test_injected_faults(demo, ca):
    sim, ioc, p, s, _ = demo
    out = ca.monitor(f"{p}OUT:sigma_x")
    out.wait_for(lambda u: u.severity == 0, timeout=15)
    mark = out.mark()
    ca.put(f"{s}FAULT", 2)  # NaN readbacks
    out.wait_for(lambda u: u.severity == 3, since=mark)
    assert ca.get(f"{p}MESSAGE") == "q1: NaN"
    mark = out.mark()
    ca.put(f"{s}FAULT", 0)
    out.wait_for(lambda u: u.severity == 0, since=mark)
    mark = out.mark()
    ca.put(f"{s}FAULT", "STALL")  # the machine stops updating; inputs go stale after max_age_s
    u = out.wait_for(lambda u: u.severity == 3, since=mark)
    assert u.status == 14  # LINK: an input problem
    assert ca.get(f"{p}MESSAGE") == "q1: stale (no update for > 1 s)"
    mark = out.mark()
    ca.put(f"{s}FAULT", 0)
    out.wait_for(lambda u: u.severity == 0, since=mark)


def test_statistics_pvs_count_cycles(demo, ca):
    sim, ioc, p, s, _ = demo
    count = ca.monitor(f"{p}COUNT")
    first = count.wait_for(lambda u: u.value > 0, timeout=15).value
    later = count.wait_for(lambda u: u.value >= first + 10, timeout=15).value
    assert later > first
    rate = ca.monitor(f"{p}RATE").wait_for(lambda u: 7 < u.value < 13, timeout=15)  # scan_hz 10
    assert rate.value == pytest.approx(10, abs=3)
    # COUNT also counts cycles whose inputs are not valid yet; LATENCY is posted once a model has run.
    assert ca.monitor(f"{p}LATENCY").wait_for(lambda u: u.value > 0, timeout=15).value > 0
    assert ca.get(f"{p}LATENCY.EGU") == "ms"


def test_sigterm_exits_cleanly(demo):
    sim, ioc, *_ = demo
    ioc.signal(signal.SIGTERM)
    assert ioc.proc.wait(2.0) == 0  # the promise: drain, flush, exit 0 within 2 s
    assert "Traceback" not in ioc.output()
