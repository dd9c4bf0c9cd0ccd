"""`mlioc sim` serves the array demo's machine: the orbit waveform through pyepics (libca), the screen image
as an NTNDArray through the p4p client, and both react to the magnets and to injected faults."""

from __future__ import annotations

import numpy as np
import pytest

from ioc.sim import beamline as bl
from ioc.sim.server import NAN_BPM, NAN_ROWS, SimNames
from tests.conftest import write_yaml

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(tmp_path, launch, prefix):
    cfg = write_yaml(tmp_path / "sim.yaml", f"""
        simulator: {{prefix: "{prefix}SIM:", rate_hz: 10, image_hz: 10, seed: 1}}
        models: [{{name: m, prefix: "{prefix}", store: store, inputs: [{{name: a}}], outputs: [{{name: y}}]}}]
        """)
    proc = launch.sim(cfg)
    proc.names = SimNames(f"{prefix}SIM:")
    return proc


def _centroid(image: np.ndarray) -> tuple[float, float]:
    signal = np.clip(image - bl.CAMERA.background, 0, None)
    signal = np.where(signal > 0.2 * signal.max(), signal, 0.0)  # the spot, not the noise floor
    w = signal / signal.sum()
    return float((w.sum(axis=0) * bl.CAMERA.x_mm).sum()), float((w.sum(axis=1) * bl.CAMERA.y_mm).sum())


def test_the_orbit_waveform_follows_a_corrector_through_the_response_matrix(sim, ca):
    n = sim.names
    assert ca.get(f"{n.orbit('x')}.NELM") == bl.N_BPM
    assert ca.get(f"{n.orbit('x')}.FTVL", as_string=True) == "DOUBLE"
    assert ca.get(f"{n.orbit('x')}.EGU", as_string=True) == "mm"
    assert ca.get(f"{n.orbit('x')}.RTYP", as_string=True) == "waveform"
    orbit = ca.monitor(n.orbit("x"))
    orbit.wait_count(12)
    before = np.mean([np.array(u.value) for u in orbit.updates[-10:]], axis=0)
    assert before.shape == (bl.N_BPM,) and np.isfinite(before).all()
    # The individual BPM PVs carry the same positions, one PV each (a model can gather them as a list).
    bpm = ca.get_full(n.line_bpm(NAN_BPM, "x"))
    assert bpm.severity == 0 and abs(bpm.value - before[NAN_BPM - 1]) < 0.3

    ca.put(n.line_corrector_setpoint(1), 3.0)
    ca.monitor(n.line_corrector(1)).wait_for(lambda u: abs(u.value - 3.0) < 0.01)
    mark = orbit.mark()
    orbit.wait_count(mark + 10)
    after = np.mean([np.array(u.value) for u in orbit.updates[mark:mark + 10]], axis=0)
    expected = 3.0 * bl.OPTICS.response["x"][:, 0]
    assert np.corrcoef(after - before, expected)[0, 1] > 0.95
    assert np.abs(after - before - expected).max() < 0.3  # noise, and a few seconds of slow wander


def test_the_screen_image_is_an_areadetector_ntndarray_that_shows_the_beam(sim, ca, pva):
    n = sim.names
    client = pva(sim)
    frames = client.monitor_raw(n.image)
    frames.wait_count(3, timeout=15)
    first, second = frames.updates[-2].value, frames.updates[-1].value
    h, w = bl.IMAGE_SHAPE
    assert first.getID() == "epics:nt/NTNDArray:1.0"
    assert [d["size"] for d in second["dimension"]] == [w, h]  # dimension[0] is x (fastest varying)
    assert {a["name"]: a["value"] for a in second["attribute"]}["ColorMode"] == 0
    assert second["uniqueId"] == first["uniqueId"] + 1
    assert second["dataTimeStamp.secondsPastEpoch"] == second["timeStamp.secondsPastEpoch"]
    assert second["dataTimeStamp.nanoseconds"] == second["timeStamp.nanoseconds"]
    image = np.asarray(second["value"])
    assert image.dtype == np.float32 and image.size == h * w
    cx, cy = _centroid(image.reshape(h, w))
    truth_x = ca.get(n.centroid("x"))
    truth_y = ca.get(n.centroid("y"))
    assert abs(cx - truth_x) < 0.5 and abs(cy - truth_y) < 0.5
    # Over CA: a waveform of h * w floats, row-major, with the areaDetector size PVs beside it.
    assert ca.get(n.image_size(0)) == w and ca.get(n.image_size(1)) == h
    assert ca.get(f"{n.image}.FTVL", as_string=True) == "FLOAT"
    flat = ca.get(n.image)
    assert len(flat) == h * w
    assert _centroid(np.asarray(flat).reshape(h, w)) == pytest.approx((cx, cy), abs=0.5)


def test_fault_nan_publishes_nan_elements_in_the_arrays(sim, ca, pva):
    n = sim.names
    orbit = ca.monitor(n.orbit("x"))
    orbit.wait_for(lambda u: np.isfinite(u.value).all())
    frames = pva(sim).monitor_raw(n.image)
    frames.wait_count(1, timeout=15)
    ca.put(n.fault, 2)
    bad = orbit.wait_for(lambda u: not np.isfinite(u.value).all())
    assert np.flatnonzero(~np.isfinite(bad.value)).tolist() == [NAN_BPM - 1]
    frame = frames.wait_for(lambda u: np.isnan(np.asarray(u.value["value"])).any(), timeout=15)
    rows = np.argwhere(np.isnan(np.asarray(frame.value["value"]).reshape(bl.IMAGE_SHAPE)))[:, 0]
    assert sorted(set(rows.tolist())) == list(NAN_ROWS)
    ca.put(n.fault, 0)
    orbit.wait_for(lambda u: np.isfinite(u.value).all(), since=orbit.mark())
