"""Drift and ground truth on array models (issue 14.5): an array input is scored by the principal-component
scores of the manifest's summary, with the scalar scores' calibration and debouncing; a scalar output of an
array model is compared with its truth. The references are written by training's own code
(``training.layout.pca_summary``, ``training.dataset.reference_stats``): the contract is tested end to end."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from ioc.core.configfile import load_config
from ioc.core.drift import NoReference
from ioc.core.engine import load_champion
from ioc.core.manifest import Signal
from ioc.core.pvmodel import PVDatabase, Severity
from ioc.core.store import ModelStore
from ioc.core.summary import build_features, feature_label
from ioc.runtime.monitor import ModelMonitor
from ioc.runtime.runner import ModelRunner
from tests.support.clock import Clock
from tests.support.configs import model, write_config
from tests.support.models import array_linear_model, array_manifest
from training.dataset import reference_stats
from training.layout import pca_summary

N = 8  # orbit elements
MODES = np.random.default_rng(42).normal(size=(N, 3))  # the orbit's three ways of moving
MEAN, STD = 0.5, 2.0  # per-channel normalisation of the orbit (the manifest's)


def draw(rng: np.random.Generator, n: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(orbits (n, N), q (n,)): three latent modes plus BPM noise, and an independent scalar."""
    z = rng.normal(size=(n, 3))
    orbit = MEAN + z @ MODES.T + 0.05 * rng.normal(size=(n, N))
    if shift is not None:
        orbit = orbit + shift
    return orbit, rng.normal(size=n)


def weights() -> tuple[np.ndarray, np.ndarray]:
    """p = orbit[:4] (an array output) then y = mean(orbit) + q (a scalar, at flat column 4): W (5, N + 1), b."""
    w = np.zeros((5, N + 1))
    w[:4, :4] = np.eye(4)
    w[4, :N] = 1.0 / N
    w[4, N] = 1.0
    return w, np.zeros(5)


def predict(x: np.ndarray) -> np.ndarray:
    """What the engine serves for raw rows x: the graph runs on normalised values, p is denormalised."""
    w, b = weights()
    xn = x.copy()
    xn[:, :N] = (x[:, :N] - MEAN) / STD
    y = xn @ w.T + b
    y[:, :4] = y[:, :4] * STD + MEAN
    return y


def publish(root, reference: bool = True) -> ModelStore:
    rng = np.random.default_rng(0)
    orbit, q = draw(rng, 20_000)
    x = np.concatenate([orbit, q[:, None]], axis=1)
    w, b = weights()
    y = predict(x)
    manifest = array_manifest([("orbit", (N,)), ("q", ())], [("p", (4,)), ("y", ())], x[:3], y[:3],
                              norm={"orbit": (MEAN, STD), "p": (MEAN, STD)})
    if reference:
        manifest["reference"] = {
            "inputs": {"orbit": pca_summary((orbit - MEAN) / STD), "q": reference_stats(q)},
            "outputs": {"p": pca_summary((y[:, :4] - MEAN) / STD), "y": reference_stats(y[:, 4])},
        }
    manifest["provenance"]["metrics"] = {"test_rmse_y": 0.1}
    store = ModelStore(root)
    store.write_pointer("champion", store.add_version(array_linear_model(w, b, (N + 1,), (5,)), manifest))
    return store


class Rig:
    """A runner + monitor of the array model on the running loop, driven cycle by cycle on a fake clock."""

    def __init__(self, path):
        config = load_config(path)
        self.config = config.models[0]
        self.clock = Clock()
        self.db = PVDatabase()
        self.runner = ModelRunner(self.config, self.db, config.ioc.inference, asyncio.get_running_loop(),
                                  clock=self.clock)
        self.monitor = ModelMonitor(self.runner, self.db, clock=self.clock)
        self.runner.cycle_listeners.append(self.monitor.on_cycle)
        self.runner.model_listeners.append(self.monitor.on_model)
        self.monitor.start()
        self.runner.start()
        self.runner.set_model(load_champion(self.config, config.ioc.inference))

    def cycle(self, orbit: np.ndarray, q: float) -> None:
        self.clock.t += 0.1
        self.runner.update_input(0, orbit, Severity.NO_ALARM, self.clock.t)
        self.runner.update_input(1, float(q), Severity.NO_ALARM, self.clock.t)
        self.runner.run_cycle()

    def run(self, orbits: np.ndarray, qs: np.ndarray) -> None:
        for orbit, q in zip(orbits, qs, strict=True):
            self.cycle(orbit, q)


def config_path(tmp_path, store: ModelStore, **keys):
    drift = {"window_s": 10, "update_s": 0.5, "raise_s": 1, "clear_s": 2, "rate_hz": 10, "error": {"window_s": 3}}
    return write_config(tmp_path / "c.yaml", model(
        "M:", store=str(store.root), trigger={"scan_hz": 10},
        inputs=[{"name": "orbit", "shape": [N]}, "q"],
        outputs=[{"name": "p", "shape": [4]}, {"name": "y", "truth": "ca://TRUTH:Y"}],
        drift=drift, **keys))


