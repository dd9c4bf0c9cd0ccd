"""The action guards (ioc/core/guards.py), exhaustively: one test per guard of the guard table, then
property tests that no input which should be held is ever written, whatever the other inputs are."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioc.core.guards import (
    COUNTED_HOLDS,
    ROUTINE_HOLDS,
    STATE_CHOICES,
    STATE_SEVERITIES,
    ActionState,
    GuardInput,
    HoldCounter,
    Limits,
    SettleCheck,
    SettleResult,
    check_target_limits,
    evaluate,
)
from ioc.core.pvmodel import Severity

LIMITS = Limits(min=-4.0, max=4.0, max_step=0.5, max_rate_hz=2.0, deadband=0.02, drift_limit=Severity.MAJOR)

# A cycle that passes every guard: armed, valid, value 1.2 with the readback at 1.0 (step 0.2).
GOOD = GuardInput(value=1.2, status_ok=True, status_text="", cycle_version="3", served_version="3", enabled=True,
                  armed=True, dry_run=False, target_ok=True, drift_severity=0, readback=1.0, reference=1.0,
                  settling=False, since_last_write_s=10.0)


def held(**changes) -> ActionState:
    return evaluate(dataclasses.replace(GOOD, **changes), LIMITS).state


def test_a_good_cycle_writes_and_in_dry_run_only_proposes():
    assert evaluate(GOOD, LIMITS).state is ActionState.WRITING
    assert evaluate(GOOD, LIMITS).passes
    assert held(dry_run=True) is ActionState.DRY_RUN
    assert held(dry_run=True, armed=False) is ActionState.DRY_RUN  # proposals need no arming
    assert held(since_last_write_s=None, reference=None) is ActionState.WRITING  # the first write


# ---- the guard table: one test per guard

def test_guard_target_unusable_refuses():
    assert held(target_ok=False, target_text="COR:I_SP not connected") is ActionState.REFUSED
    v = evaluate(dataclasses.replace(GOOD, target_ok=False, target_text="x not writable"), LIMITS)
    assert v.detail == "x not writable"


def test_guard_actions_off():
    assert held(armed=False) is ActionState.OFF
    assert held(armed=False, tripped=True) is ActionState.TRIPPED


def test_guard_model_disabled():
    assert held(enabled=False) is ActionState.HELD_DISABLED


def test_guard_outputs_invalid():
    assert held(status_ok=False, status_text="q1: stale") is ActionState.HELD_INVALID
    assert held(value=None) is ActionState.HELD_INVALID
    assert evaluate(dataclasses.replace(GOOD, status_ok=False, status_text="q1: NaN"), LIMITS).detail == "q1: NaN"


def test_guard_version_not_served():
    assert held(cycle_version="2") is ActionState.HELD_VERSION
    assert held(served_version="") is ActionState.HELD_VERSION  # no model served any more


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_guard_non_finite(value):
    assert held(value=value) is ActionState.HELD_NONFINITE


def test_guard_drift():
    assert held(drift_severity=int(Severity.MAJOR)) is ActionState.HELD_DRIFT
    assert held(drift_severity=int(Severity.INVALID)) is ActionState.HELD_DRIFT  # unknown drift is not "below"
    assert held(drift_severity=int(Severity.MINOR)) is ActionState.WRITING
    assert held(drift_severity=None) is ActionState.WRITING  # no DRIFT PV: the guard does not apply
    minor = dataclasses.replace(LIMITS, drift_limit=Severity.MINOR)
    assert evaluate(dataclasses.replace(GOOD, drift_severity=1), minor).state is ActionState.HELD_DRIFT
    assert evaluate(dataclasses.replace(GOOD, drift_severity=0), minor).state is ActionState.WRITING


@pytest.mark.parametrize("value", [-4.0001, 4.0001, 100.0])
def test_guard_outside_min_max(value):
    assert held(value=value, readback=value) is ActionState.HELD_RANGE


def test_guard_min_max_are_inclusive():
    assert held(value=4.0, readback=3.9, reference=3.9) is ActionState.WRITING
    assert held(value=-4.0, readback=-3.9, reference=-3.9) is ActionState.WRITING


def test_guard_no_readback():
    assert held(readback=None) is ActionState.HELD_READBACK
    assert held(readback=math.nan) is ActionState.HELD_READBACK


def test_guard_step_from_readback():
    assert held(value=1.51, readback=1.0) is ActionState.HELD_STEP
    assert held(value=0.49, readback=1.0) is ActionState.HELD_STEP
    assert held(value=1.5, readback=1.0, reference=1.0) is ActionState.WRITING  # exactly max_step is allowed


def test_guard_settling():
    assert held(settling=True) is ActionState.HELD_SETTLING


def test_guard_rate_limit():
    assert held(since_last_write_s=0.49) is ActionState.HELD_RATE  # 2 Hz: one write per 0.5 s
    assert held(since_last_write_s=0.5) is ActionState.WRITING


def test_guard_deadband():
    assert held(value=1.01, reference=1.0) is ActionState.HELD_DEADBAND
    assert held(value=1.0, reference=1.0, readback=1.0) is ActionState.HELD_DEADBAND
    assert held(value=1.03, reference=1.0) is ActionState.WRITING
    zero = dataclasses.replace(LIMITS, deadband=0.0)
    # With no deadband an unchanged value is still not re-written.
    assert evaluate(dataclasses.replace(GOOD, value=1.0, reference=1.0), zero).state is ActionState.HELD_DEADBAND
    assert evaluate(dataclasses.replace(GOOD, value=1.0001, reference=1.0), zero).state is ActionState.WRITING


def test_the_first_guard_that_holds_is_the_one_reported():
    everything_wrong = dict(armed=True, enabled=False, status_ok=False, value=math.nan, drift_severity=2,
                            readback=None, settling=True, since_last_write_s=0.0)
    assert held(**everything_wrong) is ActionState.HELD_DISABLED
    assert held(**{**everything_wrong, "enabled": True}) is ActionState.HELD_INVALID
    assert held(**{**everything_wrong, "enabled": True, "status_ok": True}) is ActionState.HELD_NONFINITE
    assert held(**{**everything_wrong, "enabled": True, "status_ok": True, "value": 1.2}) is ActionState.HELD_DRIFT


# ---- properties: whatever else holds, these never pass

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
anything = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none())
inputs = st.builds(
    GuardInput,
    value=st.one_of(finite, anything),
    status_ok=st.booleans(),
    status_text=st.just(""),
    cycle_version=st.sampled_from(["1", "2"]),
    served_version=st.sampled_from(["1", "2", ""]),
    enabled=st.booleans(),
    armed=st.booleans(),
    dry_run=st.booleans(),
    target_ok=st.booleans(),
    tripped=st.booleans(),
    drift_severity=st.one_of(st.none(), st.integers(0, 3)),
    readback=st.one_of(finite, anything),
    reference=st.one_of(finite, anything),
    settling=st.booleans(),
    since_last_write_s=st.one_of(st.none(), st.floats(0, 100)),
)
limits = st.builds(
    lambda lo, width, step, rate, db, drift: Limits(lo, lo + width, step, rate, min(db, step / 2), drift),
    finite, st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.floats(1e-2, 1e2), st.floats(0, 10),
    st.sampled_from([Severity.MINOR, Severity.MAJOR]),
)


def allowed(g: GuardInput, lim: Limits) -> bool:
    """The guard table of docs/actions.md, restated independently: may this cycle's value pass?"""
    finite = lambda x: x is not None and math.isfinite(x)  # noqa: E731
    return (g.target_ok and (g.armed or g.dry_run) and g.enabled and g.status_ok
            and g.cycle_version == g.served_version and finite(g.value)
            and (g.drift_severity is None or g.drift_severity < lim.drift_limit)
            and lim.min <= g.value <= lim.max and finite(g.readback) and abs(g.value - g.readback) <= lim.max_step
            and not g.settling
            and (not finite(g.reference) or (g.value != g.reference and abs(g.value - g.reference) >= lim.deadband))
            and (g.since_last_write_s is None or g.since_last_write_s * lim.max_rate_hz >= 1.0))


