"""Closed-loop actions end to end (issue 8): real IOC and simulator processes, real CA and PVA clients.

Most tests use a model whose output ``y`` is its writable input ``a`` (and ``big`` = 1e37 * ``b``, to
make a non-finite output on demand), so a test proposes a setpoint with one caput and watches what
the action does with it; the target is the simulator's corrector ``COR:I_SP`` (DRVL/DRVH -5..5 A)
with its lagging readback ``COR:I``. The steering demo's own model drives the simulated beam in
``test_steering_demo_...``.

The drift guard is tested in tests/test_guards.py and tests/test_actions_controller.py (a DRIFT PV
served in-process): the ``$(P)DRIFT`` PV it reads arrives with the drift monitor (issue 4); without it
the guard does not apply.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ioc.core.guards import ActionState
from ioc.core.store import ModelStore
from tests.conftest import write_yaml
from tests.support.metrics import samples, wait_scrape
from tests.support.models import publish_linear
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

ACTION = ("min: -4, max: 4, max_step: 0.5, max_rate_hz: 0.5, deadband: 0.05, tolerance: 0.05, settle_s: 1.5, "
          "mode: write")


def identity_setup(tmp_path: Path, prefix: str, action: str = ACTION, *, max_held: int = 20,
                   target: str = "ca://{s}COR:I_SP", readback: str = "ca://{s}COR:I") -> tuple[Path, str, str]:
    s, p = f"{prefix}SIM:", f"{prefix}A:"
    publish_linear(tmp_path / "store", ["a", "b"], ["y", "big"], [[1.0, 0.0], [0.0, 1e37]], [0.0, 0.0])
    target, readback = target.format(s=s), readback.format(s=s)
    config = write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca, pva], stats_hz: 5, store_poll_s: 0.2}}
        simulator: {{prefix: "{s}", rate_hz: 20, seed: 2}}
        models:
          - name: lin
            prefix: "{p}"
            store: store
            trigger: {{on_change: true}}
            inputs:
              - {{name: a, initial: 0.0, range: [-10, 10]}}
              - {{name: b, initial: 0.0}}
            outputs:
              - name: y
                units: A
                action: {{target: "{target}", readback: "{readback}", {action}, max_held: {max_held}}}
              - {{name: big}}
        """)
    return config, s, p


def state(ca, p: str, name: str = "y") -> str:
    return ca.get(f"{p}ACTION:{name}:STATE", as_string=True)


def audit(tmp_path: Path, model: str = "lin") -> list[dict]:
    path = tmp_path / ".mlioc-state" / "actions" / f"{model}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_audit(tmp_path: Path, predicate, timeout: float = 5.0, model: str = "lin") -> dict:
    """The audit file is written on its own thread: wait for the line."""
    return wait_until(lambda: next((r for r in audit(tmp_path, model) if predicate(r)), None), timeout,
                      what="matching audit line", describe=lambda: str(audit(tmp_path, model)[-5:]))


def propose_until(ca, p: str, st, value: float, wanted: str, limit_s: float) -> None:
    """Propose ``value`` (each caput runs a cycle) until the action's state is ``wanted``."""
    t0 = time.monotonic()
    while True:
        mark = st.mark()
        ca.put(f"{p}IN:a", value)
        if state(ca, p) == wanted:
            return
        with contextlib.suppress(TimeoutError):
            st.wait_for(lambda u: u.value == ActionState[wanted], timeout=0.05, since=mark)
            return
        assert time.monotonic() - t0 < limit_s, f"not {wanted} within {limit_s} s: {state(ca, p)}"


def propose_until_written(ca, p: str, st, value: float, limit_s: float) -> None:
    propose_until(ca, p, st, value, "WRITING", limit_s)