# ----------------------------------------------------------------------------- the summary (pure)


def manifest_signals() -> list[Signal]:
    return [Signal("orbit", mean=MEAN, std=STD, shape=(N,)), Signal("q")]


def test_features_are_the_scalars_and_the_principal_component_scores_of_the_arrays():
    rng = np.random.default_rng(1)
    orbit, q = draw(rng, 5000)
    summary = pca_summary((orbit - MEAN) / STD)
    features = build_features({"inputs": {"orbit": summary, "q": reference_stats(q)}}, "inputs", manifest_signals())
    assert features.labels == ("orbit[pc1]", "orbit[pc2]", "orbit[pc3]", "q")
    assert features.groups == (slice(0, 3), slice(3, 4)) and not features.identity
    rows = np.concatenate([orbit[:50], q[:50, None]], axis=1)
    got = features.project(rows)
    comps, centre = np.array(summary["components"]), np.array(summary["center"])
    expected = ((orbit[:50] - MEAN) / STD - centre) @ comps.T  # what training computed its scores with
    np.testing.assert_allclose(got[:, :3], expected, atol=1e-10)
    np.testing.assert_array_equal(got[:, 3], q[:50])
    # The live projection of the training rows has the reference distribution of each score.
    live = features.project(np.concatenate([orbit, q[:, None]], axis=1))
    for k in range(3):
        ref = summary["scores"][f"pc{k + 1}"]
        assert live[:, k].std() == pytest.approx(ref["std"], rel=0.05)
    worst, column = features.per_signal(np.array([0.1, 0.7, 0.3, 0.2]))
    assert worst.tolist() == [0.7, 0.2] and features.labels[column[0]] == feature_label("orbit", 2)


def test_a_model_of_scalars_alone_is_scored_as_before():
    q = np.random.default_rng(2).normal(size=1000)
    features = build_features({"inputs": {"a": reference_stats(q), "b": reference_stats(q)}}, "inputs",
                              [Signal("a"), Signal("b")])
    rows = np.ones((3, 2))
    assert features.identity and features.project(rows) is rows and features.labels == ("a", "b")


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("summary"), "an array needs a 'summary: pca' reference"),
    (lambda s: s.update(components=[[1.0] * (N - 1)]), "components must be k lists of 8 numbers"),
    (lambda s: s.update(center=[0.0]), "center must hold 8 numbers"),
    (lambda s: s["scores"].pop("pc2"), "no reference for scores.pc2"),
    (lambda s: s.update(space="log"), "space must be one of normalised, raw"),
    (lambda s: s.update(components=[[0.0] * N]), "a component is all zeros"),
])
def test_a_malformed_summary_is_refused_with_the_reason(change, message):
    orbit, q = draw(np.random.default_rng(3), 500)
    summary = pca_summary((orbit - MEAN) / STD)
    change(summary)
    with pytest.raises(NoReference, match=message):
        build_features({"inputs": {"orbit": summary, "q": reference_stats(q)}}, "inputs", manifest_signals())


# ----------------------------------------------------------------------------- the monitor


async def test_array_drift_is_calibrated_debounced_and_names_the_component(tmp_path):
    rig = Rig(config_path(tmp_path, publish(tmp_path / "store")))
    await asyncio.wait_for(rig.monitor.calibrated.wait(), 30)
    drift, orbit_drift, q_drift = rig.db["M:DRIFT"], rig.db["M:DRIFT:orbit"], rig.db["M:DRIFT:q"]
    cal_in, cal_out = rig.monitor.calibration
    assert (drift.spec.alarm.high, orbit_drift.spec.alarm.hihi) == (cal_in.high, cal_in.hihi)
    assert rig.monitor.scorer.names == ("orbit[pc1]", "orbit[pc2]", "orbit[pc3]", "q", "p[pc1]", "p[pc2]",
                                        "p[pc3]", "y")
    rng = np.random.default_rng(5)
    posts: list = []
    drift.subscribe(lambda pv, reading, events: posts.append(reading))

    rig.run(*draw(rng, 400))  # 40 s in distribution
    assert rig.db["M:OUT:y"].reading.severity == Severity.NO_ALARM
    assert len(posts) >= 60 and all(p.severity == Severity.NO_ALARM for p in posts)
    assert all(0 < p.value < cal_in.high for p in posts)
    assert orbit_drift.reading.severity == Severity.NO_ALARM

    shift = 3.0 * MODES[:, 1]  # the orbit moves along one of its modes by 3 of its std devs
    mark = len(posts)
    rig.run(*draw(rng, 200, shift))
    severities = [p.severity for p in posts[mark:]]
    assert severities.index(Severity.MINOR) < severities.index(Severity.MAJOR)
    worst = rig.db["M:DRIFT:WORST"].value
    assert worst.startswith("orbit[pc") and worst.endswith("]"), worst
    assert orbit_drift.reading.severity == Severity.MAJOR and q_drift.reading.severity == Severity.NO_ALARM
    assert orbit_drift.reading.value == pytest.approx(drift.reading.value)  # DRIFT:orbit = its worst component
    assert rig.db["M:MESSAGE"].value.startswith(f"drift MAJOR: {worst} ")
    assert rig.db["M:DRIFT:OUT"].reading.severity == Severity.MAJOR  # p = orbit[:4] moved too

    mark = len(posts)
    rig.run(*draw(rng, 300))  # back in distribution
    assert posts[-1].severity == Severity.NO_ALARM and rig.db["M:MESSAGE"].value == "drift cleared"
    rig.runner.close()


