"""Drift scores, calibrated limits and debouncing: the pure logic (ioc/core/drift.py, ioc/core/thresholds.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ioc.core.drift import (
    METHODS,
    NoReference,
    Reference,
    SlidingMoments,
    WindowScorer,
    pair_nearest,
    parse_references,
    score_chunks,
    warmup_factor,
)
from ioc.core.pvmodel import PV, AlarmLimits, Kind, PVSpec, Severity, Status
from ioc.core.thresholds import Debouncer, ar1_gaussian, ar1_phi, calibrate, effective_samples, normal_cdf


def ref_entry(samples: np.ndarray) -> dict:
    """A manifest reference entry, exactly as training/dataset.py writes it."""
    return {"n": len(samples), "mean": float(samples.mean()), "std": float(samples.std()),
            "min": float(samples.min()), "max": float(samples.max()),
            "quantiles": [float(q) for q in np.quantile(samples, np.linspace(0, 1, 101))]}


def normal_refs(names=("a", "b"), n=200_000, seed=0, loc=0.0, scale=1.0) -> tuple[Reference, ...]:
    rng = np.random.default_rng(seed)
    raw = {"inputs": {name: ref_entry(rng.normal(loc, scale, n)) for name in names}}
    return parse_references(raw, "inputs", names)


# ----------------------------------------------------------------------------- references


def test_references_are_read_from_the_manifest_section():
    refs = normal_refs(("x", "y"))
    assert [r.name for r in refs] == ["x", "y"]
    assert refs[0].quantiles[0] == refs[0].min and refs[0].quantiles[-1] == refs[0].max
    assert refs[0].ppf(np.array([0.5]))[0] == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize("reference, message", [
    (None, "manifest has no reference"),
    ({"outputs": {}}, "manifest reference has no inputs"),
    ({"inputs": {"a": {}}}, "no reference for b"),
    ({"inputs": {"a": {"n": 3, "mean": 0, "std": 1, "min": 0, "max": 1, "quantiles": [0, 1]},
                 "b": {}}}, "needs 101 quantiles"),
    ({"inputs": {"a": {"n": 3, "mean": 0, "std": 0.0, "min": 1, "max": 1, "quantiles": [1.0] * 101},
                 "b": {}}}, "constant in the training data"),
    ({"inputs": {"a": {"n": 3, "mean": 0, "std": 1, "min": 0, "max": 1,
                       "quantiles": list(np.linspace(1, 0, 101))}, "b": {}}}, "non-decreasing"),
    ({"inputs": {"a": {"n": 3, "mean": "x", "std": 1, "min": 0, "max": 1, "quantiles": [0] * 101},
                 "b": {}}}, "mean missing or not a finite number"),
])
def test_a_missing_or_bad_reference_says_what_is_wrong(reference, message):
    with pytest.raises(NoReference, match=message):
        parse_references(reference, "inputs", ["a", "b"])


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("method", METHODS)
def test_sliding_window_equals_scoring_the_window_from_scratch(method):
    """O(batch) updates (add the new samples' bins, remove the oldest) must give exactly the scores of the
    last `window` samples computed from nothing, whatever the batch sizes and wrap-arounds."""
    refs = normal_refs(("a", "b", "c"))
    scorer = WindowScorer(refs, window=97, bins=20, method=method)
    rng = np.random.default_rng(1)
    history = []
    for k in [1, 5, 50, 96, 97, 3, 200, 7, 13, 60]:
        batch = rng.normal(0.3, 1.4, size=(k, 3))
        batch[0, 0] = 9.0  # beyond the reference max: the Wasserstein tail term
        history.append(batch)
        scorer.push(batch)
        seen = np.concatenate(history)
        last = seen[-97:]
        assert scorer.n == len(last)
        expected = score_chunks(scorer.binning, last[None], method)[0] * warmup_factor(len(last), 97, method)
        np.testing.assert_allclose(scorer.scores(), expected, rtol=1e-9, atol=1e-12)


def test_wasserstein_measures_a_shift_in_reference_standard_deviations():
    refs = normal_refs(("a",), scale=2.0)
    rng = np.random.default_rng(2)
    for shift, tolerance in ((0.5, 0.05), (1.0, 0.08), (2.0, 0.2)):  # binned on percentiles: a few % high
        scorer = WindowScorer(refs, window=20_000, bins=100, method="wasserstein")
        scorer.push(rng.normal(shift * 2.0, 2.0, size=(20_000, 1)))
        assert scorer.scores()[0] == pytest.approx(shift, abs=tolerance)
    scorer = WindowScorer(refs, window=1000, bins=20, method="wasserstein")
    scorer.push(np.full((1000, 1), 2.0 * 30))  # a gross excursion scores its true size, not the grid's edge
    assert scorer.scores()[0] == pytest.approx(30, rel=0.02)


def test_ks_and_psi_are_near_zero_in_distribution_and_large_when_shifted():
    refs = normal_refs(("a",))
    rng = np.random.default_rng(3)
    same = rng.normal(0, 1, size=(50_000, 1))
    shifted = rng.normal(1, 1, size=(50_000, 1))
    for method, small, big in (("ks", 0.01, 0.35), ("psi", 0.002, 0.5)):
        s = WindowScorer(refs, 50_000, 20, method)
        s.push(same)
        assert s.scores()[0] < small
        s.push(shifted)
        assert s.scores()[0] > big
    # KS of a 1-sigma normal shift is 2 Phi(0.5) - 1 = 0.383
    s = WindowScorer(refs, 50_000, 100, "ks")
    s.push(shifted)
    assert s.scores()[0] == pytest.approx(0.383, abs=0.01)


def test_a_filling_window_is_shrunk_so_it_cannot_false_alarm():
    assert warmup_factor(100, 400, "wasserstein") == pytest.approx(0.5)
    assert warmup_factor(100, 400, "psi") == pytest.approx(0.25)
    assert warmup_factor(400, 400, "ks") == 1.0
    assert warmup_factor(0, 400, "ks") == 0.0
    refs = normal_refs(("a",))
    s = WindowScorer(refs, 400, 20, "wasserstein")
    assert s.scores().tolist() == [0.0]  # empty: nothing to say yet
    s.push(np.full((100, 1), 5.0))
    raw = score_chunks(s.binning, np.full((1, 100, 1), 5.0), "wasserstein")[0, 0]
    assert s.scores()[0] == pytest.approx(raw * 0.5)


def test_bins_must_divide_the_percentile_grid():
    with pytest.raises(ValueError, match="bins must be one of"):
        WindowScorer(normal_refs(("a",)), 10, 7, "psi")
    with pytest.raises(ValueError, match="unknown drift method"):
        WindowScorer(normal_refs(("a",)), 10, 10, "chi2")


# ----------------------------------------------------------------------------- calibration


def test_normal_cdf_and_ar1_series():
    z = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    want = [0.5 * (1 + math.erf(v / math.sqrt(2))) for v in z]
    np.testing.assert_allclose(normal_cdf(z), want, atol=2e-7)
    phi = ar1_phi(1.0, 10.0)
    assert phi == pytest.approx(math.exp(-0.1))
    x = ar1_gaussian((200, 400, 1), phi, np.random.default_rng(0))
    assert x.std() == pytest.approx(1.0, abs=0.05)  # stationary from the first sample
    lag1 = np.mean(x[:, 1:] * x[:, :-1]) / np.mean(x * x)
    assert lag1 == pytest.approx(phi, abs=0.02)
    assert effective_samples(600, phi) == pytest.approx(30, rel=0.01)
    assert ar1_phi(0.0, 10.0) == 0.0


def test_bin_of_counts_the_edges_at_or_below_each_sample():
    """Bins by search, one signal at a time (issue 15: the all-edges comparison made a 400 x window x d x 101
    temporary, ~100 MB at 10 Hz and ~2 GB at 200 Hz, the IOC's start-up RSS peak) -- same as the definition."""
    from ioc.core.drift import Binning

    refs = normal_refs(("a", "b", "c"))
    binning = Binning.build(refs, 20)
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (7, 50, 3))
    x[0, :3, 0] = binning.edges[0, :3]  # exactly on an edge: counted (edge <= x)
    x[1, 0] = [np.nan, np.inf, -np.inf]
    expected = (x[..., None] >= binning.edges).sum(axis=-1)
    np.testing.assert_array_equal(binning.bin_of(x), expected)
    assert binning.bin_of(x)[1, 0].tolist() == [0, binning.bins + 1, 0]


def test_calibration_in_batches_gives_the_same_limits():
    refs = normal_refs(("a", "b"))
    kw = dict(method="wasserstein", window=120, bins=20, phi=0.5, k_minor=5, k_major=8, chunks=37)
    whole = calibrate(refs, batch=10**9, **kw)
    for batch in (1, 240 * 5, 240 * 36):  # one chunk per batch, several, a last short batch
        assert calibrate(refs, batch=batch, **kw) == whole


def test_calibration_matches_live_autocorrelated_data_and_is_deterministic():
    """Limits calibrated on simulated reference windows must describe the score of live machine data --
    drawn here by an independent generator: the simulator's own machine (ioc/sim/physics.Machine: knobs
    wandering as an Ornstein-Uhlenbeck process, clipped, with readback noise), against the reference of
    the demo's training data generator -- and ignoring the autocorrelation would be far too tight."""
    from ioc.sim.physics import KNOBS, Machine, generate_dataset

    x, _ = generate_dataset(200_000, seed=0)
    names = tuple(k.name for k in KNOBS)
    refs = parse_references({"inputs": {n: ref_entry(x[:, i]) for i, n in enumerate(names)}}, "inputs", names)
    phi = ar1_phi(1.0, 10.0)  # the machine's knobs: 1 s correlation time, sampled at 10 Hz
    cal = calibrate(refs, method="wasserstein", window=300, bins=20, phi=phi, k_minor=5, k_major=8)
    assert cal == calibrate(refs, method="wasserstein", window=300, bins=20, phi=phi, k_minor=5, k_major=8)
    assert cal.high == pytest.approx(cal.mean + 5 * cal.std) and cal.hihi == pytest.approx(cal.mean + 8 * cal.std)
    assert cal.hyst == pytest.approx(0.5 * cal.std)
    # live: the machine stepped at 10 Hz (its start, at the nominal setpoints, dropped), a sliding window
    machine = Machine(seed=9, rate_hz=10.0, tau_s=1.0)
    live = np.array([machine.step()[0] for _ in range(20_050)])[50:]
    scorer = WindowScorer(refs, 300, 20, "wasserstein")
    overall = []
    for start in range(0, len(live), 50):
        scorer.push(live[start:start + 50])
        if scorer.full:
            overall.append(scorer.scores().max())
    assert np.mean(overall) == pytest.approx(cal.mean, rel=0.15)
    assert max(overall) < cal.high
    independent = calibrate(refs, method="wasserstein", window=300, bins=20, phi=0.0, k_minor=5, k_major=8)
    assert independent.high < 0.6 * cal.high
    assert np.mean(np.array(overall) > independent.high) > 0.01  # i.i.d. limits would alarm on clean data


# ----------------------------------------------------------------------------- debouncing


def test_debouncer_needs_raise_s_to_raise_and_clear_s_to_clear():
    d = Debouncer(raise_s=2.0, clear_s=5.0)
    assert d(1, 4, 0.0) == (0, 0)  # a limit crossed just now
    assert d(1, 4, 1.9) == (0, 0)
    assert d(1, 4, 2.0) == (1, 4)  # held for raise_s: MINOR (status HIGH)
    assert d(2, 3, 3.0) == (1, 4)
    assert d(2, 3, 5.0) == (2, 3)  # MAJOR (HIHI) after its own raise_s
    assert d(0, 0, 6.0) == (2, 3)  # back in range: still held
    assert d(1, 4, 8.0) == (2, 3)  # a wobble above HIGH does not restart MINOR's clear timer...
    assert d(0, 0, 10.9) == (2, 3)
    assert d(0, 0, 11.0) == (1, 4)  # ...MAJOR cleared 5 s after it stopped being asked for
    assert d(0, 0, 15.8) == (1, 4)
    assert d(0, 0, 15.9) == (0, 0)  # MINOR 5 s after the first update that no longer asked for it


def test_debouncer_ignores_short_excursions_and_passes_invalid():
    d = Debouncer(raise_s=3.0, clear_s=1.0)
    for t in range(10):  # above the limit every other second: never held for 3 s
        assert d(2 if t % 2 else 0, 3 if t % 2 else 0, float(t)) == (0, 0)
    assert d(3, 17, 11.0) == (3, 17)  # INVALID (no score) is not drift: not delayed
    no_delay = Debouncer(0.0, 0.0)
    assert no_delay(1, 4, 0.0) == (1, 4) and no_delay(0, 0, 0.1) == (0, 0)


def test_served_severity_applies_hysteresis_then_debounce():
    """The PV model computes the limit alarm (with HYST) and the debouncer filters it in time: what CA and
    PVA both serve."""
    pv = PV(PVSpec("X:DRIFT", Kind.AI, alarm=AlarmLimits(high=1.0, hihi=2.0, hyst=0.2)))
    pv.alarm_filter = Debouncer(raise_s=1.0, clear_s=1.0)
    served = []
    for t, value in enumerate([0.5, 1.1, 1.2, 1.3, 0.9, 0.85, 0.85, 0.85, 0.7, 0.7, 0.7]):
        pv.post(value, float(t))
        served.append(int(pv.reading.severity))
    # raised at the 2nd sample above HIGH; 0.9 / 0.85 are inside HYST (>= 0.8): still asked for;
    # 0.7 is below HIGH - HYST: cleared one second later.
    assert served == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert pv.reading.status == Status.NO_ALARM
    pv.post(math.nan, 20.0)
    assert pv.reading.severity == Severity.INVALID


# ----------------------------------------------------------------------------- errors vs truth


def test_sliding_moments_skip_missing_values():
    m = SlidingMoments(2, window=4)
    m.push(np.array([[1.0, np.nan], [-3.0, 2.0]]))
    np.testing.assert_allclose(m.mae(), [2.0, 2.0])
    np.testing.assert_allclose(m.rmse(), [math.sqrt(5.0), 2.0])
    m.push(np.array([[0.0, np.nan], [0.0, np.nan], [2.0, 4.0]]))  # the first row leaves the window
    np.testing.assert_allclose(m.mae(), [5 / 4, 3.0])
    fresh = SlidingMoments(1, 3)
    assert np.isnan(fresh.mae()[0]) and np.isnan(fresh.rmse()[0])


def test_truth_is_paired_with_the_prediction_of_the_same_moment():
    pred_t = np.array([0.0, 0.1, 0.2, 0.3])
    truth_t = np.array([0.101, 0.29, 0.55, -0.2])
    p, t = pair_nearest(pred_t, truth_t, tolerance=0.05)
    assert p.tolist() == [1, 3] and t.tolist() == [0, 1]
    empty = pair_nearest(np.array([]), truth_t, 0.05)
    assert len(empty[0]) == 0


def test_hysteresis_holds_the_served_alarm_but_never_helps_raise_one():
    """A crossing the debouncer has not passed on yet must not lower the bar: values inside HYST below HIGH
    do not keep asking for an alarm that is not served (or noise near the limit would raise it)."""
    pv = PV(PVSpec("X:DRIFT", Kind.AI, alarm=AlarmLimits(high=1.0, hihi=2.0, hyst=0.2)))
    pv.alarm_filter = Debouncer(raise_s=2.0, clear_s=0.0)
    for t, value in enumerate([1.1, 0.9, 0.9, 0.9, 0.95]):
        pv.post(value, float(t))
        assert pv.reading.severity == Severity.NO_ALARM
    served = []
    for t, value in enumerate([1.1, 1.2, 1.05, 0.9, 0.85, 0.79], start=10):
        pv.post(value, float(t))
        served.append(int(pv.reading.severity))
    assert served == [0, 0, 1, 1, 1, 0]  # served from t=12 (2 s above HIGH), held by HYST down to 0.8


def test_a_held_debouncer_serves_at_least_the_held_severity_until_released():
    d = Debouncer(raise_s=2.0, clear_s=5.0)
    d.hold(2)  # a MAJOR alarm held across a model swap
    assert d(0, 0, 0.0) == (2, 3)  # the limits say nothing yet: still MAJOR (HIHI)
    assert d(1, 4, 1.0) == (2, 3)
    assert d(2, 3, 1.5) == (2, 3)
    assert d(2, 3, 3.5) == (2, 3)  # MAJOR earned on its own meanwhile (held for raise_s)
    d.release()
    assert d(2, 3, 4.0) == (2, 3)  # and kept after the release
    d.hold(1)
    d.reset()  # a new model: nothing held, nothing raised
    assert d(0, 0, 5.0) == (0, 0)
    d.hold(1)
    d.release()
    assert d(0, 0, 6.0) == (0, 0)
