"""Closed-loop actions: a model output written to a machine setpoint, under guards (docs/actions.md).

This is the edge around :mod:`ioc.guards` (the pure decision). Per model with ``action:`` outputs, an
:class:`ActionController` owns the ``$(P)ACTIONS`` switch and ``$(P)ACTIONS:TRIP``; per output an
:class:`Action` owns ``ACTION:<name>:STATE / SETPOINT / MESSAGE``, a monitor on its target (the
setpoint's current value and its connection) and one on its readback (:mod:`ioc.sources`), and a
writer thread of its own.

Threads: everything with state runs on the event loop. The decision is taken just after each cycle
(the runner's cycle listener schedules it with ``call_soon``, so the cycle's predictions go out
first; a few microseconds of pure Python). A CA write is sent from the loop with libca's
put-with-callback, which only queues the request: the loop never waits for it, and the server's
completion status comes back on libca's thread (pyepics' own put callback ignores that status, so a
refused put would look like a success). The blocking client calls — a PVA put, and the probe of a
target (access rights, control limits) — run on the action's own single worker thread. Each PVA
write carries the *generation* it was decided in; a model swap, a trip or disarming bumps the
generation, and the writer drops a write whose generation is no longer current, so a value computed
by one model is never written after another model (or no model) took over. (A CA write is sent in
the same loop callback as its decision, so nothing can come between.)

Audit (logger ``mlioc.actions`` and ``<state_dir>/actions/<model>.jsonl``): every write and dry-run
proposal (time, target, old -> new, model version), every hold episode of a safety guard (start, and
end with the number of cycles held), every trip and arm/disarm. Trips and arm/disarm also go to the
model store's ``events.jsonl`` next to reloads and rollbacks; writes do not (at up to ``max_rate_hz``
they would bury the model's lifecycle in machine operations).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioc.config import ActionConfig, OutputConfig, PVRef
from ioc.engine import LoadedModel
from ioc.feed import Feed
from ioc.guards import (
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
from ioc.layout import ActionNames, ModelStatus
from ioc.pvmodel import PV, ClientInfo, PutRejected, Severity, Status
from ioc.runner import MESSAGE_LEN, CycleRecord, ModelRunner
from ioc.sources import make_source
from ioc.store import ModelStore

log = logging.getLogger("mlioc.actions")

PROBE_TIMEOUT_S = 3.0
FIRST_CHECK_S = PROBE_TIMEOUT_S + 0.5  # a target not checked by then is REFUSED (e.g. not connected)
PUT_TIMEOUT_S = 5.0  # the p4p client's own limit; the action's settle_s timer trips earlier


class TargetError(Exception):
    """A target cannot be used or a write to it failed; the message says why."""


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_LEN else text[: MESSAGE_LEN - 1] + "~"


# ----------------------------------------------------------------------------- targets (blocking; worker thread)


@dataclass(frozen=True, slots=True)
class Probe:
    """What a target says about itself."""

    writable: bool | None  # None: the protocol cannot tell without writing (PVA)
    low: float | None
    high: float | None
    value: float | None


class _CaPut:
    """One put-with-callback in flight: libca calls back with the server's status."""

    pending: set[_CaPut] = set()  # keep the Python object alive while libca holds a pointer to it

    def __init__(self, on_complete: Callable[[int], None]):
        self.on_complete = on_complete

    def complete(self, status: int) -> None:
        _CaPut.pending.discard(self)
        self.on_complete(status)


_ca_put_callback = None


def _ca_put_callback_fn():
    """libca's put-completion callback; pyepics' own ignores the server's status, so a refused put
    would look like a success. This one hands the status to the waiting writer."""
    global _ca_put_callback
    if _ca_put_callback is None:
        from epics import dbr

        def on_put(args):
            args.usr.complete(int(args.status))

        _ca_put_callback = dbr.make_callback(on_put, dbr.event_handler_args)
    return _ca_put_callback


