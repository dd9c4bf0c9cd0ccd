"""The simulator's array physics (orbit, screen image, profile) and its array PVs: pure, no servers."""

from __future__ import annotations

import numpy as np
import pytest

from ioc.sim import beamline as bl
from ioc.sim.physics import beam
from ioc.sim.server import NAN_BPM, NAN_PROFILE_POINTS, NAN_ROWS, SimNames, Simulator, sim_pv_names


def _moments(image: np.ndarray) -> tuple[float, float, float, float]:
    """Centroid and rms size (mm) of a background-free image."""
    w = image / image.sum()
    px, py = w.sum(axis=0), w.sum(axis=1)
    cx, cy = (px * bl.CAMERA.x_mm).sum(), (py * bl.CAMERA.y_mm).sum()
    sx = np.sqrt((px * (bl.CAMERA.x_mm - cx) ** 2).sum())
    sy = np.sqrt((py * (bl.CAMERA.y_mm - cy) ** 2).sum())
    return float(cx), float(cy), float(sx), float(sy)


def test_the_machine_is_fixed_by_its_own_seed_not_the_simulators():
    a, b, other = bl.build_optics(), bl.build_optics(), bl.build_optics(seed=bl.LINE_SEED + 1)
    assert np.array_equal(a.response["x"], b.response["x"])
    assert np.array_equal(a.error_response["y"], b.error_response["y"])
    assert not np.allclose(a.error_response["x"], other.error_response["x"])
    # The correctors are horizontal: they do not move the vertical orbit.
    assert not np.any(a.response["y"])


def test_the_response_is_causal_and_oscillates_like_a_betatron_orbit():
    r = bl.OPTICS.response["x"]
    for j, s_cor in enumerate(bl.COR_S):
        upstream = s_cor > bl.BPM_S
        assert not np.any(r[upstream, j])
        downstream = r[~upstream, j]
        # A kick makes an oscillation: the orbit changes sign several times along the 64 m line.
        assert np.count_nonzero(np.diff(np.sign(downstream))) >= 2
    # Amplitude ~ sqrt(beta_i beta_j) * kick: a few tenths of a mm per ampere.
    assert 0.1 < np.abs(r).max() < 1.0


def test_the_orbit_is_linear_in_the_corrector_currents():
    rng = np.random.default_rng(3)
    i1, i2 = rng.uniform(-2, 2, (2, bl.N_COR))
    kx, ky = np.zeros(bl.N_ERR), np.zeros(bl.N_ERR)
    o = lambda i: bl.orbit(i, kx, ky)["orbit_x"]  # noqa: E731
    assert np.allclose(o(2.0 * i1 - 0.5 * i2), 2.0 * o(i1) - 0.5 * o(i2))
    assert np.allclose(o(i1), bl.OPTICS.response["x"] @ i1)


def test_the_best_correction_flattens_the_orbit():
    rng = np.random.default_rng(1)
    kicks = rng.normal(0, bl.ERR_KICK_MRAD, (2, bl.N_ERR))
    before = bl.orbit(np.zeros(bl.N_COR), kicks[0], kicks[1])["orbit_x"]
    dcor = bl.OPTICS.correction @ before
    after = bl.orbit(dcor, kicks[0], kicks[1])["orbit_x"]
    assert np.std(after) < 0.7 * np.std(before)
    # Least squares: no other corrector change does better.
    for _ in range(20):
        other = bl.orbit(dcor + rng.normal(0, 0.05, bl.N_COR), kicks[0], kicks[1])["orbit_x"]
        assert np.sum(after**2) <= np.sum(other**2)


def test_the_live_line_follows_a_corrector_kick_through_the_response_matrix():
    line = bl.Line(seed=0, rate_hz=10.0)

    def corrector_orbit() -> np.ndarray:
        """The measured orbit less the (wandering) error orbit of this very step."""
        measured = line.step()["orbit_x"]
        return measured - bl.OPTICS.error_response["x"] @ line.kicks[0]

    before = np.mean([corrector_orbit() for _ in range(30)], axis=0)
    line.setpoints_a[1] = 2.0
    for _ in range(20):  # 2 s: ten power-supply time constants
        line.step()
    after = np.mean([corrector_orbit() for _ in range(30)], axis=0)
    assert np.abs(before).max() < 0.01  # BPM noise (10 um) averaged
    expected = 2.0 * bl.OPTICS.response["x"][:, 1]
    assert np.abs(after - expected).max() < 0.01
    assert not np.any(expected[bl.COR_S[1] > bl.BPM_S])  # upstream BPMs do not see it


def test_drift_shifts_the_error_orbit():
    line = bl.Line(seed=0, rate_hz=10.0)
    line.drift = 4.0
    for _ in range(6000):  # 600 s, five wander time constants
        line.step()
    assert np.mean(line.kicks) == pytest.approx(4.0 * bl.ERR_KICK_MRAD, rel=0.25)


def test_the_spot_has_the_doublets_beam_sizes_and_moves_with_the_magnets():
    knobs = np.array([5.0, 4.0, 0.0, 1.0])
    sx, sy, _ = beam(*knobs)
    dx, dy = bl.doublet_steering(*knobs[:3])
    spot = bl.CAMERA.spot(sx, sy, 0.4 + dx, -0.3 + dy, knobs[3])
    cx, cy, mx, my = _moments(spot)
    assert (cx, cy) == pytest.approx((0.4 + dx, -0.3 + dy), abs=0.02)
    assert (mx, my) == pytest.approx((sx, sy), rel=0.03)  # the 64 x 0.3 mm screen clips little of it
    # Q1 up: the sizes change as beam() says, and the misaligned doublet steers the spot.
    knobs2 = knobs + np.array([1.0, 0.0, 0.0, 0.0])
    sx2, sy2, _ = beam(*knobs2)
    dx2, dy2 = bl.doublet_steering(*knobs2[:3])
    cx2, cy2, mx2, my2 = _moments(bl.CAMERA.spot(sx2, sy2, 0.4 + dx2, -0.3 + dy2, knobs2[3]))
    assert (mx2, my2) == pytest.approx((sx2, sy2), rel=0.03) and abs(mx2 - mx) > 0.1
    assert abs(cx2 - cx) > 0.05 and cx2 - cx == pytest.approx(dx2 - dx, abs=0.02)


