"""Alarm limits calibrated from the reference itself, and alarm debouncing: pure logic, no I/O.

Calibration. A drift score is never zero on in-distribution data: a finite window always differs
from the reference a little, by an amount that depends on the method, the window length, the bins
and — decisively for machine data — the autocorrelation of the signal. NannyML sets its thresholds
from the spread of a metric over reference-sized chunks of the training data; this module does the
same on *simulated* chunks, because the manifest keeps quantiles, not the data, and because the
training rows were drawn independently while the live signal is not: the demo's knobs wander as an
Ornstein-Uhlenbeck process with a 1 s correlation time sampled at 10 Hz, so a 60 s window holds
600 samples but only about 30 independent ones. Limits calibrated on independent chunks would be
~4x too tight for PSI and ~2x for KS/Wasserstein, and the alarm would never be quiet.

So each chunk is a window of live-like data: an AR(1) Gaussian series with the configured
correlation time (phi = exp(-1 / (rate * correlation_s))), mapped through the normal CDF and the
reference's quantile function (a Gaussian copula: exactly the reference marginal, the live
autocorrelation). Every chunk is scored with the very arithmetic the live monitor uses
(:func:`ioc.core.drift.score_chunks`); the overall score of a chunk is the maximum over the signals
(``$(P)DRIFT`` is the worst input), and the limits are

    HIGH = mean + k_minor * std,   HIHI = mean + k_major * std      (of that maximum)

with ``HYST`` = half a null standard deviation. ``k`` is chosen with ``bench/drift.py`` for the
false-alarm budget of a day at 10 Hz (docs/how-to/drift.md).

Debouncing. The alarm server trusts the severity the IOC serves, and neither protocol server computes
alarms (both serve the PV model's), so both are done here, for both protocols: :class:`Debouncer`
raises a severity only after the limit check has asked for it continuously for ``raise_s`` and
lowers it only after ``clear_s`` below it; the limit check itself applies ``HYST``
(:class:`ioc.core.pvmodel.AlarmLimits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ioc.core.drift import Binning, Reference, score_chunks

CALIBRATION_CHUNKS = 400
# Simulated samples per batch of chunks: bounds calibration's memory (~2 MB per array) whatever the window;
# one batch of 400 chunks of a 60 s window at 200 Hz would be 150 MB per array, several at once.
CALIBRATION_BATCH = 250_000
CALIBRATION_SEED = 20261124
HYST_IN_NULL_STD = 0.5


@dataclass(frozen=True, slots=True)
class Calibration:
    """The null (no-drift) distribution of a group's overall score and the limits drawn from it."""

    mean: float
    std: float
    high: float
    hihi: float
    hyst: float
    chunks: int
    n_eff: float  # independent samples per window under the assumed autocorrelation


def ar1_phi(correlation_s: float, rate_hz: float) -> float:
    """Lag-one autocorrelation of samples taken at ``rate_hz`` of a process with this correlation time."""
    if correlation_s <= 0:
        return 0.0
    return math.exp(-1.0 / (rate_hz * correlation_s))


def effective_samples(window: int, phi: float) -> float:
    """Independent samples worth of a window of an AR(1) series (for the mean): n (1 - phi) / (1 + phi)."""
    return max(1.0, window * (1.0 - phi) / (1.0 + phi))


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF, vectorised (Abramowitz & Stegun 7.1.26 erf, |error| < 1.5e-7)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def ar1_gaussian(shape: tuple[int, int, int], phi: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) N(0, 1) series along axis 1 of ``shape`` (chunks, samples, signals)."""
    m, w, d = shape
    z = rng.standard_normal(shape)
    if phi > 0:
        scale = math.sqrt(1.0 - phi * phi)
        for t in range(1, w):  # w steps of vector work: ~1 ms per 100 steps for 400 x 7 series
            z[:, t] = phi * z[:, t - 1] + scale * z[:, t]
    return z


def reference_chunks(refs: Sequence[Reference], chunks: int, window: int, phi: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Live-like windows drawn from the references: (chunks, window, d) with the AR(1) autocorrelation."""
    u = normal_cdf(ar1_gaussian((chunks, window, len(refs)), phi, rng))
    return np.stack([r.ppf(u[:, :, i]) for i, r in enumerate(refs)], axis=-1)


