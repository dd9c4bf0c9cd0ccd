"""``mlioc tune`` end to end on the embedded default (sqlite Optuna storage beside a sqlite MLflow store):
nested MLflow runs under one parent, ``mlioc train --params best`` + ``mlioc reproduce`` on that run,
Ctrl-C and resume, and every refusal (bad search, unreachable storage, another model's study, a changed
search) with its exit status and nothing half-written. Real Optuna, MLflow, torch; small data."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import mlflow
import optuna
import pytest

from ioc.cli import main as mlioc
from tests.conftest import write_yaml
from tests.support.procs import ServerProcess

pytestmark = [pytest.mark.integration]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """In-process MLflow writes run artifacts under ./mlruns of the working directory: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)

CONFIG = """\
ioc: {{protocols: [ca], metrics_port: 0}}
models:
  - name: beam
    prefix: "T:BEAM:"
    store: store
    inputs:
      - {{name: q1, units: A, range: [0, 10]}}
      - {{name: q2, units: A, range: [0, 10]}}
      - {{name: rf_phase, units: deg, range: [-30, 30]}}
      - {{name: charge, units: nC, range: [0, 3]}}
    outputs:
      - {{name: sigma_x, units: mm}}
      - {{name: sigma_y, units: mm}}
      - {{name: loss, units: "%"}}
    training:
      hidden: [16]
      epochs: 10
      batch_size: 128
      warm_start: scratch
      data: {{source: simulator, samples: 2000, seed: 1}}
      search:
        trials: {trials}
        epochs: {epochs}
        sampler: {{startup_trials: 3}}
        pruner: {{type: median, startup_trials: 2, warmup_epochs: 2}}
        space:
          lr: {{low: 1.0e-3, high: 3.0e-2}}
          width: [8, 16, 32]
          activation: [silu, tanh]
"""


def _config(tmp_path: Path, trials: int = 6, epochs: int = 8, text: str = CONFIG) -> Path:
    return write_yaml(tmp_path / "tune.yaml", text.format(trials=trials, epochs=epochs))


def _tracking(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _runs(tmp_path: Path) -> list:
    client = mlflow.MlflowClient(_tracking(tmp_path))
    exp = client.get_experiment_by_name("mlioc-beam")
    return client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ALL) if exp else []


