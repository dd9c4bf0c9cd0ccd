"""Registry mode: `store: models:/NAME@champion` follows an MLflow registry alias (a real sqlite-backed
registry), mirrors versions into a local store, and keeps serving that when the registry is gone."""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from ioc.core.store import ModelStore
from tests.conftest import write_yaml
from tests.support.models import version_files

pytest.importorskip("mlflow", reason="registry mode needs the train extra (scripts/setup train)")
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _register(client, tmp_path, k: float, alias: str = "champion", *, manifest_edit=None,
              files=("model.onnx", "manifest.json")) -> str:
    """Register version k of the test model (y0 = k a + b) and point ``alias`` at it."""
    onnx, manifest = version_files(tmp_path, k)
    source = tmp_path / f"artifacts-{len(list(tmp_path.glob('artifacts-*'))) + 1}"
    source.mkdir()
    if "model.onnx" in files:
        shutil.copy(onnx, source / "model.onnx")
    if "manifest.json" in files:
        doc = json.loads(manifest.read_text())
        if manifest_edit is not None:
            manifest_edit(doc)
        (source / "manifest.json").write_text(json.dumps(doc))
    mv = client.create_model_version("lin", str(source))
    client.set_registered_model_alias("lin", alias, mv.version)
    return mv.version


def _registry(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model("lin")
    return uri, client


def _config(tmp_path, prefix):
    return write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca, pva], store_poll_s: 0.3, registry_poll_s: 0.5}}
        models:
          - name: lin
            prefix: "{prefix}"
            store: "models:/lin@champion"
            inputs: [{{name: a, initial: 1.0}}, {{name: b, initial: 0.0}}]
            outputs: [{{name: y0}}, {{name: y1}}]
        """)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_alias_is_followed_and_survives_an_unreachable_registry(tmp_path, launch, ca, prefix):
    uri, client = _registry(tmp_path)
    _register(client, tmp_path, 1.0)
    cfg = _config(tmp_path, prefix)
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


def _local(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / ".mlioc-state" / "registry" / "lin")


def test_operator_actions_stick_until_the_alias_moves_again(tmp_path, launch, ca, pva, prefix):
    """ROLLBACK and PROMOTE on the IOC are not undone by the next registry poll, nor by a restart; a new
    decision in the registry (the alias moving to another version) is followed again."""
    uri, client = _registry(tmp_path)
    _register(client, tmp_path, 1.0)
    cfg = _config(tmp_path, prefix)
    ioc = launch.ioc(cfg, env={"MLFLOW_TRACKING_URI": uri})
    champion, challenger = ca.monitor(f"{prefix}CHAMPION"), ca.monitor(f"{prefix}CHALLENGER")
    champion.wait_for(lambda u: u.value == "1", timeout=30)  # local version numbers follow the mirroring order
    _register(client, tmp_path, 2.0)
    champion.wait_for(lambda u: u.value == "2", timeout=30)

    ca.put(f"{prefix}ROLLBACK", 1)
    champion.wait_for(lambda u: u.value == "1")
    # A poll after the rollback: the challenger alias appears (the same pass reads the champion alias first).
    _register(client, tmp_path, 3.0, "challenger")
    challenger.wait_for(lambda u: u.value == "3", timeout=30)
    assert ca.get(f"{prefix}CHAMPION") == "1" and _local(tmp_path).champion() == 1

    mark = champion.mark()
    pva(ioc).put(f"{prefix}PROMOTE", 1)
    champion.wait_for(lambda u: u.value == "3", since=mark)
    mark = challenger.mark()
    _register(client, tmp_path, 4.0, "challenger")  # another poll, after the promotion
    challenger.wait_for(lambda u: u.value == "4", since=mark, timeout=30)
    assert ca.get(f"{prefix}CHAMPION") == "3"
    ioc.stop()

    again = launch.ioc(cfg, env={"MLFLOW_TRACKING_URI": uri})
    champion = ca.monitor(f"{prefix}CHAMPION")
    champion.wait_for(lambda u: u.value == "3", timeout=30)
    mark = challenger.mark()
    _register(client, tmp_path, 5.0, "challenger")  # a poll of the restarted IOC
    ca.monitor(f"{prefix}CHALLENGER").wait_for(lambda u: u.value == "5", timeout=30)
    assert ca.get(f"{prefix}CHAMPION") == "3"

    client.set_registered_model_alias("lin", "champion", "4")  # a new decision in the registry
    champion.wait_for(lambda u: u.value == "4", timeout=30)
    assert ca.get_full(f"{prefix}OUT:y0").value == pytest.approx(4.0)
    actions = [e["action"] for e in _local(tmp_path).events()]
    assert "rollback" in actions and "promote" in actions
    assert again.proc.poll() is None


def test_a_bad_registry_version_is_reported_and_new_manifests_of_same_weights_are_served(
        tmp_path, launch, ca, prefix):
    uri, client = _registry(tmp_path)
    _register(client, tmp_path, 1.0)
    ioc = launch.ioc(_config(tmp_path, prefix), env={"MLFLOW_TRACKING_URI": uri})
    champion, message = ca.monitor(f"{prefix}CHAMPION"), ca.monitor(f"{prefix}MESSAGE")
    champion.wait_for(lambda u: u.value == "1", timeout=30)

    bad = _register(client, tmp_path, 2.0, files=("model.onnx",))  # no manifest
    message.wait_for(lambda u: u.value.startswith(f"registry v{bad} rejected"), timeout=30)
    rejected = [e for e in _local(tmp_path).events() if e["action"] == "rejected"]
    assert rejected and rejected[-1]["registry_version"] == str(bad) and "manifest" in rejected[-1]["reason"]
    assert ca.get(f"{prefix}CHAMPION") == "1" and ca.get(f"{prefix}STATUS", as_string=True) == "OK"

    # The same weights as v1 under a new manifest (e.g. a new reference): a new version, served.
    def annotate(doc):
        doc["provenance"]["note"] = "same weights, new manifest"

    _register(client, tmp_path, 1.0, manifest_edit=annotate)
    champion.wait_for(lambda u: u.value == "2", timeout=30)
    served = _local(tmp_path)
    assert json.loads(served.manifest_path(2).read_text())["provenance"]["note"] == "same weights, new manifest"
    assert ioc.proc.poll() is None
