"""The model monitor in process: a real runner, real ONNX Runtime sessions, real PV model, a fake clock.

Drift, anomaly and ground-truth error PVs: calibrated limits served on the PVs, alarms raised and
cleared through hysteresis and debouncing, MESSAGE naming the drifted input, a version without a
reference saying so, and the config's drift section validated.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from ioc.core.engine import load_champion
from ioc.core.pvmodel import PVDatabase, Severity
from ioc.core.store import ModelStore
from ioc.runtime.monitor import ModelMonitor
from ioc.runtime.runner import ModelRunner
from tests.support.clock import Clock
from tests.support.models import linear_model, manifest_for
from tests.unit.test_drift import ref_entry


def publish(root: Path, inputs, outputs, w, b, *, reference=True, kind="regression", metrics=None) -> ModelStore:
    """A linear model version whose manifest has the reference of N(0, 1) inputs (as training writes it)."""
    w, b = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(50_000, len(inputs)))
    ys = xs @ w.T + b
    manifest = manifest_for(inputs, outputs, test_inputs=xs[:4], test_outputs=ys[:4])
    manifest["kind"] = kind
    if reference:
        manifest["reference"] = {"inputs": {n: ref_entry(xs[:, i]) for i, n in enumerate(inputs)},
                                 "outputs": {n: ref_entry(ys[:, j]) for j, n in enumerate(outputs)}}
    if metrics:
        manifest["provenance"]["metrics"] = metrics
    store = ModelStore(root)
    store.write_pointer("champion", store.add_version(linear_model(w, b), manifest))
    return store


def config_for(tmp_path: Path, store: ModelStore, inputs, outputs, drift: str, truth: str = "") -> Path:
    ins = "".join(f"      - {{name: {n}}}\n" for n in inputs)
    outs = "".join(f"      - {{name: {n}{truth if i == 0 else ''}}}\n" for i, n in enumerate(outputs))
    path = tmp_path / "m.yaml"
    path.write_text(
        "models:\n"
        "  - name: m\n"
        '    prefix: "M:"\n'
        f"    store: {store.root}\n"
        "    trigger: {scan_hz: 10}\n"
        f"    inputs:\n{ins}"
        f"    outputs:\n{outs}"
        f"    drift: {drift}\n")
    return path


class Rig:
    """A runner + monitor on the running loop, driven cycle by cycle on a fake 10 Hz clock."""

    def __init__(self, config_path: Path):
        config = load_config(config_path)
        self.model_config = config.models[0]
        self.clock = Clock()
        self.db = PVDatabase()
        self.runner = ModelRunner(self.model_config, self.db, config.ioc.inference, asyncio.get_running_loop(),
                                  clock=self.clock)
        self.monitor = ModelMonitor(self.runner, self.db, clock=self.clock)
        self.runner.cycle_listeners.append(self.monitor.on_cycle)  # as ioc.app wires it
        self.runner.model_listeners.append(self.monitor.on_model)
        self.runner.run_on_input_change = self.model_config.trigger.kind == "on_change"
        self.monitor.start()
        self.runner.start()
        self.model = load_champion(self.model_config, config.ioc.inference)
        self.posts: dict[str, list] = {}

    async def start(self) -> Rig:
        self.runner.set_model(self.model)
        if self.model_config.drift is not None and self.model.manifest.reference is not None:
            await asyncio.wait_for(self.monitor.calibrated.wait(), 30)
        return self

    def record(self, name: str) -> list:
        posts = self.posts.setdefault(name, [])
        self.db[name].subscribe(lambda pv, reading, events: posts.append(reading))
        return posts

    def cycle(self, x) -> None:
        self.clock.t += 0.1
        for i, v in enumerate(x):
            self.runner.update_input(i, float(v), Severity.NO_ALARM, self.clock.t)
        self.runner.run_cycle()

    def run(self, xs) -> None:
        for x in xs:
            self.cycle(x)


FAST = "{window_s: 10, update_s: 0.5, raise_s: 1, clear_s: 2, correlation_s: 0}"


async def test_drift_raises_minor_then_major_names_the_input_and_clears_with_hysteresis(tmp_path):
    store = publish(tmp_path / "s", ["a", "b"], ["y"], [[1.0, 2.0]], [0.5])
    rig = await Rig(config_for(tmp_path, store, ["a", "b"], ["y"], FAST)).start()
    drift, per_b, out = rig.db["M:DRIFT"], rig.db["M:DRIFT:b"], rig.db["M:DRIFT:OUT"]
    cal_in, cal_out = rig.monitor.calibration
    # The calibrated limits are served on the PVs (HIGH -> MINOR, HIHI -> MAJOR, HYST), inputs and overall alike.
    for pv in (drift, rig.db["M:DRIFT:a"], per_b):
        a = pv.spec.alarm
        assert (a.high, a.hihi, a.hyst) == (cal_in.high, cal_in.hihi, cal_in.hyst)
        assert (a.hsv, a.hhsv) == (Severity.MINOR, Severity.MAJOR)
    assert (out.spec.alarm.high, out.spec.alarm.hihi) == (cal_out.high, cal_out.hihi)
    assert drift.spec.egu == "sigma"
    posts = rig.record("M:DRIFT")
    rng = np.random.default_rng(5)

    rig.run(rng.normal(size=(400, 2)))  # 40 s in distribution
    assert len(posts) >= 60 and all(p.severity == Severity.NO_ALARM for p in posts)
    assert all(math.isfinite(p.value) and p.value < cal_in.high for p in posts)
    assert "warming up" in posts[0].message and posts[-1].message == f"worst input {rig.db['M:DRIFT:WORST'].value}"

    mark = len(posts)
    shifted = rng.normal(size=(200, 2))
    shifted[:, 1] += 3.0
    rig.run(shifted)  # input b moves by 3 reference std devs
    severities = [p.severity for p in posts[mark:]]
    assert Severity.MAJOR in severities
    assert severities.index(Severity.MINOR) < severities.index(Severity.MAJOR)  # MINOR first, as the window fills
    first_minor = posts[mark + severities.index(Severity.MINOR)]
    assert first_minor.value >= cal_in.high
    assert rig.db["M:DRIFT:WORST"].value == "b"
    assert per_b.reading.severity == Severity.MAJOR and rig.db["M:DRIFT:a"].reading.severity == Severity.NO_ALARM
    assert rig.db["M:MESSAGE"].value.startswith("drift MAJOR: b ")
    assert out.reading.severity == Severity.MAJOR  # y = a + 2 b + 0.5 moved too

    mark = len(posts)
    rig.run(rng.normal(size=(300, 2)))  # back in distribution: the window empties of drifted samples
    after = posts[mark:]
    assert after[-1].severity == Severity.NO_ALARM
    cleared = next(i for i, p in enumerate(after) if p.severity == Severity.NO_ALARM)
    # Held: updates below HIGH that still served an alarm (hysteresis, then clear_s), and clearing only
    # after the score has stayed below HIGH - HYST for clear_s (2 s: 4 updates).
    assert any(p.value < cal_in.high and p.severity >= Severity.MINOR for p in after[:cleared])
    assert all(p.value < cal_in.high - cal_in.hyst for p in after[cleared - 4:cleared + 1])
    assert rig.db["M:MESSAGE"].value == "drift cleared"
    rig.runner.close()


async def test_a_version_without_reference_serves_predictions_but_no_invented_score(tmp_path):
    store = publish(tmp_path / "s", ["a", "b"], ["y"], [[1.0, 2.0]], [0.5], reference=False)
    rig = await Rig(config_for(tmp_path, store, ["a", "b"], ["y"], FAST)).start()
    rig.run(np.ones((30, 2)))
    assert rig.db["M:OUT:y"].reading.severity == Severity.NO_ALARM
    assert rig.db["M:OUT:y"].value == pytest.approx(3.5)
    for name in ("M:DRIFT", "M:DRIFT:a", "M:DRIFT:b", "M:DRIFT:OUT"):
        reading = rig.db[name].reading
        assert reading.severity == Severity.INVALID and math.isnan(reading.value)
        assert reading.message == "v1: manifest has no reference"
    assert rig.monitor.scorer is None
    rig.runner.close()


async def test_configured_limits_replace_the_calibrated_ones(tmp_path):
    store = publish(tmp_path / "s", ["a", "b"], ["y"], [[1.0, 2.0]], [0.5])
    drift = ("{window_s: 10, update_s: 0.5, limits: {high: 0.7, hihi: 1.5}, "
             "output_limits: {high: 2, hihi: 3, hyst: 0.1}}")
    rig = await Rig(config_for(tmp_path, store, ["a", "b"], ["y"], drift)).start()
    a = rig.db["M:DRIFT"].spec.alarm
    assert (a.high, a.hihi, a.hyst) == (0.7, 1.5, rig.monitor.calibration[0].hyst)
    o = rig.db["M:DRIFT:OUT"].spec.alarm
    assert (o.high, o.hihi, o.hyst) == (2.0, 3.0, 0.1)
    rig.runner.close()


async def test_psi_and_ks_methods_serve_their_own_units_and_limits(tmp_path):
    store = publish(tmp_path / "s", ["a", "b"], ["y"], [[1.0, 2.0]], [0.5])
    for method in ("psi", "ks"):
        rig = await Rig(config_for(tmp_path, store, ["a", "b"], ["y"],
                                   f"{{method: {method}, window_s: 20, update_s: 0.5, correlation_s: 0}}")).start()
        assert rig.monitor.scorer.binning.bins == (10 if method == "psi" else 100)
        assert rig.db["M:DRIFT"].spec.egu == ""
        rig.run(np.random.default_rng(1).normal(size=(250, 2)))
        calm = rig.db["M:DRIFT"].reading
        assert calm.severity == Severity.NO_ALARM and 0 < calm.value < rig.db["M:DRIFT"].spec.alarm.high
        rig.run(np.random.default_rng(2).normal(size=(250, 2)) + np.array([4.0, 0.0]))
        assert rig.db["M:DRIFT"].reading.severity == Severity.MAJOR and rig.db["M:DRIFT:WORST"].value == "a"
        rig.runner.close()


async def test_autoencoder_anomaly_is_the_reconstruction_error_relative_to_training(tmp_path):
    # Reconstruction x_hat = 0.9 x: the error is 0.1 x, so on N(0, 1) inputs its rms is 0.1 = the test RMSE.
    metrics = {"test_rmse_a": 0.1, "test_rmse_b": 0.1}
    store = publish(tmp_path / "s", ["a", "b"], ["a", "b"], np.eye(2) * 0.9, [0.0, 0.0], kind="autoencoder",
                    metrics=metrics)
    rig = await Rig(config_for(tmp_path, store, ["a", "b"], ["a", "b"],
                               "{window_s: 10, update_s: 0.5, raise_s: 1, anomaly: {window_s: 3}}")).start()
    anomaly = rig.db["M:ANOMALY"]
    assert (anomaly.spec.alarm.high, anomaly.spec.alarm.hihi) == (2.0, 3.0)
    rig.run(np.random.default_rng(3).normal(size=(200, 2)))
    assert anomaly.reading.value == pytest.approx(1.0, abs=0.35) and anomaly.reading.severity == Severity.NO_ALARM
    rig.run(np.random.default_rng(4).normal(size=(100, 2)) * 5)  # far outside: 5x the training error
    assert anomaly.reading.value == pytest.approx(5.0, rel=0.35) and anomaly.reading.severity == Severity.MAJOR
    rig.runner.close()

    regression = publish(tmp_path / "r", ["a", "b"], ["a", "b"], np.eye(2), [0.0, 0.0], metrics=metrics)
    rig = await Rig(config_for(tmp_path, regression, ["a", "b"], ["a", "b"], "{window_s: 10}")).start()
    assert rig.db["M:ANOMALY"].reading.severity == Severity.INVALID
    assert rig.db["M:ANOMALY"].reading.message == "v1 is not an autoencoder"
    rig.runner.close()


async def test_rolling_error_against_the_ground_truth(tmp_path):
    store = publish(tmp_path / "s", ["a", "b"], ["y", "z"], [[1.0, 2.0], [1.0, 0.0]], [0.5, 0.0],
                    metrics={"test_rmse_y": 0.1})
    rig = await Rig(config_for(tmp_path, store, ["a", "b"], ["y", "z"],
                               "{window_s: 10, update_s: 0.5, raise_s: 1, error: {window_s: 3}}",
                               truth=', truth: "ca://TRUTH:Y"')).start()
    assert "M:MAE:z" not in rig.db  # only outputs with a truth get error PVs
    mae, rmse = rig.db["M:MAE:y"], rig.db["M:RMSE:y"]
    assert (rmse.spec.alarm.high, rmse.spec.alarm.hihi) == pytest.approx((0.2, 0.3))  # 2x / 3x test RMSE
    sink = rig.monitor.truth_sink(0)
    rng = np.random.default_rng(6)
    for i, x in enumerate(rng.normal(size=(120, 2))):
        rig.cycle(x)
        # The measured value of the same moment, off by +-0.05 (alternating): MAE = RMSE = 0.05.
        sink(x[0] + 2 * x[1] + 0.5 + (0.05 if i % 2 else -0.05), 0, rig.clock.t, True)
    assert mae.reading.value == pytest.approx(0.05) and rmse.reading.value == pytest.approx(0.05)
    assert rmse.reading.severity == Severity.NO_ALARM
    for x in rng.normal(size=(200, 2)):
        rig.cycle(x)
        sink(x[0] + 2 * x[1] + 0.5 + 0.4, 0, rig.clock.t, True)  # the model no longer tracks the machine
        sink(math.nan, 0, rig.clock.t, True)  # ignored
    assert mae.reading.value == pytest.approx(0.4) and rmse.reading.severity == Severity.MAJOR
    sink(None, Severity.INVALID, rig.clock.t, False)  # truth IOC gone
    rig.run(rng.normal(size=(250, 2)))
    assert rmse.reading.severity == Severity.INVALID and rmse.reading.message == "no truth from TRUTH:Y"
    rig.runner.close()


@pytest.mark.parametrize("drift, problem", [
    ("{method: chi2}", "drift.method: expected one of wasserstein, psi, ks"),
    ("{bins: 7}", "drift.bins: expected one of"),
    ("{window_s: 0.5}", "drift.window_s: window of 0.5 s at 10.0 Hz is 5 cycles"),
    ("{limits: {high: 2, hihi: 1}}", "drift.limits: high must be < hihi"),
    ("{sigmas: {minor: 9, major: 8}}", "drift.sigmas: minor must be < major"),
    ("{windw_s: 10}", "drift.windw_s: unknown key (did you mean 'window_s'?)"),
    ("{error: {high: 3, hihi: 2}}", "drift.error: high must be < hihi"),
])
def test_bad_drift_sections_are_refused_with_the_reason(tmp_path, drift, problem):
    store = publish(tmp_path / "s", ["a", "b"], ["y"], [[1.0, 2.0]], [0.5], reference=False)
    with pytest.raises(ConfigError) as exc:
        load_config(config_for(tmp_path, store, ["a", "b"], ["y"], drift))
    assert any(problem in p for p in exc.value.problems), exc.value.problems


def test_drift_needs_a_rate_when_the_trigger_is_not_periodic(tmp_path):
    store = publish(tmp_path / "s", ["a", "b"], ["y"], [[1.0, 2.0]], [0.5], reference=False)
    path = config_for(tmp_path, store, ["a", "b"], ["y"], "{window_s: 60}")
    path.write_text(path.read_text().replace("trigger: {scan_hz: 10}", "trigger: {on_change: true}"))
    with pytest.raises(ConfigError, match="rate_hz is required when the trigger is not scan_hz"):
        load_config(path)
    path.write_text(path.read_text().replace("{window_s: 60}", "{window_s: 60, rate_hz: 5}"))
    drift = load_config(path).models[0].drift
    assert (drift.window, drift.method, drift.bins, drift.update_s) == (300, "wasserstein", 100, 5.0)
    path.write_text(path.read_text().replace("{window_s: 60, rate_hz: 5}", "{enabled: false}"))
    assert load_config(path).models[0].drift is None