def test_a_frame_is_the_spot_on_a_background_with_noise():
    screen = bl.Screen(seed=0)
    truth = screen.truth(np.array([5.0, 4.0, 0.0, 1.0]), 0.2, -0.1)
    frames = np.stack([screen.frame(truth) for _ in range(50)])
    assert frames.dtype == np.float32 and frames.shape == (50, *bl.IMAGE_SHAPE)
    assert screen.unique_id == 50
    cx, cy, sx, sy = _moments(frames.mean(axis=0) - bl.CAMERA.background)
    assert (cx, cy) == pytest.approx((truth["centroid_x"], truth["centroid_y"]), abs=0.05)
    assert (sx, sy) == pytest.approx((truth["sigma_x"], truth["sigma_y"]), rel=0.05)
    assert frames.std(axis=0).min() > 1.0  # read noise on every pixel


def test_the_profile_is_the_horizontal_density():
    p = bl.profile(2.0, 0.5, 1.5)
    assert np.trapezoid(p, bl.PROFILE_MM) == pytest.approx(1.5, rel=1e-3)  # the charge
    assert bl.PROFILE_MM[np.argmax(p)] == pytest.approx(0.5, abs=0.2)


def test_the_array_dataset_is_seeded_and_each_signal_independent_of_the_selection():
    a = bl.generate_array_dataset(200, seed=5, names=["orbit_x", "dcor1", "q1"])
    b = bl.generate_array_dataset(200, seed=5, names=["screen", "q1", "orbit_x", "dcor1", "profile_x"])
    c = bl.generate_array_dataset(200, seed=6, names=["orbit_x"])
    for name in a:
        assert np.array_equal(a[name], b[name])
    assert not np.allclose(a["orbit_x"], c["orbit_x"])
    assert b["screen"].shape == (200, *bl.IMAGE_SHAPE) and b["profile_x"].shape == (200, bl.PROFILE_POINTS)
    with pytest.raises(KeyError, match="no signal"):
        bl.generate_array_dataset(10, seed=0, names=["nope"])


def test_the_datasets_correction_target_is_the_one_that_flattens_the_measured_orbit():
    d = bl.generate_array_dataset(500, seed=2, names=["orbit_x", "dcor1", "dcor2", "dcor3", "dcor4"])
    dcor = np.stack([d[f"dcor{j}"] for j in range(1, 5)], axis=1)
    after = d["orbit_x"] + dcor @ bl.OPTICS.response["x"].T
    assert after.std() < 0.3 * d["orbit_x"].std()


def test_the_simulator_publishes_nan_elements_on_fault_nan_and_nothing_on_stall():
    sim = Simulator("S:", 10.0, seed=0)
    n, db = sim.names, sim.db
    sim.step()
    sim.frame()
    assert np.isfinite(db[n.orbit("x")].value).all() and np.isfinite(db[n.image].value).all()
    assert db[n.image].value.shape == bl.IMAGE_SHAPE and db[n.image].value.dtype == np.float32
    assert db[n.orbit("x")].reading.severity == 0
    sim.fault = 2
    sim.step()
    sim.frame()
    orbit = db[n.orbit("x")].value
    assert np.flatnonzero(~np.isfinite(orbit)).tolist() == [NAN_BPM - 1]
    assert db[n.orbit("x")].reading.severity == 3  # the PV model serves a waveform with a NaN as INVALID
    assert np.isnan(db[n.line_bpm(NAN_BPM, "x")].value) and np.isfinite(db[n.line_bpm(1, "x")].value)
    assert sorted(set(np.argwhere(np.isnan(db[n.image].value))[:, 0])) == list(NAN_ROWS)
    assert np.flatnonzero(np.isnan(db[n.profile].value)).tolist() == list(NAN_PROFILE_POINTS)
    sim.fault = 1
    before = {name: db[name].reading for name in (n.orbit("x"), n.image, n.profile, n.image_counter)}
    sim.step()
    sim.frame()
    assert all(db[name].reading is reading for name, reading in before.items())  # nothing posted


def test_the_orbit_scalars_and_waveform_agree():
    sim = Simulator("S:", 10.0, seed=0)
    sim.step()
    n = sim.names
    wave = sim.db[n.orbit("y")].value
    assert [sim.db[n.line_bpm(i, "y")].value for i in range(1, bl.N_BPM + 1)] == pytest.approx(list(wave))
    assert np.array_equal(sim.db[n.orbit_s].value, bl.BPM_S)  # the axis of an XY plot


def test_the_simulator_lists_its_array_pvs():
    names = sim_pv_names("S:")
    assert len(names) == len(set(names))
    n = SimNames("S:")
    for name in (n.orbit("x"), n.orbit("y"), n.image, n.profile, n.line_bpm(32, "x"), n.line_corrector_setpoint(4),
                 n.image_size(0), n.centroid("y"), n.best_correction(1)):
        assert name in names
    assert "S:BPM:X" in names and "S:COR:I_SP" in names  # the steering demo's PVs are still there
