"""The array demo end to end: `mlioc sim` and `mlioc serve` on config/demo-arrays.yaml with the shipped
models (orbit waveform -> corrector changes, screen NTNDArray -> beam sizes and centroid, knobs ->
profile waveform). Predictions are compared with the simulator's truth PVs through real clients, and a
bad frame makes the screen model INVALID with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from ioc.sim.server import NAN_ROWS, SimNames
from tests.support.demo import demo_arrays_config

pytestmark = pytest.mark.integration


@pytest.fixture
def demo(tmp_path, launch, prefix):
    """The shipped config with this test's prefixes and private copies of the shipped stores."""
    config, p, sim_prefix = demo_arrays_config(tmp_path, prefix)
    sim = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim], env={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{sim.ports.pva_broadcast}"})
    return sim, ioc, p, SimNames(sim_prefix)


def _close(ca, out: str, truth: str, tol: float, n: int = 5) -> None:
    """``n`` fresh predictions each within ``tol`` of the truth read just after them (the beam moves slowly)."""
    mon = ca.monitor(out)
    for _ in range(n):
        u = mon.wait_for(lambda u: u.severity == 0, since=mon.mark(), timeout=15)
        assert abs(u.value - ca.get(truth)) < tol, (out, u.value, truth)


def test_the_array_models_serve_predictions_that_match_the_simulators_truth(demo, ca, pva):
    sim, ioc, p, s = demo
    # A steady line (no corrector wander): each prediction is compared with a truth read a moment later.
    ca.put(s.line_wander, 0)
    # Orbit: a 32-element waveform in, the corrector changes that flatten it out.
    ca.put(s.line_corrector_setpoint(2), 1.5)  # an orbit the correctors must undo
    # Compare once the correctors have settled (0.2 s power-supply lag, and the wander decaying): while
    # they move, a prediction and a truth read a moment later belong to different orbits.
    for j in range(1, 5):
        want = 1.5 if j == 2 else 0.0
        ca.monitor(s.line_corrector(j)).wait_for(lambda u, want=want: abs(u.value - want) < 0.01, timeout=15)
    for j in range(1, 5):
        _close(ca, f"{p}ORBIT:OUT:dcor{j}", s.best_correction(j), 0.1)
    assert ca.get(f"{p}ORBIT:IN:orbit_x.NELM") == 32
    # Screen: the 64 x 64 NTNDArray in, sizes and centroid out.
    _close(ca, f"{p}SCREEN:OUT:sigma_x", f"{s.prefix}SIGMA:X", 0.15)
    _close(ca, f"{p}SCREEN:OUT:centroid_x", s.centroid("x"), 0.15)
    _close(ca, f"{p}SCREEN:OUT:centroid_y", s.centroid("y"), 0.15)
    # Profile: four knobs and the correctors in, a 100-point waveform out, on both protocols.
    client = pva(ioc)
    profile = client.monitor(f"{p}PROFILE:OUT:profile_x")
    u = profile.wait_for(lambda u: u.severity == 0 and len(u.value) == 100, timeout=15)
    measured = np.asarray(ca.get(s.profile))
    assert np.abs(np.asarray(u.value) - measured).max() < 0.3 * measured.max()
    assert np.argmax(u.value) == pytest.approx(np.argmax(measured), abs=5)


def test_a_bad_frame_makes_the_screen_model_invalid_with_the_reason(demo, ca):
    sim, ioc, p, s = demo
    out = ca.monitor(f"{p}SCREEN:OUT:sigma_x")
    out.wait_for(lambda u: u.severity == 0, timeout=15)
    ca.put(s.fault, 2)  # NaN rows in the image
    out.wait_for(lambda u: u.severity == 3, since=out.mark(), timeout=15)
    message = ca.get(f"{p}SCREEN:MESSAGE", as_string=True)
    assert f"screen[{NAN_ROWS[0]},0]" in message, message
    ca.put(s.fault, 0)
    out.wait_for(lambda u: u.severity == 0, since=out.mark(), timeout=15)
