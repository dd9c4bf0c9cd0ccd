"""The engine loads only what passes every check, and computes what the model says."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ioc.core.config import InferenceConfig, InputConfig, ModelConfig, OutputConfig, TriggerConfig
from ioc.core.engine import EngineError, choose_providers, load_champion, load_version
from ioc.core.store import ModelStore
from tests.support.models import linear_model, manifest_for, publish_linear

W = [[2.0, 1.0], [1.0, -1.0]]
B = [0.0, 1.0]
INF = InferenceConfig(provider="cpu")


def _config(store, inputs=("a", "b"), outputs=("y1", "y2"), units_in=("", ""), units_out=("", "")) -> ModelConfig:
    return ModelConfig(
        name="m", prefix="P:", store=str(store), trigger=TriggerConfig("on_change"),
        inputs=tuple(InputConfig(n, units=u) for n, u in zip(inputs, units_in, strict=True)),
        outputs=tuple(OutputConfig(n, units=u) for n, u in zip(outputs, units_out, strict=True)),
    )


def test_loads_and_runs_linear_model(tmp_path):
    store, n = publish_linear(tmp_path / "s", ["a", "b"], ["y1", "y2"], W, B)
    model = load_champion(_config(store.root), INF)
    assert model.version == str(n) and model.provider == "CPUExecutionProvider"
    np.testing.assert_allclose(model.run(np.array([3.0, 4.0])), [10.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(model.run_batch(np.array([[1.0, 1.0], [0.0, 2.0]])), [[3.0, 1.0], [2.0, -1.0]],
                               atol=1e-5)
    assert model.warm_p99_ms > 0


def test_normalisation_from_manifest_is_applied_around_the_graph(tmp_path):
    store = ModelStore(tmp_path / "s")
    doc = manifest_for(["a"], ["y"])
    doc["inputs"][0].update(mean=10.0, std=2.0)
    doc["outputs"][0].update(mean=100.0, std=5.0)
    n = store.add_version(linear_model([[1.0]], [0.0]), doc)  # graph: identity
    store.write_pointer("champion", n)
    model = load_champion(_config(store.root, ("a",), ("y",), ("",), ("",)), INF)
    # x=14 -> xn=2 -> yn=2 -> y = 2*5 + 100
    assert model.run(np.array([14.0]))[0] == pytest.approx(110.0)


def _expect_rejected(tmp_path, mutate, match, config=None):
    store, n = publish_linear(tmp_path / "s", ["a", "b"], ["y1", "y2"], W, B)
    mutate(store, n)
    with pytest.raises(EngineError, match=match):
        load_version(store, n, config or _config(store.root), INF)


def test_rejects_sha_mismatch(tmp_path):
    def corrupt(store, n):
        data = bytearray(store.onnx_path(n).read_bytes())
        data[-1] ^= 0xFF
        store.onnx_path(n).write_bytes(bytes(data))
    _expect_rejected(tmp_path, corrupt, "sha256 mismatch")


def test_rejects_file_onnx_runtime_cannot_load(tmp_path):
    def garbage(store, n):
        store.onnx_path(n).write_bytes(b"not an onnx file")
        m = json.loads(store.manifest_path(n).read_text())
        from ioc.core.store import sha256_file
        m["sha256"] = sha256_file(store.onnx_path(n))
        store.manifest_path(n).write_text(json.dumps(m))
    _expect_rejected(tmp_path, garbage, "ONNX Runtime cannot load")


def test_rejects_signature_that_does_not_match_config(tmp_path):
    _expect_rejected(tmp_path, lambda s, n: None, r"model inputs \['a', 'b'\] != config inputs \['a', 'c'\]",
                     config=_config(tmp_path / "s", inputs=("a", "c")))


def test_rejects_unit_mismatch(tmp_path):
    store, n = publish_linear(tmp_path / "s", ["a", "b"], ["y1", "y2"], W, B, units_in=["A", "A"])
    with pytest.raises(EngineError, match="input a is in 'A' in the model, 'mA' in config"):
        load_version(store, n, _config(store.root, units_in=("mA", "A")), INF)


def test_rejects_bad_test_vector(tmp_path):
    def wrong_expectation(store, n):
        m = json.loads(store.manifest_path(n).read_text())
        m["test_vectors"]["outputs"][1][0] += 0.5
        store.manifest_path(n).write_text(json.dumps(m))
    _expect_rejected(tmp_path, wrong_expectation, "test vector 1 output y1")


def test_rejects_tensor_width_that_does_not_match_manifest(tmp_path):
    store = ModelStore(tmp_path / "s")
    n = store.add_version(linear_model(np.ones((3, 2)), np.zeros(3)), manifest_for(["a", "b"], ["y1", "y2"]))
    with pytest.raises(EngineError, match=r"output tensor 'y' has shape \['batch', 3\], expected \[batch, 2\]"):
        load_version(store, n, _config(store.root), INF)


def test_rejects_malformed_manifest(tmp_path):
    _expect_rejected(tmp_path, lambda s, n: s.manifest_path(n).write_text("{"), "bad manifest")


def test_no_champion(tmp_path):
    store, _ = publish_linear(tmp_path / "s", ["a", "b"], ["y1", "y2"], W, B, champion=False)
    with pytest.raises(EngineError, match="no champion"):
        load_champion(_config(store.root), INF)
    with pytest.raises(EngineError, match="missing: no such store"):
        load_champion(_config(tmp_path / "missing"), INF)


def test_provider_choice():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(EngineError, match="install onnxruntime-gpu"):
            choose_providers("cuda")
