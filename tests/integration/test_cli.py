"""The `mlioc` command line: check, pvs, and serve refusing bad configs with a clear, non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names
from tests.conftest import write_yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "demo.yaml"


def mlioc(*args, timeout=60, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ioc", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_check_demo_passes():
    r = mlioc("check", str(DEMO))
    assert r.returncode == 0, r.stderr
    assert "configuration OK (1 model(s))" in r.stdout
    assert "beam: v1 OK on CPUExecutionProvider" in r.stdout


def test_check_reports_every_config_problem_with_location(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", """
        models:
          - name: m
            prefix: "P:"
            store: s
            inputs: [{name: a, rnage: [0, 1]}]
            outputs: [{name: y, prec: -1}]
        """)
    r = mlioc("check", str(bad))
    assert r.returncode == 1
    assert f"{bad}:6: models[0].inputs[0].rnage: unknown key (did you mean 'range'?)" in r.stderr
    assert f"{bad}:7: models[0].outputs[0].prec: must be >= 0, got -1" in r.stderr


def test_check_fails_on_a_bad_model(tmp_path):
    (tmp_path / "s" / "versions" / "1").mkdir(parents=True)
    (tmp_path / "s" / "champion").write_text("1\n")
    cfg = write_yaml(tmp_path / "c.yaml", """
        models:
          - {name: m, prefix: "P:", store: s, inputs: [{name: a}], outputs: [{name: y}]}
        """)
    r = mlioc("check", str(cfg))
    assert r.returncode == 1
    assert "m: FAIL: m v1: bad manifest: cannot read" in r.stdout


def test_pvs_lists_every_served_pv():
    r = mlioc("pvs", str(DEMO))
    assert r.returncode == 0
    names = r.stdout.split()
    assert names == model_pv_names(load_config(DEMO).models[0])
    for expected in ("DEMO:BEAM:IN:q1", "DEMO:BEAM:OUT:sigma_x", "DEMO:BEAM:ENABLE", "DEMO:BEAM:STATUS",
                     "DEMO:BEAM:MESSAGE", "DEMO:BEAM:CHAMPION", "DEMO:BEAM:LATENCY", "DEMO:BEAM:RATE",
                     "DEMO:BEAM:COUNT"):
        assert expected in names
    sim = mlioc("pvs", "--sim", str(DEMO)).stdout.split()
    assert {"SIM:Q1:I", "SIM:Q1:I_SP", "SIM:SIGMA:X", "SIM:DRIFT", "SIM:FAULT"} <= set(sim)
    assert {"SIM:ORBIT:X", "SIM:BPM32:X", "SIM:COR4:I_SP", "SIM:CAM:IMAGE", "SIM:PROFILE:X"} <= set(sim)  # arrays


def test_serve_refuses_a_bad_config(tmp_path):
    bad = write_yaml(tmp_path / "bad.yaml", "ioc: {protocols: [ca, carrier-pigeon]}\nmodels: []\n")
    r = mlioc("serve", str(bad), timeout=30)
    assert r.returncode == 1
    assert "ioc.protocols[1]: unknown protocol 'carrier-pigeon'" in r.stderr
    assert "models: expected a non-empty list" in r.stderr


def test_usage_error_exits_2():
    r = mlioc("frobnicate")
    assert r.returncode == 2


@pytest.mark.integration
def test_ioc_with_an_empty_store_serves_no_model(tmp_path, launch, ca, prefix):
    cfg = write_yaml(tmp_path / "c.yaml", f"""
        models:
          - {{name: m, prefix: "{prefix}", store: nowhere, inputs: [{{name: a}}], outputs: [{{name: y}}]}}
        """)
    ioc = launch.ioc(cfg)
    assert ca.get(f"{prefix}STATUS", as_string=True) == "NO_MODEL"
    # The PV keeps the useful end of the path and the reason (issue 19.8); the log has all of it.
    assert ca.get(f"{prefix}MESSAGE") == "no model: .../nowhere: no such store"
    assert f"no model: {tmp_path / 'nowhere'}: no such store" in ioc.output()
    assert ca.get_full(f"{prefix}OUT:y").severity == 3
    assert ca.get(f"{prefix}CHAMPION") == ""
    assert ioc.proc.poll() is None


def test_ioc_modules_never_import_torch_or_mlflow():
    code = (
        "import importlib, pkgutil, sys, ioc\n"
        "for m in pkgutil.walk_packages(ioc.__path__, 'ioc.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'mlflow', 'optuna', 'training'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.integration
def test_running_ioc_process_has_no_torch_loaded(tmp_path, launch, prefix):
    cfg = write_yaml(tmp_path / "c.yaml", f"""
        models:
          - {{name: m, prefix: "{prefix}", store: nowhere, inputs: [{{name: a}}], outputs: [{{name: y}}]}}
        """)
    ioc = launch.ioc(cfg)
    maps = Path(f"/proc/{ioc.proc.pid}/maps").read_text()
    assert "onnxruntime" in maps  # the check can see what the process really loaded
    assert "libtorch" not in maps and "/torch/" not in maps and "mlflow" not in maps


def test_check_warns_when_an_input_range_excludes_most_of_the_training_data(tmp_path):
    from tests.support.demo import demo_store_copy

    text = DEMO.read_text().replace("range: [0, 10], max_age_s: 2}", "range: [0, 4], max_age_s: 2}", 1)
    text = text.replace("store: ../data/store/beam", f"store: {demo_store_copy(tmp_path)}")
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(text.replace("../", f"{ROOT}/"))
    r = mlioc("check", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr  # a warning, not a failure
    assert "beam: warning: input q1 range [0, 4] keeps 10% of the training data of v1" in r.stdout
    assert "warning" not in mlioc("check", str(DEMO)).stdout  # the shipped demo's ranges fit its model


def test_check_of_a_missing_store_fails_without_saying_ok_first(tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", """
        models:
          - {name: m, prefix: "P:", store: nowhere, inputs: [{name: a}], outputs: [{name: y}]}
        """)
    r = mlioc("check", str(cfg))
    assert r.returncode == 1
    assert f"m: FAIL: m: {tmp_path / 'nowhere'}: no such store" in r.stdout
    assert "OK" not in r.stdout and r.stdout.splitlines()[-1] == f"{cfg}: 1 of 1 model(s) FAILED"