def _study(tmp_path: Path, name: str = "mlioc-beam") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.slow
def test_tune_then_train_best_then_reproduce(tmp_path, capsys):
    config = _config(tmp_path)
    uri = _tracking(tmp_path)
    assert mlioc(["tune", str(config), "--model", "beam", "--tracking-uri", uri]) == 0
    out = capsys.readouterr()
    assert "trial 5 " in out.err and "6/6 done" in out.err  # progress: trials done, best so far
    assert "mlioc tune: study mlioc-beam" in out.out

    study = _study(tmp_path)  # the default storage: optuna.db beside mlflow.db
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(6))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}

    runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("mlioc.tune") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert study.user_attrs["mlioc.mlflow_parent_run_id"] == parent.info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["mlioc.tune.trial"]) for r in children) == list(range(6))
    client = mlflow.MlflowClient(uri)
    for r in children:
        t = trials[int(r.data.tags["mlioc.tune.trial"])]
        assert r.data.tags["mlioc.tune.state"] == t.state.name and r.info.status == "FINISHED"
        assert float(r.data.params["lr"]) == pytest.approx(t.params["lr"])
        history = client.get_metric_history(r.info.run_id, "val_loss")
        assert len(history) == t.user_attrs["mlioc.epochs_run"] == (8 if t.state.name == "COMPLETE" else
                                                                     len(history))
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, len(history) + 1))
        if t.state.name == "COMPLETE":
            assert max(history, key=lambda m: m.step).value == pytest.approx(t.value)
    best = study.best_trial
    assert parent.data.tags["mlioc.tune.best_trial"] == str(best.number)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best.value)
    assert parent.data.tags["mlioc.tune.storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert parent.data.params["search.space.width"] == "choice 8|16|32"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert artifacts == {"search/trials.csv", "search/trials.md", "search/history.png", "search/best.json"}
    png = Path(client.download_artifacts(parent.info.run_id, "search/history.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Re-running with the study complete runs nothing and leaves the parent finished.
    assert mlioc(["tune", str(config), "--model", "beam", "--tracking-uri", uri]) == 0
    assert "already has 6 trial(s)" in capsys.readouterr().err
    assert len(_study(tmp_path).trials) == 6

    # train --params best: the best trial's values, recorded as provenance; from scratch with the same seed,
    # data and epochs it lands exactly on the trial's validation loss.
    assert mlioc(["train", str(config), "--model", "beam", "--params", "best", "--push", "--tracking-uri", uri,
                  "--no-progress"]) == 0
    capsys.readouterr()
    run = max((r for r in _runs(tmp_path) if "mlioc.decision" in r.data.tags), key=lambda r: r.info.start_time)
    assert run.data.tags["mlioc.tune.trial"] == str(best.number)
    assert run.data.tags["mlioc.tune.study"] == "mlioc-beam"
    assert run.data.tags["mlioc.tune.parent_run_id"] == parent.info.run_id
    ov = best.user_attrs["mlioc.overrides"]
    assert json.loads(run.data.params["hidden"]) == ov["hidden"]
    assert float(run.data.params["lr"]) == pytest.approx(ov["lr"])
    assert run.data.params["epochs"] == "8"
    val = max(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step).value
    assert val == pytest.approx(best.value, rel=1e-6)
    manifest = json.loads((tmp_path / "store" / "versions" / "1" / "manifest.json").read_text())
    assert manifest["provenance"]["tuning"]["trial"] == best.number
    assert manifest["provenance"]["tuning"]["study"] == "mlioc-beam"

    assert mlioc(["reproduce", run.info.run_id, "--tracking-uri", uri, "--no-progress"]) == 0
    assert "PASS" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_study_resumes(tmp_path):
    # Trials long enough (~1 s each) that the interrupt lands inside one.
    config = _config(tmp_path, trials=3, epochs=150)
    args = ["tune", str(config), "--model", "beam", "--tracking-uri", _tracking(tmp_path)]
    import os

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = ServerProcess(args, env, "tune", cwd=tmp_path).start()
    try:
        first.wait_for_line("trial 1 started", timeout=90)
        first.signal(signal.SIGINT)
        assert first.proc.wait(60) == 130, first.output()
    finally:
        first.kill()
    assert "run the same command again to resume" in first.output()
    trials = _study(tmp_path).get_trials()
    states = {t.number: t.state.name for t in trials}
    # The interrupt lands in the trial that runs when it arrives: trial 1 nearly always, a later one when
    # a loaded machine's scheduler lets trial 1 finish first. Exactly that trial fails; every earlier one
    # stays as it ended; none is left RUNNING.
    failed = [n for n, state in states.items() if state == "FAIL"]
    assert len(failed) == 1 and failed[0] == max(states) and failed[0] >= 1, states
    assert all(states[n] in ("COMPLETE", "PRUNED") for n in states if n != failed[0]), states
    runs = _runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("mlioc.tune") == "parent")
    assert parent.info.status == "KILLED"  # ended, not left RUNNING
    interrupted = next(r for r in runs if r.data.tags.get("mlioc.tune.trial") == str(failed[0]))
    assert interrupted.info.status == "KILLED" and interrupted.data.tags["mlioc.tune.state"] == "FAIL"
    assert "interrupted" in interrupted.data.tags["mlioc.tune.reason"]

    second = ServerProcess(args, env, "tune-resume", cwd=tmp_path).start()
    try:
        assert second.proc.wait(120) == 0, second.output()
    finally:
        second.kill()
    trials = _study(tmp_path).get_trials()
    good = [t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(good) == 3 and failed[0] not in good and 0 in good  # resumed: trial 0 kept, the failed one replaced
    runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("mlioc.tune") == "parent"]
    assert len(parents) == 1 and parents[0].info.run_id == parent.info.run_id
    assert parents[0].info.status == "FINISHED"
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs
               if r.data.tags.get("mlioc.tune") == "trial")


def _no_side_effects(tmp_path: Path) -> None:
    assert not (tmp_path / "mlflow.db").exists(), "an MLflow store was written"
    assert not (tmp_path / "mlruns").exists()


def test_bad_search_space_is_refused_before_anything_is_written(tmp_path, capsys):
    text = CONFIG.replace("lr: {{low: 1.0e-3, high: 3.0e-2}}", "lr: {{low: 3.0e-2, high: 1.0e-3}}") \
        .replace("activation: [silu, tanh]", "activation: []")
    config = _config(tmp_path, text=text)
    assert mlioc(["tune", str(config), "--model", "beam", "--tracking-uri", _tracking(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{config}:" in err
    assert "models[0].training.search.space.lr: low (0.03) must be < high (0.001)" in err
    assert "models[0].training.search.space.activation: empty list of choices" in err
    assert not (tmp_path / "optuna.db").exists()  # no study storage, no study
    _no_side_effects(tmp_path)


def test_unreachable_storage_names_the_url_without_its_password(tmp_path, capsys):
    config = _config(tmp_path)
    url = "postgresql://mlioc:hunter2secret@127.0.0.1:1/optuna"  # nothing listens on port 1
    assert mlioc(["tune", str(config), "--model", "beam", "--storage", url, "--tracking-uri",
                  _tracking(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot use the study storage postgresql://mlioc:***@127.0.0.1:1/optuna" in err
    assert "hunter2secret" not in err
    _no_side_effects(tmp_path)


def test_a_study_of_another_model_is_refused(tmp_path, capsys):
    config = _config(tmp_path)
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    other = optuna.create_study(study_name="shared", storage=storage)
    other.set_user_attr("mlioc.model", "knobs")
    optuna.create_study(study_name="plain", storage=storage)  # somebody else's study, no mlioc attributes
    refusals = (("shared", "belongs to model 'knobs', not 'beam'"), ("plain", "was not created by `mlioc tune`"))
    for study, why in refusals:
        assert mlioc(["tune", str(config), "--model", "beam", "--storage", storage, "--study", study,
                      "--tracking-uri", _tracking(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert f"study {study!r} in {storage} {why}" in err, err
        assert len(optuna.load_study(study_name=study, storage=storage).trials) == 0
    _no_side_effects(tmp_path)
    assert mlioc(["train", str(config), "--model", "beam", "--params", "best", "--storage", storage, "--study",
                  "shared", "--tracking-uri", _tracking(tmp_path)]) == 1
    assert "belongs to model 'knobs'" in capsys.readouterr().err
    _no_side_effects(tmp_path)


def test_resuming_with_a_changed_search_is_refused(tmp_path, capsys):
    config = _config(tmp_path)
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="mlioc-beam", storage=storage)
    study.set_user_attr("mlioc.model", "beam")
    study.set_user_attr("mlioc.objective_digest", "0123456789abcdef")  # made for another space
    assert mlioc(["tune", str(config), "--model", "beam", "--storage", storage, "--tracking-uri",
                  _tracking(tmp_path)]) == 1
    assert "was created for a different search" in capsys.readouterr().err
    _no_side_effects(tmp_path)


def test_usage_errors(tmp_path, capsys):
    config = _config(tmp_path)
    assert mlioc(["tune", str(config), "--model", "beam", "--trials", "0"]) == 2
    assert mlioc(["tune", str(config), "--model", "beam", "--timeout", "-1"]) == 2
    assert mlioc(["tune", str(config), "--model", "nope"]) == 2
    assert mlioc(["train", str(config), "--model", "beam", "--study", "x"]) == 2
    with pytest.raises(SystemExit) as info:
        mlioc(["train", str(config), "--model", "beam", "--params", "worst"])
    assert info.value.code == 2
    capsys.readouterr()
    # --params best with no study yet: a clear error, and no storage file created by asking.
    assert mlioc(["train", str(config), "--model", "beam", "--params", "best", "--tracking-uri",
                  _tracking(tmp_path)]) == 1
    assert "no study storage at" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()
    _no_side_effects(tmp_path)


def test_a_failing_trial_stops_the_search_and_ends_the_parent(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (device: cuda must fail)")
    config = _config(tmp_path, text=CONFIG.replace("warm_start: scratch", "warm_start: scratch\n      device: cuda"))
    assert mlioc(["tune", str(config), "--model", "beam", "--tracking-uri", _tracking(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "trial 0 failed: RuntimeError: device: cuda requested" in err
    assert [t.state.name for t in _study(tmp_path).get_trials()] == ["FAIL"]
    runs = _runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("mlioc.tune") == "parent")
    trial = next(r for r in runs if r.data.tags.get("mlioc.tune") == "trial")
    assert parent.info.status == "FAILED" and trial.info.status == "FAILED"
    assert trial.data.tags["mlioc.tune.state"] == "FAIL" and "RuntimeError" in trial.data.tags["mlioc.tune.reason"]