async def test_a_version_without_an_array_summary_says_why_and_keeps_predicting(tmp_path):
    rig = Rig(config_path(tmp_path, publish(tmp_path / "store", reference=False)))
    rig.run(*draw(np.random.default_rng(6), 30))
    assert rig.db["M:OUT:y"].reading.severity == Severity.NO_ALARM
    for name in ("M:DRIFT", "M:DRIFT:orbit", "M:DRIFT:q"):
        assert rig.db[name].reading.severity == Severity.INVALID
        assert rig.db[name].reading.message == "v1: manifest has no reference"
    rig.runner.close()


async def test_a_scalar_output_of_an_array_model_is_compared_with_its_truth(tmp_path):
    rig = Rig(config_path(tmp_path, publish(tmp_path / "store")))
    mae, rmse = rig.db["M:MAE:y"], rig.db["M:RMSE:y"]
    assert "M:MAE:p" not in rig.db  # truth on an array output is refused by the config
    assert (rmse.spec.alarm.high, rmse.spec.alarm.hihi) == pytest.approx((0.2, 0.3))
    sink = rig.monitor.truth_sink(0)
    rng = np.random.default_rng(7)
    orbits, qs = draw(rng, 150)
    for i, (orbit, q) in enumerate(zip(orbits, qs, strict=True)):
        rig.cycle(orbit, q)
        # The measured y of the same moment, off by +-0.05: MAE = RMSE = 0.05 (y is column 4 of the outputs).
        y = predict(np.append(orbit, q)[None, :])[0, 4]
        sink(y + (0.05 if i % 2 else -0.05), 0, rig.clock.t, True)
    assert mae.reading.value == pytest.approx(0.05) and rmse.reading.value == pytest.approx(0.05)
    assert rmse.reading.severity == Severity.NO_ALARM and not math.isnan(mae.reading.value)
    rig.runner.close()


# ----------------------------------------------------------------------------- the loop's challenger (issue 16)


async def test_the_challenger_of_an_array_model_is_compared_and_scored_on_its_own_summary(tmp_path):
    """ChallengerMonitor on an array model: CHALLENGER:MAE:y pairs flat output column 4 (after the array p) with
    the truth, and CHALLENGER:DRIFT projects the orbit on the challenger's principal components."""
    import json

    from ioc.core.engine import load_version
    from ioc.runtime.challenger import ChallengerMonitor

    store = publish(tmp_path / "store")
    manifest = json.loads(store.manifest_path(1).read_text())
    w, b = weights()
    b = b.copy()
    b[4] = 0.1  # the challenger's y is 0.1 high: its MAE against the exact truth is 0.1, the champion's 0
    for row in manifest["test_vectors"]["outputs"]:
        row[4] += 0.1
    store.write_pointer("challenger", store.add_version(array_linear_model(w, b, (N + 1,), (5,)), manifest))
    path = config_path(tmp_path, store, record={"dir": "rec"}, retrain={"promote": "manual", "min_samples": 50})
    rig = Rig(path)
    rig.runner.set_challenger(load_version(store, 2, rig.config, load_config(path).ioc.inference))
    challenger = ChallengerMonitor(rig.runner, rig.db, clock=rig.clock)
    rig.runner.cycle_listeners.append(challenger.on_cycle)
    rig.runner.challenger_listeners.append(challenger.on_challenger)
    challenger.update()
    drift, mae = rig.db["M:CHALLENGER:DRIFT"], rig.db["M:CHALLENGER:MAE:y"]
    sink = challenger.truth_sink(0)
    rng = np.random.default_rng(8)

    async def run(orbits, qs):
        for i, (orbit, q) in enumerate(zip(orbits, qs, strict=True)):
            rig.cycle(orbit, q)
            sink(float(predict(np.append(orbit, q)[None, :])[0, 4]), 0, rig.clock.t, True)
            if i % 10 == 9:
                challenger.update()
                await asyncio.sleep(0.01)  # the calibration runs on a worker thread

    await run(*draw(rng, 200))
    assert challenger.calibrated, drift.reading.message
    assert mae.reading.value == pytest.approx(0.1, abs=1e-4) and mae.reading.severity == Severity.NO_ALARM
    assert drift.reading.severity == Severity.NO_ALARM and 0 < drift.reading.value < drift.spec.alarm.high
    await run(*draw(rng, 200, 3.0 * MODES[:, 1]))
    assert drift.reading.severity == Severity.MAJOR
    assert drift.reading.message.startswith("worst input orbit[pc"), drift.reading.message
    rig.runner.close()
