"""One model's cycle: input snapshot -> inference -> outputs, and the model's status PVs.

Everything here runs on the event loop thread (sources hand their updates over with
``call_soon_threadsafe``), so the runner's state needs no locks. The only work that may leave the
loop is the ONNX Runtime call itself (see :mod:`ioc.runtime.offload`); it captures the model and the input
snapshot when it starts, so a cycle never mixes two models or two moments, and a model swap
(:meth:`ModelRunner.set_model`) takes effect between two cycles.

Every cycle ends in exactly one of the states of ``$(P)STATUS``. Whenever it is not OK, every output
is served with INVALID severity and a status that says why (DISABLE, UDF, LINK, CALC), and
``$(P)MESSAGE`` names the cause, so no fault can leave STATUS OK with a wrong prediction.

Arrays: a model with waveform or image inputs/outputs runs the same cycle. Its snapshot is one flat
vector (every input flattened in config order: :class:`ioc.core.arrays.TensorLayout`), and the flat
output vector is cut into the named outputs, each posted as one array (a NaN/Inf element is a FAULT
naming it: ``non-finite profile[17]``). A model of scalars alone keeps the scalar path unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ioc.core.arrays import TensorLayout, first_nonfinite
from ioc.core.config import InferenceConfig, ModelConfig
from ioc.core.engine import LoadedModel
from ioc.core.inputs import GatheredInputState, InputState, Problem, Snapshot, input_state
from ioc.core.layout import ModelNames, ModelStatus, model_pv_specs
from ioc.core.pvmodel import MESSAGE_LEN, PV, ClientInfo, PVDatabase, Severity, Status, clip_message
from ioc.runtime.bands import Bands
from ioc.runtime.feed import Feed
from ioc.runtime.offload import Offloader

log = logging.getLogger("mlioc.runner")
_thread_time = time.thread_time

_SEVERITY_OF = {ModelStatus.DISABLED: Status.DISABLE, ModelStatus.NO_MODEL: Status.UDF,
                ModelStatus.INPUT_INVALID: Status.LINK, ModelStatus.FAULT: Status.CALC}


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """What one cycle saw and produced: handed to cycle listeners (recorder, monitors, metrics).

    ``inputs`` / ``outputs`` are the flat vectors of the tensor layout rule (one element per scalar).
    """

    timestamp: float
    inputs: np.ndarray
    outputs: np.ndarray | None
    status: ModelStatus
    version: str
    latency_s: float
    message: str


@dataclass(frozen=True, slots=True)
class CycleStats:
    """A runner's statistics as :meth:`ModelRunner.take_stats` hands them to LATENCY/RATE/COUNT and Prometheus."""

    latencies: list[float]  # seconds of each successful inference since the last take_stats()
    outcomes: dict[ModelStatus, int]  # cycles ended in each state, since start
    count: int  # triggered cycles since start
    overruns: int  # missed cycles since start
    last_ok_timestamp: float
    status: ModelStatus | None
    shadow_skipped: int = 0  # challenger cycles skipped since start: its previous one was still running
    lateness: list[float] = field(default_factory=list)  # s each scan cycle started after its tick, since last
    input_updates: int = 0  # source updates handed to the runner, since start
    input_coalesced: int = 0  # of those, replaced by a newer value of the same input before being applied


CycleListener = Callable[[CycleRecord], None]
ModelListener = Callable[["LoadedModel | None"], None]  # the model served from the next cycle on
# (snapshot timestamp, challenger outputs, challenger version): each successful shadow prediction.
ChallengerListener = Callable[[float, np.ndarray, str], None]


def input_key(update: tuple) -> tuple:
    """What a newer source update replaces: the same input's (index, and element of a gathered vector)."""
    return update[:1] + update[5:6]


MAD_WINDOW = 100  # cycles over which CHALLENGER:MAD:<output> averages |challenger - champion|


class _RollingMean:
    """Mean of the last ``window`` vectors, updated in O(n_outputs) per sample."""

    def __init__(self, width: int, window: int):
        self.width = width
        self.window = window
        self.reset()

    def reset(self) -> None:
        self._rows: deque[list[float]] = deque()
        self._sums = [0.0] * self.width

    @property
    def n(self) -> int:
        return len(self._rows)

    def add(self, row: list[float]) -> None:
        self._rows.append(row)
        sums = self._sums
        for i, v in enumerate(row):
            sums[i] += v
        if len(self._rows) > self.window:
            for i, v in enumerate(self._rows.popleft()):
                sums[i] -= v

    def means(self) -> list[float]:
        n = len(self._rows)
        return [s / n for s in self._sums] if n else [math.nan] * self.width



