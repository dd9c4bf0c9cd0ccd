"""The training pipeline in-process on small simulator data: promotion, the gate's two refusals (ONNX
parity, losing to the champion) with their reasons in MLflow and events.jsonl, the autoencoder kind,
warm start, and the CLI's errors. Real sqlite MLflow store, real ONNX Runtime, real model store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("mlflow", reason="needs the train extra (scripts/setup train)")

from ioc.cli import main as mlioc
from ioc.core.configfile import load_config
from ioc.core.engine import load_champion
from ioc.core.store import ModelStore
from tests.conftest import write_yaml
from training.pipeline import Options, run
from training.spec import load_spec

INPUTS = """\
      - {name: q1, units: A, range: [0, 10]}
      - {name: q2, units: A, range: [0, 10]}
      - {name: rf_phase, units: deg, range: [-30, 30]}
      - {name: charge, units: nC, range: [0, 3]}
"""
REGRESSION = f"""\
ioc: {{protocols: [ca], metrics_port: 0}}
models:
  - name: beam
    prefix: "T:BEAM:"
    store: store
    inputs:
{INPUTS}    outputs:
      - {{name: sigma_x, units: mm}}
      - {{name: sigma_y, units: mm}}
      - {{name: loss, units: "%"}}
    training:
      hidden: [16, 16]
      epochs: 15
      batch_size: 128
      data: {{source: simulator, samples: 3000, seed: 1}}
      gate: {{parity_atol: PARITY, min_improvement: MINIMP}}
"""
AUTOENCODER = f"""\
ioc: {{protocols: [ca], metrics_port: 0}}
models:
  - name: knobs
    prefix: "T:AE:"
    store: ae-store
    inputs:
{INPUTS}    outputs:
      - {{name: q1, units: A}}
      - {{name: q2, units: A}}
      - {{name: rf_phase, units: deg}}
      - {{name: charge, units: nC}}
    training:
      kind: autoencoder
      hidden: [16]
      bottleneck: 2
      epochs: 10
      data: {{source: simulator, samples: 2000, seed: 2}}