def calibrate(refs: Sequence[Reference], *, method: str, window: int, bins: int, phi: float,
              k_minor: float, k_major: float, chunks: int = CALIBRATION_CHUNKS,
              seed: int = CALIBRATION_SEED, batch: int = CALIBRATION_BATCH) -> Calibration:
    """HIGH/HIHI/HYST for the maximum score over ``refs`` from simulated no-drift windows.

    Deterministic for a given reference and seed, so a restarted IOC serves the same limits.
    """
    rng = np.random.default_rng(seed)
    binning = Binning.build(refs, bins)
    # In batches of chunks: the generator fills arrays in C order, so drawing (n1, w, d) then (n2, w, d) gives
    # the same numbers as one (n1 + n2, w, d), and the limits do not depend on the batch size.
    per_batch = max(1, batch // max(1, window * len(refs)))
    scores = []
    for start in range(0, chunks, per_batch):
        x = reference_chunks(refs, min(per_batch, chunks - start), window, phi, rng)
        scores.append(score_chunks(binning, x, method).max(axis=1))
    overall = np.concatenate(scores)
    mean, std = float(overall.mean()), float(overall.std(ddof=1))
    return Calibration(mean=mean, std=std, high=mean + k_minor * std, hihi=mean + k_major * std,
                       hyst=HYST_IN_NULL_STD * std, chunks=chunks, n_eff=effective_samples(window, phi))


# ----------------------------------------------------------------------------- debouncing

NO_ALARM, MINOR, MAJOR = 0, 1, 2
_LEVELS = (MINOR, MAJOR)
_STATUS_OF = {MINOR: 4, MAJOR: 3}  # HIGH, HIHI (epicsAlarmCondition)


class Debouncer:
    """Minimum durations before an alarm severity is raised and before it is cleared.

    Called with the severity the limits give now (after HYST) and the time; returns the severity to
    serve. Each level (MINOR, MAJOR) switches on only after it has been asked for continuously for
    ``raise_s``, and off only after it has not been asked for during ``clear_s``: a single noisy
    excursion never pages anyone, and a flapping score does not clear and re-raise the alarm.
    Severities above MAJOR (INVALID) are passed through unfiltered: they mean "no score", not drift.

    :meth:`hold` sets a floor: while held, at least that severity is served whatever the limits say (a
    score whose window restarted after a model swap has not earned the right to say "no alarm" yet).
    """

    __slots__ = ("_floor", "_on", "_since", "clear_s", "raise_s")

    def __init__(self, raise_s: float, clear_s: float):
        self.raise_s = raise_s
        self.clear_s = clear_s
        self._on = {MINOR: False, MAJOR: False}
        self._since: dict[int, float | None] = {MINOR: None, MAJOR: None}
        self._floor = NO_ALARM

    def reset(self) -> None:
        for level in _LEVELS:
            self._on[level] = False
            self._since[level] = None
        self._floor = NO_ALARM

    def hold(self, severity: int) -> None:
        """Serve at least ``severity`` (MINOR or MAJOR) until :meth:`release`."""
        self._floor = min(max(severity, NO_ALARM), MAJOR)

    def release(self) -> None:
        self._floor = NO_ALARM

    @property
    def held(self) -> int:
        return self._floor

    @property
    def severity(self) -> int:
        on = MAJOR if self._on[MAJOR] else MINOR if self._on[MINOR] else NO_ALARM
        return max(on, self._floor)

    def __call__(self, severity: int, status: int, timestamp: float) -> tuple[int, int]:
        if severity > MAJOR:
            return severity, status
        for level in _LEVELS:
            wanted = severity >= level
            if wanted == self._on[level]:
                self._since[level] = None
                continue
            since = self._since[level]
            if since is None:
                since = self._since[level] = timestamp
            if timestamp - since >= (self.raise_s if wanted else self.clear_s):
                self._on[level] = wanted
                self._since[level] = None
        served = self.severity
        return served, _STATUS_OF.get(served, 0)