class ModelRunner:
    """Owns one model's PVs and runs its cycles."""

    def __init__(
        self,
        config: ModelConfig,
        db: PVDatabase,
        inference: InferenceConfig,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.db = db
        self.names = ModelNames(config.prefix)
        self.clock = clock
        self.loop = loop
        # One ORT thread: the model runs in the calling thread, whose CPU time is what the model costs.
        self.offloader = Offloader(loop, inference.offload, inference.inline_budget_ms, config.name,
                                   cpu_clock=inference.threads == 1)
        now = clock()
        self.inputs = [input_state(i, now) for i in config.inputs]
        for spec in model_pv_specs(config):
            db.add(spec, now)
        n = self.names
        self.in_pvs: list[PV] = [db[n.input(i.name)] for i in config.inputs]
        self.out_pvs: list[PV] = [db[n.output(o.name)] for o in config.outputs]
        # Arrays: None for a model of scalars alone (the scalar hot path), else where each signal sits.
        in_layout, out_layout = TensorLayout.of(config.inputs), TensorLayout.of(config.outputs)
        self.in_layout = None if in_layout.all_scalar else in_layout
        self.out_layout = None if out_layout.all_scalar else out_layout
        self._out_dtypes = [o.dtype if o.shape else None for o in config.outputs]
        self._shape_pvs: dict[int, PV] = {i: db[n.input_shape(c.name)] for i, c in enumerate(config.inputs)
                                          if len(c.shape) == 2}
        self._out_shape_pvs: list[PV] = [db[n.output_shape(c.name)] for c in config.outputs if len(c.shape) == 2]
        self._dirty_gathered: set[int] = set()
        self.enable_pv, self.status_pv, self.message_pv = db[n.enable], db[n.status], db[n.message]
        self.champion_pv = db[n.champion]
        self.challenger_pv, self.version_pv = db[n.challenger], db[n.version]
        self.challenger_out_pvs: list[PV] = [db[n.challenger_output(o.name)] for o in config.outputs]
        self.bands = Bands.of(config, db)  # OUT:<name>:STD or :LO/:HI; None when the config asks for none
        self.challenger_mad_pvs: list[PV] = [db[n.challenger_mad(o.name)] for o in config.outputs]
        self.latency_pv, self.rate_pv, self.count_pv = db[n.latency], db[n.rate], db[n.count]
        # The model's health alarms a MESSAGE written while STATUS is OK must not hide (see _message).
        self.alarm_pvs: list[tuple[str, PV]] = [(name[len(config.prefix):], db[name]) for name in
                                                (n.drift, n.drift_out, n.anomaly, n.audit, n.recorder) if name in db]
        for index, pv in enumerate(self.in_pvs):
            if pv.spec.writable:
                pv.put_handler = self._input_put_handler(index)
        self.enable_pv.put_handler = self._put_enable

        self.model: LoadedModel | None = None
        # What MESSAGE says when STATUS turns OK: "serving vN", or why this version is served (a start-up
        # fallback, a rollback), which the first cycle must not wipe out.
        self._serving_text = ""
        self.challenger: LoadedModel | None = None
        self.challenger_offloader = Offloader(loop, inference.offload, inference.inline_budget_ms,
                                              f"{config.name}-challenger")
        self._mad = _RollingMean(len(config.outputs), MAD_WINDOW)
        self.no_model_reason = "no model loaded yet"
        self.enabled = True
        self._disabled_text = "disabled"
        self.status: ModelStatus | None = None
        self.count = 0  # triggered cycles
        # Missed cycles: a scan cycle that started more than one period after its tick, a tick the scan gave
        # up on, a trigger coalesced into one already waiting behind a cycle in flight.
        self.overruns = 0
        self.scan_period: float | None = None  # set by a scan trigger: what "late" means
        self.lateness: list[float] = []  # seconds each scan cycle started after its tick (drained at stats_hz)
        self._pending_due: float | None = None  # the tick of the triggered cycle waiting behind one in flight
        self.shadow_skipped = 0  # challenger cycles skipped: the previous one was still running
        self.run_on_input_change = False  # set by the model's trigger (ioc.runtime.triggers): on_change
        self.cycle_listeners: list[CycleListener] = []
        self.model_listeners: list[ModelListener] = []  # drift monitors, metrics, ... follow the model
        self.challenger_listeners: list[ChallengerListener] = []  # the challenger's live error
        self.consecutive_faults = 0
        self._crash_text = ""  # the last cycle crash logged with its traceback
        self.on_fault_streak: Callable[[int, str], None] | None = None  # (faults in a row, last error)
        self.on_enable: Callable[[bool], None] | None = None  # e.g. autosave
        # Per-cycle bookkeeping for Prometheus, drained at stats_hz (off the latency-critical path).
        self.outcomes: dict[ModelStatus, int] = dict.fromkeys(ModelStatus, 0)
        self.latencies: list[float] = []
        self.last_ok_timestamp = 0.0
        # Source updates, newest per input (per element of a gathered vector): (index, value, ..., element)
        self.feed = Feed(loop, self._apply_source_update, self._after_source_updates, key=input_key)
        self._input_problems: list[Problem | None] = [None] * len(self.inputs)
        self._has_max_age = any(i.max_age_s is not None for i in config.inputs)
        self.in_flight = False
        self._again = False  # re-run once the cycle in flight finishes
        self._pending_trigger = False  # ... as a counted (triggered) cycle: a trigger arrived meanwhile
        self._scheduled = False
        self._stale_handle: asyncio.TimerHandle | None = None
        self._stale_at: float | None = None
        self._closed = False
        self._lost_any = False
        self._stats_t = now
        self._stats_count = 0

    # ------------------------------------------------------------------ start-up

    def start(self, enabled: bool = True) -> None:
        """Post every PV's initial state (before any client can connect); ``enabled`` as autosaved."""
        now = self.clock()
        self.enabled = enabled
        if not enabled:
            self._disabled_text = "disabled (restored at start-up)"
        for index, state in enumerate(self.inputs):
            self._post_input(index, state, now)
        for pv in (*self._shape_pvs.values(), *self._out_shape_pvs):
            pv.post(pv.value, now)
        self.enable_pv.post(int(enabled), now)
        self.champion_pv.post("", now)
        self.challenger_pv.post("", now)
        self.version_pv.post("", now)
        self._invalidate(self.challenger_out_pvs, Status.UDF, "no challenger", now)
        self._invalidate(self.challenger_mad_pvs, Status.UDF, "no challenger", now)
        if self.bands is not None:
            self.bands.invalidate(Status.UDF, "no challenger", now, champion=False, challenger=True)
        self.latency_pv.post(0.0, now)
        self.rate_pv.post(0.0, now)
        self.count_pv.post(0, now)
        self._set_status(ModelStatus.NO_MODEL, "loading model", now)
        self._invalidate_outputs(Status.UDF, "loading model", now)

    # ------------------------------------------------------------------ model swap

    def set_model(self, model: LoadedModel, message: str | None = None, *, why: bool = False) -> None:
        """Serve ``model`` from the next cycle on (called on the loop, between cycles).

        ``why``: ``message`` says why this version is served (a start-up fallback, a rollback); it stays
        what MESSAGE says when STATUS turns OK, instead of "serving vN".
        """
        previous = self.model
        self.model = model
        self.consecutive_faults = 0
        if previous is not None:
            self.offloader.forget(previous)
        now = self.clock()
        self.champion_pv.post(model.version, now)
        self._notify_model(model)
        where = "inline" if self.offloader.use_inline(model) else "worker thread"
        text = message or f"loaded v{model.version} ({model.provider.replace('ExecutionProvider', '')})"
        self._serving_text = message if message and why else f"serving v{model.version}"
        log.info("%s: serving v%s on %s, %s (warm-up median %.3f ms, p99 %.3f ms)", self.config.name,
                 model.version, model.provider, where, model.warm_median_ms, model.warm_p99_ms)
        self._message(text, now)
        self.run_cycle(triggered=False)

    def set_challenger(self, model: LoadedModel | None) -> None:
        """Run ``model`` in shadow on every cycle's snapshot (None: stop shadowing)."""
        previous = self.challenger
        self.challenger = model
        if previous is not None:
            self.challenger_offloader.forget(previous)
        self._mad.reset()
        now = self.clock()
        self.challenger_pv.post(model.version if model is not None else "", now)
        if model is None:
            self._invalidate(self.challenger_out_pvs, Status.UDF, "no challenger", now)
            self._invalidate(self.challenger_mad_pvs, Status.UDF, "no challenger", now)
            if self.bands is not None:
                self.bands.invalidate(Status.UDF, "no challenger", now, champion=False, challenger=True)
        else:
            log.info("%s: shadowing challenger v%s", self.config.name, model.version)
            self.run_cycle(triggered=False)  # its first predictions now, not at the next trigger

    def set_no_model(self, reason: str) -> None:
        """No servable model (none in the store, or it failed validation with nothing to fall back on)."""
        self.model = None
        self.no_model_reason = reason
        log.error("%s: no model: %s", self.config.name, reason)
        now = self.clock()
        self.champion_pv.post("", now)
        self._notify_model(None)
        self._message(f"no model: {reason}", now)
        self.run_cycle(triggered=False)

    # ------------------------------------------------------------------ inputs

    def update_input(self, index: int, value: Any, severity: int, timestamp: float,
                     connected: bool = True, element: int | None = None) -> None:
        """A new value (or a disconnect) for input ``index`` (``element`` of a gathered vector), then
        whatever the trigger says; on the loop."""
        lost = self._apply_source_update(index, value, severity, timestamp, connected, element)
        self._after_update(lost)

    def _apply_source_update(self, index: int, value: Any, severity: int, timestamp: float,
                             connected: bool = True, element: int | None = None) -> bool:
        """Record an input update and post its PV; returns True if the input just lost its source."""
        state = self.inputs[index]
        if state.__class__ is not InputState:
            return self._apply_array_update(index, state, value, severity, timestamp, connected, element)
        lost = state.connected and not connected
        state.connected = connected
        state.ever_connected = state.ever_connected or connected
        if connected and value is not None:
            try:
                state.value = float(value)
            except (TypeError, ValueError):
                state.value = math.nan
            state.severity = severity
            state.timestamp = timestamp
            state.defined = True
        self._post_input(index, state, self.clock())
        self._lost_any = self._lost_any or lost
        return lost

    def _apply_array_update(self, index: int, state, value: Any, severity: int, timestamp: float,
                            connected: bool, element: int | None) -> bool:
        """An array arrived (or a gathered vector's element): judged once here, posted (a gathered
        vector once per burst of element updates, in :meth:`_after_update`)."""
        if element is not None:
            lost = state.accept(element, value, severity, timestamp, connected)
            self._dirty_gathered.add(index)
        else:
            lost = state.connected and not connected
            state.connected = connected
            state.ever_connected = state.ever_connected or connected
            if connected and value is not None:
                state.accept(value, severity, timestamp)
            self._post_input(index, state, self.clock())
        self._lost_any = self._lost_any or lost
        return lost

    def _after_source_updates(self) -> None:
        lost, self._lost_any = self._lost_any, False
        self._after_update(lost)

    def _after_update(self, lost: bool) -> None:
        if self._dirty_gathered:
            now = self.clock()
            for index in self._dirty_gathered:
                self._post_input(index, self.inputs[index], now)
            self._dirty_gathered.clear()
        if self.run_on_input_change:
            self.run_cycle()
        elif lost:
            # Do not wait for the next trigger to tell the world the outputs are no longer valid.
            self.run_cycle(triggered=False)
        else:
            self._arm_stale_timer()

    def _input_put_handler(self, index: int):
        def handler(pv: PV, value: float, client: ClientInfo) -> None:
            self.update_input(index, value, 0, self.clock())  # NO_ALARM (a plain int on the hot path)

        return handler

    def _post_input(self, index: int, state: InputState, now: float) -> None:
        if state.__class__ is not InputState:
            return self._post_array_input(index, state, now)
        problem = state.problem(now)
        self._input_problems[index] = problem
        pv = self.in_pvs[index]
        if problem is not None:
            pv.post(state.value, state.timestamp or now, Severity.INVALID, problem.status, problem.reason)
        else:
            pv.post(state.value, state.timestamp, state.severity,
                    Status.LINK if state.severity else Status.NO_ALARM, "")

    def _post_array_input(self, index: int, state, now: float) -> None:
        problem = state.problem(now)
        self._input_problems[index] = problem
        pv = self.in_pvs[index]
        value = state.value
        if state.__class__ is GatheredInputState:
            value = value.copy()  # its elements change in place; a posted array never does
        if problem is not None:
            pv.post(value, state.timestamp or now, Severity.INVALID, problem.status, clip_message(str(problem)))
        else:
            pv.post(value, state.timestamp, state.severity, Status.LINK if state.severity else Status.NO_ALARM, "")
        shape_pv = self._shape_pvs.get(index)
        if shape_pv is not None:  # [h, w] of the frame served (a flat waveform of another size: one row)
            shape = value.shape if value.ndim == 2 else (1, value.size)
            if tuple(shape_pv.value) != shape:
                shape_pv.post(np.array(shape, dtype=np.int32), state.timestamp or now)

    def _refresh_input_problems(self, now: float) -> None:
        """Re-post inputs whose validity changed with time alone (turned stale)."""
        for index, state in enumerate(self.inputs):
            problem = state.problem(now)
            if problem != self._input_problems[index]:
                self._post_input(index, state, now)

    # ------------------------------------------------------------------ control PVs

    def _put_enable(self, pv: PV, value: int, client: ClientInfo) -> None:
        now = self.clock()
        self.enabled = bool(value)
        pv.post(int(value), now)
        if self.on_enable is not None:
            self.on_enable(self.enabled)
        verb = "enabled" if value else "disabled"
        log.warning("%s: %s by %s@%s via %s", self.config.name, verb, client.user, client.host, client.protocol)
        text = f"{verb} by {client.user}@{client.host}"
        if not value:
            self._disabled_text = text
        self._message(text, now)
        self.run_cycle(triggered=False)

    # ------------------------------------------------------------------ cycles

    def run_cycle(self, triggered: bool = True, due: float | None = None) -> None:
        """Take a snapshot and run the model on it (or publish why the outputs are invalid).

        ``triggered`` cycles (scan tick, input change, trigger PV) are counted in COUNT; extra
        passes (a lost source, a stale input, ENABLE, a model swap) only re-evaluate. ``due`` is a scan
        tick's time on the loop clock: a cycle starting more than ``scan_period`` after it is missed.
        Never raises: whatever goes wrong inside a cycle is a FAULT (see :meth:`_crashed`).
        """
        try:
            self._run_cycle(triggered, due)
        except Exception as exc:
            self._crashed(exc)

    def _run_cycle(self, triggered: bool, due: float | None) -> None:
        if self._closed:
            return
        if self.in_flight:
            # A trigger during an off-loop cycle runs right after it (and counts); only a trigger that
            # finds one already waiting is coalesced into it, and that is a missed cycle.
            if triggered:
                if self._pending_trigger:
                    self.overruns += 1
                else:
                    self._pending_due = due
                self._pending_trigger = True
            self._again = True
            return
        now = self.clock()
        if triggered:
            self.count += 1
            if due is not None:
                self._note_lateness(self.loop.time() - due)
        snapshot = self._snapshot(now)
        model = self.model
        if not self.enabled:
            self._finish_invalid(ModelStatus.DISABLED, self._disabled_text, now, snapshot)
        elif model is None:
            self._finish_invalid(ModelStatus.NO_MODEL, f"no model: {self.no_model_reason}", now, snapshot)
        elif snapshot.problem is not None:
            self._finish_invalid(ModelStatus.INPUT_INVALID, str(snapshot.problem), now, snapshot)
        elif self.offloader.use_inline(model):
            t0 = time.perf_counter()
            c0 = _thread_time()
            try:
                result, error = model.run(snapshot.values), None
            except Exception as exc:
                result, error = None, exc
            elapsed = time.perf_counter() - t0
            self.offloader.note_inline_time(model, _thread_time() - c0 if self.offloader.cpu_clock else elapsed)
            self._finish(model, snapshot, result, error, elapsed)
        else:
            values = snapshot.values
            # One cycle in flight at a time (in_flight), so the offloader is free unless it is closed.
            self.in_flight = self.offloader.submit(lambda: model.run(values),
                                                   lambda r, e, dt: self._finish_guarded(model, snapshot, r, e, dt))
        if self._has_max_age:
            self._arm_stale_timer()

    def _snapshot(self, now: float) -> Snapshot:
        """One pass over the inputs: values, newest timestamp, first problem; re-post inputs whose
        validity changed with time alone (e.g. turned stale)."""
        values = []
        newest = 0.0
        first = None
        problems = self._input_problems
        for index, state in enumerate(self.inputs):
            problem = state.problem(now)
            if problem != problems[index]:
                self._post_input(index, state, now)
            if first is None:
                first = problem
            values.append(state.value)
            if state.defined and state.timestamp > newest:
                newest = state.timestamp
        if self.in_layout is None:
            return Snapshot(np.array(values), newest or now, first)
        return Snapshot(np.concatenate([np.ravel(v) for v in values]).astype(np.float64, copy=False),
                        newest or now, first)

    def _finish_guarded(self, model: LoadedModel, snapshot: Snapshot, result: np.ndarray | None,
                        error: BaseException | None, elapsed: float) -> None:
        """The end of an off-loop cycle (called by the offloader on the loop): never raises either."""
        try:
            self._finish(model, snapshot, result, error, elapsed)
        except Exception as exc:
            self.in_flight = False
            self._crashed(exc)

    def _crashed(self, exc: Exception) -> None:
        """A bug inside a cycle (a listener, an adapter, this module): FAULT with the reason, outputs
        INVALID, and the next trigger tries again. A scan never dies of it. The traceback is logged once
        per distinct error, not at the scan rate."""
        text = f"cycle failed: {type(exc).__name__}: {exc}"
        if text != self._crash_text:
            self._crash_text = text
            log.exception("%s: %s", self.config.name, text)
        self.outcomes[ModelStatus.FAULT] += 1
        try:
            now = self.clock()
            self._set_status(ModelStatus.FAULT, text, now)
            self._invalidate_outputs(_SEVERITY_OF[ModelStatus.FAULT], text, now)
        except Exception:  # posting itself is what fails: nothing more to tell anyone from here
            log.debug("%s: cannot post the fault", self.config.name, exc_info=True)
        self._run_again_if_asked()

    def _finish(self, model: LoadedModel, snapshot: Snapshot, result: np.ndarray | None,
                error: BaseException | None, elapsed: float) -> None:
        self.in_flight = False
        values = None
        if error is None and result is not None and self.out_layout is not None:
            values, problem = self._split(result)
            if problem is not None:
                error = ValueError(problem)
        elif error is None and result is not None:
            values = result.tolist()
            if not all(map(math.isfinite, values)):
                bad = [o.name for o, v in zip(self.config.outputs, values, strict=True) if not math.isfinite(v)]
                error = ValueError(f"non-finite {', '.join(bad)}")
        if error is not None:
            now = self.clock()
            text = f"inference failed: {error}"
            log.error("%s v%s: %s", self.config.name, model.version, text)
            self._finish_invalid(ModelStatus.FAULT, text, now, snapshot, version=model.version)
            if model is self.model:
                self.consecutive_faults += 1
                limit = self.config.rollback_after_faults
                if limit and self.consecutive_faults == limit and self.on_fault_streak is not None:
                    self.on_fault_streak(self.consecutive_faults, text)
        else:
            ts = snapshot.timestamp
            version = model.version
            for pv, value in zip(self.out_pvs, values, strict=True):
                pv.post(value, ts, tag=version)
            if self.bands is not None:
                self.bands.post(model, result, ts)
            if self.version_pv.reading.value != version:
                self.version_pv.post(version, ts)
            self.outcomes[ModelStatus.OK] += 1
            self.consecutive_faults = 0
            if len(self.latencies) < 100_000:  # drained at stats_hz; bounded if nobody drains it
                self.latencies.append(elapsed)
            self.last_ok_timestamp = ts
            if self.status is not ModelStatus.OK:
                text = self._serving_text if model is self.model else f"serving v{model.version}"
                self._set_status(ModelStatus.OK, text, self.clock())
                self._crash_text = ""
            if self.cycle_listeners:
                self._notify(CycleRecord(ts, snapshot.values, result, ModelStatus.OK, model.version, elapsed, ""))
            if self.challenger is not None:
                self._run_challenger(snapshot, values)
        self._run_again_if_asked()

    def _split(self, result: np.ndarray) -> tuple[list | None, str | None]:
        """The flat output vector of an array model as one value per output, or why it cannot be served."""
        bad = first_nonfinite(result)
        if bad is not None:
            return None, f"non-finite {self.out_layout.locate(bad)}"
        return self.out_layout.pieces(result, self._out_dtypes), None

    def _finish_invalid(self, status: ModelStatus, message: str, now: float, snapshot: Snapshot,
                        version: str | None = None) -> None:
        self._set_status(status, message, now)
        self._invalidate_outputs(_SEVERITY_OF[status], message, now)
        self.outcomes[status] += 1
        if self.cycle_listeners:
            if version is None:
                version = self.model.version if self.model is not None else ""
            self._notify(CycleRecord(snapshot.timestamp, snapshot.values, None, status, version, 0.0, message))
        self._run_again_if_asked()

    def _note_lateness(self, late: float) -> None:
        if len(self.lateness) < 100_000:  # drained at stats_hz; bounded if nobody drains it
            self.lateness.append(late)
        if self.scan_period is not None and late > self.scan_period:
            self.overruns += 1

    def _run_again_if_asked(self) -> None:
        """After a cycle: run the one asked for while it was in flight (counted if a trigger asked)."""
        if self._again:
            self._again = False
            triggered, self._pending_trigger = self._pending_trigger, False
            due, self._pending_due = self._pending_due, None
            self.loop.call_soon(self.run_cycle, triggered, due)

    def _notify_model(self, model: LoadedModel | None) -> None:
        for listener in self.model_listeners:
            try:
                listener(model)
            except Exception:
                log.exception("%s: model listener %r failed", self.config.name, listener)

    def _notify(self, record: CycleRecord) -> None:
        for listener in self.cycle_listeners:
            try:
                listener(record)
            except Exception:  # a broken listener must not stop inference
                log.exception("%s: cycle listener %r failed", self.config.name, listener)

    def _invalidate_outputs(self, status: Status, message: str, now: float) -> None:
        self._invalidate(self.out_pvs, status, message, now)
        if self.challenger is not None:
            self._invalidate(self.challenger_out_pvs, status, message, now)
        if self.bands is not None:
            self.bands.invalidate(status, message, now, challenger=self.challenger is not None)

    @staticmethod
    def _invalidate(pvs: list[PV], status: Status, message: str, now: float) -> None:
        for pv in pvs:
            reading = pv.reading
            pv.post(reading.value, now, Severity.INVALID, status, clip_message(message), tag=reading.tag)

    # ------------------------------------------------------------------ challenger (shadow)

    def _run_challenger(self, snapshot: Snapshot, champion_values: list[float]) -> None:
        """The challenger sees the champion's snapshot; its outputs never reach anything but its own PVs."""
        challenger = self.challenger
        if self.challenger_offloader.use_inline(challenger):
            try:
                result, error = challenger.run(snapshot.values), None
            except Exception as exc:
                result, error = None, exc
            self._finish_challenger(challenger, snapshot, champion_values, result, error)
        else:
            values = snapshot.values
            if not self.challenger_offloader.submit(
                    lambda: challenger.run(values),
                    lambda r, e, dt: self._finish_challenger(challenger, snapshot, champion_values, r, e)):
                self.shadow_skipped += 1  # a shadow never queues behind itself: it skips this snapshot

    def _finish_challenger(self, challenger: LoadedModel, snapshot: Snapshot, champion_values: list[float],
                           result, error) -> None:
        if challenger is not self.challenger:
            return  # replaced while it ran
        ts = snapshot.timestamp
        values, bad = None, None
        if error is None and result is not None:
            if self.out_layout is not None:
                values, bad = self._split(result)
            else:
                values = result.tolist()
                bad = None if all(map(math.isfinite, values)) else "non-finite output"
        if values is None or bad is not None:
            text = f"challenger failed: {error}" if error is not None else f"challenger: {bad}"
            self._invalidate(self.challenger_out_pvs, Status.CALC, text, self.clock())
            if self.bands is not None:
                self.bands.invalidate(Status.CALC, text, self.clock(), champion=False, challenger=True)
            return
        version = challenger.version
        for pv, value in zip(self.challenger_out_pvs, values, strict=True):
            pv.post(value, ts, tag=version)
        if self.bands is not None:
            self.bands.post(challenger, result, ts, challenger=True)
        if self.out_layout is None:
            self._mad.add([abs(a - b) for a, b in zip(values, champion_values, strict=True)])
        else:  # an array output's MAD: over its elements too
            self._mad.add([float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - b)))
                           for a, b in zip(values, champion_values, strict=True)])
        for listener in self.challenger_listeners:
            try:
                listener(ts, result, version)
            except Exception:  # a broken listener must not stop the shadow run
                log.exception("%s: challenger listener %r failed", self.config.name, listener)

    def _set_status(self, status: ModelStatus, message: str, now: float) -> None:
        if status is not self.status:
            previous = self.status
            self.status = status
            self.status_pv.post(int(status), now)
            # Start-up (no model yet, then inputs not yet connected) is not a problem: INFO, not WARNING.
            starting = previous in (None, ModelStatus.NO_MODEL) and status is ModelStatus.INPUT_INVALID
            level = logging.INFO if status is ModelStatus.OK or self.model is None or starting else logging.WARNING
            log.log(level, "%s: status %s -> %s: %s", self.config.name,
                    previous.name if previous is not None else "-", status.name, message)
        self._message(message, now)

    def note(self, text: str) -> None:
        """Show an event (a rejection, a refused action ...) in MESSAGE without changing STATUS."""
        self._message(text, self.clock())

    def _message(self, text: str, now: float) -> None:
        alarm = self._active_alarm(text) if self.status is ModelStatus.OK else ""
        clipped = clip_message(text, MESSAGE_LEN - len(alarm))
        shown = clipped + alarm
        if self.message_pv.value != shown:
            if clipped != text:  # the PV holds 39 characters: the whole text goes to the log
                log.info("%s: MESSAGE %r is short for: %s", self.config.name, shown, text)
            self.message_pv.post(shown, now)

    def _active_alarm(self, text: str) -> str:
        """While STATUS is OK, "serving v1" must not hide an active health alarm (DRIFT MAJOR, AUDIT ...):
        the worst one, as a suffix for MESSAGE ("; DRIFT MAJOR"), unless the text is about it already."""
        worst, name = 0, ""
        for suffix, pv in self.alarm_pvs:
            severity = pv.reading.severity
            if worst < severity <= Severity.MAJOR:
                worst, name = severity, suffix
        if not worst or name.split(":")[0].lower() in text.lower():
            return ""
        return f"; {name} {Severity(worst).name}"

    # ------------------------------------------------------------------ staleness

    def _arm_stale_timer(self) -> None:
        """Wake up when the next input turns stale, so outputs go INVALID even with no trigger."""
        now = self.clock()
        expiries = [e for s in self.inputs if (e := s.expires_at()) is not None and e >= now]
        if not expiries:
            return
        at = min(expiries)
        if self._stale_handle is not None and self._stale_at is not None and self._stale_at <= at:
            return
        if self._stale_handle is not None:
            self._stale_handle.cancel()
        self._stale_at = at
        self._stale_handle = self.loop.call_later(max(0.0, at - now) + 0.001, self._on_stale_timer)

    def _on_stale_timer(self) -> None:
        self._stale_handle = None
        self._stale_at = None
        now = self.clock()
        if any(s.problem(now) is not None for s in self.inputs) and self.status is ModelStatus.OK:
            self.run_cycle(triggered=False)
        else:
            self._refresh_input_problems(now)
            self._arm_stale_timer()

    # ------------------------------------------------------------------ statistics

    def take_stats(self) -> CycleStats:
        """What happened since the last call (latencies) and in total (outcomes, cycles, overruns):
        the one place statistics leave the runner, at stats_hz, off the latency-critical path."""
        latencies, self.latencies = self.latencies, []
        lateness, self.lateness = self.lateness, []
        return CycleStats(latencies=latencies, outcomes=dict(self.outcomes), count=self.count,
                          overruns=self.overruns, last_ok_timestamp=self.last_ok_timestamp, status=self.status,
                          shadow_skipped=self.shadow_skipped, lateness=lateness,
                          input_updates=self.feed.received, input_coalesced=self.feed.coalesced)

    def publish_stats(self, stats: CycleStats) -> None:
        """Post LATENCY (mean ms over the window), RATE (cycles/s) and COUNT; called at stats_hz."""
        now = self.clock()
        dt = now - self._stats_t
        if dt <= 0:
            return
        rate = (self.count - self._stats_count) / dt
        self._stats_t, self._stats_count = now, self.count
        if stats.latencies:  # since the last stats tick
            self.latency_pv.post(sum(stats.latencies) / len(stats.latencies) * 1e3, now)
        self.rate_pv.post(rate, now)
        self.count_pv.post(stats.count, now)
        if self.challenger is not None and self._mad.n:
            for pv, mad in zip(self.challenger_mad_pvs, self._mad.means(), strict=True):
                pv.post(mad, now)

    def close(self) -> None:
        self._closed = True
        self.challenger_offloader.close()
        if self._stale_handle is not None:
            self._stale_handle.cancel()
        self.offloader.close()
