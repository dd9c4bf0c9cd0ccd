"""Streaming drift scores against a model version's reference distributions: pure logic, no I/O.

A manifest's ``reference`` section gives, for every input and output of the training data, its
``n``, ``mean``, ``std``, ``min``, ``max`` and 101 ``quantiles`` (0 %, 1 %, ..., 100 %). That is all
the IOC knows of the training distribution, and it is enough: the quantiles define equal-frequency
bins in which a live sliding window is counted, and every score here is a function of those counts.

Why binned counts: a sliding window then costs O(1) per sample to maintain (add the new sample's
bin, remove the oldest's) and O(bins) to score, never a pass over the window. Samples are pushed in
small batches (:meth:`WindowScorer.push`) so that the numpy call overhead is paid once per batch,
not once per cycle: the cycle is the IOC's latency-critical path.

Methods (``drift.method``), each comparing the window with the reference of the same signal:

* ``wasserstein`` — Wasserstein-1 distance between the window's empirical distribution and the
  reference, in units of the reference standard deviation: "how far, in sigmas, the data moved".
  A pure shift of the whole window by ``d`` sigmas scores ``d``. The integral of |F_window - F_ref|
  is taken by the trapezoid rule on the bin edges, plus the exact mean excess of samples beyond the
  reference's min/max (so a gross excursion scores its true size, not the edge of the grid).
* ``psi`` — population stability index over the equal-frequency bins (Jeffreys-smoothed counts):
  the symmetrised Kullback-Leibler divergence that credit-risk and MLOps tools report.
* ``ks`` — the Kolmogorov-Smirnov statistic sup |F_window - F_ref| evaluated at the bin edges:
  the statistic of the two-sample test, whose significance is calibrated by
  :mod:`ioc.core.thresholds` for autocorrelated live data (the textbook p-value assumes independent
  samples, which 10 Hz machine readbacks are not).

Samples outside the reference range fall in two extra open bins below ``min`` and above ``max``.
Inputs are assumed continuous: a quantile grid with ties gives zero-width bins, which every method
handles (they carry zero weight) but which make ``psi`` and ``ks`` conservative for discrete inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("wasserstein", "psi", "ks")
N_QUANTILES = 101
QUANTILE_GRID = np.linspace(0.0, 1.0, N_QUANTILES)
BIN_CHOICES = (2, 4, 5, 10, 20, 25, 50, 100)  # divisors of 100: edges are every (100 / bins)-th quantile
PSI_PRIOR = 0.5  # Jeffreys smoothing of the window's bin counts (an empty bin must not give log 0)


class NoReference(Exception):
    """A version's manifest has no usable reference for drift scores; the message says what is missing."""


