"""Live coverage of a prediction band, and when its shortfall is worth an alarm: pure logic, no I/O.

A version with uncertainty promises a coverage ``p``: the fraction of true values inside
``[LO, HI]`` (a conformal interval) or within ``ENSEMBLE_K`` standard deviations of the prediction (an
ensemble, ``p`` = 95.45 % for two). ``$(P)COVERAGE:<output>`` is the fraction measured over a sliding
window of predictions paired with the output's truth (:class:`CoverageWindow`).

A window that covers a little less than ``p`` is no news: with ``n`` independent samples the count
inside is Binomial(n, p), so 26 of 30 inside is well within chance for p = 0.9. The alarm rule is a
one-sided binomial test of "the version keeps its promise": MINOR when, were the promise kept, a
coverage this low would happen by chance with probability at most ``p_minor`` (default 1e-3), MAJOR
at ``p_major`` (1e-6). The limits are served as the PV's LOW / LOLO (:func:`coverage_limits`), so an
operator reads the threshold beside the value.

Samples of machine data are not independent: the demo's knobs wander with a 1 s correlation time, and
so does the error of a prediction made from them. As the drift thresholds do
(:mod:`ioc.core.thresholds`), the window's samples are counted as ``n_eff = n (1 - phi) / (1 + phi)``
independent ones, ``phi`` the lag-one autocorrelation of an AR(1) process with the configured
correlation time at the samples' spacing. A 60 s window of 600 paired samples at 10 Hz with a 1 s
correlation time is worth ~30; for p = 0.9 that puts LOW at 0.67 and LOLO at 0.53. Treating the
indicator "inside" as AR(1) with the inputs' correlation time is an approximation; it errs towards
fewer alarms when the error decorrelates faster than the inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ioc.core.thresholds import ar1_phi, effective_samples

MAX_INDEPENDENT = 100_000  # more independent samples than this add nothing to a window's verdict


def binomial_cdfs(n: int, p: float) -> np.ndarray:
    """P(X <= k) for k = 0..n, X ~ Binomial(n, p): every count at once, from log-probabilities."""
    if p <= 0.0 or p >= 1.0:
        return np.ones(n + 1) if p <= 0.0 else np.concatenate([np.zeros(n), [1.0]])
    k = np.arange(n + 1)
    lgamma = np.vectorize(math.lgamma, otypes=[float])
    log_pmf = lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    top = log_pmf.max()
    return np.minimum(1.0, np.cumsum(np.exp(log_pmf - top)) * math.exp(top))


def largest_count_below(n: int, p: float, alpha: float) -> int | None:
    """The largest k with P(X <= k) <= ``alpha`` (X ~ Binomial(n, p)); None when even k = 0 is too likely."""
    rare = np.nonzero(binomial_cdfs(n, p) <= alpha)[0]
    return int(rare[-1]) if len(rare) else None


@dataclass(frozen=True, slots=True)
class CoverageLimits:
    """LOW (MINOR) / LOLO (MAJOR) of a coverage fraction for ``n`` independent samples (None: cannot alarm)."""

    low: float | None
    lolo: float | None
    n: int  # independent samples the limits were drawn for


def coverage_limits(promise: float, n_eff: float, p_minor: float, p_major: float) -> CoverageLimits:
    """Alarm thresholds of a coverage measured over ``n_eff`` independent samples.

    ``low`` = k / n with k the largest count inside that a version keeping ``promise`` reaches with
    probability at most ``p_minor`` (likewise ``lolo`` with ``p_major``); n = floor(n_eff). A fraction
    at or below ``low`` is MINOR, at or below ``lolo`` MAJOR (:class:`ioc.core.pvmodel.AlarmLimits`).
    """
    n = max(0, min(MAX_INDEPENDENT, math.floor(n_eff)))
    if n == 0:
        return CoverageLimits(None, None, 0)
    k_minor = largest_count_below(n, promise, p_minor)
    k_major = largest_count_below(n, promise, p_major)
    return CoverageLimits(None if k_minor is None else k_minor / n, None if k_major is None else k_major / n, n)


def window_samples(n: int, span_s: float, correlation_s: float) -> float:
    """Independent samples worth of ``n`` paired samples spread over ``span_s`` seconds."""
    if n <= 1 or correlation_s <= 0 or span_s <= 0:
        return float(n)
    rate = (n - 1) / span_s
    return effective_samples(n, ar1_phi(correlation_s, rate))


@dataclass
class CoverageWindow:
    """Paired samples of one output over the last ``window_s`` seconds: time, and whether the truth was
    inside the band. Bounded by time (the oldest samples fall out as newer ones arrive)."""

    window_s: float
    times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    inside: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def push(self, times: np.ndarray, inside: np.ndarray) -> None:
        """Add samples (time-ordered, newer than the ones held) and drop what left the window."""
        if len(times):
            self.times = np.concatenate([self.times, times])
            self.inside = np.concatenate([self.inside, inside])
        if len(self.times):
            keep = self.times > self.times[-1] - self.window_s
            if not keep.all():
                self.times, self.inside = self.times[keep], self.inside[keep]

    def reset(self) -> None:
        self.times = np.zeros(0)
        self.inside = np.zeros(0, dtype=bool)

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def count(self) -> int:
        return int(self.inside.sum())

    @property
    def fraction(self) -> float:
        return self.count / self.n if self.n else math.nan

    @property
    def span_s(self) -> float:
        return float(self.times[-1] - self.times[0]) if self.n > 1 else 0.0


def inside_band(errors: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """|prediction - truth| <= bound, element-wise (a NaN error, no truth paired, is never inside)."""
    with np.errstate(invalid="ignore"):
        return np.abs(errors) <= bound