class CaTarget:
    """A setpoint over Channel Access (pyepics' libca)."""

    def __init__(self, ref: PVRef):
        self.ref = ref
        self._probe_sub = None
        self._probe_chid = None

    def start_probe(self, done: Callable[[Probe | str], None]) -> None:
        """Ask the target about itself without blocking (called on the loop): access rights and the
        native type are local to libca; the control limits come with the first event of a DBR_CTRL
        subscription, on libca's thread. (Blocking pyepics gets from a worker thread could hang
        against the connection callbacks of the same channel.)"""
        from epics import dbr

        from ioc.sources import _ca

        ca = _ca()
        chid = ca.create_channel(self.ref.name, connect=False, auto_cb=False)  # the monitor's cached channel
        if ca.state(chid) != dbr.CS_CONN:
            done(f"{self.ref.name} not connected")
            return
        ftype = ca.field_type(chid)
        if ftype not in (dbr.DOUBLE, dbr.FLOAT, dbr.LONG, dbr.INT, dbr.SHORT):
            done(f"{self.ref.name} is not numeric (DBR type {ftype})")
            return
        writable = bool(ca.write_access(chid))
        answered = threading.Event()

        def on_event(value=None, lower_ctrl_limit=None, upper_ctrl_limit=None, **_):  # libca's thread
            if not answered.is_set():
                answered.set()
                done(Probe(writable, _num(lower_ctrl_limit), _num(upper_ctrl_limit), _num(value)))

        self._probe_sub = ca.create_subscription(chid, use_ctrl=True, callback=on_event)
        self._probe_chid = chid

    def end_probe(self) -> None:
        """Drop the DBR_CTRL subscription of the last probe (on the loop)."""
        sub, self._probe_sub = self._probe_sub, None
        if sub is not None:
            from ioc.sources import _ca, ca_channel_is_current

            # A channel renewed meanwhile took its subscriptions with it: clearing one again would
            # free it twice.
            if ca_channel_is_current(self.ref.name, self._probe_chid):
                with contextlib.suppress(Exception):
                    _ca().clear_subscription(sub[2])

    def start_put(self, value: float, done: Callable[[str | None], None], generation_ok: Callable[[], bool],
                  pool: concurrent.futures.Executor) -> None:
        """Send a put with completion callback and return at once (called on the loop: libca only
        queues the request). ``done(error or None)`` is called later on libca's thread."""
        from epics import dbr

        from ioc.sources import _ca

        ca = _ca()
        chid = ca.create_channel(self.ref.name, connect=False, auto_cb=False)  # the monitor's cached channel
        if ca.state(chid) != dbr.CS_CONN:
            raise TargetError(f"{self.ref.name} not connected")
        ftype = ca.field_type(chid)
        data = (1 * dbr.Map[ftype])()
        data[0] = value if ftype in (dbr.DOUBLE, dbr.FLOAT) else round(value)
        name = self.ref.name

        def complete(status: int) -> None:
            done(None if status == dbr.ECA_NORMAL else f"put to {name} refused: {ca.message(status)}")

        op = _CaPut(complete)
        _CaPut.pending.add(op)
        ret = ca.libca.ca_array_put_callback(ftype, 1, chid, data, _ca_put_callback_fn(), ctypes.py_object(op))
        if ret != dbr.ECA_NORMAL:
            _CaPut.pending.discard(op)
            raise TargetError(f"put to {name} not sent: {ca.message(ret)}")
        ca.flush_io()


class PvaTarget:
    """A setpoint over PV Access (p4p client). PVA tells a client nothing about its write rights
    before it writes, so writability shows at the first write (a refused put trips)."""

    def __init__(self, ref: PVRef):
        self.ref = ref

    def probe(self, timeout: float = PROBE_TIMEOUT_S) -> Probe:
        from ioc.sources import _pva

        try:
            v = _pva().get(self.ref.name, timeout=timeout)
        except Exception as exc:
            raise TargetError(f"{self.ref.name} not connected ({type(exc).__name__})") from exc
        try:
            low, high = _num(v["control.limitLow"]), _num(v["control.limitHigh"])
        except (KeyError, TypeError):
            low = high = None
        try:
            value = _num(v["value"])
        except (KeyError, TypeError, ValueError):
            raise TargetError(f"{self.ref.name} has no numeric value") from None
        if value is None:
            raise TargetError(f"{self.ref.name} has no numeric value")
        return Probe(None, low, high, value)

    def start_put(self, value: float, done: Callable[[str | None], None], generation_ok: Callable[[], bool],
                  pool: concurrent.futures.Executor) -> None:
        """The p4p client's put blocks: it runs on the action's writer thread."""
        from ioc.sources import _pva

        name = self.ref.name

        def job() -> None:
            if not generation_ok():  # a swap, trip or disarm since the decision: drop it
                done("superseded")
                return
            try:
                _pva().put(name, value, timeout=PUT_TIMEOUT_S, wait=True)
            except TimeoutError:
                done(f"put to {name} not confirmed within {PUT_TIMEOUT_S:g} s")
            except Exception as exc:
                done(f"put to {name} refused: {exc}")
            else:
                done(None)

        try:
            pool.submit(job)
        except RuntimeError as exc:
            raise TargetError("shutting down") from exc


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def make_target(ref: PVRef) -> CaTarget | PvaTarget:
    return CaTarget(ref) if ref.protocol == "ca" else PvaTarget(ref)