@dataclass(frozen=True, slots=True, eq=False)
class Reference:
    """The training distribution of one signal, as the manifest describes it."""

    name: str
    n: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: np.ndarray  # 101 values, non-decreasing; quantiles[0] == min, quantiles[100] == max

    @classmethod
    def parse(cls, name: str, raw: Any) -> Reference:
        """Validate one ``reference.inputs.<name>`` entry; raise :class:`NoReference` naming the fault."""
        where = f"reference of {name!r}"
        if not isinstance(raw, Mapping):
            raise NoReference(f"{where}: expected an object")
        values = {}
        for key in ("n", "mean", "std", "min", "max"):
            v = raw.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise NoReference(f"{where}: {key} missing or not a finite number")
            values[key] = float(v)
        q = raw.get("quantiles")
        if not isinstance(q, Sequence) or len(q) != N_QUANTILES:
            raise NoReference(f"{where}: needs {N_QUANTILES} quantiles")
        try:
            quantiles = np.asarray(q, dtype=np.float64)
        except (TypeError, ValueError):
            raise NoReference(f"{where}: quantiles must be numbers") from None
        if not np.all(np.isfinite(quantiles)) or np.any(np.diff(quantiles) < 0):
            raise NoReference(f"{where}: quantiles must be finite and non-decreasing")
        if values["std"] <= 0 or quantiles[-1] <= quantiles[0]:
            raise NoReference(f"{where}: constant in the training data (std 0): drift cannot be scored")
        if values["n"] < 2:
            raise NoReference(f"{where}: n must be >= 2")
        quantiles.setflags(write=False)
        return cls(name=name, n=int(values["n"]), mean=values["mean"], std=values["std"], min=values["min"],
                   max=values["max"], quantiles=quantiles)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF (piecewise linear between the quantiles): draws from the reference for calibration."""
        return np.interp(u, QUANTILE_GRID, self.quantiles)


def reference_section(reference: Any, section: str, names: Sequence[str]) -> Mapping:
    """A manifest's ``reference.<section>`` (``inputs`` or ``outputs``), checked to hold every one of ``names``.

    Raises :class:`NoReference` when the manifest has none or lacks one of the names: the IOC then
    serves predictions but says, on the drift PVs, that it cannot score drift (it never guesses).
    """
    if reference is None:
        raise NoReference("manifest has no reference")
    if not isinstance(reference, Mapping):
        raise NoReference("manifest reference is not an object")
    part = reference.get(section)
    if not isinstance(part, Mapping):
        raise NoReference(f"manifest reference has no {section}")
    missing = [n for n in names if n not in part]
    if missing:
        raise NoReference(f"no reference for {', '.join(missing)}")
    return part


def parse_references(reference: Any, section: str, names: Sequence[str]) -> tuple[Reference, ...]:
    """The references of the scalar signals ``names`` from a manifest's ``reference`` section (an array
    signal's summary: :func:`ioc.core.summary.build_features`)."""
    part = reference_section(reference, section, names)
    return tuple(Reference.parse(n, part[n]) for n in names)


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True, slots=True, eq=False)
class Binning:
    """Bin edges and score weights of a set of signals: what turns window counts into scores."""

    edges: np.ndarray  # (d, bins + 1): reference quantiles every 100/bins percent, incl. min and max
    cdf: np.ndarray  # (bins + 1,): the reference CDF at the edges, 0 .. 1
    weights: np.ndarray  # (d, bins + 1): trapezoid weights of the edges, in reference std units
    lo: np.ndarray  # (d,) reference min
    hi: np.ndarray  # (d,) reference max
    inv_std: np.ndarray  # (d,)
    bins: int

    @property
    def d(self) -> int:
        return self.edges.shape[0]

    @property
    def slots(self) -> int:
        """Counts per signal: ``bins`` inside the reference range plus one open bin on either side."""
        return self.bins + 2

    @classmethod
    def build(cls, refs: Sequence[Reference], bins: int) -> Binning:
        if bins not in BIN_CHOICES:
            raise ValueError(f"bins must be one of {BIN_CHOICES}, got {bins}")
        stride = 100 // bins
        edges = np.stack([r.quantiles[::stride] for r in refs])
        inv_std = np.array([1.0 / r.std for r in refs])
        gaps = np.diff(edges, axis=1)  # (d, bins)
        weights = np.zeros_like(edges)
        weights[:, :-1] += gaps / 2
        weights[:, 1:] += gaps / 2
        weights *= inv_std[:, None]
        return cls(edges=edges, cdf=np.arange(bins + 1) / bins, weights=weights, lo=edges[:, 0].copy(),
                   hi=edges[:, -1].copy(), inv_std=inv_std, bins=bins)

    def bin_of(self, x: np.ndarray) -> np.ndarray:
        """Bin index of every sample, (..., d) -> (..., d) in 0 .. bins + 1 (0: below min, bins+1: above max).

        Index j counts the edges <= x, so bin j (1..bins) holds [edge[j-1], edge[j]).
        """
        out = np.empty(x.shape, dtype=np.intp)
        for j in range(self.d):  # one signal at a time: no (..., d, bins + 1) comparison array in memory
            xj = x[..., j]
            out[..., j] = np.searchsorted(self.edges[j], xj, side="right")  # edges are sorted: count of <= x
            out[..., j][np.isnan(xj)] = 0  # NaN compares false with every edge
        return out

    def excess(self, x: np.ndarray) -> np.ndarray:
        """How far each sample lies beyond the reference range (0 inside it), in raw units."""
        return np.maximum(self.lo - x, 0.0) + np.maximum(x - self.hi, 0.0)

    def scores(self, counts: np.ndarray, excess_sum: np.ndarray, n: np.ndarray | int, method: str) -> np.ndarray:
        """Scores from window counts (..., d, slots), summed excess (..., d) and window size n."""
        n_arr = np.asarray(n, dtype=np.float64)
        if method == "psi":
            c = counts[..., 1:-1].astype(np.float64)
            c[..., 0] += counts[..., 0]
            c[..., -1] += counts[..., -1]
            p = (c + PSI_PRIOR) / (n_arr[..., None, None] + PSI_PRIOR * self.bins)
            return ((p - 1.0 / self.bins) * np.log(p * self.bins)).sum(axis=-1)
        # F_window just below each edge j: the fraction of samples in bins 0..j.
        below = np.cumsum(counts[..., :-1], axis=-1) / n_arr[..., None, None]
        gap = np.abs(below - self.cdf)
        if method == "ks":
            return gap.max(axis=-1)
        if method == "wasserstein":
            return (gap * self.weights).sum(axis=-1) + excess_sum * self.inv_std / n_arr[..., None]
        raise ValueError(f"unknown drift method {method!r} (use one of {METHODS})")


