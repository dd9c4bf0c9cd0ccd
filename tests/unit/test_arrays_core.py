"""Arrays in the pure core: the tensor layout rule, frames, validity with the first bad index, the
waveform PV, the manifest's shapes and normalisation, and the engine running array models in ONNX Runtime."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ioc.core.arrays import BadArray, TensorLayout, array_problem, first_nonfinite, frame_from_parts
from ioc.core.config import InferenceConfig, InputConfig, ModelConfig, OutputConfig, PVRef, TriggerConfig
from ioc.core.engine import EngineError, SignatureMismatch, load_champion, load_version
from ioc.core.inputs import ArrayInputState, GatheredInputState, input_state
from ioc.core.manifest import ManifestError, parse_manifest
from ioc.core.pvmodel import PV, Event, Kind, PutRejected, PVSpec, Severity, Status
from ioc.core.store import ModelStore
from tests.support.models import (
    array_linear_model,
    array_manifest,
    conv_mean,
    conv_mean_model,
    publish_array_linear,
)

INF = InferenceConfig(provider="cpu")
SHA = "0" * 64


# ----------------------------------------------------------------------------- the layout rule, frames


def test_layout_flattens_in_order_and_names_elements():
    class S:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    layout = TensorLayout.of([S("a", ()), S("orbit", (4,)), S("img", (2, 3)), S("b", ())])
    assert layout.offsets == (0, 1, 5, 11) and layout.total == 12 and not layout.all_scalar
    assert [layout.locate(i) for i in (0, 1, 4, 5, 9, 11)] == ["a", "orbit[0]", "orbit[3]", "img[0,0]", "img[1,1]",
                                                               "b"]
    flat = np.arange(12.0)
    a, orbit, img, b = layout.pieces(flat, [None, None, "float32", None])
    assert a == 0.0 and b == 11.0 and orbit.tolist() == [1, 2, 3, 4]
    assert img.dtype == np.float32 and img.tolist() == [[5, 6, 7], [8, 9, 10]]  # row-major


def test_frame_dimension_order_is_area_detector():
    pixels = np.arange(12, dtype=np.uint16)
    frame = frame_from_parts(pixels, [4, 3])  # dimension[0] = width 4, dimension[1] = height 3
    assert frame.shape == (3, 4) and frame[1, 0] == 4
    assert frame_from_parts(pixels, [4, 3, 1]).shape == (3, 4)  # a trailing axis of 1 is no axis


@pytest.mark.parametrize(
    ("data", "sizes", "codec", "color", "reason"),
    [
        (np.zeros(12), [4, 3], "lz4", None, "codec 'lz4' not decoded"),
        (None, [4, 3], "", None, "empty frame"),
        (np.zeros(12, dtype=bool), [4, 3], "", None, "bool pixels, expected numbers"),
        (np.zeros(36), [3, 4, 3], "", 2, "ColorMode 2, expected 0 (mono)"),
        (np.zeros(36), [3, 4, 3], "", None, "3-D frame, expected 2-D"),
        (np.zeros(10), [4, 3], "", None, "dimension 3x4 but 10 pixels"),
    ],
)
def test_frames_that_cannot_be_used(data, sizes, codec, color, reason):
    bad = frame_from_parts(data, sizes, codec, color)
    assert isinstance(bad, BadArray) and reason in bad.reason


def test_first_bad_element_is_named():
    v = np.zeros(32)
    assert first_nonfinite(v) is None
    v[17], v[20] = math.nan, math.inf
    assert first_nonfinite(v) == 17
    assert array_problem(v, (32,), None) == ("[17]", "NaN", Status.UDF)
    assert first_nonfinite(np.full(4, 1e308)) is None  # the sum overflows; every element is finite
    img = np.zeros((4, 5))
    img[2, 3] = -math.inf
    assert array_problem(img, (4, 5), None) == ("[2,3]", "-inf", Status.HWLIMIT)
    assert array_problem(np.zeros(31), (32,), None)[1] == "31 elements, expected 32"
    assert array_problem(np.zeros((48, 64)), (64, 48), None)[1] == "48x64, expected 64x48"
    ramp = np.linspace(0, 12, 13)
    assert array_problem(ramp, (13,), (0.0, 10.0))[:2] == ("[11]", "11 outside [0, 10]")


# ----------------------------------------------------------------------------- the waveform PV


def _waveform(shape=(4,), ftvl="DOUBLE", **kw) -> PV:
    return PV(PVSpec(name="W", kind=Kind.WAVEFORM, shape=shape, ftvl=ftvl, writable=True, initial=math.nan, **kw))


def test_waveform_pv_is_invalid_on_any_nonfinite_and_posts_on_change():
    pv = _waveform()
    events = []
    pv.subscribe(lambda p, r, e: events.append(e))
    assert pv.value.shape == (4,) and np.isnan(pv.value).all() and pv.reading.severity == Severity.INVALID
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert pv.post(a, 1.0) & Event.VALUE and pv.reading.severity == Severity.NO_ALARM
    assert pv.post(a, 2.0) == Event.NONE  # the same array again: nothing changed
    assert pv.post(a.copy(), 3.0) == Event.NONE  # equal values: no monitor (EPICS waveform "on change")
    b = a.copy()
    b[2] = math.nan
    assert pv.post(b, 4.0) == Event.VALUE | Event.LOG | Event.ALARM
    assert (pv.reading.severity, pv.reading.status) == (Severity.INVALID, Status.UDF)


def test_waveform_coercion():
    spec = _waveform(ftvl="FLOAT").spec
    v = spec.coerce([1, 2, 3])
    assert v.dtype == np.float32 and v.tolist() == [1, 2, 3]  # fewer than NELM: kept (NORD 3)
    with pytest.raises(PutRejected, match="holds at most 4"):
        spec.coerce(np.arange(5))
    with pytest.raises(PutRejected, match="not an array of numbers"):
        spec.coerce("1 2 3")
    image = _waveform(shape=(2, 3)).spec
    assert image.coerce(np.arange(6)).shape == (2, 3)  # a flat CA waveform of h*w: the image, row-major
    assert image.coerce(np.arange(4)).shape == (4,)  # any other count stays as it came
    buffer = np.arange(4.0)
    assert spec.coerce(buffer) is not buffer  # never keeps a client's buffer


# ----------------------------------------------------------------------------- input states


def test_array_input_judges_each_frame_once_and_names_the_first_bad_element():
    cfg = InputConfig("orbit_x", source=PVRef("ca", "BPM:X"), shape=(32,), range=(-10.0, 10.0), max_age_s=1.0)
    state = input_state(cfg, 0.0)
    assert isinstance(state, ArrayInputState)
    assert str(state.problem(0.0)) == "orbit_x: not connected yet"
    state.connected = state.ever_connected = True
    good = np.linspace(-1, 1, 32)
    state.accept(good, Severity.NO_ALARM, 100.0)
    assert state.problem(100.5) is None and state.value.dtype == np.float64
    bad = good.copy()
    bad[17] = math.nan
    state.accept(bad, Severity.NO_ALARM, 100.0)
    assert str(state.problem(100.5)) == "orbit_x[17]: NaN"
    state.accept(good[:31], Severity.NO_ALARM, 100.0)  # the source changed its size
    assert str(state.problem(100.5)) == "orbit_x: 31 elements, expected 32"
    state.accept(good * 20, Severity.NO_ALARM, 100.0)
    assert str(state.problem(100.5)) == "orbit_x[0]: -20 outside [-10, 10]"
    state.accept(good, Severity.NO_ALARM, 100.0)
    assert str(state.problem(101.5)) == "orbit_x: stale (no update for > 1 s)"
    state.accept(BadArray("codec 'jpeg' not decoded"), Severity.NO_ALARM, 102.0)
    assert str(state.problem(102.0)) == "orbit_x: codec 'jpeg' not decoded"
    assert state.value.tolist() == good.tolist()  # the last good array is still the one served


def test_gathered_input_names_the_pv_of_the_bad_element():
    refs = tuple(PVRef("ca", f"SIM:BPM{i:02d}:Y") for i in range(4))
    cfg = InputConfig("orbit_y", gather=refs, shape=(4,), max_age_s=2.0, range=(-5.0, 5.0))
    state = input_state(cfg, 0.0)
    assert isinstance(state, GatheredInputState)
    assert str(state.problem(0.0)) == "orbit_y: SIM:BPM00:Y not connected yet"
    for k in range(4):
        state.accept(k, float(k), Severity.NO_ALARM, 10.0 + k, True)
    assert state.problem(12.0) is None and state.value.tolist() == [0, 1, 2, 3] and state.timestamp == 13.0
    state.accept(2, math.nan, Severity.NO_ALARM, 14.0, True)
    assert str(state.problem(14.0)) == "orbit_y: SIM:BPM02:Y NaN"
    state.accept(2, 2.0, Severity.INVALID, 14.0, True)
    assert str(state.problem(14.0)) == "orbit_y: SIM:BPM02:Y INVALID"
    state.accept(2, 7.0, Severity.NO_ALARM, 14.0, True)
    assert str(state.problem(14.0)) == "orbit_y: SIM:BPM02:Y 7 outside [-5, 5]"
    state.accept(2, 2.0, Severity.MINOR, 14.0, True)
    assert state.problem(11.9) is None
    assert str(state.problem(12.1)) == "orbit_y: SIM:BPM00:Y stale (> 2 s)"  # element 0 is 2.1 s old
    assert state.expires_at() == 12.0 and state.severity == Severity.MINOR
    assert state.accept(1, None, Severity.INVALID, 15.0, False) is True
    assert str(state.problem(12.0)) == "orbit_y: SIM:BPM01:Y disconnected"


# ----------------------------------------------------------------------------- manifest


def _doc(**changes):
    doc = array_manifest([("orbit", (4,)), ("q", ())], [("p", (3,))], np.zeros((1, 5)), np.zeros((1, 3)))
    doc["sha256"] = SHA
    for path, value in changes.items():
        target = doc
        *head, last = path.split(".")
        for key in head:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = value
    return doc


def test_manifest_shapes_and_normalisation():
    m = parse_manifest(_doc(**{"inputs.0.mean": [1, 2, 3, 4], "inputs.0.std": 2.0,
                               "onnx.input_shape": [1, 5]}))
    assert m.inputs[0].shape == (4,) and m.n_in == 5 and m.n_out == 3 and m.input_shape == (1, 5)
    assert m.output_shape == (3,)  # the default: one flat vector
    mean, std = m.inputs[0].normalisation()
    assert mean.tolist() == [1, 2, 3, 4] and std.tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"inputs.0.mean": [1, 2, 3]}, r"inputs\[0\].mean: \[3\] numbers for shape \[4\]"),
        ({"inputs.0.std": [1, 1, 0, 1]}, r"inputs\[0\].std: every element must be finite and > 0"),
        ({"inputs.1.mean": [1]}, r"only allowed for an array signal"),
        ({"inputs.0.shape": [0]}, r"inputs\[0\].shape: expected a list of positive integers"),
        ({"onnx.input_shape": [2, 3]}, r"onnx.input_shape: \[2, 3\] holds 6 elements, but the inputs flatten to 5"),
        ({"test_vectors.inputs": [[0, 0, 0, 0]]}, r"test_vectors.inputs\[0\]: expected 5 numbers"),
    ],
)
def test_manifest_refuses(changes, match):
    with pytest.raises(ManifestError, match=match):
        parse_manifest(_doc(**changes))


# ----------------------------------------------------------------------------- engine


def _model_config(store, inputs, outputs) -> ModelConfig:
    return ModelConfig(name="m", prefix="P:", store=str(store), trigger=TriggerConfig("on_change"),
                       inputs=tuple(InputConfig(n, shape=s) for n, s in inputs),
                       outputs=tuple(OutputConfig(n, shape=s) for n, s in outputs))


def test_orbit_model_waveform_and_scalar_in_scalars_out(tmp_path):
    inputs, outputs = [("orbit", (32,)), ("energy", ())], [("kick_x", ()), ("kick_y", ())]
    w = np.random.default_rng(1).normal(size=(2, 33))
    store, _ = publish_array_linear(tmp_path / "s", inputs, outputs, w, [0.5, -0.5])
    model = load_champion(_model_config(store.root, inputs, outputs), INF)
    x = np.random.default_rng(2).normal(size=33)
    np.testing.assert_allclose(model.run(x), w @ x + [0.5, -0.5], rtol=1e-4, atol=1e-4)


def test_screen_model_image_into_a_cnn(tmp_path):
    kernels = np.stack([np.ones((3, 3)) / 9, np.array([[1, 0, -1]] * 3, dtype=float)])
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, size=(2, 8, 6))
    store = ModelStore(tmp_path / "s")
    doc = array_manifest([("screen", (8, 6))], [("blur", ()), ("edge", ())], images.reshape(2, -1),
                         conv_mean(images, kernels), input_shape=[1, 8, 6], onnx_output="m")
    n = store.add_version(conv_mean_model(8, 6, kernels), doc)
    store.write_pointer("champion", n)
    model = load_champion(_model_config(store.root, [("screen", (8, 6))], [("blur", ()), ("edge", ())]), INF)
    assert model.in_shape == (1, 8, 6)
    image = rng.uniform(0, 1, size=(8, 6))
    np.testing.assert_allclose(model.run(image.reshape(-1)), conv_mean(image[None], kernels)[0], atol=1e-5)


def test_virtual_diagnostic_scalars_in_profile_and_image_out(tmp_path):
    inputs, outputs = [("q1", ()), ("q2", ())], [("profile", (10,)), ("image", (4, 5))]
    w = np.random.default_rng(4).normal(size=(30, 2))
    store, _ = publish_array_linear(tmp_path / "s", inputs, outputs, w, np.zeros(30), output_shape=[30])
    model = load_champion(_model_config(store.root, inputs, outputs), INF)
    np.testing.assert_allclose(model.run(np.array([1.0, -2.0])), w @ [1.0, -2.0], atol=1e-4)


def test_per_element_and_per_channel_normalisation(tmp_path):
    store = ModelStore(tmp_path / "s")
    # identity graph on 3 elements; input normalised per element, output per channel
    doc = array_manifest([("v", (3,))], [("p", (3,))], np.array([[11.0, 22.0, 33.0]]), np.array([[7.0, 7.0, 7.0]]),
                         norm={"v": ([10.0, 20.0, 30.0], [1.0, 2.0, 3.0]), "p": (5.0, 2.0)})
    n = store.add_version(array_linear_model(np.eye(3), np.zeros(3), (3,), (3,)), doc)
    store.write_pointer("champion", n)
    model = load_champion(_model_config(store.root, [("v", (3,))], [("p", (3,))]), INF)
    # x = [11, 22, 33] -> xn = (x - [10, 20, 30]) / [1, 2, 3] = [1, 1, 1] -> yn = xn -> y = yn * 2 + 5
    np.testing.assert_allclose(model.run(np.array([11.0, 22.0, 33.0])), [7.0, 7.0, 7.0], atol=1e-5)
    np.testing.assert_allclose(model.run(np.array([12.0, 20.0, 36.0])), [9.0, 5.0, 9.0], atol=1e-5)


def test_tensor_shape_must_match_the_manifest(tmp_path):
    store = ModelStore(tmp_path / "s")
    xs = np.zeros((1, 12))
    doc = array_manifest([("img", (3, 4))], [("y", ())], xs, np.zeros((1, 1)), input_shape=[1, 4, 3])
    n = store.add_version(array_linear_model(np.ones((1, 12)), [0.0], (1, 3, 4), (1,)), doc)
    with pytest.raises(EngineError, match=r"input tensor 'x' has shape \['batch', 1, 3, 4\], expected "
                                          r"\[batch, 1, 4, 3\] \(manifest onnx.input_shape\)"):
        load_version(store, n, _model_config(store.root, [("img", (3, 4))], [("y", ())]), INF)


def test_shape_disagreeing_with_the_config_names_the_key_and_the_fix(tmp_path):
    store, n = publish_array_linear(tmp_path / "s", [("orbit", (32,))], [("y", ())], np.ones((1, 32)), [0.0])
    with pytest.raises(SignatureMismatch) as info:
        load_version(store, n, _model_config(store.root, [("orbit", (16,))], [("y", ())]), INF)
    assert info.value.key == ("inputs", 0, "shape")
    assert "input shape is [32] in the model, [16] in the config" in str(info.value)
    assert info.value.fix == "set 'shape: [32]' on this input, or push a model trained on [16]"
    with pytest.raises(SignatureMismatch, match="output shape is a scalar in the model, \\[1\\] in the config"):
        load_version(store, n, _model_config(store.root, [("orbit", (32,))], [("y", (1,))]), INF)


def test_array_test_vectors_must_reproduce(tmp_path):
    store = ModelStore(tmp_path / "s")
    xs = np.ones((1, 4))
    doc = array_manifest([("v", (4,))], [("p", (4,))], xs, xs * 2)  # claims 2x; the graph is identity
    n = store.add_version(array_linear_model(np.eye(4), np.zeros(4), (4,), (4,)), doc)
    with pytest.raises(EngineError, match=r"test vector 0 output p\[0\] = 1, expected 2"):
        load_version(store, n, _model_config(store.root, [("v", (4,))], [("p", (4,))]), INF)
    assert json.loads(store.manifest_path(n).read_text())["inputs"][0]["shape"] == [4]