def test_every_guard_holds_a_write_when_it_should(tmp_path, prefix, launch, ca, pva):
    config, s, p = identity_setup(tmp_path, prefix)
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim])
    st = ca.monitor(f"{p}ACTION:y:STATE")
    target = ca.monitor(f"{s}COR:I_SP")
    readback = ca.monitor(f"{s}COR:I")
    # Started: the target passed its checks, the switch is off.
    ca.monitor(f"{p}ACTION:y:MESSAGE").wait_for(lambda u: u.value.startswith("target OK"), timeout=15)
    assert state(ca, p) == "OFF"
    assert ca.get(f"{p}ACTIONS") == 0 and ca.get_full(f"{p}ACTIONS:TRIP").severity == 0

    # ACTIONS off: a proposal is not written.
    ca.put(f"{p}IN:a", 0.3)
    assert state(ca, p) == "OFF" and ca.get(f"{s}COR:I_SP") == 0.0

    # Arming writes the current proposal; the readback follows.
    ca.put(f"{p}ACTIONS", 1)
    target.wait_for(lambda u: u.value == pytest.approx(0.3))
    readback.wait_for(lambda u: abs(u.value - 0.3) < 0.05)
    sp = pva(ioc).get(f"{p}ACTION:y:SETPOINT")
    assert sp["value"] == pytest.approx(0.3) and sp["version"] == "1"
    write = wait_audit(tmp_path, lambda r: r["event"] == "write")
    assert (write["old"], write["new"], write["version"], write["target"]) == (0.0, pytest.approx(0.3), "1",
                                                                               f"ca://{s}COR:I_SP")

    # Each guard in turn; the target must not move.
    held_from = target.mark()
    for put, expected in [
        ((f"{p}IN:a", 0.32), "HELD_DEADBAND"),  # 0.02 < deadband 0.05
        ((f"{p}IN:a", 1.2), "HELD_STEP"),  # 0.9 from the readback > max_step 0.5
        ((f"{p}IN:a", 4.5), "HELD_RANGE"),  # outside [min, max]
        ((f"{p}IN:a", 50.0), "HELD_INVALID"),  # input outside its range: STATUS INPUT_INVALID
        ((f"{p}IN:a", 0.32), None),  # (back to a valid proposal, within the deadband)
        ((f"{p}IN:b", 100.0), "HELD_INVALID"),  # big = 1e39: non-finite, STATUS FAULT
        ((f"{p}ENABLE", 0), "HELD_DISABLED"),
    ]:
        ca.put(*put)
        if expected is not None:
            assert state(ca, p) == expected, put
            if expected == "HELD_INVALID" and put[0].endswith("IN:b"):
                assert ca.get(f"{p}ACTION:y:MESSAGE") == "inference failed: non-finite big"
        if put[0].endswith("IN:b"):
            ca.put(f"{p}IN:b", 0.0)
    assert ca.get_full(f"{p}ACTION:y:STATE").severity == 1  # a safety hold is a MINOR alarm
    ca.put(f"{p}ENABLE", 1)
    # No usable readback (the power supply's readback publishes NaN).
    mark = readback.mark()
    ca.put(f"{s}FAULT", "NAN")
    readback.wait_for(lambda u: math.isnan(u.value), since=mark)
    propose_until(ca, p, st, 0.4, "HELD_READBACK", limit_s=3)
    mark = readback.mark()
    ca.put(f"{s}FAULT", 0)
    readback.wait_for(lambda u: not math.isnan(u.value), since=mark)
    assert ca.get(f"{s}COR:I_SP") == pytest.approx(0.3)
    assert [u for u in target.updates[held_from:] if u.value != pytest.approx(0.3)] == []
    wait_audit(tmp_path, lambda r: r["event"] == "hold" and r["guard"] == "HELD_READBACK")
    holds = {r["guard"] for r in audit(tmp_path) if r["event"] == "hold"}
    assert {"HELD_STEP", "HELD_RANGE", "HELD_INVALID", "HELD_DISABLED", "HELD_READBACK"} <= holds
    step = wait_audit(tmp_path, lambda r: r["event"] == "hold" and r["guard"] == "HELD_STEP")
    assert step["new"] == pytest.approx(1.2) and step["old"] == pytest.approx(0.3) and step["version"] == "1"

    # Rate limit and settling: propose until the rate limit (one write per 2 s since arming) lets one
    # through, propose again at once (the write is settling), then after the readback settled (rate).
    propose_until_written(ca, p, st, 0.5, limit_s=5)
    first_write = time.monotonic()
    mark = readback.mark()
    ca.put(f"{p}IN:a", 0.6)
    assert state(ca, p) == "HELD_SETTLING"
    readback.wait_for(lambda u: abs(u.value - 0.5) < 0.05, since=mark)
    ca.put(f"{p}IN:a", 0.6)
    assert state(ca, p) == "HELD_RATE"
    propose_until_written(ca, p, st, 0.6, limit_s=5)
    assert time.monotonic() - first_write >= 2.0 - 0.1
    target.wait_for(lambda u: u.value == pytest.approx(0.6))
    value = 0.6

    # Disarm over PVA: OFF, and nothing is written any more.
    client = pva(ioc)
    client.put(f"{p}ACTIONS", 0)
    assert state(ca, p) == "OFF"
    ca.put(f"{p}IN:a", value + 0.2)
    assert ca.get(f"{s}COR:I_SP") == pytest.approx(value)
    events = [e["action"] for e in ModelStore(tmp_path / "store").events()]
    assert "actions-arm" in events and "actions-disarm" in events
    assert "Traceback" not in ioc.output()


