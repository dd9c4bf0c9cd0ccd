"""The action controller on a real event loop with a real ONNX Runtime model, no servers: how it reads
the model's ``$(P)DRIFT`` PV (the drift monitor of issue 4 serves it; here the test serves one), and
that a model swap between a cycle and its decision holds the value (HELD_VERSION)."""

from __future__ import annotations

import asyncio

import pytest

from ioc.core.config import ActionConfig, InferenceConfig, InputConfig, ModelConfig, OutputConfig, PVRef, TriggerConfig
from ioc.core.engine import load_champion
from ioc.core.guards import ActionState
from ioc.core.pvmodel import AlarmLimits, ClientInfo, Kind, PVDatabase, PVSpec, Severity
from ioc.edges.actions.controller import ActionController
from ioc.runtime.runner import ModelRunner
from tests.support.models import publish_linear

OP = ClientInfo("op", "console", "ca")


async def _settle():
    for _ in range(3):
        await asyncio.sleep(0)


def _setup(tmp_path, drift_limit="MAJOR"):
    store, _ = publish_linear(tmp_path / "s", ["a"], ["y"], [[1.0]], [0.0])
    action = ActionConfig(target=PVRef("ca", "NOWHERE:SP"), min=-4, max=4, max_step=1, max_rate_hz=1e6, mode="dry_run",
                          drift_limit=drift_limit)
    config = ModelConfig(name="m", prefix="P:", store=str(store.root), trigger=TriggerConfig("on_change"),
                         inputs=(InputConfig("a"),), outputs=(OutputConfig("y", action=action),))
    loop = asyncio.get_running_loop()
    db = PVDatabase()
    if "P:DRIFT" not in db:  # what the drift monitor serves: overall score, HIGH MINOR / HIHI MAJOR
        db.add(PVSpec(name="P:DRIFT", kind=Kind.AI, alarm=AlarmLimits(high=1.0, hihi=2.0)))
    runner = ModelRunner(config, db, InferenceConfig(provider="cpu"), loop)
    runner.run_on_input_change = True  # trigger: {on_change: true}, as ioc.app wires it
    runner.start()
    controller = ActionController(runner, loop)
    runner.cycle_listeners.append(controller.on_cycle)
    runner.model_listeners.append(controller.on_model)
    (act,) = controller.actions
    # The target check is the edge's job (tests/test_actions_integration.py); here it has passed.
    act.checking, act.target_ok, act.target_connected = False, True, True
    act.target_value = act.readback_value = 0.0
    act.readback_ok = True
    runner.set_model(load_champion(config, InferenceConfig(provider="cpu")))
    return runner, db, act


async def test_the_drift_guard_reads_the_models_drift_pv(tmp_path):
    runner, db, act = _setup(tmp_path)
    drift = db["P:DRIFT"]
    for score, expected in [(0.5, ActionState.DRY_RUN), (1.5, ActionState.HELD_DEADBAND),
                            (2.5, ActionState.HELD_DRIFT), (float("nan"), ActionState.HELD_DRIFT)]:
        drift.post(score, 0.0)
        db.put("P:IN:a", 0.5, OP)
        await _settle()
        assert act.state is expected, (score, act.state)
    drift.post(0.1, 0.0)
    db.put("P:IN:a", 0.7, OP)
    await _settle()
    assert act.state is ActionState.DRY_RUN and db["P:ACTION:y:SETPOINT"].value == pytest.approx(0.7)


async def test_minor_drift_holds_when_configured(tmp_path):
    runner, db, act = _setup(tmp_path, drift_limit="MINOR")
    db["P:DRIFT"].post(1.5, 0.0)
    db.put("P:IN:a", 0.5, OP)
    await _settle()
    assert act.state is ActionState.HELD_DRIFT and db["P:DRIFT"].reading.severity == Severity.MINOR


async def test_a_value_computed_before_a_swap_is_not_used_after_it(tmp_path):
    runner, db, act = _setup(tmp_path)
    db["P:DRIFT"].post(0.0, 0.0)
    db.put("P:IN:a", 0.5, OP)
    await _settle()
    assert act.state is ActionState.DRY_RUN
    # A cycle of v1 finishes; before its decision runs, v2 takes over (a reload between two callbacks).
    db.put("P:IN:a", 0.9, OP)  # the decision for this cycle is queued with call_soon
    store = publish_linear(tmp_path / "s", ["a"], ["y"], [[2.0]], [0.0])[0]
    store.write_pointer("champion", 2)
    runner.model = load_champion(runner.config, InferenceConfig(provider="cpu"))  # swapped under the queue
    await _settle()
    assert act.state is ActionState.HELD_VERSION
    assert db["P:ACTION:y:SETPOINT"].value == pytest.approx(0.5)  # the v1 value computed before the swap was not taken


def test_the_actions_audit_reports_whether_each_batch_was_written(tmp_path):
    """A batch that cannot be appended is reported (the app raises $(P)AUDIT), and so is the next good one."""
    from ioc.edges.actions.audit import AuditLog
    from tests.support.wait import wait_until

    path = tmp_path / "actions" / "m.jsonl"
    path.mkdir(parents=True)  # a directory where the file goes: the append fails
    audit = AuditLog(path)
    seen: list = []
    audit.on_health = seen.append
    audit.write({"event": "write", "new": 1.0})
    wait_until(lambda: seen, what="the failed append reported")
    assert seen == ["Is a directory"]
    path.rmdir()
    audit.write({"event": "write", "new": 2.0})
    audit.close()
    assert seen == ["Is a directory", None]
    assert '"new": 2.0' in path.read_text()
