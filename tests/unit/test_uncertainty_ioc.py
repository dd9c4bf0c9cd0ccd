"""Uncertainty on the IOC side, in process: manifests, the ensemble engine, the config, the layout, the bands
posted with each prediction (and INVALID with it), and the coverage rule.

Real ONNX Runtime sessions (an ensemble graph built like the training sidecar's export), the real PV model.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioc.core.config import ConfigError, InferenceConfig, InputConfig, ModelConfig, OutputConfig, TriggerConfig
from ioc.core.configfile import load_config
from ioc.core.coverage import CoverageWindow, binomial_cdfs, coverage_limits, window_samples
from ioc.core.engine import EngineError, EnsembleModel, load_champion, load_version
from ioc.core.layout import model_pv_names
from ioc.core.manifest import ManifestError, parse_manifest
from ioc.core.pvmodel import ClientInfo, PVDatabase, Severity, Status
from ioc.runtime.runner import ModelRunner
from tests.support.configs import model, write_config
from tests.support.models import (
    ensemble_predict,
    manifest_for,
    publish_conformal,
    publish_ensemble,
    publish_linear,
)

INF = InferenceConfig(provider="cpu")
WS = [np.array([[1.0, 0.5], [0.2, -1.0]]), np.array([[1.2, 0.4], [0.1, -0.8]]), np.array([[0.9, 0.7], [0.3, -1.1]])]
BS = [np.array([0.0, 1.0]), np.array([0.1, 0.9]), np.array([-0.1, 1.2])]
OP = ClientInfo("op", "console", "ca")


def _config(store, method: str | None, **out_kw) -> ModelConfig:
    return ModelConfig(name="m", prefix="P:", store=str(store), trigger=TriggerConfig("on_change"),
                       inputs=(InputConfig("a"), InputConfig("b")),
                       outputs=(OutputConfig("y1", units="mm", prec=2, **out_kw), OutputConfig("y2")),
                       uncertainty=method)


# ----------------------------------------------------------------------------- manifest


def _ensemble_doc() -> dict:
    doc = manifest_for(["a", "b"], ["y1", "y2"], test_inputs=np.ones((1, 2)), test_outputs=np.ones((1, 2)))
    doc["sha256"] = "0" * 64
    doc["uncertainty"] = {"method": "ensemble", "members": 3}
    doc["test_vectors"]["spread"] = [[0.1, 0.2]]
    return doc


def test_an_ensemble_manifest_declares_means_then_spreads_in_its_one_output_tensor():
    m = parse_manifest(_ensemble_doc())
    assert m.uncertainty.ensemble and m.uncertainty.members == 3
    assert m.uncertainty.coverage == pytest.approx(0.9545)  # +- 2 STD of a normal distribution
    assert m.output_shape == (4,)  # 2 outputs: 2 means + 2 standard deviations
    assert m.test_vectors.spread.tolist() == [[0.1, 0.2]]


@pytest.mark.parametrize("change, message", [
    (lambda d: d["uncertainty"].update(members=1), r"members: expected an integer >= 2"),
    (lambda d: d["uncertainty"].update(method="bayes"), r"uncertainty.method: expected one of"),
    (lambda d: d["test_vectors"].pop("spread"), r"an ensemble's test vectors carry its spread"),
    (lambda d: d["test_vectors"].update(spread=[[0.1, -0.2]]), r"cannot be negative"),
    (lambda d: d["onnx"].update(output_shape=[2]), r"holds 2 elements, but the outputs. means and spreads flatten"),
    (lambda d: d["uncertainty"].update(method="conformal", coverage=0.9, halfwidth=[0.1]),
     r"expected a list of 2 half-widths"),
    (lambda d: d["uncertainty"].update(method="conformal", coverage=1.5, halfwidth=[0.1, 0.2]),
     r"coverage: expected a fraction in \(0, 1\)"),
    (lambda d: d["uncertainty"].update(method="conformal", coverage=0.9, halfwidth=[0.1, -0.2]),
     r"cannot be negative"),
])
def test_a_malformed_uncertainty_section_is_refused_naming_the_field(change, message):
    doc = _ensemble_doc()
    change(doc)
    if doc["uncertainty"]["method"] == "conformal":
        doc["test_vectors"].pop("spread", None)
    with pytest.raises(ManifestError, match=message):
        parse_manifest(doc)


def test_conformal_half_widths_are_one_per_output_or_one_per_element_of_an_array():
    doc = manifest_for(["a"], ["y", "profile"])
    doc["sha256"] = "0" * 64
    doc["outputs"][1]["shape"] = [3]
    doc["uncertainty"] = {"method": "conformal", "coverage": 0.8, "halfwidth": [0.5, [1.0, 2.0, 3.0]]}
    assert parse_manifest(doc).uncertainty.halfwidth.tolist() == [0.5, 1.0, 2.0, 3.0]
    doc["uncertainty"]["halfwidth"] = [0.5, 0.25]  # one number for every element
    assert parse_manifest(doc).uncertainty.halfwidth.tolist() == [0.5, 0.25, 0.25, 0.25]


# ----------------------------------------------------------------------------- engine


def test_the_ensemble_engine_returns_the_mean_and_hands_out_the_spread_of_the_same_call(tmp_path):
    store, _ = publish_ensemble(tmp_path / "s", ["a", "b"], ["y1", "y2"], WS, BS)
    loaded = load_champion(_config(store.root, "ensemble"), INF)
    assert isinstance(loaded, EnsembleModel)
    x = np.array([2.0, -1.0])
    mean, std = ensemble_predict(WS, BS, x[None, :])
    y = loaded.run(x)
    assert y.shape == (2,)
    np.testing.assert_allclose(y, mean[0], atol=1e-5)
    np.testing.assert_allclose(loaded.spread(y), std[0], atol=1e-5)
    assert std[0].min() > 0.01  # the members really disagree: the check above can fail
    means, stds = loaded.run_batch_spread(np.array([x, x + 1]))
    np.testing.assert_allclose(loaded.run_batch(np.array([x, x + 1])), means)
    np.testing.assert_allclose(stds[0], std[0], atol=1e-5)
    with pytest.raises(ValueError, match="not a prediction returned by this ensemble"):
        loaded.spread(np.array([1.0, 2.0]))


def test_an_ensemble_whose_spread_does_not_reproduce_is_rejected(tmp_path):
    store, n = publish_ensemble(tmp_path / "s", ["a", "b"], ["y1", "y2"], WS, BS, spread_offset=0.3)
    with pytest.raises(EngineError, match=r"spread of test vector 0 output y1"):
        load_version(store, n, _config(store.root, "ensemble"), INF)


# ----------------------------------------------------------------------------- config and layout


def _write(tmp_path, training=None, **out):
    return write_config(tmp_path / "m.yaml", model("P:", inputs=["a", "b"], outputs=[{"name": "y1", **out}, "y2"],
                                                   training=training))


def test_the_config_decides_which_uncertainty_pvs_are_served(tmp_path):
    plain = model_pv_names(load_config(_write(tmp_path)).models[0])
    assert not [n for n in plain if n.endswith((":STD", ":LO", ":HI"))]
    ens = load_config(_write(tmp_path, {"uncertainty": {"method": "ensemble", "members": 5}},
                             uncertainty={"high": 0.5, "hihi": 1.0})).models[0]
    names = model_pv_names(ens)
    assert {"P:OUT:y1:STD", "P:OUT:y2:STD", "P:CHALLENGER:OUT:y1:STD"} <= set(names)
    assert names.index("P:OUT:y1:STD") == names.index("P:OUT:y1") + 1  # beside its prediction
    conf = model_pv_names(load_config(_write(tmp_path, {"uncertainty": {"method": "conformal"}})).models[0])
    assert {"P:OUT:y1:LO", "P:OUT:y1:HI", "P:CHALLENGER:OUT:y2:HI"} <= set(conf)
    assert not [n for n in conf if n.endswith(":STD") or n.startswith("P:COVERAGE")]  # no truth: no COVERAGE


@pytest.mark.parametrize("training, out, message", [
    ({"uncertainty": {"method": "dropout"}}, {}, r"training.uncertainty.method: expected one of ensemble, conformal"),
    ({"uncertainty": "ensemble"}, {}, r"training.uncertainty: expected a mapping"),
    ({"uncertainty": {"method": "conformal"}}, {"uncertainty": {"high": 1, "hihi": 2}},
     r"outputs\[0\].uncertainty: STD alarm limits need an ensemble"),
    (None, {"uncertainty": {"high": 1, "hihi": 2}}, r"STD alarm limits need an ensemble"),
    ({"uncertainty": {"method": "ensemble"}}, {"uncertainty": {"high": 2, "hihi": 1}}, r"high must be < hihi"),
])
def test_uncertainty_config_errors_point_at_the_key(tmp_path, training, out, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, training, **out))


def test_coverage_settings_are_validated(tmp_path):
    path = write_config(tmp_path / "m.yaml", model("P:", drift={"rate_hz": 10, "coverage": {"p_minor": 1e-6,
                                                                                            "p_major": 1e-3}}))
    with pytest.raises(ConfigError, match=r"p_major must be < p_minor"):
        load_config(path)


# ----------------------------------------------------------------------------- bands through the runner


async def _settle():
    for _ in range(3):
        await asyncio.sleep(0)


async def _serving(tmp_path, store, config):
    db = PVDatabase()
    runner = ModelRunner(config, db, INF, asyncio.get_running_loop())
    runner.run_on_input_change = True
    runner.start()
    runner.set_model(load_champion(config, INF))
    db.put("P:IN:a", 2.0, OP)
    db.put("P:IN:b", -1.0, OP)
    await _settle()
    return runner, db


async def test_std_is_served_with_each_prediction_and_invalid_with_it(tmp_path):
    from ioc.core.config import LimitsConfig

    store, n = publish_ensemble(tmp_path / "s", ["a", "b"], ["y1", "y2"], WS, BS)
    config = _config(store.root, "ensemble", std_limits=LimitsConfig(high=0.05, hihi=10.0))
    runner, db = await _serving(tmp_path, store, config)
    mean, std = ensemble_predict(WS, BS, np.array([[2.0, -1.0]]))
    out, band = db["P:OUT:y1"].reading, db["P:OUT:y1:STD"].reading
    assert out.value == pytest.approx(mean[0, 0], abs=1e-5)
    assert band.value == pytest.approx(std[0, 0], abs=1e-5)
    assert (band.timestamp, band.tag) == (out.timestamp, out.tag) == (out.timestamp, str(n))
    spec = db["P:OUT:y1:STD"].spec
    assert (spec.egu, spec.prec, spec.alarm.high) == ("mm", 3, 0.05)
    assert band.severity == Severity.MINOR  # its own limits: std > HIGH
    db.put("P:ENABLE", 0, OP)
    await _settle()
    out, band = db["P:OUT:y1"].reading, db["P:OUT:y1:STD"].reading
    assert band.severity == out.severity == Severity.INVALID
    assert (band.status, band.message) == (out.status, out.message) == (Status.DISABLE, "disabled by op@console")
    assert db["P:CHALLENGER:OUT:y1:STD"].reading.message == "no challenger"


async def test_lo_and_hi_bracket_the_prediction_by_the_calibrated_half_width(tmp_path):
    w, b = [[2.0, 1.0], [1.0, -1.0]], [0.0, 1.0]
    store, _ = publish_conformal(tmp_path / "s", ["a", "b"], ["y1", "y2"], w, b, [0.25, 1.5])
    runner, db = await _serving(tmp_path, store, _config(store.root, "conformal"))
    y = [db["P:OUT:y1"].value, db["P:OUT:y2"].value]
    assert y == pytest.approx([3.0, 4.0], abs=1e-5)
    assert db["P:OUT:y1:LO"].value == pytest.approx(2.75, abs=1e-5)
    assert db["P:OUT:y1:HI"].value == pytest.approx(3.25, abs=1e-5)
    assert db["P:OUT:y2:LO"].value == pytest.approx(2.5, abs=1e-5)
    assert db["P:OUT:y2:HI"].value == pytest.approx(5.5, abs=1e-5)
    db.put("P:IN:a", math.nan, OP)
    await _settle()
    out, lo = db["P:OUT:y2"].reading, db["P:OUT:y2:LO"].reading
    assert lo.severity == out.severity == Severity.INVALID and lo.message == out.message != ""


async def test_a_version_without_uncertainty_serves_predictions_and_says_why_its_bands_are_invalid(tmp_path):
    store, n = publish_linear(tmp_path / "s", ["a", "b"], ["y1", "y2"], [[2.0, 1.0], [1.0, -1.0]], [0.0, 1.0])
    runner, db = await _serving(tmp_path, store, _config(store.root, "conformal"))
    assert db["P:OUT:y1"].reading.severity == Severity.NO_ALARM
    lo = db["P:OUT:y1:LO"].reading
    assert lo.severity == Severity.INVALID and lo.message == f"v{n} has no uncertainty"


# ----------------------------------------------------------------------------- the coverage rule


@settings(max_examples=40, deadline=None)
@given(n=st.integers(20, 400), promise=st.floats(0.5, 0.99), p_minor=st.sampled_from([1e-2, 1e-3]))
def test_a_version_keeping_its_promise_alarms_no_more_often_than_the_rule_allows(n, promise, p_minor):
    """Draw windows from a version that keeps its promise exactly: MINOR (coverage <= LOW) at most p_minor of
    the time; and one whose true coverage is far below alarms nearly always."""
    limits = coverage_limits(promise, n, p_minor, p_minor / 1000)
    if limits.low is None:  # too few samples to ever be sure: never alarms (checked, not skipped)
        assert binomial_cdfs(n, promise)[0] > p_minor
        return
    rng = np.random.default_rng(n)
    kept = rng.binomial(n, promise, size=20_000) / n
    rate = float(np.mean(kept <= limits.low))
    assert rate <= p_minor * 1.5 + 3 * math.sqrt(p_minor / 20_000)
    broken = rng.binomial(n, max(0.0, limits.low - 0.25), size=2_000) / n
    assert float(np.mean(broken <= limits.low)) > 0.9
    assert limits.lolo is None or limits.lolo <= limits.low


def test_autocorrelated_samples_count_as_fewer_and_the_window_is_bounded_in_time():
    assert window_samples(600, 60.0, 1.0) == pytest.approx(30.0, rel=0.02)
    assert window_samples(600, 60.0, 0.0) == 600
    w = CoverageWindow(10.0)
    w.push(np.arange(0.0, 20.0, 0.5), np.arange(40) % 4 != 0)
    assert w.n == 20 and w.times[0] == 10.0 and w.fraction == pytest.approx(0.75)



async def test_an_array_output_has_waveform_bands_element_by_element(tmp_path):
    from ioc.core.store import ModelStore
    from tests.support.models import array_linear_model, array_manifest

    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # profile = (a, b, a + b)
    xs = np.array([[1.0, 2.0], [0.5, -1.0]])
    doc = array_manifest([("a", ()), ("b", ())], [("profile", (3,))], xs, xs @ w.T)
    doc["uncertainty"] = {"method": "conformal", "coverage": 0.9, "halfwidth": [[0.1, 0.2, 0.3]]}
    store = ModelStore(tmp_path / "s")
    store.write_pointer("champion", store.add_version(array_linear_model(w, np.zeros(3), (2,), (3,)), doc))
    config = ModelConfig(name="m", prefix="P:", store=str(store.root), trigger=TriggerConfig("on_change"),
                         inputs=(InputConfig("a"), InputConfig("b")),
                         outputs=(OutputConfig("profile", units="mm", shape=(3,)),), uncertainty="conformal")
    names = model_pv_names(config)
    assert "P:OUT:profile:LO" in names and not any(n.startswith("P:COVERAGE") for n in names)
    runner, db = await _serving(tmp_path, store, config)
    lo, hi = db["P:OUT:profile:LO"], db["P:OUT:profile:HI"]
    assert lo.spec.shape == (3,) and lo.spec.egu == "mm"
    np.testing.assert_allclose(lo.value, [1.9, -1.2, 0.7], atol=1e-5)  # (2, -1, 1) - (0.1, 0.2, 0.3)
    np.testing.assert_allclose(hi.value, [2.1, -0.8, 1.3], atol=1e-5)


async def test_the_challenger_gets_its_own_bands_and_loses_them_with_it(tmp_path):
    w, b = [[2.0, 1.0], [1.0, -1.0]], [0.0, 1.0]
    store, _ = publish_conformal(tmp_path / "s", ["a", "b"], ["y1", "y2"], w, b, [0.25, 1.5])
    config = _config(store.root, "conformal")
    runner, db = await _serving(tmp_path, store, config)
    _, n = publish_conformal(tmp_path / "s", ["a", "b"], ["y1", "y2"], w, [10.0, 1.0], [0.5, 0.5], pointer=None)
    from ioc.core.engine import load_version

    runner.set_challenger(load_version(store, n, config, INF))
    await _settle()
    lo = db["P:CHALLENGER:OUT:y1:LO"].reading
    assert lo.value == pytest.approx(12.5, abs=1e-5) and lo.tag == str(n) and lo.severity == Severity.NO_ALARM
    assert db["P:OUT:y1:LO"].value == pytest.approx(2.75, abs=1e-5)  # the champion's are its own
    runner.set_challenger(None)
    lo = db["P:CHALLENGER:OUT:y1:LO"].reading
    assert lo.severity == Severity.INVALID and lo.message == "no challenger"