def test_a_trip_switches_actions_off_until_an_operator_rearms(tmp_path, prefix, launch, ca, pva):
    # A PVA target (put over PVA) with a CA readback; trips after 3 safety holds.
    fast = ACTION.replace("max_rate_hz: 0.5", "max_rate_hz: 5").replace("settle_s: 1.5", "settle_s: 1.0")
    config, s, p = identity_setup(tmp_path, prefix, fast, max_held=3, target="pva://{s}COR:I_SP")
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim],
                     env={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{sim.ports.pva_broadcast}"})
    client = pva(ioc)
    ca.monitor(f"{p}ACTION:y:MESSAGE").wait_for(lambda u: u.value.startswith("target OK"), timeout=15)
    target = ca.monitor(f"{s}COR:I_SP")
    trip = ca.monitor(f"{p}ACTIONS:TRIP")

    # 1. N consecutive held cycles.
    client.put(f"{p}ACTIONS", 1)
    for value in (4.5, 4.6, 4.7):
        ca.put(f"{p}IN:a", value)
    u = trip.wait_for(lambda u: u.severity == 2)
    assert u.value.startswith("y: held 3 cycles")
    assert ca.get(f"{p}ACTIONS") == 0 and state(ca, p) == "TRIPPED"
    assert ca.get_full(f"{p}ACTION:y:STATE").severity == 2
    assert client.get(f"{p}ACTIONS:TRIP")["alarm.message"].endswith("outside [-4, 4]")
    ca.put(f"{p}IN:a", 0.2)  # a good proposal: still nothing written until someone re-arms
    assert state(ca, p) == "TRIPPED" and ca.get(f"{s}COR:I_SP") == 0.0

    # 2. The operator re-arms: the trip clears, the proposal is written (over PVA).
    ca.put(f"{p}ACTIONS", 1)
    assert ca.get_full(f"{p}ACTIONS:TRIP").severity == 0
    target.wait_for(lambda u: u.value == pytest.approx(0.2))

    # 3. The readback stops following (the machine stalls): trip after settle_s.
    ca.monitor(f"{s}COR:I").wait_for(lambda u: abs(u.value - 0.2) < 0.05)
    ca.put(f"{s}FAULT", "STALL")
    mark = trip.mark()
    ca.put(f"{p}IN:a", 0.6)
    target.wait_for(lambda u: u.value == pytest.approx(0.6))
    u = trip.wait_for(lambda u: u.severity == 2, since=mark, timeout=5)
    assert "readback" in u.value and ca.get(f"{p}ACTIONS") == 0
    ca.put(f"{s}FAULT", 0)

    # 4. A reload (new champion) trips armed actions; the new model's values wait for the operator.
    ca.put(f"{p}ACTIONS", 1)
    mark = trip.mark()
    store = ModelStore(tmp_path / "store")
    _, n = publish_linear(tmp_path / "store", ["a", "b"], ["y", "big"], [[0.5, 0.0], [0.0, 1e37]], [0.0, 0.0])
    u = trip.wait_for(lambda u: u.severity == 2, since=mark, timeout=5)
    assert u.value == f"model changed: v1 -> v{n}"
    ca.put(f"{p}IN:a", 0.9)  # v2 proposes 0.45: not written
    assert ca.get(f"{s}COR:I_SP") == pytest.approx(0.6) and state(ca, p) == "TRIPPED"
    trips = [e for e in store.events() if e["action"] == "actions-trip"]
    assert [t["reason"].split(":")[0] for t in trips] == ["y", "y", "model changed"]

    # 5. Prometheus shows the same story: three trips, the writes sent, the guard that held, disarmed.
    def story(f) -> bool:
        return [s.value for s in samples(f, "mlioc_action_trips_total")] == [3.0]

    families = wait_scrape(ioc.ports.metrics, story, timeout=5)
    writes = {s.labels["action"]: s.value for s in samples(families, "mlioc_action_writes_total")}
    assert writes == {"y": 2.0}  # 0.2 after re-arming, 0.6 before the stall
    decisions = {s.labels["state"]: s.value for s in samples(families, "mlioc_action_decisions_total")
                 if s.labels["action"] == "y"}
    assert decisions["held_range"] >= 3 and decisions["writing"] >= 2 and decisions["tripped"] >= 1
    assert [s.value for s in samples(families, "mlioc_actions_armed")] == [0.0]
    assert ioc.proc.poll() is None and "Traceback" not in ioc.output()


def test_refused_targets_keep_actions_off_and_the_ioc_serving(tmp_path, prefix, launch, ca, pva):
    s, p = f"{prefix}SIM:", f"{prefix}R:"
    publish_linear(tmp_path / "store", ["a"], ["wide", "ro", "gone"], [[1.0], [1.0], [1.0]], [0.0, 0.0, 0.0])
    common = "max_step: 0.5, mode: write"
    config = write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca, pva], stats_hz: 5}}
        simulator: {{prefix: "{s}", rate_hz: 20}}
        models:
          - name: r
            prefix: "{p}"
            store: store
            inputs: [{{name: a, initial: 0.0}}]
            outputs:
              - {{name: wide, action: {{target: "ca://{s}COR:I_SP", min: -6, max: 4, {common}}}}}
              - {{name: ro, action: {{target: "ca://{s}COR:I", min: -4, max: 4, {common}}}}}
              - {{name: gone, action: {{target: "ca://{s}NO:SUCH:PV", min: -4, max: 4, {common}}}}}
        """)
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim])
    ca.monitor(f"{p}ACTION:wide:MESSAGE").wait_for(lambda u: "outside target limits" in u.value, timeout=15)
    ca.monitor(f"{p}ACTION:ro:MESSAGE").wait_for(lambda u: "not writable" in u.value, timeout=15)
    for name in ("wide", "ro"):
        full = ca.get_full(f"{p}ACTION:{name}:STATE")
        assert (ca.get(f"{p}ACTION:{name}:STATE", as_string=True), full.severity) == ("REFUSED", 2)
    gone = ca.monitor(f"{p}ACTION:gone:STATE").wait_for(lambda u: u.value == ActionState.REFUSED, timeout=10)
    assert gone.severity == 2 and ca.get(f"{p}ACTION:gone:MESSAGE").endswith("not connected")
    with pytest.raises(Exception, match=r"cannot arm: wide: action .* outside target limits"):
        pva(ioc).put(f"{p}ACTIONS", 1)
    assert ca.get(f"{p}ACTIONS") == 0
    out = ca.get_full(f"{p}OUT:wide")
    assert out.severity == 0 and out.value == 0.0  # predictions are still served
    assert "target refused" in ioc.output() and ioc.proc.poll() is None


def test_an_action_whose_target_ioc_starts_later_works_once_it_is_up(tmp_path, prefix, launch, ca):
    """Boot order: the ML IOC starts before the machine's IOC; its action is REFUSED, then checked again
    and accepted when the target appears, without a restart."""
    config, s, p = identity_setup(tmp_path, prefix)
    sim_ports = launch.pool.take()
    ioc = launch.ioc(config, sources=[SimpleNamespace(ports=sim_ports)])
    st = ca.monitor(f"{p}ACTION:y:STATE")
    st.wait_for(lambda u: u.value == ActionState.REFUSED, timeout=10)
    assert ca.get(f"{p}ACTION:y:MESSAGE").endswith("not connected")
    launch.sim(config, ports=sim_ports)
    ca.monitor(f"{p}ACTION:y:MESSAGE").wait_for(lambda u: u.value.startswith("target OK"), timeout=15)
    ca.put(f"{p}IN:a", 0.1)
    assert state(ca, p) == "OFF"
    ca.put(f"{p}ACTIONS", 1)
    ca.monitor(f"{s}COR:I_SP").wait_for(lambda u: u.value == pytest.approx(0.1))
    assert ioc.proc.poll() is None


def test_steering_demo_dry_run_never_writes_then_steers_and_restarts_disarmed(tmp_path, prefix, launch, ca, pva):
    s, p = f"{prefix}SIM:", f"{prefix}STEER:"
    shutil.copytree(ROOT / "models" / "steering", tmp_path / "steering", ignore=shutil.ignore_patterns(".lock"))
    demo = (ROOT / "config" / "demo-steering.yaml").read_text()
    demo = demo.replace('prefix: "SIM:"', f'prefix: "{s}"').replace("ca://SIM:", f"ca://{s}")
    demo = demo.replace('"DEMO:STEER:"', f'"{p}"').replace("../data/store/steering", "steering")
    demo = demo.replace("../models/steering", str(ROOT / "models" / "steering"))
    demo = demo.replace("metrics_port: 9106", "metrics_port: 0")
    dry = write_yaml(tmp_path / "dry.yaml", demo)
    sim = launch.sim(dry)
    ioc = launch.ioc(dry, sources=[sim])
    target = ca.monitor(f"{s}COR:I_SP")
    setpoint = ca.monitor(f"{p}ACTION:cor_sp:SETPOINT")
    running = (ActionState.DRY_RUN, ActionState.HELD_DEADBAND, ActionState.HELD_RATE)
    ca.monitor(f"{p}ACTION:cor_sp:STATE").wait_for(lambda u: u.value in running, timeout=15)

    # Dry run: the beam is off-centre by 0.6 mm; the model proposes -0.75 A, nothing is written,
    # even with ACTIONS on.
    ca.put(f"{s}ORBIT:OFFSET", 0.6)
    ca.put(f"{p}ACTIONS", 1)
    proposal = setpoint.wait_for(lambda u: u.value == pytest.approx(-0.75, abs=0.1), timeout=10)
    assert proposal.severity == 0
    assert pva(ioc).get(f"{p}ACTION:cor_sp:SETPOINT")["version"] == "1"
    assert all(u.value == 0.0 for u in target.updates) and ca.get(f"{s}COR:I_SP") == 0.0
    proposals = wait_audit(tmp_path, lambda r: r["event"] == "proposal", model="steering")
    assert proposals["dry_run"] is True

    # Write mode (the same config, mode: write): starts disarmed; armed, it centres the beam. (The
    # restarted IOC serves the same names on new ports: PVA clients, fresh per process, find it at once.)
    assert ioc.stop() == 0
    write = write_yaml(tmp_path / "write.yaml", demo.replace("mode: dry_run", "mode: write"))
    ioc = launch.ioc(write, sources=[sim])
    client = pva(ioc)
    client.monitor(f"{p}ACTION:cor_sp:MESSAGE").wait_for(lambda u: u.value.startswith("target OK"), timeout=15)
    assert client.get(f"{p}ACTION:cor_sp:STATE")["value.index"] == ActionState.OFF
    assert client.get(f"{p}ACTIONS")["value.index"] == 0 and ca.get(f"{s}COR:I_SP") == 0.0
    bpm = ca.monitor(f"{s}BPM:X")
    assert abs(bpm.wait_for(lambda u: True).value - 0.6) < 0.2
    client.put(f"{p}ACTIONS", 1)
    target.wait_for(lambda u: u.value == pytest.approx(-0.75, abs=0.1), timeout=10)
    mark = bpm.mark()
    bpm.wait_for(lambda u: abs(u.value) < 0.1, since=mark, timeout=10)
    assert all(-4 <= u.value <= 4 for u in target.updates)
    assert client.get(f"{p}ACTIONS")["value.index"] == 1
    assert client.get(f"{p}ACTIONS:TRIP")["alarm.severity"] == 0

    # Restart: the switch is off again and nothing is written until an operator arms it.
    assert ioc.stop() == 0
    writes_before = len(target.updates)
    ca.put(f"{s}ORBIT:OFFSET", -0.3)
    ioc = launch.ioc(write, sources=[sim])
    client = pva(ioc)
    client.monitor(f"{p}ACTION:cor_sp:MESSAGE").wait_for(lambda u: u.value.startswith("target OK"), timeout=15)
    assert client.get(f"{p}ACTION:cor_sp:STATE")["value.index"] == ActionState.OFF
    assert client.get(f"{p}ACTIONS")["value.index"] == 0
    client.monitor(f"{p}OUT:cor_sp").wait_for(lambda u: u.value > 0 and u.severity == 0, timeout=10)
    assert len(target.updates) == writes_before
    assert ioc.stop() == 0 and "Traceback" not in ioc.output()
