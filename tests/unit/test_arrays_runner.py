"""Array models through the cycle, on a real event loop with real ONNX Runtime sessions (no servers):
waveform and image inputs (written, mirrored, gathered), array outputs, bad frames, the challenger."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

from ioc.core.config import InferenceConfig, InputConfig, ModelConfig, OutputConfig, PVRef, TriggerConfig
from ioc.core.engine import load_champion, load_version
from ioc.core.layout import ModelStatus
from ioc.core.pvmodel import ClientInfo, PVDatabase, Severity, Status
from ioc.core.store import ModelStore
from ioc.runtime.runner import ModelRunner
from tests.support.models import OPSET, array_manifest, publish_array_linear

INF = InferenceConfig(provider="cpu")
OP = ClientInfo("op", "console", "ca")


async def _settle():
    for _ in range(3):
        await asyncio.sleep(0)


def _runner(config: ModelConfig, version: int | None = None) -> tuple[ModelRunner, PVDatabase]:
    db = PVDatabase()
    runner = ModelRunner(config, db, INF, asyncio.get_running_loop())
    runner.run_on_input_change = True
    runner.start()
    if version is None:
        runner.set_model(load_champion(config, INF))
    else:
        runner.set_model(load_version(ModelStore(config.store_path), version, config, INF))
    return runner, db


def _config(store, inputs, outputs) -> ModelConfig:
    return ModelConfig(name="m", prefix="P:", store=str(store), trigger=TriggerConfig("on_change"),
                       inputs=tuple(inputs), outputs=tuple(outputs))


async def test_orbit_waveform_in_scalars_out_and_a_bad_element_named(tmp_path):
    w = np.arange(10.0).reshape(2, 5) / 10
    store, _ = publish_array_linear(tmp_path / "s", [("orbit", (4,)), ("e", ())], [("kx", ()), ("ky", ())], w,
                                    [0.0, 1.0])
    runner, db = _runner(_config(store.root, [InputConfig("orbit", shape=(4,)), InputConfig("e", initial=2.0)],
                                 [OutputConfig("kx"), OutputConfig("ky")]))
    assert db["P:MESSAGE"].value == "orbit: no value yet"
    orbit = np.array([1.0, -1.0, 0.5, 2.0])
    db.put("P:IN:orbit", orbit, OP)
    await _settle()
    x = np.append(orbit, 2.0)
    assert runner.status is ModelStatus.OK
    assert abs(db["P:OUT:kx"].value - w[0] @ x) < 1e-5
    assert abs(db["P:OUT:ky"].value - (w[1] @ x + 1.0)) < 1e-5
    served = db["P:IN:orbit"].reading
    assert served.value.tolist() == orbit.tolist() and served.severity == Severity.NO_ALARM

    bad = orbit.copy()
    bad[2] = math.nan
    db.put("P:IN:orbit", bad, OP)
    await _settle()
    assert runner.status is ModelStatus.INPUT_INVALID and db["P:MESSAGE"].value == "orbit[2]: NaN"
    kx = db["P:OUT:kx"].reading
    assert (kx.severity, kx.status, kx.message) == (Severity.INVALID, Status.LINK, "orbit[2]: NaN")
    inp = db["P:IN:orbit"].reading
    assert (inp.severity, inp.status, inp.message) == (Severity.INVALID, Status.UDF, "orbit[2]: NaN")
    db.put("P:IN:orbit", orbit[:3], OP)  # a shorter waveform (NORD 3)
    await _settle()
    assert db["P:MESSAGE"].value == "orbit: 3 elements, expected 4"
    db.put("P:IN:orbit", orbit, OP)
    await _settle()
    assert runner.status is ModelStatus.OK
    runner.close()


async def test_virtual_diagnostic_posts_profile_and_image_with_version(tmp_path):
    w = np.random.default_rng(0).normal(size=(11, 2))
    store, n = publish_array_linear(tmp_path / "s", [("a", ()), ("b", ())], [("profile", (5,)), ("image", (2, 3))], w,
                                    np.zeros(11))
    config = _config(store.root, [InputConfig("a", initial=1.0), InputConfig("b", initial=-1.0)],
                     [OutputConfig("profile", shape=(5,)), OutputConfig("image", shape=(2, 3), dtype="float32")])
    runner, db = _runner(config)
    y = w @ [1.0, -1.0]
    profile, image = db["P:OUT:profile"].reading, db["P:OUT:image"].reading
    np.testing.assert_allclose(profile.value, y[:5], atol=1e-5)
    assert image.value.shape == (2, 3) and image.value.dtype == np.float32
    np.testing.assert_allclose(image.value, y[5:].reshape(2, 3), atol=1e-5)
    assert profile.tag == image.tag == str(n) and db["P:VERSION"].value == str(n)
    assert db["P:OUT:image:SHAPE"].value.tolist() == [2, 3] and db["P:OUT:image:SHAPE"].reading.severity == 0
    records = []
    runner.cycle_listeners.append(records.append)
    db.put("P:IN:a", 2.0, OP)
    await _settle()
    assert records[-1].outputs.shape == (11,) and records[-1].inputs.tolist() == [2.0, -1.0]
    runner.close()


def _sqrt_store(root) -> ModelStore:
    """y = sqrt(x) over a waveform [4]: valid on its test vectors, NaN where an element is negative."""
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "sqrt",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    store = ModelStore(root)
    xs = np.array([[1.0, 4.0, 9.0, 16.0]])
    n = store.add_version(m.SerializeToString(), array_manifest([("v", (4,))], [("r", (4,))], xs, np.sqrt(xs)))
    onnx.checker.check_model(m)
    store.write_pointer("champion", n)
    return store


async def test_a_nonfinite_output_element_is_a_fault_naming_it(tmp_path):
    store = _sqrt_store(tmp_path / "s")
    runner, db = _runner(_config(store.root, [InputConfig("v", shape=(4,))], [OutputConfig("r", shape=(4,))]))
    db.put("P:IN:v", [1.0, 4.0, 9.0, 16.0], OP)
    await _settle()
    assert db["P:OUT:r"].value.tolist() == [1.0, 2.0, 3.0, 4.0]
    db.put("P:IN:v", [1.0, 4.0, 9.0, -1.0], OP)
    await _settle()
    assert runner.status is ModelStatus.FAULT
    assert db["P:MESSAGE"].value == "inference failed: non-finite r[3]"
    out = db["P:OUT:r"].reading
    assert out.severity == Severity.INVALID and out.value.tolist() == [1.0, 2.0, 3.0, 4.0]  # the last good value
    runner.close()


async def test_gathered_vector_posts_once_per_burst_and_names_the_bad_pv(tmp_path):
    store, _ = publish_array_linear(tmp_path / "s", [("orbit", (3,))], [("s", ())], np.ones((1, 3)), [0.0])
    refs = tuple(PVRef("ca", f"BPM{i}") for i in range(3))
    runner, db = _runner(_config(store.root, [InputConfig("orbit", shape=(3,), gather=refs)], [OutputConfig("s")]))
    posts = []
    db["P:IN:orbit"].subscribe(lambda pv, r, e: posts.append(r))
    now = time.time()
    for k in range(3):  # three monitor callbacks land together (a source IOC posts its BPMs at once)
        runner.feed.push(0, float(k + 1), Severity.NO_ALARM, now, True, k)
    await _settle()
    assert len(posts) == 1 and posts[0].value.tolist() == [1.0, 2.0, 3.0]
    assert abs(db["P:OUT:s"].value - 6.0) < 1e-5 and runner.status is ModelStatus.OK
    runner.feed.push(0, None, Severity.INVALID, now, False, 1)
    await _settle()
    assert runner.status is ModelStatus.INPUT_INVALID and db["P:MESSAGE"].value == "orbit: BPM1 disconnected"
    assert db["P:IN:orbit"].reading.severity == Severity.INVALID
    runner.close()


async def test_image_input_shape_pv_follows_the_frame_and_challenger_shadows(tmp_path):
    inputs, outputs = [("screen", (2, 3))], [("p", (2,))]
    w = np.arange(12.0).reshape(2, 6)
    store, _ = publish_array_linear(tmp_path / "s", inputs, outputs, w, [0.0, 0.0], input_shape=[1, 2, 3])
    _, c = publish_array_linear(tmp_path / "s", inputs, outputs, w * 2, [0.0, 0.0], input_shape=[1, 2, 3],
                                pointer="challenger")
    config = _config(store.root, [InputConfig("screen", shape=(2, 3))], [OutputConfig("p", shape=(2,))])
    runner, db = _runner(config)
    runner.set_challenger(load_version(store, c, config, INF))
    frame = np.arange(6.0).reshape(2, 3)
    db.put("P:IN:screen", frame.reshape(-1), OP)  # as a CA client writes an image: flat, row-major
    await _settle()
    champion = w @ frame.reshape(-1)
    np.testing.assert_allclose(db["P:OUT:p"].value, champion, atol=1e-4)
    np.testing.assert_allclose(db["P:CHALLENGER:OUT:p"].value, 2 * champion, atol=1e-4)
    runner.publish_stats(runner.take_stats())
    assert abs(db["P:CHALLENGER:MAD:p"].value - np.mean(champion)) < 1e-3
    assert db["P:IN:screen:SHAPE"].value.tolist() == [2, 3]
    db.put("P:IN:screen", np.arange(6.0).reshape(3, 2), OP)  # the camera turned its frame
    await _settle()
    assert db["P:MESSAGE"].value == "screen: 3x2, expected 2x3"
    assert db["P:IN:screen:SHAPE"].value.tolist() == [3, 2]  # what the served frame is
    db.put("P:IN:screen", np.arange(4.0), OP)  # a flat waveform of the wrong size
    await _settle()
    assert db["P:MESSAGE"].value == "screen: 4 elements, expected 2x3"
    assert db["P:IN:screen:SHAPE"].value.tolist() == [1, 4]
    assert db["P:CHALLENGER:OUT:p"].reading.severity == Severity.INVALID
    runner.close()