def warmup_factor(n: int, window: int, method: str) -> float:
    """Shrinks a part-filled window's score so it has (about) the null spread of a full window.

    Under no drift the Wasserstein and KS scores fall like 1/sqrt(n) and PSI like 1/n, so a window
    still filling (after a start or a model change) would otherwise raise false alarms against limits
    calibrated for a full one. The factor is 1 once the window is full; during the fill a real drift
    still shows, just later (it must be larger than the limit by 1/factor).
    """
    if n >= window or n <= 0:
        return 1.0 if n > 0 else 0.0
    fill = n / window
    return fill if method == "psi" else math.sqrt(fill)


class WindowScorer:
    """Sliding windows over the last ``window`` samples of d signals, kept as bin counts.

    :meth:`push` takes a batch of k rows, adds their bins and removes the k oldest (O(k x d)); a ring
    of (flat) bin indices remembers what to remove. :meth:`scores` is O(d x bins). Only the
    Wasserstein score needs the out-of-range excess, so the other methods do not keep it.
    """

    def __init__(self, refs: Sequence[Reference], window: int, bins: int, method: str):
        if method not in METHODS:
            raise ValueError(f"unknown drift method {method!r} (use one of {METHODS})")
        if window < 1:
            raise ValueError("window must be >= 1")
        self.refs = tuple(refs)
        self.names = tuple(r.name for r in refs)
        self.method = method
        self.window = window
        self.binning = b = Binning.build(self.refs, bins)
        d, slots = b.d, b.slots
        self._edges = b.edges
        self._offsets = np.arange(d) * slots
        # Binning all signals with ONE searchsorted: each signal is mapped affinely so its reference
        # range becomes [4 i, 4 i + 1] (clipped to [4 i - 1, 4 i + 2] so no sample can reach another
        # signal's edges); a monotone map keeps every sample on the same side of every edge.
        span = b.hi - b.lo
        self._scale = 1.0 / span
        self._shift = 4.0 * np.arange(d) - b.lo / span
        self._floor = 4.0 * np.arange(d) - 1.0
        self._ceil = 4.0 * np.arange(d) + 2.0
        self._global_edges = (b.edges * self._scale[:, None] + self._shift[:, None]).ravel()
        self._signal = np.arange(d)  # global edge index -> flat bin index: + signal number
        self._size = d * slots
        self._excess = method == "wasserstein"
        self._ring = np.zeros((window, d), dtype=np.int64)  # flat bin index (bin + signal offset)
        self._ring_excess = np.zeros((window, d))
        self._counts = np.zeros(self._size, dtype=np.int64)
        self.excess_sum = np.zeros(d)
        self.n = 0  # samples in the window (<= window)
        self.total = 0  # samples ever pushed
        self._pos = 0  # next ring row to write
        self._since_resum = 0

    @property
    def counts(self) -> np.ndarray:
        """Window counts per signal and bin, (d, bins + 2)."""
        return self._counts.reshape(self.binning.d, self.binning.slots)

    @property
    def full(self) -> bool:
        return self.n >= self.window

    def reset(self) -> None:
        self._counts[:] = 0
        self.excess_sum[:] = 0.0
        self.n = self._pos = self._since_resum = 0

    def push(self, x: np.ndarray) -> None:
        """Add a batch of samples, rows (k, d) of finite values, oldest first."""
        x = np.asarray(x, dtype=np.float64)
        k = x.shape[0]
        if k == 0:
            return
        self.total += k
        if k > self.window:
            x = x[-self.window:]
            k = self.window
        z = x * self._scale
        z += self._shift
        np.maximum(z, self._floor, out=z)
        np.minimum(z, self._ceil, out=z)
        flat = np.searchsorted(self._global_edges, z, side="right")
        flat += self._signal
        excess = None
        if self._excess:
            excess = np.abs(x - np.minimum(np.maximum(x, self.binning.lo), self.binning.hi))
        pos = self._pos
        first = min(k, self.window - pos)
        self._overwrite(pos, flat[:first], None if excess is None else excess[:first])
        if first < k:
            self._overwrite(0, flat[first:], None if excess is None else excess[first:])
        self._counts += np.bincount(flat.ravel(), minlength=self._size)
        self.n = min(self.window, self.n + k)
        self._pos = (pos + k) % self.window
        if excess is not None:
            self.excess_sum += excess.sum(axis=0)
            self._since_resum += k
            if self._since_resum >= self.window:  # once per window: no rounding creep in the float sum
                self._since_resum = 0
                self.excess_sum = self._ring_excess[: self.n].sum(axis=0)

    def _overwrite(self, start: int, flat: np.ndarray, excess: np.ndarray | None) -> None:
        """Write rows [start, start + len) of the ring, first removing the samples they held."""
        stop = start + len(flat)
        # Rows below n hold samples until the ring is full; from then on every row does.
        if self.n == self.window or start < self.n:
            self._counts -= np.bincount(self._ring[start:stop].ravel(), minlength=self._size)
            if excess is not None:
                self.excess_sum -= self._ring_excess[start:stop].sum(axis=0)
        self._ring[start:stop] = flat
        if excess is not None:
            self._ring_excess[start:stop] = excess

    def scores(self) -> np.ndarray:
        """Score of every signal for the current window (shrunk while the window fills); zeros if empty."""
        if self.n == 0:
            return np.zeros(self.binning.d)
        raw = self.binning.scores(self.counts, self.excess_sum, self.n, self.method)
        if self.n < self.window:
            raw *= warmup_factor(self.n, self.window, self.method)
        return raw


