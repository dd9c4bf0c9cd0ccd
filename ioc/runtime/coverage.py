"""``$(P)COVERAGE:<output>``: does the served version keep its uncertainty promise, live?

The truth of an output is paired with the prediction of the same moment by the model's monitor
(:mod:`ioc.runtime.monitor`, for MAE / RMSE); this module judges the *same* pairs against the band
that came with each prediction (:meth:`CoverageMonitor.on_pairs`, a pair listener):

* conformal: the truth is inside ``[LO, HI]`` when ``|prediction - truth| <= halfwidth``;
* ensemble: when ``|prediction - truth| <= ENSEMBLE_K * STD``, the STD of that very cycle (kept per
  cycle by :meth:`CoverageMonitor.on_cycle` until its pair is judged).

The fraction inside over ``drift.coverage.window_s`` (default: the error window) is posted at the error
cadence with LOW / LOLO from the binomial rule of :mod:`ioc.core.coverage` (recomputed when the number
of independent samples in the window changes), debounced like the other scores. A version without the
config's kind of uncertainty, a truth that is not connected or not paired: INVALID with the reason.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from ioc.core.config import ModelConfig
from ioc.core.coverage import CoverageWindow, coverage_limits, inside_band, window_samples
from ioc.core.engine import LoadedModel
from ioc.core.layout import ModelNames
from ioc.core.manifest import ENSEMBLE_K
from ioc.core.pvmodel import PV, AlarmLimits, PVDatabase, Severity, Status, clip_message
from ioc.core.thresholds import Debouncer
from ioc.runtime.monitor import ModelMonitor
from ioc.runtime.runner import CycleRecord

log = logging.getLogger("mlioc.coverage")

MAX_PENDING = 200_000  # cycles whose STD waits for its truth; beyond that the oldest are dropped (counted)


class CoverageMonitor:
    """The COVERAGE PVs of one model; attach :meth:`on_pairs` to its monitor and :meth:`on_cycle` /
    :meth:`on_model` to its runner (ioc/app.py)."""

    def __init__(self, config: ModelConfig, monitor: ModelMonitor, db: PVDatabase, *,
                 clock: Callable[[], float] = time.time):
        assert config.uncertainty is not None, "COVERAGE needs training.uncertainty"
        self.config = config
        self.method: str = config.uncertainty
        self.monitor = monitor
        self.clock = clock
        s = monitor.settings
        self.window_s = s.coverage_window_s or s.error_window_s
        self.correlation_s = s.correlation_s
        self.p_minor, self.p_major = s.coverage_p_minor, s.coverage_p_major
        self.stale_after = max(self.window_s, 3 * monitor.error_update_s)
        names = ModelNames(config.prefix)
        # (column of the monitor's pairs, output index, COVERAGE PV): scalar outputs that have a truth.
        self.columns: list[tuple[int, int, PV]] = [
            (k, j, db[names.coverage(config.outputs[j].name)]) for k, j in enumerate(monitor.truth_index)
            if names.coverage(config.outputs[j].name) in db]
        self.pvs = [pv for _, _, pv in self.columns]
        self.debouncers = [Debouncer(s.raise_s, s.clear_s) for _ in self.pvs]
        for pv, debouncer in zip(self.pvs, self.debouncers, strict=True):
            pv.alarm_filter = debouncer
        self.windows = [CoverageWindow(self.window_s) for _ in self.columns]
        self._last_pair = [0.0] * len(self.columns)
        self._limits_n: list[int | None] = [None] * len(self.columns)
        self.model: LoadedModel | None = None
        self.promise: float | None = None
        self.halfwidth: np.ndarray | None = None
        self._pending_t: list[float] = []  # an ensemble's cycles: time and STD, until their truth is judged
        self._pending_std: list[np.ndarray] = []
        self.dropped = 0
        self._broken = False

    @property
    def active(self) -> bool:
        return bool(self.columns)

    def start(self) -> None:
        self._invalidate("loading model", self.clock())

    # ------------------------------------------------------------------ model changes

    def on_model(self, model: LoadedModel | None) -> None:
        """A new version from the next cycle on: its own promise, an empty window."""
        self.model = model
        self.promise = self.halfwidth = None
        self._pending_t, self._pending_std = [], []
        for i, window in enumerate(self.windows):
            window.reset()
            self._limits_n[i] = None
            self.debouncers[i].reset()
        now = self.clock()
        if model is None:
            self._invalidate("no model", now)
            return
        u = model.uncertainty
        if u is None or u.method != self.method:
            why = f"v{model.version} has no uncertainty" if u is None else f"v{model.version} is {u.method}"
            log.warning("%s: %s: COVERAGE not measured (the config asks for %s)", self.config.name, why, self.method)
            self._invalidate(why, now)
            return
        self.promise = u.coverage
        self.halfwidth = None if u.ensemble else u.halfwidth
        self._invalidate(f"v{model.version}: no truth paired yet", now)

    # ------------------------------------------------------------------ per cycle (hot path)

    def on_cycle(self, record: CycleRecord) -> None:
        """An ensemble's STD of each served cycle, kept until the monitor pairs its truth."""
        model = self.model
        if record.outputs is None or model is None or self.promise is None or self.halfwidth is not None:
            return
        if record.version != model.version:
            return
        try:
            spread = model.spread(record.outputs)
        except ValueError as exc:  # the cycle did not hand over what run() returned: say so once, not per cycle
            if not self._broken:
                self._broken = True
                log.error("%s: COVERAGE cannot see the ensemble's STD: %s", self.config.name, exc)
            return
        if spread is None:
            return
        self._pending_t.append(record.timestamp)
        self._pending_std.append(spread)
        if len(self._pending_t) > MAX_PENDING:
            del self._pending_t[:1000], self._pending_std[:1000]
            self.dropped += 1000

    # ------------------------------------------------------------------ per pairing pass

    def on_pairs(self, now: float, times: np.ndarray, errors: np.ndarray) -> None:
        """The monitor's pairs of this pass: judge them against their bands, then post every COVERAGE."""
        if self.promise is None:
            return
        if len(times):
            bounds = self._bounds(times)
            for i, (k, j, _pv) in enumerate(self.columns):
                paired = ~np.isnan(errors[:, k]) & ~np.isnan(bounds[:, j])
                if paired.any():
                    self.windows[i].push(times[paired], inside_band(errors[paired, k], bounds[paired, j]))
                    self._last_pair[i] = now
        for i, (k, _j, pv) in enumerate(self.columns):
            self._post(i, k, pv, now)

    def _bounds(self, times: np.ndarray) -> np.ndarray:
        """Per paired prediction and output: how far from the prediction the truth may be (NaN: unknown)."""
        if self.halfwidth is not None:
            return np.broadcast_to(self.halfwidth, (len(times), len(self.halfwidth)))
        bounds = np.full((len(times), len(self.config.outputs)), np.nan)
        if not self._pending_t:
            return bounds
        t = np.asarray(self._pending_t)
        at = np.minimum(np.searchsorted(t, times), len(t) - 1)
        found = t[at] == times
        if found.any():
            std = np.stack(self._pending_std)
            bounds[found] = ENSEMBLE_K * std[at[found]]
        done = int(np.searchsorted(t, times[-1], side="right"))  # judged now (or never paired): forget
        del self._pending_t[:done], self._pending_std[:done]
        return bounds

    def _post(self, i: int, column: int, pv: PV, now: float) -> None:
        truth = self.monitor.truth[column]
        source = self.config.outputs[self.columns[i][1]].truth
        name = source.name if source is not None else "truth"
        window = self.windows[i]
        if not truth.connected:
            self._invalidate_one(pv, f"no truth from {name}", now)
            return
        if now - self._last_pair[i] > self.stale_after or not window.n:
            self._invalidate_one(pv, f"no truth paired from {name}", now)
            return
        n_eff = window_samples(window.n, window.span_s, self.correlation_s)
        assert self.promise is not None
        limits = coverage_limits(self.promise, n_eff, self.p_minor, self.p_major)
        if limits.n != self._limits_n[i]:
            self._limits_n[i] = limits.n
            alarm = AlarmLimits(low=limits.low, lolo=limits.lolo)
            pv.update_spec(alarm=alarm if alarm.active else None)
        text = f"{window.count}/{window.n} ~{n_eff:.0f} indep, promise {self.promise:.3g}"
        pv.post(window.fraction, now, message=clip_message(text))

    # ------------------------------------------------------------------ helpers

    def _invalidate(self, message: str, now: float) -> None:
        for pv in self.pvs:
            self._invalidate_one(pv, message, now)

    @staticmethod
    def _invalidate_one(pv: PV, message: str, now: float) -> None:
        if pv.reading.severity != Severity.INVALID or pv.reading.message != clip_message(message):
            pv.post(math.nan, now, Severity.INVALID, Status.UDF, clip_message(message))