@st.composite
def cycles(draw) -> tuple[GuardInput, Limits]:
    """A cycle that passes every guard, then up to three of its fields replaced by anything at all (which
    may or may not break a guard): about half the examples pass, the rest are held by every guard in turn."""
    lim = draw(limits)
    value = draw(st.floats(lim.min, lim.max))
    step = draw(st.floats(-lim.max_step, lim.max_step))
    away = draw(st.floats(max(lim.deadband, 1e-6), max(lim.deadband, 1e-6) * 10 + 1)) * draw(st.sampled_from([-1, 1]))
    version = draw(st.sampled_from(["1", "2"]))
    good = GuardInput(
        value=value, status_ok=True, status_text="", cycle_version=version, served_version=version,
        enabled=True, armed=True, dry_run=draw(st.booleans()), target_ok=True, tripped=draw(st.booleans()),
        drift_severity=draw(st.one_of(st.none(), st.integers(0, int(lim.drift_limit) - 1))),
        readback=value + step, reference=draw(st.one_of(st.none(), st.just(value + away))), settling=False,
        since_last_write_s=draw(st.one_of(st.none(), st.floats(1.0 / lim.max_rate_hz, 100.0))))
    fields = {"value": st.one_of(finite, anything), "status_ok": st.booleans(), "armed": st.booleans(),
              "served_version": st.sampled_from(["1", "2", ""]), "enabled": st.booleans(),
              "target_ok": st.booleans(), "drift_severity": st.one_of(st.none(), st.integers(0, 3)),
              "readback": st.one_of(finite, anything), "reference": st.one_of(finite, anything),
              "settling": st.booleans(), "since_last_write_s": st.one_of(st.none(), st.floats(0, 100))}
    broken = draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True))
    return dataclasses.replace(good, **{name: draw(fields[name]) for name in broken}), lim