def score_chunks(binning: Binning, x: np.ndarray, method: str) -> np.ndarray:
    """Scores of whole windows at once: x (m, w, d) -> (m, d). Same arithmetic as :class:`WindowScorer`.

    Used to calibrate limits on simulated reference windows (:mod:`ioc.core.thresholds`).
    """
    m, w, d = x.shape
    slots = binning.slots
    bins = binning.bin_of(x)  # (m, w, d)
    flat = bins + (np.arange(d) * slots) + (np.arange(m) * d * slots)[:, None, None]
    counts = np.bincount(flat.ravel(), minlength=m * d * slots).reshape(m, d, slots)
    excess = binning.excess(x).sum(axis=1)  # (m, d)
    return binning.scores(counts, excess, np.full(m, w), method)


# ----------------------------------------------------------------------------- sliding errors


class SlidingMoments:
    """Sliding mean of |e| and of e^2 over the last ``window`` rows of d error series (MAE, RMSE).

    A row is one cycle; NaN marks a cycle with no error for that series (no ground truth paired
    with it), so each series is averaged over the values it has in the window.
    """

    def __init__(self, d: int, window: int):
        self.window = window
        self._abs = np.zeros((window, d))
        self._sq = np.zeros((window, d))
        self._cnt = np.zeros((window, d))
        self.sum_abs = np.zeros(d)
        self.sum_sq = np.zeros(d)
        self.count = np.zeros(d)
        self.n = 0  # rows in the window
        self._pos = 0
        self._since_resum = 0

    def reset(self) -> None:
        self.sum_abs[:] = 0.0
        self.sum_sq[:] = 0.0
        self.count[:] = 0.0
        self.n = self._pos = self._since_resum = 0

    def push(self, errors: np.ndarray) -> None:
        """Add rows (k, d) of errors (prediction - truth, NaN: none), oldest first."""
        e = np.asarray(errors, dtype=np.float64)
        if e.shape[0] > self.window:
            e = e[-self.window:]
        k = e.shape[0]
        if k == 0:
            return
        valid = e == e  # not NaN
        e = np.where(valid, e, 0.0)
        a = np.abs(e)
        sq = e * e
        first = min(k, self.window - self._pos)
        self._overwrite(self._pos, a[:first], sq[:first], valid[:first])
        if first < k:
            self._overwrite(0, a[first:], sq[first:], valid[first:])
        self.sum_abs += a.sum(axis=0)
        self.sum_sq += sq.sum(axis=0)
        self.count += valid.sum(axis=0)
        self.n = min(self.window, self.n + k)
        self._pos = (self._pos + k) % self.window
        self._since_resum += k
        if self._since_resum >= self.window:  # once per window: no rounding creep in the float sums
            self._since_resum = 0
            self.sum_abs = self._abs[: self.n].sum(axis=0)
            self.sum_sq = self._sq[: self.n].sum(axis=0)

    def _overwrite(self, start: int, a: np.ndarray, sq: np.ndarray, valid: np.ndarray) -> None:
        stop = start + len(a)
        if self.n == self.window or start < self.n:
            self.sum_abs -= self._abs[start:stop].sum(axis=0)
            self.sum_sq -= self._sq[start:stop].sum(axis=0)
            self.count -= self._cnt[start:stop].sum(axis=0)
        self._abs[start:stop] = a
        self._sq[start:stop] = sq
        self._cnt[start:stop] = valid

    def mae(self) -> np.ndarray:
        """Per series; NaN for a series with no value in the window."""
        return np.where(self.count > 0, self.sum_abs / np.maximum(self.count, 1), np.nan)

    def rmse(self) -> np.ndarray:
        return np.where(self.count > 0, np.sqrt(np.maximum(self.sum_sq, 0.0) / np.maximum(self.count, 1)), np.nan)


def pair_nearest(pred_t: np.ndarray, truth_t: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Match each truth timestamp to the nearest prediction timestamp within ``tolerance`` seconds.

    Both arrays sorted ascending. Returns (prediction indices, truth indices) of the matched pairs:
    a measured value is compared with the prediction made from inputs of the same moment.
    """
    if len(pred_t) == 0 or len(truth_t) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    j = np.searchsorted(pred_t, truth_t)
    last = len(pred_t) - 1
    left = np.maximum(j - 1, 0)  # (np.clip costs ~5 us of Python wrapper per call)
    right = np.minimum(j, last)
    use_right = np.abs(pred_t[right] - truth_t) < np.abs(pred_t[left] - truth_t)
    nearest = np.where(use_right, right, left)
    ok = np.abs(pred_t[nearest] - truth_t) <= tolerance
    return nearest[ok], np.nonzero(ok)[0]
