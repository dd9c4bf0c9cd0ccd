"""Registry mode: `store: models:/NAME@champion` follows an MLflow registry alias (a real sqlite-backed
registry), mirrors versions into a local store, and keeps serving that when the registry is gone."""

from __future__ import annotations

import shutil
import socket

import pytest

from tests.conftest import write_yaml
from tests.support.models import version_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _register(client, tmp_path, k: float) -> str:
    onnx, manifest = version_files(tmp_path, k)
    source = tmp_path / f"artifacts-{k}"
    source.mkdir()
    shutil.copy(onnx, source / "model.onnx")
    shutil.copy(manifest, source / "manifest.json")
    mv = client.create_model_version("lin", str(source))
    client.set_registered_model_alias("lin", "champion", mv.version)
    return mv.version


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_alias_is_followed_and_survives_an_unreachable_registry(tmp_path, launch, ca, prefix):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("lin")
    _register(client, tmp_path, 1.0)
    cfg = write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca], store_poll_s: 0.3, registry_poll_s: 0.5}}
        models:
          - name: lin
            prefix: "{prefix}"
            store: "models:/lin@champion"
            inputs: [{{name: a, initial: 1.0}}, {{name: b, initial: 0.0}}]
            outputs: [{{name: y0}}, {{name: y1}}]
        """)
    ioc = launch.ioc(cfg, env={"MLFLOW_TRACKING_URI": uri})
    out = ca.monitor(f"{prefix}OUT:y0")
    out.wait_for(lambda u: u.value == pytest.approx(1.0) and u.severity == 0, timeout=30)
    assert ca.get(f"{prefix}CHAMPION") == "1"

    _register(client, tmp_path, 2.0)  # the nightly job moved the alias
    out.wait_for(lambda u: u.value == pytest.approx(2.0), timeout=30)
    assert ca.get(f"{prefix}CHAMPION") == "2"
    local = tmp_path / ".mlioc-state" / "registry" / "lin"
    assert (local / "champion").read_text().strip() == "2"
    ioc.stop()

    # The registry is gone: the IOC starts on what it mirrored and says so in its log.
    again = launch.ioc(cfg, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_dead_port()}"})
    out = ca.monitor(f"{prefix}OUT:y0")
    out.wait_for(lambda u: u.value == pytest.approx(2.0) and u.severity == 0, timeout=30)
    assert "registry lin unreachable" in again.wait_for_line("unreachable")
    assert again.proc.poll() is None
