"""The challenger's live error beside the champion's, and the challenger's own input drift.

The runner shadows the challenger on the champion's input snapshots (same snapshot timestamp), so
each measured truth sample can be paired with both predictions of that moment. Both are scored on
exactly the same samples — a fair comparison even when truth arrives for only some cycles:

* ``$(P)CHALLENGER:MAE:<out>`` — rolling MAE of the challenger over ``drift.error.window_s`` of
  cycles, next to the champion's ``$(P)MAE:<out>`` (:mod:`ioc.runtime.monitor`);
* the promotion policy's numbers (:class:`ioc.core.promotion.LiveComparison`): champion and
  challenger MAE over the last ``retrain.min_samples`` paired cycles, handed to listeners every
  update (the promotion edge);
* ``$(P)CHALLENGER:DRIFT`` (models with ``drift:`` and ``retrain:``) — the live inputs scored against
  the *challenger's* reference with limits calibrated like DRIFT's, debounced the same way: a version
  trained on other data must not be promoted into an input region it never saw.

Work per cycle is a list append (the hot path); pairing and scoring run every ``update_s`` on the
loop, calibration on a worker thread. All buffers are bounded; windows restart whenever the
champion or the challenger changes (the comparison is between those two versions).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import numpy as np

from ioc.core.config import DriftConfig
from ioc.core.drift import NoReference, SlidingMoments, WindowScorer, pair_nearest, parse_references
from ioc.core.engine import LoadedModel
from ioc.core.layout import ModelNames
from ioc.core.promotion import LiveComparison
from ioc.core.pvmodel import PV, AlarmLimits, PVDatabase, Severity, Status, clip_message
from ioc.core.thresholds import Debouncer, ar1_phi, calibrate
from ioc.runtime.monitor import TruthBuffer
from ioc.runtime.runner import CycleRecord, ModelRunner
from ioc.runtime.tasks import cancel_and_wait

log = logging.getLogger("mlioc.challenger")

MAX_PENDING = 100_000  # predictions kept while their truth may still arrive (bounded; oldest dropped)
ComparisonListener = Callable[[LiveComparison | None], None]


class _Series:
    """Timestamped rows appended on the loop, taken in one numpy batch (bounded)."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.rows: list[np.ndarray] = []
        self.dropped = 0

    def add(self, t: float, row: np.ndarray) -> None:
        self.t.append(t)
        self.rows.append(row)
        if len(self.t) > MAX_PENDING:
            del self.t[0], self.rows[0]
            self.dropped += 1

    def arrays(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.t:
            return np.zeros(0), np.zeros((0, width))
        return np.asarray(self.t), np.vstack(self.rows)

    def keep_after(self, cutoff: float) -> None:
        i = next((k for k, t in enumerate(self.t) if t > cutoff), len(self.t))
        del self.t[:i], self.rows[:i]

    def clear(self) -> None:
        self.t, self.rows = [], []


class ChallengerMonitor:
    """Live comparison of one runner's challenger with its champion (on the loop thread)."""

    def __init__(self, runner: ModelRunner, db: PVDatabase, *, clock: Callable[[], float] = time.time):
        cfg = runner.config
        self.runner = runner
        self.config = cfg
        self.clock = clock
        self.loop = runner.loop
        self.settings: DriftConfig = cfg.drift or DriftConfig(rate_hz=cfg.trigger.scan_hz or 10.0)
        s = self.settings
        n = ModelNames(cfg.prefix)
        self.in_names = [i.name for i in cfg.inputs]
        self.truth_index = [j for j, o in enumerate(cfg.outputs) if o.truth is not None]
        self.mae_pvs = [db[n.challenger_mae(cfg.outputs[j].name)] for j in self.truth_index]
        self.drift_pv: PV | None = None
        self._debouncer = Debouncer(s.raise_s, s.clear_s)
        if cfg.retrain is not None and cfg.drift is not None:  # served by the layout exactly then
            self.drift_pv = db[n.challenger_drift]
            self.drift_pv.alarm_filter = self._debouncer
        self.truth = [TruthBuffer() for _ in self.truth_index]
        self.update_s = min(s.update_s, 1.0)
        self._tolerance = s.truth_tolerance_s if s.truth_tolerance_s is not None else 0.5 / s.rate_hz
        self._hold = max(1.0, 3 * self._tolerance)
        k = len(self.truth_index)
        self.served = SlidingMoments(k, max(1, round(s.error_window_s * s.rate_hz)))
        policy = cfg.retrain.min_samples if cfg.retrain is not None else self.served.window
        self.window_champion = SlidingMoments(k, policy)
        self.window_challenger = SlidingMoments(k, policy)
        self._champion = _Series()
        self._challenger = _Series()
        self._inputs = _Series()
        self.version: str | None = None  # the challenger being judged
        self.champion_version: str | None = None
        self.scorer: WindowScorer | None = None
        self.calibrated = False
        self._generation = 0
        self.listeners: list[ComparisonListener] = []
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ wiring (ioc.app)

    def truth_sink(self, index: int):
        """A source sink for the truth PV of the ``index``-th output with truth (client thread)."""
        return self.truth[index].sink()

    def start(self) -> None:
        self._invalidate("no challenger")
        self._task = self.loop.create_task(self._run(), name=f"challenger-{self.config.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # ------------------------------------------------------------------ per cycle (hot path)

    def on_cycle(self, record: CycleRecord) -> None:
        if record.outputs is None or self.runner.challenger is None:
            return
        self._champion.add(record.timestamp, record.outputs)
        if self.drift_pv is not None:
            self._inputs.add(record.timestamp, record.inputs)

    def on_challenger(self, timestamp: float, outputs: np.ndarray, version: str) -> None:
        if version != self.version:
            self._restart(version)
        self._challenger.add(timestamp, outputs)

    def on_model(self, model: LoadedModel | None) -> None:
        """A new champion: the comparison restarts (it was against the previous one)."""
        self.champion_version = model.version if model is not None else None
        self._restart(self.version)

    # ------------------------------------------------------------------ periodic update

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.update_s)
            try:
                self.update()
            except Exception:  # never let scoring stop: the challenger is only advice
                log.exception("%s: challenger comparison failed", self.config.name)

    def update(self) -> None:
        challenger = self.runner.challenger
        if challenger is None:
            if self.version is not None:
                self._restart(None)
            self._invalidate("no challenger")
            self._notify(None)
            return
        if challenger.version != self.version:
            self._restart(challenger.version, challenger)
        now = self.clock()
        self._pair(now)
        self._post_errors(now)
        self._score_drift(now)
        self._notify(self.comparison())

    def comparison(self) -> LiveComparison | None:
        if self.version is None:
            return None
        samples = int(self.window_challenger.count.min()) if self.truth_index else 0
        alarm = self.drift_pv is not None and self.drift_pv.reading.severity == Severity.MAJOR
        return LiveComparison(samples, tuple(self.window_champion.mae().tolist()),
                              tuple(self.window_challenger.mae().tolist()), alarm)

    def _restart(self, version: str | None, model: LoadedModel | None = None) -> None:
        self._generation += 1
        self.version = version
        for w in (self.served, self.window_champion, self.window_challenger):
            w.reset()
        for series in (self._champion, self._challenger, self._inputs):
            series.clear()
        self.scorer = None
        self.calibrated = False
        if self.drift_pv is not None:
            self._debouncer.reset()
            self._invalidate_pv(self.drift_pv, "no challenger" if version is None else "calibrating")
        if version is not None:
            model = model or self.runner.challenger
            if model is not None and model.version == version and self.drift_pv is not None:
                self._setup_drift(model)

    def _pair(self, now: float) -> None:
        """Pair matured predictions of both models (same snapshot time) with the truth samples."""
        k_out = len(self.config.outputs)
        ct, cy = self._champion.arrays(k_out)
        kt, ky = self._challenger.arrays(k_out)
        if not len(ct) or not len(kt) or not self.truth_index:
            return
        cutoff = max(ct[-1], kt[-1]) - self._hold
        self._champion.keep_after(cutoff)
        self._challenger.keep_after(cutoff)
        mc, mk = ct <= cutoff, kt <= cutoff
        common, ic, ik = np.intersect1d(ct[mc], kt[mk], return_indices=True)
        if not len(common):
            return
        champ_y, chall_y = cy[mc][ic], ky[mk][ik]
        e_champ = np.full((len(common), len(self.truth_index)), np.nan)
        e_chall = np.full_like(e_champ, np.nan)
        for k, j in enumerate(self.truth_index):
            truth = self.truth[k].take(until=common[-1] + self._tolerance)
            if not len(truth):
                continue
            p_idx, t_idx = pair_nearest(common, truth[:, 0], self._tolerance)
            e_champ[p_idx, k] = champ_y[p_idx, j] - truth[t_idx, 1]
            e_chall[p_idx, k] = chall_y[p_idx, j] - truth[t_idx, 1]
        paired = ~np.isnan(e_chall).all(axis=1)
        if paired.any():
            self.served.push(e_chall[paired])
            self.window_champion.push(e_champ[paired])
            self.window_challenger.push(e_chall[paired])

    def _post_errors(self, now: float) -> None:
        mae = self.served.mae()
        for k, pv in enumerate(self.mae_pvs):
            if self.served.count[k] > 0 and math.isfinite(mae[k]):
                pv.post(float(mae[k]), now)
            elif not self.truth[k].connected:
                truth = self.config.outputs[self.truth_index[k]].truth
                self._invalidate_pv(pv, clip_message(f"no truth from {truth.name if truth else '?'}"))
            else:
                self._invalidate_pv(pv, "no truth paired yet")

    # ------------------------------------------------------------------ the challenger's own drift

    def _setup_drift(self, model: LoadedModel) -> None:
        s = self.settings
        if self.drift_pv is None:
            return
        try:
            refs = parse_references(model.manifest.reference, "inputs", self.in_names)
        except NoReference as exc:
            self._invalidate_pv(self.drift_pv, clip_message(f"v{model.version}: {exc}"))
            return
        self.scorer = WindowScorer(refs, s.window, s.bins, s.method)
        phi = ar1_phi(s.correlation_s, s.rate_hz)
        generation = self._generation

        def work():
            return calibrate(refs, method=s.method, window=s.window, bins=s.bins, phi=phi,
                             k_minor=s.minor_sigmas, k_major=s.major_sigmas)

        def done(future: asyncio.Future) -> None:
            if generation != self._generation or self.drift_pv is None:
                return
            try:
                cal = future.result()
            except Exception as exc:
                log.exception("%s: calibrating the challenger's drift limits failed", self.config.name)
                self._invalidate_pv(self.drift_pv, clip_message(f"calibration failed: {exc}"))
                return
            limits = s.limits
            self.drift_pv.update_spec(alarm=AlarmLimits(
                high=limits.high if limits else cal.high, hihi=limits.hihi if limits else cal.hihi,
                hyst=(limits.hyst if limits and limits.hyst is not None else cal.hyst)))
            self.calibrated = True

        self.loop.run_in_executor(None, work).add_done_callback(done)

    def _score_drift(self, now: float) -> None:
        if self.drift_pv is None or self.scorer is None:
            return
        t, x = self._inputs.arrays(len(self.in_names))
        self._inputs.clear()
        if len(t):
            self.scorer.push(x)
        if not self.calibrated or self.scorer.n == 0:
            return
        scores = self.scorer.scores()
        worst = int(scores.argmax())
        warm = f"warming up {self.scorer.n}/{self.scorer.window}" if self.scorer.n < self.scorer.window else ""
        self.drift_pv.post(float(scores[worst]), now, message=warm or f"worst input {self.in_names[worst]}")

    # ------------------------------------------------------------------ helpers

    def _notify(self, live: LiveComparison | None) -> None:
        for listener in self.listeners:
            try:
                listener(live)
            except Exception:
                log.exception("%s: comparison listener %r failed", self.config.name, listener)

    def _invalidate(self, message: str) -> None:
        for pv in self.mae_pvs:
            self._invalidate_pv(pv, message)
        if self.drift_pv is not None:
            self._invalidate_pv(self.drift_pv, message)

    def _invalidate_pv(self, pv: PV, message: str) -> None:
        if pv.reading.severity != Severity.INVALID or pv.reading.message != message:
            pv.post(math.nan, self.clock(), Severity.INVALID, Status.UDF, message)
