"""The ``action:`` section of an output: safe defaults, every mistake refused with its line, and the
action PVs in the layout only for models that have actions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names, model_pv_specs
from ioc.core.pvmodel import Kind
from tests.conftest import write_yaml

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, action: str, extra_output: str = "") -> Path:
    return write_yaml(tmp_path / "c.yaml", f"""\
        models:
          - name: m
            prefix: "P:"
            store: store
            inputs:
              - {{name: a}}
            outputs:
              - name: y
                units: A
                action: {action}
              {extra_output}
        """)


def test_defaults_are_the_safe_ones(tmp_path):
    cfg = load_config(config(tmp_path, '{target: "ca://COR:I_SP", min: -4, max: 4, max_step: 0.5}'))
    act = cfg.models[0].outputs[0].action
    assert str(act.target) == "ca://COR:I_SP"
    assert act.mode == "dry_run" and act.dry_run  # a new action never writes until someone says so
    assert act.readback is None and act.max_rate_hz == 1.0 and act.deadband == 0.0
    assert act.tolerance == pytest.approx(0.08)  # 1 % of max - min
    assert act.settle_s == 2.0 and act.max_held == 50 and act.drift_limit == "MAJOR"


def test_every_key(tmp_path):
    cfg = load_config(config(tmp_path, '''{target: "pva://COR:I_SP", readback: "ca://COR:I", min: -4, max: 4,
                   max_step: 0.5, max_rate_hz: 5, deadband: 0.01, tolerance: 0.02, settle_s: 1, mode: write,
                   max_held: 7, drift_limit: MINOR}'''))
    act = cfg.models[0].outputs[0].action
    assert (act.target.protocol, act.readback.name, act.mode, act.max_held, act.drift_limit) == (
        "pva", "COR:I", "write", 7, "MINOR")
    assert (act.max_rate_hz, act.deadband, act.tolerance, act.settle_s) == (5.0, 0.01, 0.02, 1.0)


@pytest.mark.parametrize("action, expected", [
    ('{min: -4, max: 4, max_step: 0.5}', "missing required key 'target'"),
    ('{target: "ca://X", max: 4, max_step: 0.5}', "missing required key 'min'"),
    ('{target: "ca://X", min: 4, max: -4, max_step: 0.5}', "min must be < max"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0}', "max_step: must be > 0"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0.5, mode: live}', "mode: expected one of dry_run, write"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0.5, drift_limit: INVALID}', "drift_limit: expected MAJOR"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0.5, deadband: 0.5}', "deadband: must be < max_step"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0.5, max_rate_hz: -1}', "max_rate_hz: must be > 0"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0.5, max_held: 2.5}', "max_held: expected an integer"),
    ('{target: "ca://X", min: -4, max: 4, max_step: 0.5, tolerence: 1}', "did you mean 'tolerance'"),
    ('{target: "ftp://X", min: -4, max: 4, max_step: 0.5}', "unknown protocol 'ftp'"),
])
def test_mistakes_are_refused_with_their_line(tmp_path, action, expected):
    path = config(tmp_path, action)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    where = f"{path}:10: models[0].outputs[0].action"
    assert any(expected in p and p.startswith(where) for p in info.value.problems), info.value.problems


def test_two_actions_on_one_setpoint_are_refused(tmp_path):
    path = config(tmp_path, '{target: "ca://X", min: -4, max: 4, max_step: 0.5}',
                  extra_output='- {name: z, action: {target: "ca://X", min: -1, max: 1, max_step: 0.5}}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert any("X is already driven by m.y" in p for p in info.value.problems)


def test_action_pvs_exist_only_for_models_with_actions(tmp_path):
    cfg = load_config(config(tmp_path, '{target: "ca://X", min: -4, max: 4, max_step: 0.5}'))
    names = model_pv_names(cfg.models[0])
    assert {"P:ACTIONS", "P:ACTIONS:TRIP", "P:ACTION:y:STATE", "P:ACTION:y:SETPOINT",
            "P:ACTION:y:MESSAGE"} <= set(names)
    specs = {s.name: s for s in model_pv_specs(cfg.models[0])}
    switch = specs["P:ACTIONS"]
    assert switch.kind is Kind.BO and switch.initial == 0 and switch.asg == "CONTROL" and switch.audit
    assert specs["P:ACTION:y:STATE"].kind is Kind.MBBI and len(specs["P:ACTION:y:STATE"].choices) == 16
    assert specs["P:ACTION:y:SETPOINT"].display == (-4.0, 4.0) and specs["P:ACTION:y:SETPOINT"].egu == "A"
    demo = load_config(ROOT / "config" / "demo.yaml")
    assert not [n for n in model_pv_names(demo.models[0]) if "ACTION" in n]


def test_steering_demo_config_ships_in_dry_run():
    cfg = load_config(ROOT / "config" / "demo-steering.yaml")
    act = cfg.models[0].outputs[0].action
    assert act.mode == "dry_run" and act.target.name == "SIM:COR:I_SP" and act.readback.name == "SIM:COR:I"
