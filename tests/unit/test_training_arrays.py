"""`mlioc train` for array models, in-process on tiny synthetic data: each array kind trains a few epochs,
exports ONNX with torch-vs-ONNX-Runtime parity, passes the version checks and is pushed into a real model
store; a second run warm-starts from that champion; `mlioc reproduce` retrains a run within tolerance.
Real sqlite MLflow store, real ONNX Runtime, real model store."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")  # the `train` extra

from ioc.core.configfile import load_config
from ioc.core.engine import load_version
from ioc.core.store import ModelStore
from tests.support.configs import model, write_config
from training.layout import Layout
from training.pipeline import Options, run
from training.reproduce import reproduce
from training.spec import load_spec

N = 400


def _waves(rng):
    """A waveform [24] a cos + b sin (plus noise) -> a, b."""
    a, b = rng.normal(size=(2, N))
    k = np.arange(24)
    wave = a[:, None] * np.cos(2 * np.pi * k / 24) + b[:, None] * np.sin(2 * np.pi * k / 24)
    return {"wave": wave + 0.01 * rng.normal(size=wave.shape), "a": a, "b": b}


def _spots(rng):
    """A 16 x 16 image of a Gaussian spot -> its centre."""
    cx, cy = rng.uniform(-3, 3, size=(2, N))
    g = np.arange(16) - 7.5
    img = np.exp(-0.5 * ((g[None, None, :] - cx[:, None, None]) ** 2 + (g[None, :, None] - cy[:, None, None]) ** 2)
                 / 4.0)
    return {"img": img + 0.01 * rng.normal(size=img.shape), "cx": cx, "cy": cy}


def _profiles(rng):
    """Two scalars (centre, width) -> a 16-point Gaussian profile."""
    mu, s = rng.uniform(-2, 2, N), rng.uniform(1, 3, N)
    g = np.linspace(-6, 6, 16)
    return {"mu": mu, "s": s, "p": np.exp(-0.5 * ((g - mu[:, None]) / s[:, None]) ** 2)}


CASES = {
    "cnn1d": (_waves, [{"name": "wave", "shape": [24]}], ["a", "b"],
              {"kind": "cnn1d", "channels": [4, 8], "kernel": 5, "hidden": [16]}),
    "cnn2d": (_spots, [{"name": "img", "shape": [16, 16], "units": "counts"}], ["cx", "cy"],
              {"kind": "cnn2d", "channels": [4, 8], "hidden": [16], "normalise": "element"}),
    "mlp-on-an-image": (_spots, [{"name": "img", "shape": [16, 16]}], ["cx", "cy"],
                        {"kind": "regression", "hidden": [32]}),
    "conv-decoder": (_profiles, ["mu", "s"], [{"name": "p", "shape": [16], "units": "a.u."}],
                     {"hidden": [16], "decoder": "conv", "decoder_channels": [8, 4]}),
}


def _setup(tmp_path, case: str, epochs: int = 20):
    make, inputs, outputs, training = CASES[case]
    np.savez(tmp_path / "d.npz", **make(np.random.default_rng(0)))
    training = {**training, "epochs": epochs, "batch_size": 64, "lr": 0.01, "seed": 0,
                "data": {"source": "file", "path": "d.npz"}, "gate": {"test_vectors": 3}}
    path = write_config(tmp_path / "c.yaml", model("T:", inputs=inputs, outputs=outputs, training=training),
                        ioc={"metrics_port": 0})
    return load_config(path)


def _train(tmp_path, config, **kw):
    opts = Options(push=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)
    return run(config, "m", load_spec(config, "m"), opts)


@pytest.mark.parametrize("case", list(CASES))
def test_each_array_kind_trains_exports_with_parity_and_is_pushed(tmp_path, case):
    config = _setup(tmp_path, case)
    out = _train(tmp_path, config)
    assert out.parity.ok and out.parity.max_abs < 1e-4 and out.parity.n == len(out.split.test)
    assert out.decision.promote and out.decision.checks["ioc_validation"] is True
    assert out.store_version == 1
    store = ModelStore(tmp_path / "store")
    assert store.champion() == 1
    doc = json.loads(store.manifest_path(1).read_text())
    layout = Layout.from_model(config.model("m"), load_spec(config, "m").kind)
    assert doc["onnx"]["input_shape"] == list(layout.input_tensor)
    assert doc["onnx"]["output_shape"] == [layout.n_out]
    arrays = [e for e in doc["inputs"] + doc["outputs"] if "shape" in e]
    assert arrays and all(e["shape"] == list(s.shape) for e in arrays
                          for s in (*layout.inputs, *layout.outputs) if s.name == e["name"])
    assert all(len(row) == layout.n_in for row in doc["test_vectors"]["inputs"])
    for e in doc["inputs"]:
        if "shape" in e:
            assert doc["reference"]["inputs"][e["name"]]["summary"] == "pca"
    # The pushed version, loaded by the IOC's own engine, reproduces its test vectors and beats a constant.
    version = load_version(store, 1, config.model("m"), config.ioc.inference)
    assert np.isfinite(version.run_batch(out.split.test.x)).all()
    assert out.decision.challenger.mean_nrmse < 0.8
    assert store.onnx_path(1).stat().st_size < 200_000


@pytest.mark.slow
def test_an_array_model_warm_starts_from_its_champion_and_reproduces(tmp_path):
    config = _setup(tmp_path, "cnn2d", epochs=5)
    first = _train(tmp_path, config)
    second = _train(tmp_path, config)
    assert first.warm_start.startswith("scratch") and second.warm_start == "champion v1"
    # Warm-started: it starts where the champion ended, not from a fresh initialisation.
    assert second.result.history[0].train_loss < first.result.history[0].train_loss
    report = reproduce(first.run_id, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert report.passed and report.pred_max_abs <= report.pred_atol
