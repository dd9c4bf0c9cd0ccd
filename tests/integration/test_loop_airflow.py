"""The retraining pipeline under a real Apache Airflow 3 (its own virtual environment, `.venv-airflow`,
made by scripts/test), on sqlite:

1. `airflow dags test mlioc_retrain -c CONF` runs the shipped DAG (deploy/airflow/mlioc_retrain.py)
   against a temporary copy of the demo store and a real recording: a challenger appears in the store.
2. `retrain.runner: airflow`: `mlioc watch` hands an operator's request to a real Airflow API server
   (`airflow standalone`: API server, scheduler, DAG processor; the simple auth manager's JWT login)
   through the REST API, follows the DAG run's state, and reports DONE with the new version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ioc.core.retrain_requests import RequestBox, RetrainRequest
from tests.support.loop import events, offline_loop, start_watcher, status
from tests.support.procs import ROOT
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"


@pytest.fixture
def airflow_env(tmp_path):
    if not AIRFLOW.exists():
        pytest.skip("no .venv-airflow (scripts/test creates it: python -m venv .venv-airflow && "
                    ".venv-airflow/bin/pip install apache-airflow==3.1.8)")
    home = tmp_path / "airflow"
    home.mkdir()
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "deploy" / "airflow"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", MLIOC_COMMAND=f"{sys.executable} -m ioc",
               MLIOC_SCHEDULE="", PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               PATH=f"{AIRFLOW.parent}{os.pathsep}{env.get('PATH', '')}")
    env.pop("VIRTUAL_ENV", None)
    migrate = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=180)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
    return env


def test_dags_test_produces_a_challenger(tmp_path, airflow_env):
    config = offline_loop(tmp_path, epochs=3, retrain={"window_s": 36000})
    store = tmp_path / "beam-store"
    result = store / "requests" / "result-airflow.json"
    conf = {"config": str(config), "model": "beam", "as": "challenger", "start": time.time() - 36000,
            "trigger": "schedule", "requested_by": "airflow-test", "result": str(result)}
    t0 = time.monotonic()
    run = subprocess.run([str(AIRFLOW), "dags", "test", "mlioc_retrain", "-c", json.dumps(conf)], env=airflow_env,
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    seconds = time.monotonic() - t0
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "state=success" in output or "success" in output.lower(), output[-2000:]
    assert (store / "challenger").read_text().strip() == "2"
    assert (store / "champion").read_text().strip() == "1"
    doc = json.loads(result.read_text())
    assert doc["store_version"] == 2 and doc["pointer"] == "challenger"
    import mlflow

    run_tags = mlflow.MlflowClient(airflow_env["MLFLOW_TRACKING_URI"]).get_run(doc["run_id"]).data.tags
    assert (run_tags["mlioc.trigger"], run_tags["mlioc.requested_by"]) == ("schedule", "airflow-test")
    print(f"airflow dags test: {seconds:.1f} s")


def test_the_watcher_hands_a_run_to_airflow_over_rest(tmp_path, airflow_env, processes, port_pool):
    port = port_pool.take().metrics
    env = dict(airflow_env, AIRFLOW__API__PORT=str(port), AIRFLOW__API__HOST="127.0.0.1",
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
               AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="mlioc:admin")
    home = Path(env["AIRFLOW_HOME"])
    log = open(home / "standalone.log", "w")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    server = subprocess.Popen([str(AIRFLOW), "standalone"], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        import requests

        def up():
            try:
                return requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=180, interval=1, what="airflow standalone API server")
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_until(passwords.exists, timeout=30, what="the generated admin password")
        startup = time.monotonic() - t0
        retrain = {"cooldown_s": 0, "timeout_s": 300, "window_s": 36000, "poll_s": 0.2, "runner": "airflow",
                   "airflow": {"url": f"http://127.0.0.1:{port}", "user": "mlioc", "password_env": "AF_PASSWORD"}}
        config = offline_loop(tmp_path, epochs=3, retrain=retrain)
        store = tmp_path / "beam-store"
        os.environ["AF_PASSWORD"] = json.loads(passwords.read_text())["mlioc"]
        try:
            watcher = start_watcher(config, tracking_uri=env["MLFLOW_TRACKING_URI"], extra=("--flush-wait-s", "0"))
        finally:
            os.environ.pop("AF_PASSWORD", None)
        processes.append(watcher)
        box = RequestBox(store)
        box.submit(RetrainRequest.new("operator", user="ops", host="console", protocol="ca", reason="RETRAIN"))

        def dag_parsed_or_done():
            return status(store).get("state") in ("DONE", "FAILED")

        st = wait_until(lambda: dag_parsed_or_done() and status(store), timeout=300, interval=0.5,
                        what="the Airflow run to end", describe=lambda: status(store))
        assert st["state"] == "DONE", (st, watcher.output()[-3000:])
        assert st["run_id"].startswith("mlioc-beam-operator-") and st["version"] == 2
        start = events(store, "retrain-start")[-1]
        assert start["runner"] == "airflow" and "Airflow DAG run" in start["run"]
        assert (store / "challenger").read_text().strip() == "2"
        print(f"airflow standalone up in {startup:.0f} s; hand-off to DONE in {time.monotonic() - t0 - startup:.0f} s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            pass
        # standalone's children (scheduler, API server, DAG processor) share its process group
        try:
            wait_until(lambda: _group_gone(server.pid), timeout=20, what="airflow's processes to exit")
        except TimeoutError:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
