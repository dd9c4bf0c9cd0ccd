"""The guards between a model's output and a machine setpoint: pure logic, no I/O, no clock.

A closed-loop action (:mod:`ioc.edges.actions`) gathers, once per model cycle, everything the decision
depends on into a :class:`GuardInput` and asks :func:`evaluate` for a :class:`Verdict`: write the
value (``WRITING``, or ``DRY_RUN`` when the action only proposes), or hold it and say which guard
held it. Keeping the decision here, apart from the CA/PVA edge, is what lets every guard be tested
exhaustively without a network: no model error and no edge bug can reach a setpoint except through
this one function.

The checks run in the order of :func:`evaluate` (the table in docs/how-to/actions.md): the first guard
that holds is the one reported (in ``$(P)ACTION:<name>:STATE`` and the audit log). Guards that hold because the
value is *unsafe or unknown* (disabled, invalid, drift, non-finite, range, readback, step) count
towards the trip after ``max_held`` consecutive cycles (:class:`HoldCounter`); the routine holds
(rate, deadband, settling, version) mean "nothing to do this cycle" and never trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from ioc.core.pvmodel import Severity


class ActionState(IntEnum):
    """``$(P)ACTION:<name>:STATE`` (mbbi: 16 states at most, ZRST..FFST)."""

    OFF = 0  # write mode, ACTIONS = 0: not armed
    DRY_RUN = 1  # dry run: this cycle's value passed every guard and is published, never written
    WRITING = 2  # armed, this cycle's value passed every guard and is being written
    TRIPPED = 3  # write mode, ACTIONS switched off by a trip; an operator must re-arm
    REFUSED = 4  # the target is unusable: not connected, not writable, limits outside its own
    HELD_DISABLED = 5  # the model is disabled (ENABLE = 0)
    HELD_INVALID = 6  # the cycle's outputs are not valid (STATUS not OK: input invalid, fault, no model)
    HELD_DRIFT = 7  # the model's DRIFT is at or above the configured severity (or unknown: INVALID)
    HELD_NONFINITE = 8  # the value is NaN or infinite
    HELD_RANGE = 9  # the value is outside the action's [min, max]
    HELD_READBACK = 10  # no usable readback (disconnected, INVALID, no value yet)
    HELD_STEP = 11  # the value is more than max_step from the readback
    HELD_SETTLING = 12  # the last write is still in flight or its readback has not settled
    HELD_DEADBAND = 13  # the change from the current setpoint is below the deadband
    HELD_RATE = 14  # the last write was less than 1 / max_rate_hz ago
    HELD_VERSION = 15  # the value was computed by a model version no longer served


STATE_CHOICES = tuple(s.name for s in ActionState)
assert len(STATE_CHOICES) <= 16, "an mbbi has 16 states"

#: Holds that mean "this value is unsafe or cannot be judged": they count towards ``max_held``.
COUNTED_HOLDS = frozenset({
    ActionState.HELD_DISABLED, ActionState.HELD_INVALID, ActionState.HELD_DRIFT, ActionState.HELD_NONFINITE,
    ActionState.HELD_RANGE, ActionState.HELD_READBACK, ActionState.HELD_STEP,
})
#: Holds that mean "nothing to do this cycle": the value itself passed every safety check.
ROUTINE_HOLDS = frozenset({
    ActionState.HELD_RATE, ActionState.HELD_DEADBAND, ActionState.HELD_SETTLING, ActionState.HELD_VERSION,
})

STATE_SEVERITIES: tuple[Severity, ...] = tuple(
    Severity.MAJOR if s in (ActionState.TRIPPED, ActionState.REFUSED)
    else Severity.MINOR if s in COUNTED_HOLDS
    else Severity.NO_ALARM
    for s in ActionState
)

DRIFT_LIMITS = {"MINOR": Severity.MINOR, "MAJOR": Severity.MAJOR}


@dataclass(frozen=True, slots=True)
class Limits:
    """An action's configured envelope (``action:`` of an output, see :mod:`ioc.core.config`)."""

    min: float
    max: float
    max_step: float
    max_rate_hz: float
    deadband: float = 0.0
    drift_limit: Severity = Severity.MAJOR  # hold when DRIFT severity >= this