def test_a_value_passes_if_and_only_if_every_guard_allows_it():
    """Every example reaches the assertion (an equivalence, not an implication that holds vacuously when
    the verdict is a hold), and the examples must really exercise both sides of it."""
    outcomes = {True: 0, False: 0}

    @settings(max_examples=1500, deadline=None)
    @given(cycles())
    def check(cycle):
        g, lim = cycle
        v = evaluate(g, lim)
        assert v.passes == allowed(g, lim), (v, g, lim)
        if v.passes:
            assert (v.state is ActionState.DRY_RUN) == g.dry_run
        outcomes[v.passes] += 1

    check()
    total = sum(outcomes.values())
    assert outcomes[True] >= 0.25 * total and outcomes[False] >= 0.25 * total, outcomes


@settings(max_examples=500, deadline=None)
@given(inputs, limits)
def test_every_verdict_is_a_served_state_with_a_reason(g, lim):
    v = evaluate(g, lim)
    assert 0 <= int(v.state) < 16 and v.detail
    assert v.counted == (v.state in COUNTED_HOLDS)


@settings(max_examples=500, deadline=None)
@given(inputs, limits)
def test_an_unarmed_write_mode_action_never_writes(g, lim):
    g = dataclasses.replace(g, armed=False, dry_run=False)
    assert evaluate(g, lim).state in (ActionState.OFF, ActionState.TRIPPED, ActionState.REFUSED)


# ---- hold counter, settle check, target limits, the state table

def test_hold_counter_trips_after_max_held_consecutive_safety_holds():
    counter = HoldCounter(3)
    step = evaluate(dataclasses.replace(GOOD, value=3.0), LIMITS)
    rate = evaluate(dataclasses.replace(GOOD, since_last_write_s=0.0), LIMITS)
    assert step.counted and not rate.counted
    assert [counter.update(step, True) for _ in range(2)] == [False, False]
    assert counter.update(rate, True) is False and counter.count == 0  # a routine hold resets the count
    assert [counter.update(step, True) for _ in range(3)] == [False, False, True]
    counter.reset()
    assert [counter.update(step, False) for _ in range(5)] == [False] * 5  # not armed: nothing counts


def test_settle_check():
    s = SettleCheck(setpoint=1.0, tolerance=0.05, deadline=10.0)
    assert s.update(0.5, 9.0) is SettleResult.PENDING
    assert s.update(None, 9.0) is SettleResult.PENDING
    assert s.update(0.96, 9.5) is SettleResult.SETTLED
    assert s.update(0.9, 10.0) is SettleResult.FAILED
    assert s.update(math.nan, 11.0) is SettleResult.FAILED


def test_target_limits():
    assert check_target_limits(-4, 4, -5, 5) is None
    assert check_target_limits(-5, 5, -5, 5) is None
    assert "outside target limits" in check_target_limits(-4, 6, -5, 5)
    assert "outside target limits" in check_target_limits(-6, 4, -5, 5)
    assert "no control limits" in check_target_limits(-4, 4, 0.0, 0.0)
    assert "no control limits" in check_target_limits(-4, 4, None, 5)
    assert "no control limits" in check_target_limits(-4, 4, math.nan, 5)
    assert "empty" in check_target_limits(-4, 4, 5, -5)


def test_state_table_fits_an_mbbi_and_alarms_where_an_operator_must_act():
    assert len(STATE_CHOICES) == 16 and all(len(c) < 26 for c in STATE_CHOICES)  # ZRST..FFST: 26 characters
    sev = dict(zip(ActionState, STATE_SEVERITIES, strict=True))
    assert sev[ActionState.TRIPPED] == sev[ActionState.REFUSED] == Severity.MAJOR
    assert all(sev[s] == Severity.MINOR for s in COUNTED_HOLDS)
    assert all(sev[s] == Severity.NO_ALARM for s in ROUTINE_HOLDS)
    assert COUNTED_HOLDS.isdisjoint(ROUTINE_HOLDS)
    assert {s for s in ActionState if s.name.startswith("HELD_")} == COUNTED_HOLDS | ROUTINE_HOLDS