# ----------------------------------------------------------------------------- audit


class AuditLog:
    """``<state_dir>/actions/<model>.jsonl``: one JSON line per write, proposal, hold episode, trip.

    Lines are collected on the loop and appended in batches, in order, on a thread of their own every
    ``FLUSH_S`` (a slow disk must not stall a cycle, and one thread wake-up per batch keeps the GIL
    with the loop).
    """

    FLUSH_S = 0.2

    def __init__(self, path: Path | None, loop: asyncio.AbstractEventLoop | None = None):
        self.path = path
        self.loop = loop
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="actions-audit")
        self._lines: list[bytes] = []
        self._handle: asyncio.TimerHandle | None = None
        self._warned = False
        self._closed = False

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None or self._closed:
            return
        self._lines.append((json.dumps(record, sort_keys=True, default=str) + "\n").encode())
        if self.loop is None:
            self.flush()
        elif self._handle is None:
            self._handle = self.loop.call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        self._handle = None
        lines, self._lines = self._lines, []
        if lines:
            with contextlib.suppress(RuntimeError):  # shut down
                self._pool.submit(self._append, b"".join(lines))

    def _append(self, data: bytes) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.error("cannot write the actions audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
        self._closed = True
        self._pool.shutdown(wait=True)


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
        self.index = index
        self.output = output
        self.name = output.name
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
        if self.separate_readback:
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
        if isinstance(result, str):
            problem = result
        elif result.writable is False:
            problem = f"{self.config.target.name} is not writable (access rights)"
        else:
            problem = check_target_limits(self.config.min, self.config.max, result.low, result.high)
        if problem is not None:
            self._refuse(problem)
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
        if verdict.passes:
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
            where = cfg.readback.name if self.separate_readback else cfg.target.name
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
        text = _clip(text)
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
    number = _num(value)
    return number if number is not None and math.isfinite(number) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


# ----------------------------------------------------------------------------- one model's actions


class ActionController:
    """The actions of one model: the ACTIONS switch, trips, and the per-cycle fan-out."""

    def __init__(self, runner: ModelRunner, loop: asyncio.AbstractEventLoop, *, store: ModelStore | None = None,
                 audit_path: Path | None = None):
        self.runner = runner
        self.loop = loop
        self.store = store
        self.names = ActionNames(runner.config.prefix)
        db = runner.db
        self.actions_pv: PV = db[self.names.actions]
        self.trip_pv: PV = db[self.names.trip]
        self.actions_pv.put_handler = self._put_actions
        self.audit = AuditLog(audit_path, loop)
        self.armed = False
        self.tripped = False
        self.trips = 0
        self.generation = 0  # bumped on every model swap, trip and disarm: queued writes of older ones drop
        self.served_version = ""
        self.drift_name = f"{runner.config.prefix}DRIFT"
        self.actions = [Action(self, i, o) for i, o in enumerate(runner.config.outputs) if o.action is not None]
        runner.cycle_listeners.append(self.on_cycle)
        runner.model_listeners.append(self.on_model)
        now = time.time()
        self.actions_pv.post(0, now)  # never persisted: every start begins disarmed
        self.trip_pv.post("", now)
        for action in self.actions:
            action.post_initial(now)

    @property
    def model_name(self) -> str:
        return self.runner.config.name

    def start(self) -> None:
        for action in self.actions:
            action.start()
        modes = ", ".join(f"{a.name} -> {a.config.target} ({a.config.mode})" for a in self.actions)
        log.info("%s: actions %s; ACTIONS is off until an operator arms it", self.model_name, modes)

    def stop(self) -> None:
        self.generation += 1
        for action in self.actions:
            action.stop()
        self.audit.close()

    # ------------------------------------------------------------------ listeners (on the loop)

    def on_cycle(self, record: CycleRecord) -> None:
        """The runner's cycle listener: decide just after the cycle, so its predictions go out first
        (the decision needs the model served *then*: a swap in between is seen and held)."""
        self.loop.call_soon(self.decide, record)

    def decide(self, record: CycleRecord) -> None:
        db = self.runner.db
        drift = None
        if self.drift_name in db:  # the drift monitor's PV, where the model has one (docs/actions.md)
            drift = int(db[self.drift_name].reading.severity)
        model = self.runner.model
        served = model.version if model is not None else ""
        for action in self.actions:
            action.on_cycle(record, served, drift)

    def on_model(self, model: LoadedModel | None) -> None:
        """A new model (reload, rollback, promote) or none: queued writes drop; armed actions trip."""
        old = self.served_version
        self.served_version = model.version if model is not None else ""
        self.generation += 1
        if self.armed:
            new = f"v{self.served_version}" if model is not None else "no model"
            self.trip(f"model changed: v{old or '-'} -> {new}")

    # ------------------------------------------------------------------ arm / disarm / trip

    def _put_actions(self, pv: PV, value: int, client: ClientInfo) -> None:
        now = time.time()
        if value:
            refused = [f"{a.name}: {a.target_text}" for a in self.actions if not a.target_ok]
            if refused:
                raise PutRejected(f"cannot arm: {'; '.join(refused)}"[:200])
            was_tripped = self.tripped
            self.armed = True
            self.tripped = False
            self.generation += 1
            for action in self.actions:
                action.counter.reset()
                action.state = None  # the next cycle posts the state afresh
            pv.post(1, now)
            self.trip_pv.post("", now)
            text = f"actions armed by {client.user}@{client.host}"
            log.warning("%s: %s%s", self.model_name, text, " (re-armed after a trip)" if was_tripped else "")
            self._event("actions-arm", client=client, reason="ACTIONS=1 written")
            self.runner.note(text)
            self.runner.run_cycle(triggered=False)
        else:
            was_armed = self.armed
            self.armed = False
            self.generation += 1
            pv.post(0, now)
            for action in self.actions:
                action.disarmed()
            if was_armed:
                text = f"actions off by {client.user}@{client.host}"
                log.warning("%s: %s", self.model_name, text)
                self._event("actions-disarm", client=client, reason="ACTIONS=0 written")
                self.runner.note(text)

    def trip(self, reason: str) -> None:
        """Switch actions off (ACTIONS -> 0), latch the reason in ACTIONS:TRIP (MAJOR) until re-armed."""
        if not self.armed:
            return
        now = time.time()
        self.armed = False
        self.tripped = True
        self.trips += 1
        self.generation += 1
        self.actions_pv.post(0, now)
        self.trip_pv.post(_clip(reason), now, Severity.MAJOR, Status.STATE, reason)
        for action in self.actions:
            action.disarmed()
        log.error("%s: actions TRIPPED: %s (ACTIONS -> 0; an operator must re-arm)", self.model_name, reason,
                  extra={"trip": reason})
        self._event("actions-trip", reason=reason, version=self.served_version)
        self.runner.note(f"actions tripped: {reason}")

    def _event(self, action: str, *, client: ClientInfo | None = None, **fields: Any) -> None:
        """Arm / disarm / trip beside reloads and rollbacks in the store's events.jsonl (rare events)."""
        if client is not None:
            fields.update(user=client.user, host=client.host, protocol=client.protocol)
        self.audit.write({"time": time.time(), "event": action, **fields})
        if self.store is None:
            return
        store = self.store

        def append():
            try:
                store.append_event(action, model=self.model_name, **fields)
            except OSError as exc:
                log.error("%s: cannot write %s: %s", self.model_name, store.events_path, exc)

        self.loop.run_in_executor(None, append)


def start_actions(runner: ModelRunner, loop: asyncio.AbstractEventLoop, store: ModelStore | None,
                  state_dir: str | os.PathLike) -> ActionController | None:
    """The action controller of a model with ``action:`` outputs (None for a model without)."""
    if not any(o.action is not None for o in runner.config.outputs):
        return None
    path = Path(state_dir) / "actions" / f"{runner.config.name}.jsonl"
    return ActionController(runner, loop, store=store, audit_path=path)