"""


def _config(tmp_path: Path, parity: float = 1e-4, min_improvement: float = 0.0, text: str = REGRESSION):
    path = write_yaml(tmp_path / "c.yaml", text.replace("PARITY", str(parity)).replace("MINIMP", str(min_improvement)))
    return load_config(path)


def _train(tmp_path: Path, config, model: str = "beam", **kw):
    opts = Options(push=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)
    return run(config, model, load_spec(config, model), opts)


def _client(tmp_path: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_promotion_then_warm_start_then_a_loser_is_refused(tmp_path):
    config = _config(tmp_path)
    first = _train(tmp_path, config)
    assert first.decision.promote and first.store_version == 1 and first.warm_start.startswith("scratch")
    assert first.parity.ok and first.parity.max_abs < 1e-4
    model = config.model("beam")
    assert load_champion(model, config.ioc.inference).version == "1"

    # Warm start from the champion's ONNX weights: training starts where v1 ended.
    second = _train(tmp_path, config)
    assert second.warm_start == "champion v1"
    first_state = first.result.net.state_dict()
    assert all((second.result.init_state[k] - first_state[k]).abs().max() < 1e-6 for k in first_state)

    # A one-epoch model from scratch that must be 50 % better than the champion: refused.
    loser_cfg = _config(tmp_path, min_improvement=0.5)
    import dataclasses

    spec = dataclasses.replace(load_spec(loser_cfg, "beam"), warm_start="scratch", epochs=1)
    loser = run(loser_cfg, "beam", spec, Options(push=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert not loser.decision.promote and loser.store_version is None
    assert "loses to the champion" in loser.decision.reason
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [1, 2] and store.champion() == 2
    rejected = [e for e in store.events() if e["action"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["run_id"] == loser.run_id
    assert "loses to the champion" in rejected[0]["reason"]
    tags = _client(tmp_path).get_run(loser.run_id).data.tags
    assert tags["mlioc.decision"] == "rejected" and "loses to the champion" in tags["mlioc.reason"]
    assert tags["mlioc.pushed"] == "False"
    client = _client(tmp_path)
    assert str(client.get_model_version_by_alias("beam", "champion").version) == second.registry_version


def test_failed_onnx_parity_stops_the_push(tmp_path):
    config = _config(tmp_path, parity=1e-12)  # tighter than float32 arithmetic can meet
    outcome = _train(tmp_path, config)
    assert not outcome.parity.ok and outcome.parity.max_abs > 1e-12
    assert not outcome.decision.promote and outcome.store_version is None
    assert "ONNX parity failed" in outcome.decision.reason
    store = ModelStore(tmp_path / "store")
    assert store.versions() == [] and store.champion() is None
    (event,) = store.events()
    assert event["action"] == "rejected" and "ONNX parity failed" in event["reason"]
    tags = _client(tmp_path).get_run(outcome.run_id).data.tags
    assert tags["mlioc.decision"] == "rejected" and "ONNX parity failed" in tags["mlioc.reason"]


def test_autoencoder_reconstructs_its_inputs_and_the_ioc_accepts_it(tmp_path):
    config = _config(tmp_path, text=AUTOENCODER)
    outcome = _train(tmp_path, config, model="knobs")
    assert outcome.decision.promote, outcome.decision.reason
    manifest = json.loads((tmp_path / "ae-store" / "versions" / "1" / "manifest.json").read_text())
    assert manifest["kind"] == "autoencoder"
    assert [o["name"] for o in manifest["outputs"]] == ["q1", "q2", "rf_phase", "charge"]
    assert manifest["provenance"]["architecture"]["widths"] == [4, 16, 2, 16, 4]
    loaded = load_champion(config.model("knobs"), config.ioc.inference)
    assert loaded.manifest.kind == "autoencoder"
    # The reconstruction of a typical input is close to it (2 of 4 dimensions through the bottleneck).
    x = outcome.split.test.x[:200]
    err = abs(loaded.run_batch(x) - x).mean(axis=0) / outcome.split.test.x.std(axis=0)
    assert (err < 1.0).all(), err


def test_cli_errors_are_clear_and_non_zero(tmp_path, capsys):
    path = write_yaml(tmp_path / "c.yaml", REGRESSION.replace("PARITY", "1e-4").replace("MINIMP", "0"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert mlioc(["train", str(path), "--model", "nope", "--tracking-uri", uri]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
    assert mlioc(["train", str(path), "--model", "beam", "--data", str(tmp_path / "missing.csv"),
                  "--tracking-uri", uri]) == 1
    assert "missing.csv does not exist" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("q1,q2,rf_phase,charge,sigma_x,sigma_y,loss\n100,0,0,0,1,1,1\n")
    assert mlioc(["train", str(path), "--model", "beam", "--data", str(tmp_path / "empty.csv"),
                  "--tracking-uri", uri]) == 1
    assert "no rows left after filtering" in capsys.readouterr().err
    assert mlioc(["train", str(path), "--model", "beam", "--tracking-uri", "http://127.0.0.1:9"]) == 1
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in capsys.readouterr().err
    bad = write_yaml(tmp_path / "bad.yaml", REGRESSION.replace("PARITY", "1e-4").replace("MINIMP", "0")
                     .replace("batch_size: 128", "batch_sise: 128"))
    assert mlioc(["train", str(bad), "--model", "beam", "--tracking-uri", uri]) == 1
    assert "bad.yaml:18: models[0].training.batch_sise: unknown key (did you mean 'batch_size'?)" in \
        capsys.readouterr().err
    assert mlioc(["reproduce", "0123456789abcdef", "--tracking-uri", uri]) == 1
    assert "no run '0123456789abcdef'" in capsys.readouterr().err
