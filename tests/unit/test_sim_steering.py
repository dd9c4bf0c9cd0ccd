"""The simulator's corrector and BPM (the closed-loop demo's machine): pure physics, no servers."""

from __future__ import annotations

import numpy as np
import pytest

from ioc.sim.physics import COR_KICK_MM_PER_A, COR_TAU_S, Steering, generate_steering_dataset
from ioc.sim.server import sim_pv_specs


def test_the_corrector_follows_its_setpoint_with_a_first_order_lag():
    s = Steering(seed=0, rate_hz=100.0)
    s.setpoint_a = 1.0
    readbacks = [s.step()[0] for _ in range(200)]
    t63 = next(i for i, r in enumerate(readbacks) if r >= 0.632) / 100.0
    assert t63 == pytest.approx(COR_TAU_S, abs=0.03)  # the lag is the documented time constant
    assert readbacks[-1] == pytest.approx(1.0, abs=0.01)


def test_the_beam_moves_with_the_corrector_and_the_orbit_offset():
    s = Steering(seed=0, rate_hz=10.0)
    s.offset_mm = 0.6
    x0 = np.mean([s.step()[1] for _ in range(50)])
    s.setpoint_a = -0.6 / COR_KICK_MM_PER_A  # the setting that centres it
    x1 = np.mean([s.step()[1] for _ in range(50)][20:])
    assert x0 == pytest.approx(0.6, abs=0.1) and x1 == pytest.approx(0.0, abs=0.1)


def test_steering_dataset_is_seeded_and_its_target_centres_the_beam():
    x, y = generate_steering_dataset(1000, seed=4)
    x2, y2 = generate_steering_dataset(1000, seed=4)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    bpm, current = x[:, 0], x[:, 1]
    centred = bpm + COR_KICK_MM_PER_A * (y[:, 0] - current)  # the beam after moving to the target
    assert np.abs(centred).max() < 0.05


def test_the_corrector_setpoint_has_drive_limits():
    specs = {s.name: s for s in sim_pv_specs("S:")}
    assert specs["S:COR:I_SP"].control == (-5.0, 5.0) and specs["S:COR:I_SP"].writable
    assert not specs["S:COR:I"].writable and not specs["S:BPM:X"].writable
    assert specs["S:ORBIT:OFFSET"].writable
