"""Several `mlioc tune` workers share one study through a real PostgreSQL server (initialised in a temporary
directory by the fixture), with MLflow's tracking store on the same server: no trial runs twice, the
study gets exactly --trials trials, and every trial lands under one MLflow parent run."""

from __future__ import annotations

import os

import mlflow
import optuna
import pytest

from ioc.cli import main as mlioc
from tests.integration.test_tune import CONFIG
from tests.support.procs import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """In-process MLflow writes run artifacts under ./mlruns of the working directory: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)


def test_two_workers_share_one_study_and_one_parent_run(tmp_path, postgres_db):
    storage, tracking = postgres_db("optuna"), postgres_db("mlflow")  # one server, two databases
    config = tmp_path / "tune.yaml"
    config.write_text(CONFIG.format(trials=10, epochs=8))
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking, PYTHONUNBUFFERED="1")
    workers = [ServerProcess(["tune", str(config), "--model", "beam", "--storage", storage], env, f"worker{i}",
                             cwd=tmp_path) for i in range(2)]
    try:
        for w in workers:
            w.start()
        codes = [w.proc.wait(180) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert codes == [0, 0], "\n\n".join(w.output() for w in workers)
    password = storage.split(":")[2].split("@")[0]
    for w in workers:
        assert password not in w.output()  # the storage URL is printed masked
        assert ":***@127.0.0.1" in w.output()

    study = optuna.load_study(study_name="mlioc-beam", storage=storage)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(10))  # exactly --trials, each number once
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    by_worker = {t.user_attrs["mlioc.worker"] for t in trials}
    assert len(by_worker) == 2, "both workers ran trials"
    ran = [{int(line.split()[1]) for line in w.output().splitlines() if line.strip().startswith("trial ")
            and " started" in line} for w in workers]
    assert not (ran[0] & ran[1]) and ran[0] | ran[1] == set(range(10))  # no trial ran twice

    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name("mlioc-beam")
    runs = client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)
    parents = [r for r in runs if r.data.tags.get("mlioc.tune") == "parent"]
    assert len(parents) == 1 and parents[0].info.lifecycle_stage == "active"
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert study.user_attrs["mlioc.mlflow_parent_run_id"] == parent.info.run_id
    children = [r for r in runs if r.data.tags.get("mlioc.tune") == "trial"]
    assert len(children) == 10
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert parent.data.tags["mlioc.tune.best_trial"] == str(study.best_trial.number)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    assert parent.data.tags["mlioc.tune.storage"].startswith("postgresql://mlioc:***@127.0.0.1:")

    # The best trial trains from the shared storage (and MLflow on PostgreSQL), recorded in provenance.
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    try:
        assert mlioc(["train", str(config), "--model", "beam", "--params", "best", "--storage", storage,
                      "--no-progress"]) == 0
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    trained = [r for r in client.search_runs([exp.experiment_id]) if "mlioc.decision" in r.data.tags]
    assert len(trained) == 1 and trained[0].data.tags["mlioc.tune.trial"] == str(study.best_trial.number)
    assert trained[0].data.tags["mlioc.tune.storage"] == parent.data.tags["mlioc.tune.storage"]


def test_a_wrong_password_is_refused_without_showing_it(tmp_path, postgres_db, capsys):
    storage = postgres_db("optuna")
    wrong = storage.replace("mlioc:", "mlioc:not-the-pw-", 1)
    config = tmp_path / "tune.yaml"
    config.write_text(CONFIG.format(trials=2, epochs=4))
    assert mlioc(["tune", str(config), "--model", "beam", "--storage", wrong, "--tracking-uri",
                  f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 1
    err = capsys.readouterr().err
    assert "cannot use the study storage postgresql://mlioc:***@127.0.0.1:" in err
    assert "not-the-pw" not in err and "password authentication failed" in err
    assert not (tmp_path / "mlflow.db").exists()
