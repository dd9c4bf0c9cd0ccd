"""One output driving one setpoint: its PVs, target/readback monitors, writer and per-cycle decision.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ioc.core.config import ActionConfig, OutputConfig
from ioc.core.guards import (
    DRIFT_LIMITS,
    ROUTINE_HOLDS,
    ActionState,
    GuardInput,
    HoldCounter,
    Limits,
    SettleCheck,
    SettleResult,
    Verdict,
    check_target_limits,
    evaluate,
)
from ioc.core.layout import ModelStatus
from ioc.core.pvmodel import PV, Severity, Status, clip_message
from ioc.edges.actions.targets import (
    FIRST_CHECK_S,
    PROBE_TIMEOUT_S,
    CaTarget,
    Probe,
    TargetError,
    as_float,
    make_target,
)
from ioc.edges.sources import make_source
from ioc.runtime.feed import Feed
from ioc.runtime.runner import CycleRecord

if TYPE_CHECKING:
    from ioc.edges.actions.controller import ActionController

log = logging.getLogger("mlioc.actions")

# ----------------------------------------------------------------------------- one action


@dataclass
class _Episode:
    """A run of consecutive cycles held by the same guard (audited as one start + one end)."""

    state: ActionState
    detail: str
    started: float
    cycles: int
    low: float
    high: float


class Action:
    """One output driving one setpoint: its PVs, monitors, writer, and the per-cycle decision."""

    def __init__(self, controller: ActionController, index: int, output: OutputConfig):
        self.controller = controller
        self.runner = controller.runner
        self.index = index  # where the output sits in the flat output vector (CycleRecord.outputs)
        self.output = output
        self.name = output.name
        assert output.action is not None, f"{output.name} has no action"
        self.config: ActionConfig = output.action
        cfg = self.config
        self.limits = Limits(cfg.min, cfg.max, cfg.max_step, cfg.max_rate_hz, cfg.deadband,
                             DRIFT_LIMITS[cfg.drift_limit])
        self.dry_run = cfg.dry_run
        names = controller.names
        db = self.runner.db
        self.state_pv: PV = db[names.state(self.name)]
        self.setpoint_pv: PV = db[names.setpoint(self.name)]
        self.message_pv: PV = db[names.message(self.name)]
        self.target = make_target(cfg.target)
        self.counter = HoldCounter(cfg.max_held)
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"action-{self.name}")
        self.clock = time.monotonic
        # Target / readback state, updated on the loop from their monitors.
        self.target_connected = False
        self.target_value: float | None = None
        self.target_ok = False
        self.target_text = "checking target"
        self.readback_value: float | None = None
        self.readback_ok = False
        self.separate_readback = cfg.readback is not None and cfg.readback != cfg.target
        # Write bookkeeping.
        self.in_flight = False
        self.settle: SettleCheck | None = None
        self._settle_handle: asyncio.TimerHandle | None = None
        self.last_write_t: float | None = None
        self.last_proposal: float | None = None
        self.writes = 0
        self.decisions: dict[ActionState, int] = {}  # cycles decided, by state (Prometheus, at stats_hz)
        self._write_id = 0
        self._put_timer: asyncio.TimerHandle | None = None
        self.state: ActionState | None = ActionState.OFF
        self.checking = True  # until the target's first check answers (or FIRST_CHECK_S passes)
        self._check_handle: asyncio.TimerHandle | None = None
        self.episode: _Episode | None = None
        self._sources: list = []
        self._probing = False
        self._probe_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ start / stop

    def post_initial(self, now: float) -> None:
        # OFF (not REFUSED) while the target is first checked: no MAJOR blip at every start.
        self.state_pv.post(int(ActionState.OFF), now)
        self.setpoint_pv.post(math.nan, now, Severity.INVALID, Status.UDF, "nothing proposed yet")
        self.message_pv.post("checking target", now)

    def start(self) -> None:
        loop = self.controller.loop
        cfg = self.config
        target_feed = Feed(loop, self._on_target)
        source = make_source(cfg.target, target_feed.push)
        source.start()
        self._sources.append(source)
        if self.separate_readback and cfg.readback is not None:
            readback_feed = Feed(loop, self._on_readback)
            source = make_source(cfg.readback, readback_feed.push)
            source.start()
            self._sources.append(source)
        self._check_handle = loop.call_later(FIRST_CHECK_S, self._end_checking)

    def _end_checking(self) -> None:
        """Every FIRST_CHECK_S: the first check is over (done, or given up on), and a target that is
        not OK is checked again, so a refused action starts working once its target comes up right
        (even if a monitor's first update never came: the check itself reads the value)."""
        self._check_handle = self.controller.loop.call_later(FIRST_CHECK_S, self._end_checking)
        if self.checking:
            self.checking = False
            if not self.target_ok:
                self._refuse(self.target_text if self.target_text != "checking target"
                             else f"{self.config.target.name} not connected")
        if not self.target_ok and not self._probing:
            self._probe()

    def stop(self) -> None:
        self._close_episode(time.time())
        for source in self._sources:
            source.stop()
        if isinstance(self.target, CaTarget):
            self.target.end_probe()
        for handle in (self._settle_handle, self._put_timer, self._check_handle, self._probe_timer):
            if handle is not None:
                handle.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)  # a put in flight finishes on its own

    # ------------------------------------------------------------------ monitors (on the loop)

    def _on_target(self, value: Any, severity: int, timestamp: float, connected: bool) -> None:
        was = self.target_connected
        self.target_connected = connected
        if connected:
            self.target_value = _finite_or_none(value)
            if not self.separate_readback:
                self._on_readback(value, severity, timestamp, connected)
            if not was:
                self._probe()
        else:
            self.target_value = None
            if not self.separate_readback:
                self._on_readback(value, severity, timestamp, connected)
            if was or self.target_ok:
                self._refuse(f"{self.config.target.name} disconnected")

    def _on_readback(self, value: Any, severity: int, timestamp: float, connected: bool) -> None:
        self.readback_value = _finite_or_none(value) if connected else None
        self.readback_ok = connected and self.readback_value is not None and severity < Severity.INVALID
        if self.settle is not None:
            self._check_settle()

    def _probe(self) -> None:
        if self._probing:
            return
        self._probing = True
        loop = self.controller.loop

        def answer(result: Probe | str) -> None:  # any thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._probed, result)

        self._probe_timer = loop.call_later(PROBE_TIMEOUT_S, self._probed,
                                            f"{self.config.target.name}: no answer to the check")
        if isinstance(self.target, CaTarget):
            try:
                self.target.start_probe(answer)
            except Exception as exc:  # a client library error must not escape
                log.exception("%s: probing %s failed", self.label, self.config.target)
                answer(f"probe failed: {exc}")
            return

        def job():
            try:
                result: Probe | str = self.target.probe()
            except TargetError as exc:
                result = str(exc)
            except Exception as exc:  # a client library error must not kill the writer thread
                log.exception("%s: probing %s failed", self.label, self.config.target)
                result = f"probe failed: {exc}"
            answer(result)

        try:
            self.pool.submit(job)
        except RuntimeError:  # shutting down
            self._probing = False

    def _probed(self, result: Probe | str) -> None:
        if not self._probing:
            return  # answered already (or timed out)
        self._probing = False
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if isinstance(self.target, CaTarget):
            self.target.end_probe()
        self.checking = False
        if self._check_handle is not None:
            self._check_handle.cancel()
            self._check_handle = None
        problem: str | None
        if isinstance(result, str):
            problem = result
        elif result.writable is False:
            problem = f"{self.config.target.name} is not writable (access rights)"
        else:
            problem = check_target_limits(self.config.min, self.config.max, result.low, result.high)
        if problem is not None or isinstance(result, str):
            self._refuse(problem or str(result))
            return
        # The answer proves the connection (a monitor may not have delivered its first update yet).
        self.target_connected = True
        if result.value is not None:
            self.target_value = result.value
            if not self.separate_readback and self.readback_value is None:
                self.readback_value, self.readback_ok = result.value, True
        self.target_ok = True
        self.target_text = ""
        rights = "" if result.writable else " (PVA: write rights show at the first write)"
        log.info("%s: target %s OK: limits [%g, %g] inside its own [%s, %s]%s", self.label, self.config.target,
                 self.config.min, self.config.max, result.low, result.high, rights)
        self._message(f"target OK, {'dry run' if self.dry_run else 'write mode'}")
        self.runner.run_cycle(triggered=False)  # show the state now, not at the next trigger

    def _refuse(self, problem: str) -> None:
        first = self.target_ok or self.target_text != problem
        self.target_ok = False
        self.target_text = problem
        if first:
            log.error("%s: target refused: %s", self.label, problem)
            self.controller.audit.write({"time": time.time(), "event": "refused", "action": self.name,
                                         "target": str(self.config.target), "reason": problem})
        self._set_state(ActionState.REFUSED, problem)
        self._message(problem)  # also when it was REFUSED already (e.g. "waiting for ...")
        self.controller.trip(f"{self.name}: {problem}")

    # ------------------------------------------------------------------ the cycle

    @property
    def label(self) -> str:
        return f"{self.runner.config.name}.{self.name}"

    def on_cycle(self, record: CycleRecord, served_version: str, drift_severity: int | None) -> None:
        if self.checking:
            return  # nothing can be written before the target is checked; the state stays OFF
        c = self.controller
        now = self.clock()
        value = None
        if record.outputs is not None:
            value = float(record.outputs[self.index])
        reference = self.target_value
        if self.dry_run and self.last_proposal is not None:
            reference = self.last_proposal
        g = GuardInput(
            value=value,
            status_ok=record.status is ModelStatus.OK,
            status_text=record.message or record.status.name,
            cycle_version=record.version,
            served_version=served_version,
            enabled=self.runner.enabled,
            armed=c.armed,
            dry_run=self.dry_run,
            target_ok=self.target_ok,
            target_text=self.target_text,
            tripped=c.tripped,
            drift_severity=drift_severity,
            readback=self.readback_value if self.readback_ok else None,
            reference=reference,
            settling=self.in_flight or self.settle is not None,
            since_last_write_s=None if self.last_write_t is None else now - self.last_write_t,
        )
        verdict = evaluate(g, self.limits)
        self.decisions[verdict.state] = self.decisions.get(verdict.state, 0) + 1
        self._audit_hold(verdict, value, record.version)
        if verdict.passes and value is not None:  # a passing verdict always has a finite value
            self._act(verdict, value, record)
        else:
            self._set_state(verdict.state, verdict.detail)
        if self.counter.update(verdict, c.armed):
            c.trip(f"{self.name}: held {self.counter.count} cycles: {verdict.detail}")

    def _act(self, verdict: Verdict, value: float, record: CycleRecord) -> None:
        c = self.controller
        old = self.target_value
        self.last_write_t = self.clock()
        fields = {"time": time.time(), "action": self.name, "target": str(self.config.target), "old": old,
                  "new": value, "version": record.version, "readback": self.readback_value}
        if self.dry_run:
            self.setpoint_pv.post(value, time.time(), tag=record.version)
            self.last_proposal = value
            self._set_state(ActionState.DRY_RUN, verdict.detail)
            log.info("%s: dry run: would write %s %s -> %.6g (v%s)", self.label, self.config.target.name,
                     _fmt(old), value, record.version,
                     extra={"action": self.name, "target": str(self.config.target), "old": old, "new": value,
                            "model_version": record.version, "dry_run": True})
            c.audit.write({**fields, "event": "proposal", "dry_run": True})
            return
        self.in_flight = True
        self.writes += 1
        self._write_id += 1
        wid, generation, loop = self._write_id, c.generation, c.loop
        deadline = self.last_write_t + self.config.settle_s

        def done(error: str | None) -> None:  # any thread, at most once per write
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._written, wid, value, generation, deadline, error)

        error = None
        try:  # first the put, then the PVs and the audit (they are not on the setpoint's critical path)
            self.target.start_put(value, done, lambda: c.generation == generation, self.pool)
        except TargetError as exc:
            error = str(exc)
        except Exception as exc:  # a client library error must not escape into the cycle
            log.exception("%s: write failed", self.label)
            error = f"write failed: {exc}"
        else:
            self._put_timer = loop.call_later(self.config.settle_s, self._written, wid, value, generation, deadline,
                                              f"put to {self.config.target.name} not confirmed within "
                                              f"{self.config.settle_s:g} s")
        self.setpoint_pv.post(value, time.time(), tag=record.version)
        self._set_state(ActionState.WRITING, verdict.detail)
        log.info("%s: write %s %s -> %.6g (v%s)", self.label, self.config.target.name, _fmt(old), value,
                 record.version,
                 extra={"action": self.name, "target": str(self.config.target), "old": old, "new": value,
                        "model_version": record.version, "dry_run": False})
        c.audit.write({**fields, "event": "write"})
        if error is not None:
            self._written(wid, value, generation, deadline, error)

    def _written(self, wid: int, value: float, generation: int, deadline: float, error: str | None) -> None:
        """The put completed, failed, or its confirmation timed out (whichever comes first counts)."""
        if wid != self._write_id or not self.in_flight:
            return
        self.in_flight = False
        if self._put_timer is not None:
            self._put_timer.cancel()
            self._put_timer = None
        c = self.controller
        if error == "superseded":
            log.warning("%s: write of %.6g dropped: the model or ACTIONS changed before it was sent", self.label,
                        value)
            c.audit.write({"time": time.time(), "event": "write-dropped", "action": self.name, "new": value,
                           "target": str(self.config.target)})
            return
        if error is not None:
            log.error("%s: %s", self.label, error)
            c.audit.write({"time": time.time(), "event": "write-failed", "action": self.name, "new": value,
                           "target": str(self.config.target), "reason": error})
            c.trip(f"{self.name}: {error}")
            return
        if generation != c.generation:
            return  # tripped or disarmed meanwhile: no settle check on a loop nobody drives
        self.settle = SettleCheck(value, self.config.tolerance, deadline)
        self._check_settle()
        if self.settle is not None:
            delay = max(0.0, deadline - self.clock()) + 0.005
            self._settle_handle = c.loop.call_later(delay, self._check_settle)

    def _check_settle(self) -> None:
        settle = self.settle
        if settle is None:
            return
        readback = self.readback_value if self.readback_ok else None
        result = settle.update(readback, self.clock())
        if result is SettleResult.PENDING:
            return
        self.settle = None
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        if result is SettleResult.FAILED:
            cfg = self.config
            where = cfg.readback.name if self.separate_readback and cfg.readback is not None else cfg.target.name
            reason = (f"{self.name}: readback {where}={_fmt(readback)} not within {cfg.tolerance:g} of "
                      f"{settle.setpoint:.6g} after {cfg.settle_s:g} s")
            log.error("%s: %s", self.label, reason)
            self.controller.audit.write({"time": time.time(), "event": "readback-failed", "action": self.name,
                                         "target": str(cfg.target), "setpoint": settle.setpoint,
                                         "readback": readback, "reason": reason})
            self.controller.trip(reason)

    # ------------------------------------------------------------------ state, messages, audit

    def disarmed(self) -> None:
        """Called on trip / disarm: forget pending settle checks (nothing drives the loop now)."""
        self.settle = None
        if self._settle_handle is not None:
            self._settle_handle.cancel()
            self._settle_handle = None
        self.counter.reset()
        if not self.dry_run:
            c = self.controller
            if self.target_ok:
                self._set_state(ActionState.TRIPPED if c.tripped else ActionState.OFF,
                                "tripped: re-arm with ACTIONS=1" if c.tripped else "ACTIONS is off")

    def _set_state(self, state: ActionState, detail: str) -> None:
        if state is self.state:
            return
        self.state = state
        now = time.time()
        self.state_pv.post(int(state), now)
        self._message(detail)  # STATE names the guard; MESSAGE says why

    def _message(self, text: str) -> None:
        text = clip_message(text)
        if self.message_pv.value != text:
            self.message_pv.post(text, time.time())

    def _audit_hold(self, verdict: Verdict, value: float | None, version: str) -> None:
        """Hold episodes: the first cycle of a hold (guard, detail, proposal) and, when it ends, how
        many cycles it held. Safety holds go to the log at WARNING and to the audit file; routine
        holds (rate, deadband, settling, version) only to the log at DEBUG."""
        state = verdict.state
        held = state.name.startswith("HELD_")
        ep = self.episode
        if ep is not None and ep.state is state:
            ep.cycles += 1
            if value is not None and math.isfinite(value):
                ep.low, ep.high = min(ep.low, value), max(ep.high, value)
            return
        now = time.time()
        self._close_episode(now)
        if not held:
            return
        v = value if value is not None and math.isfinite(value) else math.nan
        self.episode = _Episode(state, verdict.detail, now, 1, v, v)
        routine = state in ROUTINE_HOLDS
        armed = self.controller.armed or self.dry_run
        level = (logging.DEBUG if routine or not armed
                 else logging.WARNING if self.controller.armed else logging.INFO)
        log.log(level, "%s: %s held by %s: %s (target %s = %s, proposed %s, v%s)", self.label,
                "write" if not self.dry_run else "proposal", state.name, verdict.detail, self.config.target.name,
                _fmt(self.target_value), _fmt(value), version,
                extra={"action": self.name, "target": str(self.config.target), "old": self.target_value,
                       "new": value, "model_version": version, "guard": state.name, "detail": verdict.detail})
        if not routine and armed:
            self.controller.audit.write({"time": now, "event": "hold", "action": self.name,
                                         "target": str(self.config.target), "guard": state.name,
                                         "detail": verdict.detail, "old": self.target_value, "new": value,
                                         "version": version, "armed": self.controller.armed})

    def _close_episode(self, now: float) -> None:
        ep = self.episode
        if ep is None:
            return
        self.episode = None
        routine = ep.state in ROUTINE_HOLDS
        log.log(logging.DEBUG if routine else logging.INFO, "%s: %s hold ended after %d cycle(s), %.2f s",
                self.label, ep.state.name, ep.cycles, now - ep.started)
        if not routine and (self.controller.armed or self.dry_run or self.controller.tripped):
            self.controller.audit.write({"time": now, "event": "hold-end", "action": self.name,
                                         "target": str(self.config.target), "guard": ep.state.name,
                                         "cycles": ep.cycles, "since": ep.started,
                                         "proposed_min": None if math.isnan(ep.low) else ep.low,
                                         "proposed_max": None if math.isnan(ep.high) else ep.high})


def _finite_or_none(value: Any) -> float | None:
    number = as_float(value)
    return number if number is not None and math.isfinite(number) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"

