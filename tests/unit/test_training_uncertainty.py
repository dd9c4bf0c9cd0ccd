"""Uncertainty on the training side: split-conformal calibration keeps its promise on exchangeable data (and is
not wastefully wide), the ensemble graph computes what its members do, and whole runs (conformal, ensemble with
a member-by-member warm start, reproduce) through real MLflow, ONNX Runtime and the IOC's engine."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("mlflow", reason="needs the train extra (scripts/setup train)")

from ioc.core.configfile import load_config  # noqa: E402
from ioc.core.engine import EnsembleModel, load_champion  # noqa: E402
from ioc.core.store import ModelStore  # noqa: E402
from tests.conftest import write_yaml  # noqa: E402
from tests.unit.test_training_pipeline import REGRESSION  # noqa: E402
from training.export import export_onnx, onnx_session  # noqa: E402
from training.layout import Layout, Signal  # noqa: E402
from training.models import build_model  # noqa: E402
from training.pipeline import Options, TrainError, run  # noqa: E402
from training.reproduce import reproduce  # noqa: E402
from training.spec import load_spec  # noqa: E402
from training.uncertainty import CalibrationError, EnsembleNet, build_ensemble, conformal_quantile  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(n=st.integers(9, 300), coverage=st.floats(0.5, 0.95), heavy=st.booleans(), seed=st.integers(0, 10_000))
def test_conformal_quantile_covers_a_new_exchangeable_score_as_promised_and_no_more(n, coverage, heavy, seed):
    """Over many draws of n calibration scores and one new score, the new one is at or below the quantile with
    probability in [coverage, coverage + 1/(n+1)] (the split-conformal guarantee, tight for continuous scores)."""
    if math.ceil((n + 1) * coverage) > n:
        with pytest.raises(CalibrationError, match="at least"):
            conformal_quantile(np.zeros((n, 1)), coverage)
        return
    rng = np.random.default_rng(seed)
    trials = 4000
    draw = rng.standard_cauchy if heavy else rng.standard_normal
    scores = np.abs(draw((trials, n + 1)))
    q = np.array([conformal_quantile(s[:n, None], coverage)[0] for s in scores])
    covered = float(np.mean(scores[:, n] <= q))
    slack = 4 * math.sqrt(0.25 / trials)
    assert coverage - slack <= covered <= coverage + 1 / (n + 1) + slack


def test_conformal_quantile_is_per_column():
    scores = np.column_stack([np.arange(1.0, 20.0), 10 * np.arange(1.0, 20.0)])
    np.testing.assert_array_equal(conformal_quantile(scores, 0.9), [18.0, 180.0])  # ceil(20 * 0.9) = 18th


def test_the_exported_ensemble_graph_is_its_members_mean_and_spread(tmp_path):
    from training.spec import TrainSpec, UncertaintySpec

    spec = TrainSpec(model="m", hidden=(8,), uncertainty=UncertaintySpec("ensemble", members=4))
    layout = Layout.build((Signal("a"), Signal("b"), Signal("c")), (Signal("y1"), Signal("y2")), "regression")
    ens = build_ensemble(spec, layout, build_model).eval()
    ens.noise.copy_(torch.tensor([0.05, 0.2]))
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    members = ens.member_predictions(x).astype(np.float64)
    want_mean, want_std = members.mean(axis=0), np.sqrt(members.var(axis=0) + np.array([0.05, 0.2]) ** 2)
    assert members.std(axis=0).min() > 1e-3  # different seeds: the members disagree
    got = onnx_session(export_onnx(ens, layout.input_tensor)).run(["y"], {"x": x})[0]
    assert got.shape == (64, 4)
    np.testing.assert_allclose(got[:, :2], want_mean, atol=1e-5)
    np.testing.assert_allclose(got[:, 2:], want_std, atol=1e-5)
    assert sorted(ens.state_dict())[:2] == ["members.0.0.bias", "members.0.0.weight"]  # no noise: not warm-started


# The pipeline tests' small demo-like model (3000 simulator rows: 300 validation rows calibrate), with uncertainty.
CONFIG = REGRESSION.replace("PARITY", "1e-4").replace("MINIMP", "0.0") + "      uncertainty: {uncertainty}\n"


def _setup(tmp_path: Path, uncertainty: str):
    config = load_config(write_yaml(tmp_path / "c.yaml", CONFIG.replace("{uncertainty}", uncertainty)))
    return config, Options(push=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_conformal_run_calibrates_on_validation_rows_measures_the_test_rows_and_reproduces(tmp_path):
    config, opts = _setup(tmp_path, "{method: conformal, coverage: 0.8}")
    outcome = run(config, "beam", load_spec(config, "beam"), opts)
    assert outcome.store_version == 1
    manifest = json.loads(ModelStore(tmp_path / "store").manifest_path(1).read_text())
    u = manifest["uncertainty"]
    assert (u["method"], u["coverage"], u["calibration"]) == ("conformal", 0.8, {"split": "val", "rows": 300})
    assert len(u["halfwidth"]) == 3 and all(h > 0 for h in u["halfwidth"])
    for name in ("sigma_x", "sigma_y", "loss"):  # 600 test rows: within a few binomial std devs of 0.8
        assert abs(u["test"][f"test_coverage_{name}"] - 0.8) < 4 * math.sqrt(0.16 / 600) + 0.05
    served = load_champion(config.model("beam"), config.ioc.inference)
    np.testing.assert_allclose(served.uncertainty.halfwidth, u["halfwidth"])
    report = reproduce(outcome.run_id, tracking_uri=opts.tracking_uri)
    assert report.passed and report.calibration_max_abs == 0.0


def test_an_ensemble_run_warm_starts_member_by_member_and_the_ioc_serves_its_spread(tmp_path):
    config, opts = _setup(tmp_path, "{method: ensemble, members: 3}")
    spec = load_spec(config, "beam")
    first = run(config, "beam", spec, opts)
    assert first.store_version == 1 and first.warm_start.startswith("scratch")
    served = load_champion(config.model("beam"), config.ioc.inference)
    assert isinstance(served, EnsembleModel) and served.uncertainty.members == 3
    y = served.run(served.in_mean.copy())
    assert served.spread(y).shape == (3,) and (served.spread(y) > 0).all()

    second = run(config, "beam", spec, opts)
    assert second.warm_start == "champion v1"
    before = first.result.net.state_dict()
    assert all((second.result.init_state[k] - before[k]).abs().max() < 1e-6 for k in before)  # every member
    report = reproduce(second.run_id, tracking_uri=opts.tracking_uri)
    assert report.passed and report.pred_max_abs == 0.0

    # Another member count is another architecture: trained from scratch, and says why.
    third = run(config, "beam", dataclasses.replace(
        spec, uncertainty=dataclasses.replace(spec.uncertainty, members=2)), dataclasses.replace(opts, push=False))
    assert third.warm_start.startswith("scratch (champion v2 has architecture")


def test_too_few_calibration_rows_is_a_clear_error(tmp_path):
    config, opts = _setup(tmp_path, "{method: conformal, coverage: 0.999}")
    with pytest.raises(TrainError, match=r"300 calibration rows cannot calibrate coverage 0.999: at least 999"):
        run(config, "beam", load_spec(config, "beam"), opts)


def test_uncertainty_needs_a_regression_model_and_validation_rows(tmp_path):
    from ioc.core.config import ConfigError

    text = CONFIG.replace("{uncertainty}", "{method: ensemble, members: 1}").replace(
        "      epochs: 15", "      epochs: 15\n      split: {val: 0, test: 0.2}")
    config = load_config(write_yaml(tmp_path / "c.yaml", text))
    with pytest.raises(ConfigError) as exc:
        load_spec(config, "beam")
    problems = "\n".join(exc.value.problems)
    assert "an ensemble needs at least 2 members" in problems and "set split.val > 0" in problems


def test_ensemble_net_forward_matches_numpy_for_one_member_pair():
    a, b = torch.nn.Sequential(torch.nn.Linear(1, 1)), torch.nn.Sequential(torch.nn.Linear(1, 1))
    with torch.no_grad():
        a[0].weight.fill_(2.0), a[0].bias.fill_(1.25), b[0].weight.fill_(2.0), b[0].bias.fill_(0.75)
    out = EnsembleNet([a, b], 1)(torch.tensor([[3.0]])).detach().numpy()
    np.testing.assert_allclose(out, [[7.0, 0.25]])
