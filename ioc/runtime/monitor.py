"""A model's drift, anomaly and ground-truth error scores, served on its PVs (docs/how-to/drift.md).

This is the edge between the runner and the pure scoring code (:mod:`ioc.core.drift`,
:mod:`ioc.core.thresholds`). Per cycle it only keeps references to the cycle's input and output arrays
(the runner never mutates them): the cycle is the latency-critical path. Every ``update_s`` the
batch is pushed into the sliding windows, the scores are computed and posted. Severities are
computed by the PV model from the served limits (HIGH -> MINOR, HIHI -> MAJOR, with HYST) and then
debounced (:class:`ioc.core.thresholds.Debouncer`, installed as the PVs' ``alarm_filter``), so CA and
PVA clients and the alarm server all see the same debounced severity.

When a new model version is served (``runner.model_listeners``), the windows restart against its
reference and its limits are calibrated on a worker thread, then served with ``PV.update_spec``. A
version without a reference still serves predictions; its drift PVs go INVALID and say why.

A swap (a reload, PROMOTE, ROLLBACK) while a score is in alarm must not make it look fine: an operator
who rolled back a drifted machine would read NO_ALARM during the warm-up and conclude the rollback
fixed it. So a score that was MINOR/MAJOR when the model changed keeps at least that severity (its
PVA alarm message says ``warming up n/N (held MAJOR)``) until its window is full again; then the
scores of the new window (debounced) decide.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ioc.core.config import DriftConfig, LimitsConfig
from ioc.core.drift import NoReference, Reference, SlidingMoments, WindowScorer, pair_nearest, parse_references
from ioc.core.engine import LoadedModel
from ioc.core.layout import ModelNames, mirrors_inputs
from ioc.core.pvmodel import PV, AlarmLimits, PVDatabase, Severity, Status, clip_message
from ioc.core.thresholds import Calibration, Debouncer, ar1_phi, calibrate
from ioc.runtime.runner import CycleRecord, ModelRunner

log = logging.getLogger("mlioc.monitor")

# (model, input name or None for the overall score, value): e.g. Metrics.set_drift.
ScoreListener = Callable[[str, "str | None", float], None]
MIN_ANOMALY_SAMPLES = 10


class TruthBuffer:
    """Ground-truth samples handed from a client thread (one producer) to the loop (one consumer).

    The producer writes a row then publishes it by advancing ``written``; the consumer reads the
    rows up to ``written`` in one numpy slice. Under the GIL each step is atomic, so no lock is
    needed and the loop never pays per sample: it takes a whole batch at once. A consumer that fell
    more than ``size`` samples behind loses the oldest (bounded memory).
    """

    def __init__(self, size: int = 4096):
        self.size = size
        self.data = np.zeros((size, 2))
        self.written = 0
        self.read = 0
        self.connected = False

    def append(self, timestamp: float, value: float) -> None:
        i = self.written % self.size
        self.data[i, 0] = timestamp
        self.data[i, 1] = value
        self.written += 1

    def take(self, until: float) -> np.ndarray:
        """Rows (timestamp, value) received so far with timestamp <= ``until`` (the rest stay)."""
        written = self.written
        start = max(self.read, written - self.size)
        if written == start:
            return self.data[:0]
        rows = self.data[np.arange(start, written) % self.size]
        late = np.nonzero(rows[:, 0] > until)[0]
        if len(late):  # its prediction is in a later batch: leave it (and what came after it)
            rows = rows[: late[0]]
        self.read = start + len(rows)
        return rows

    def sink(self):
        """A source sink (``sink(value, severity, timestamp, connected)``) filling this buffer.

        Runs on the CA/PVA client thread: it filters and converts there, off the loop.
        """

        def sink(value: Any, severity: Severity, timestamp: float, connected: bool) -> None:
            self.connected = bool(connected)
            if not connected or value is None or severity >= Severity.INVALID:
                return
            try:
                v = float(value)
            except (TypeError, ValueError):
                return
            if math.isfinite(v):
                self.append(float(timestamp), v)

        return sink



def _limits(config: LimitsConfig | None, cal: Calibration) -> AlarmLimits:
    """Configured limits win over calibrated ones; HYST defaults to the calibrated one."""
    if config is not None:
        return AlarmLimits(high=config.high, hihi=config.hihi,
                           hyst=config.hyst if config.hyst is not None else cal.hyst)
    return AlarmLimits(high=cal.high, hihi=cal.hihi, hyst=cal.hyst)


class ModelMonitor:
    """Drift / anomaly / error monitoring of one :class:`ModelRunner`, on the loop thread."""

    def __init__(self, runner: ModelRunner, db: PVDatabase, *, clock: Callable[[], float] = time.time):
        cfg = runner.config
        self.config = cfg
        self.runner = runner
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop = runner.loop
        self.drift_enabled = cfg.drift is not None
        self.settings: DriftConfig = cfg.drift or DriftConfig(rate_hz=cfg.trigger.scan_hz or 10.0)
        s = self.settings
        n = self.names = ModelNames(cfg.prefix)
        self.in_names = [i.name for i in cfg.inputs]
        self.out_names = [o.name for o in cfg.outputs]
        self.score_listeners: list[ScoreListener] = []

        self.drift_pv: PV | None = None
        self.input_pvs: list[PV] = []
        self.out_pv: PV | None = None
        self.worst_pv: PV | None = None
        self.anomaly_pv: PV | None = None
        if self.drift_enabled:
            self.drift_pv, self.out_pv, self.worst_pv = db[n.drift], db[n.drift_out], db[n.drift_worst]
            self.input_pvs = [db[n.drift_input(name)] for name in self.in_names]
            if mirrors_inputs(cfg):
                self.anomaly_pv = db[n.anomaly]
        self.debounced = [pv for pv in (self.drift_pv, *self.input_pvs, self.out_pv, self.anomaly_pv) if pv]

        self.truth_index = [j for j, o in enumerate(cfg.outputs) if o.truth is not None]
        self.mae_pvs = [db[n.mae(self.out_names[j])] for j in self.truth_index]
        self.rmse_pvs = [db[n.rmse(self.out_names[j])] for j in self.truth_index]
        self.debounced += self.rmse_pvs
        for pv in self.debounced:
            pv.alarm_filter = Debouncer(s.raise_s, s.clear_s)
        self.truth: list[TruthBuffer] = [TruthBuffer() for _ in self.truth_index]
        self._last_pair = [0.0] * len(self.truth_index)
        self._errors = SlidingMoments(len(self.truth_index), max(1, round(s.error_window_s * s.rate_hz)))
        # Predictions not yet compared with the truth. Errors are scored every error_update_s (not
        # every batch), for predictions at least ``_hold`` s old: their truth has had time to arrive.
        self._pred_t: list[np.ndarray] = []
        self._pred_y: list[np.ndarray] = []
        self.error_update_s = max(s.update_s, s.error_window_s / 3)
        self._next_errors = 0.0
        self._tolerance = s.truth_tolerance_s if s.truth_tolerance_s is not None else 0.5 / s.rate_hz
        self._hold = max(1.0, 3 * self._tolerance)

        self._t: list[float] = []
        self._rows: list[np.ndarray] = []  # inputs, outputs, inputs, outputs, ...: one concatenate per batch
        self._width = len(self.in_names) + len(self.out_names)
        self._next_flush = 0.0
        # A batch is flushed every update_s; below this many cycles the clock is not even read.
        self._batch = max(1, int(s.update_s * s.rate_hz * 0.9))
        self._generation = 0
        self.model: LoadedModel | None = None
        self.scorer: WindowScorer | None = None
        self.calibration: tuple[Calibration | None, Calibration | None] | None = None
        self._in_ok = self._out_ok = False
        self._anomaly: SlidingMoments | None = None
        self._anomaly_scale: np.ndarray | None = None
        self._announced = 0
        self.calibrated = asyncio.Event()
        # PVs whose alarm is held while their window warms up after a swap (see the module doc).
        self._held: list[PV] = []

    # ------------------------------------------------------------------ start-up and model changes

    def start(self) -> None:
        now = self.clock()
        self._invalidate(self._drift_pvs(), "loading model", now)
        if self.worst_pv is not None:
            self.worst_pv.post("", now)
        if self.anomaly_pv is not None:
            self._invalidate([self.anomaly_pv], "loading model", now)
        self._invalidate(self.mae_pvs + self.rmse_pvs, "no truth yet", now)

    def truth_sink(self, index: int):
        """A source sink for the truth PV of the ``index``-th monitored output (client thread)."""
        return self.truth[index].sink()

    def _drift_pvs(self) -> list[PV]:
        return [pv for pv in (self.drift_pv, *self.input_pvs, self.out_pv) if pv is not None]

    def on_model(self, model: LoadedModel | None) -> None:
        """A new version is served from the next cycle on: restart the windows against its reference."""
        swapped = self.model is not None and model is not None
        held = {pv: int(pv.reading.severity) for pv in (*self._drift_pvs(), self.anomaly_pv)
                if swapped and pv is not None and Severity.MINOR <= pv.reading.severity <= Severity.MAJOR}
        self._generation += 1
        self.model = model
        self._t, self._rows = [], []
        self._pred_t, self._pred_y = [], []
        self.scorer = None
        self.calibration = None
        self.calibrated.clear()
        self._in_ok = self._out_ok = False
        self._anomaly = None
        self._announced = 0
        for pv in self.debounced:
            pv.alarm_filter.reset()
            if pv in held:
                pv.alarm_filter.hold(held[pv])
        self._held = list(held)
        self._errors.reset()
        now = self.clock()
        if model is None:
            self._invalidate(self._drift_pvs() + ([self.anomaly_pv] if self.anomaly_pv else []), "no model", now)
            return
        self._setup_errors(model, now)
        if self.anomaly_pv is not None:
            self._setup_anomaly(model, now)
        if self.drift_enabled:
            self._setup_drift(model, now)
        self._repost_held(now)

    def _setup_drift(self, model: LoadedModel, now: float) -> None:
        s = self.settings
        version = f"v{model.version}"
        ref = model.manifest.reference
        refs_in: tuple[Reference, ...] = ()
        refs_out: tuple[Reference, ...] = ()
        try:
            refs_in = parse_references(ref, "inputs", self.in_names)
        except NoReference as exc:
            log.error("%s %s: input drift not scored: %s", self.config.name, version, exc)
            self._invalidate([self.drift_pv, *self.input_pvs], f"{version}: {exc}", now)
            self.worst_pv.post("", now)
        try:
            refs_out = parse_references(ref, "outputs", self.out_names)
        except NoReference as exc:
            log.error("%s %s: output drift not scored: %s", self.config.name, version, exc)
            self._invalidate([self.out_pv], f"{version}: {exc}", now)
        if not refs_in and not refs_out:
            return
        self._in_ok, self._out_ok = bool(refs_in), bool(refs_out)
        self.scorer = WindowScorer(refs_in + refs_out, s.window, s.bins, s.method)
        phi = ar1_phi(s.correlation_s, s.rate_hz)
        generation = self._generation

        def work() -> tuple[Calibration | None, Calibration | None]:
            kw = dict(method=s.method, window=s.window, bins=s.bins, phi=phi, k_minor=s.minor_sigmas,
                      k_major=s.major_sigmas)
            return (calibrate(refs_in, **kw) if refs_in else None, calibrate(refs_out, **kw) if refs_out else None)

        future = self.loop.run_in_executor(None, work)
        future.add_done_callback(lambda f: self._calibrated(generation, version, f))

    def _calibrated(self, generation: int, version: str, future: asyncio.Future) -> None:
        if generation != self._generation:
            return  # a newer model arrived meanwhile
        now = self.clock()
        try:
            cal_in, cal_out = future.result()
        except Exception as exc:  # never let a calibration failure stop inference
            log.exception("%s %s: calibrating drift limits failed", self.config.name, version)
            self._invalidate(self._drift_pvs(), clip_message(f"{version}: calibration failed: {exc}"), now)
            self.scorer = None
            return
        s = self.settings
        self.calibration = (cal_in, cal_out)
        if cal_in is not None:
            limits = _limits(s.limits, cal_in)
            for pv in (self.drift_pv, *self.input_pvs):
                pv.update_spec(alarm=limits)
            log.info("%s %s: input drift (%s, %d cycles, ~%.0f independent) limits HIGH %.3g HIHI %.3g HYST %.3g%s",
                     self.config.name, version, s.method, s.window, cal_in.n_eff, limits.high, limits.hihi,
                     limits.hyst, " (configured)" if s.limits else f" (null mean {cal_in.mean:.3g} "
                     f"std {cal_in.std:.3g}, {cal_in.chunks} simulated windows)")
        if cal_out is not None:
            limits = _limits(s.output_limits, cal_out)
            self.out_pv.update_spec(alarm=limits)
            log.info("%s %s: output drift limits HIGH %.3g HIHI %.3g HYST %.3g", self.config.name, version,
                     limits.high, limits.hihi, limits.hyst)
        self.calibrated.set()

    def _setup_anomaly(self, model: LoadedModel, now: float) -> None:
        version = f"v{model.version}"
        manifest = model.manifest
        if manifest.kind != "autoencoder":
            self._invalidate([self.anomaly_pv], f"{version} is not an autoencoder", now)
            return
        metrics = manifest.provenance.get("metrics", {}) if isinstance(manifest.provenance, dict) else {}
        scale = []
        for name in self.out_names:
            rmse = metrics.get(f"test_rmse_{name}") if isinstance(metrics, dict) else None
            if isinstance(rmse, bool) or not isinstance(rmse, (int, float)) or not math.isfinite(rmse) or rmse <= 0:
                log.error("%s %s: ANOMALY not scored: no test_rmse_%s in the manifest", self.config.name,
                          version, name)
                self._invalidate([self.anomaly_pv], clip_message(f"{version}: no test_rmse_{name}"), now)
                return
            scale.append(1.0 / rmse)
        self._anomaly_scale = np.array(scale)
        window = max(1, round(self.settings.anomaly_window_s * self.settings.rate_hz))
        self._anomaly = SlidingMoments(len(scale), window)

    def _setup_errors(self, model: LoadedModel, now: float) -> None:
        """RMSE limits: multiples of the version's test RMSE (none when the manifest lacks it)."""
        metrics = model.manifest.provenance.get("metrics", {}) if isinstance(model.manifest.provenance, dict) else {}
        f = self.settings.error_factors
        for j, pv in zip(self.truth_index, self.rmse_pvs, strict=True):
            rmse = metrics.get(f"test_rmse_{self.out_names[j]}") if isinstance(metrics, dict) else None
            ok = not isinstance(rmse, bool) and isinstance(rmse, (int, float)) and math.isfinite(rmse) and rmse > 0
            pv.update_spec(alarm=AlarmLimits(high=f.high * rmse, hihi=f.hihi * rmse, hyst=0.1 * rmse) if ok else None)

    # ------------------------------------------------------------------ per cycle (hot path)

    def on_cycle(self, record: CycleRecord) -> None:
        """Keep the cycle for the next batch: only cycles that ran the model (their inputs were valid)."""
        if record.outputs is None:
            return
        self._t.append(record.timestamp)
        rows = self._rows
        rows.append(record.inputs)
        rows.append(record.outputs)
        if len(self._t) >= self._batch and self.clock() >= self._next_flush:
            self.flush()

    # ------------------------------------------------------------------ per batch

    def flush(self) -> None:
        """Push the batch into the windows and post every score."""
        now = self.clock()
        self._next_flush = now + self.settings.update_s
        k = len(self._t)
        if not k:
            return
        rows = np.concatenate(self._rows).reshape(k, self._width)
        times = self._t
        self._t, self._rows = [], []
        d_in = len(self.in_names)
        x, y = rows[:, :d_in], rows[:, d_in:]
        scorer = self.scorer
        if scorer is not None:
            scorer.push(rows if self._in_ok and self._out_ok else x if self._in_ok else y)
            if self.calibration is not None:
                self._post_drift(scorer, now)
        if self._anomaly is not None:
            self._anomaly.push((x - y) * self._anomaly_scale)
            self._post_anomaly(now)
        if self.truth_index:
            self._pred_t.append(np.fromiter(times, np.float64, k))
            self._pred_y.append(y)
            if now >= self._next_errors:
                self._next_errors = now + self.error_update_s
                self._score_errors(now)

    def _post(self, pv: PV, value: float, now: float, message: str) -> None:
        """Post a score; while its alarm is held (its debouncer's floor) the message says so."""
        if pv in self._held:
            message = f"{message or 'warming up'} (held {Severity(pv.alarm_filter.held).name})"
        pv.post(value, now, message=message)

    def _release(self, pvs: list[PV]) -> None:
        """Their windows are full again: from now on their own (debounced) scores decide."""
        for pv in pvs:
            if pv in self._held:
                self._held.remove(pv)
                pv.alarm_filter.release()

    def _repost_held(self, now: float) -> None:
        """Right after a swap: say that the held alarms are held (a score the new version cannot compute,
        e.g. no reference, was made INVALID meanwhile and is not held)."""
        self._release([pv for pv in self._held if pv.reading.severity == Severity.INVALID])
        for pv in self._held:
            self._post(pv, pv.reading.value, now, "warming up")

    def _post_drift(self, scorer: WindowScorer, now: float) -> None:
        scores = scorer.scores()
        warm = f"warming up {scorer.n}/{scorer.window}" if scorer.n < scorer.window else ""
        if not warm:
            self._release(self._drift_pvs())
        d_in = len(self.in_names) if self._in_ok else 0
        model = self.config.name
        if self._in_ok:
            s_in = scores[:d_in]
            for pv, value in zip(self.input_pvs, s_in.tolist(), strict=True):
                self._post(pv, value, now, warm)
            worst = int(s_in.argmax())
            name, value = self.in_names[worst], float(s_in[worst])
            before = self.drift_pv.reading.severity
            self._post(self.drift_pv, value, now, warm or f"worst input {name}")
            if self.worst_pv.value != name:
                self.worst_pv.post(name, now)
            self._announce(before, self.drift_pv.reading.severity, name, value)
            for listener in self.score_listeners:
                for input_name, v in zip(self.in_names, s_in.tolist(), strict=True):
                    listener(model, input_name, v)
                listener(model, None, value)
        if self._out_ok:
            s_out = scores[d_in:]
            worst = int(s_out.argmax())
            self._post(self.out_pv, float(s_out[worst]), now, warm or f"worst output {self.out_names[worst]}")

    def _announce(self, before: int, after: int, name: str, value: float) -> None:
        """Tell MESSAGE (and the log) when the debounced drift alarm rises or clears."""
        if after == before or after > Severity.MAJOR or before > Severity.MAJOR:
            return
        limits = self.drift_pv.spec.alarm
        if after > before:
            text = f"drift {Severity(after).name}: {name} {value:.3g}"
            log.warning("%s: input drift %s: %s scores %.3g (HIGH %.3g, HIHI %.3g); inspect %s",
                        self.config.name, Severity(after).name, name, value, limits.high, limits.hihi,
                        self.names.drift_input(name))
        else:
            text = "drift cleared" if after == 0 else f"drift down to MINOR: {name} {value:.3g}"
            log.warning("%s: input drift now %s (%s %.3g)", self.config.name, Severity(after).name, name, value)
        text = clip_message(text)
        if self.runner.message_pv.value != text:
            self.runner.message_pv.post(text, self.clock())

    def _post_anomaly(self, now: float) -> None:
        a = self._anomaly
        if a.n < min(a.window, MIN_ANOMALY_SAMPLES):
            return
        value = float(np.sqrt(np.mean(a.sum_sq) / a.n))
        if a.n >= a.window:
            self._release([self.anomaly_pv])
        self._post(self.anomaly_pv, value, now, "" if a.n >= a.window else f"warming up {a.n}/{a.window}")

    def _score_errors(self, now: float) -> None:
        """Pair each truth sample with the prediction of the same moment; rolling MAE / RMSE."""
        t_all = np.concatenate(self._pred_t)
        y_all = np.concatenate(self._pred_y)
        m = int(np.searchsorted(t_all, t_all[-1] - self._hold, side="right"))
        self._pred_t, self._pred_y = [t_all[m:]], [y_all[m:]]  # too recent: their truth may be on its way
        stale_after = max(self.settings.error_window_s, 3 * self.error_update_s)
        if m:
            tp, yp = t_all[:m], y_all[:m]
            errors = np.full((m, len(self.truth_index)), np.nan)
            for k, j in enumerate(self.truth_index):
                truth = self.truth[k].take(until=tp[-1] + self._tolerance)
                if not len(truth):
                    continue
                p_idx, t_idx = pair_nearest(tp, truth[:, 0], self._tolerance)
                if len(p_idx):
                    errors[p_idx, k] = yp[p_idx, j] - truth[t_idx, 1]
                    self._last_pair[k] = now
            self._errors.push(errors)
        mae, rmse = self._errors.mae(), self._errors.rmse()
        for k in range(len(self.truth_index)):
            truth = self.config.outputs[self.truth_index[k]].truth
            pvs = [self.mae_pvs[k], self.rmse_pvs[k]]
            if not self.truth[k].connected:  # never connected, or disconnected
                self._invalidate(pvs, clip_message(f"no truth from {truth.name}"), now)
            elif now - self._last_pair[k] > stale_after or not math.isfinite(mae[k]):
                self._invalidate(pvs, clip_message(f"no truth paired from {truth.name}"), now)
            else:
                self.mae_pvs[k].post(float(mae[k]), now)
                self.rmse_pvs[k].post(float(rmse[k]), now)

    # ------------------------------------------------------------------ helpers

    def _invalidate(self, pvs: list[PV], message: str, now: float) -> None:
        for pv in pvs:
            if pv is not None:
                pv.post(math.nan, now, Severity.INVALID, Status.UDF, message)