@dataclass(frozen=True, slots=True)
class GuardInput:
    """Everything one cycle's decision depends on, gathered by the edge.

    ``value`` is the model's output for this cycle (None when the cycle produced no outputs).
    ``drift_severity`` is None when the model has no ``$(P)DRIFT`` PV: the drift guard then does not
    apply. ``readback`` is None when no usable readback is known. ``reference`` is the setpoint the
    target holds now (or, in dry run, the last proposal), for the deadband; None when unknown.
    ``since_last_write_s`` is None when the action has not written (or proposed) yet.
    """

    value: float | None
    status_ok: bool
    status_text: str
    cycle_version: str
    served_version: str
    enabled: bool
    armed: bool
    dry_run: bool
    target_ok: bool
    target_text: str = ""
    tripped: bool = False
    drift_severity: int | None = None
    readback: float | None = None
    reference: float | None = None
    settling: bool = False
    since_last_write_s: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    state: ActionState
    detail: str = ""

    @property
    def passes(self) -> bool:
        """The value passed every guard (written in write mode, published in dry run)."""
        return self.state in (ActionState.WRITING, ActionState.DRY_RUN)

    @property
    def counted(self) -> bool:
        return self.state in COUNTED_HOLDS


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def evaluate(g: GuardInput, limits: Limits) -> Verdict:
    """Decide one cycle: the first guard that holds, or WRITING / DRY_RUN."""
    if not g.target_ok:
        return Verdict(ActionState.REFUSED, g.target_text or "target unusable")
    if not g.dry_run and not g.armed:
        return Verdict(ActionState.TRIPPED if g.tripped else ActionState.OFF,
                       "tripped: re-arm with ACTIONS=1" if g.tripped else "ACTIONS is off")
    if not g.enabled:
        return Verdict(ActionState.HELD_DISABLED, "model disabled")
    if not g.status_ok or g.value is None:
        return Verdict(ActionState.HELD_INVALID, g.status_text or "outputs invalid")
    if g.cycle_version != g.served_version:
        return Verdict(ActionState.HELD_VERSION,
                       f"computed by v{g.cycle_version}, serving v{g.served_version or '-'}")
    value = g.value
    if not math.isfinite(value):
        return Verdict(ActionState.HELD_NONFINITE, f"value {value}")
    if g.drift_severity is not None and g.drift_severity >= limits.drift_limit:
        name = Severity(min(int(g.drift_severity), 3)).name
        return Verdict(ActionState.HELD_DRIFT, f"drift {name}")
    if not limits.min <= value <= limits.max:
        return Verdict(ActionState.HELD_RANGE,
                       f"{_fmt(value)} outside [{_fmt(limits.min)}, {_fmt(limits.max)}]")
    readback = g.readback
    if readback is None or not math.isfinite(readback):
        return Verdict(ActionState.HELD_READBACK, "no usable readback")
    step = abs(value - readback)
    if step > limits.max_step:
        return Verdict(ActionState.HELD_STEP, f"step {_fmt(step)} > max_step {_fmt(limits.max_step)}")
    if g.settling:
        return Verdict(ActionState.HELD_SETTLING, "last write settling")
    if g.reference is not None and math.isfinite(g.reference):
        change = abs(value - g.reference)
        if change == 0.0 or change < limits.deadband:
            return Verdict(ActionState.HELD_DEADBAND, f"change {_fmt(change)} < deadband")
    if g.since_last_write_s is not None and g.since_last_write_s * limits.max_rate_hz < 1.0:
        return Verdict(ActionState.HELD_RATE, f"rate limit {_fmt(limits.max_rate_hz)} Hz")
    if g.dry_run:
        return Verdict(ActionState.DRY_RUN, f"would write {_fmt(value)}")
    return Verdict(ActionState.WRITING, f"write {_fmt(value)}")


class HoldCounter:
    """Counts consecutive counted holds while armed; says when ``max_held`` is reached (trip).

    Anything else (a write, a routine hold, not armed) resets the count: the model's value got past
    every safety check, or nobody relies on the action right now.
    """

    def __init__(self, max_held: int):
        self.max_held = max_held
        self.count = 0

    def update(self, verdict: Verdict, armed: bool) -> bool:
        if armed and verdict.counted:
            self.count += 1
            return self.count >= self.max_held
        self.count = 0
        return False

    def reset(self) -> None:
        self.count = 0


class SettleResult(IntEnum):
    PENDING = 0
    SETTLED = 1
    FAILED = 2


@dataclass(slots=True)
class SettleCheck:
    """After a write: the readback must come within ``tolerance`` of ``setpoint`` by ``deadline``."""

    setpoint: float
    tolerance: float
    deadline: float  # same clock as ``now`` below

    def update(self, readback: float | None, now: float) -> SettleResult:
        if readback is not None and math.isfinite(readback) and abs(readback - self.setpoint) <= self.tolerance:
            return SettleResult.SETTLED
        if now >= self.deadline:
            return SettleResult.FAILED
        return SettleResult.PENDING


def check_target_limits(action_min: float, action_max: float, low: float | None, high: float | None) -> str | None:
    """The action's [min, max] must lie inside the target's own control limits (DRVL/DRVH or
    ``control.limitLow/High``). Returns why not, or None when it does. A target that reports no
    control limits (both 0, or missing) is refused: nothing on the target side would stop a bad
    value, so the IOC's envelope would be the only one."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "target reports no control limits (set DRVL/DRVH)"
    if low == 0.0 and high == 0.0:
        return "target has no control limits (DRVL = DRVH = 0)"
    if low >= high:
        return f"target control limits [{_fmt(low)}, {_fmt(high)}] are empty"
    if action_min < low or action_max > high:
        return (f"action [{_fmt(action_min)}, {_fmt(action_max)}] outside target limits "
                f"[{_fmt(low)}, {_fmt(high)}]")
    return None
