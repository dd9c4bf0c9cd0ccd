"""The pipeline against a real `mlflow server` process (what a facility runs), not only a sqlite file:
train + push registers a version with the champion alias through the server's REST API, the
artifacts go through the server's artifact proxy, and `mlioc reproduce` works through it too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("mlflow", reason="needs the train extra (scripts/setup train)")
requests = pytest.importorskip("requests", reason="needs the train extra (scripts/setup train)")

from tests.conftest import write_yaml  # noqa: E402
from tests.support.ports import _free_port  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
ioc: {protocols: [ca], metrics_port: 0}
models:
  - name: beam
    prefix: "S:"
    store: store
    inputs:
      - {name: q1, units: A}
      - {name: q2, units: A}
      - {name: rf_phase, units: deg}
      - {name: charge, units: nC}
    outputs:
      - {name: sigma_x, units: mm}
      - {name: sigma_y, units: mm}
      - {name: loss, units: "%"}
    training:
      hidden: [16]
      epochs: 8
      data: {source: simulator, samples: 2000, seed: 4}
"""


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - a file, not a pipe nobody drains; closed below
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:  # readiness: the server's own health endpoint answers
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("mlflow server not healthy within 90 s")
        time.sleep(0.2)
    yield uri
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_train_push_and_reproduce_through_an_mlflow_server(tmp_path, mlflow_server):
    config = write_yaml(tmp_path / "s.yaml", CONFIG)
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server)  # the documented way to point at a server
    train = subprocess.run([sys.executable, "-m", "ioc", "train", str(config), "--model", "beam", "--push",
                            "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stdout + train.stderr
    event = json.loads((tmp_path / "store" / "events.jsonl").read_text().splitlines()[0])
    run_id = event["run_id"]
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default

    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    mv = client.get_model_version_by_alias("beam", "champion")
    assert mv.run_id == run_id
    mlflow.set_tracking_uri(mlflow_server)
    path = Path(mlflow.artifacts.download_artifacts("models:/beam@champion", dst_path=str(tmp_path / "dl")))
    assert (path / "model.onnx").read_bytes() == (tmp_path / "store" / "versions" / "1" / "model.onnx").read_bytes()
    assert json.loads((path / "manifest.json").read_text())["version"] == 1
    assert list((tmp_path / "server-artifacts").rglob("state_dict.pt"))  # stored by the server, not locally

    rep = subprocess.run([sys.executable, "-m", "ioc", "reproduce", run_id, "--no-progress"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0 and "PASS" in rep.stdout, rep.stdout + rep.stderr
