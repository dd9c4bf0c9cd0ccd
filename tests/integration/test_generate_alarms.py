"""``mlioc generate alarms``: the Phoebus alarm-server XML for every shape of model config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names
from ioc.generate.alarms import generate
from tests.conftest import write_yaml
from tests.support.phoebus import ALARM_SCHEMA, SHARED_ALARM_SCHEMA, check_vendored

ROOT = Path(__file__).resolve().parents[2]
etree = pytest.importorskip("lxml.etree")


def _validate(path: Path):
    doc = etree.parse(str(path))
    schema = etree.XMLSchema(etree.parse(str(ALARM_SCHEMA)))
    assert schema.validate(doc), schema.error_log
    return doc


def test_alarm_schema_is_the_shared_one():
    check_vendored(ALARM_SCHEMA, SHARED_ALARM_SCHEMA)


def test_demo_config_alarms_validate_and_name_only_layout_pvs(tmp_path):
    config = load_config(ROOT / "config" / "demo.yaml")
    (path,) = generate(config, tmp_path, display_base="/opt/screens/mlioc/")
    doc = _validate(path)
    served = set(model_pv_names(config.models[0]))
    names = [pv.get("name") for pv in doc.iter("pv")]
    assert set(names) <= served
    assert "DEMO:BEAM:DRIFT" in names and "DEMO:BEAM:STATUS" in names and "DEMO:BEAM:RMSE:loss" in names
    assert doc.getroot().findtext("component/display/details") == "/opt/screens/mlioc/beam_overview.bob"


def test_autoencoder_gets_an_anomaly_alarm_and_a_model_without_drift_only_its_health(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", """
        models:
          - name: ae
            prefix: "AE:"
            store: store
            inputs: [{name: a}, {name: b}]
            outputs: [{name: a}, {name: b}]
            drift: {rate_hz: 10}
          - name: plain
            prefix: "PL:"
            store: store
            inputs: [{name: a}]
            outputs: [{name: y, alarm: {high: 1, hihi: 2}}, {name: z}]
        """)
    (path,) = generate(load_config(config), tmp_path / "out")
    doc = _validate(path)
    ae, plain = doc.getroot().findall("component")
    assert [pv.get("name") for pv in ae.iter("pv")] == ["AE:DRIFT", "AE:DRIFT:OUT", "AE:ANOMALY", "AE:STATUS",
                                                        "AE:AUDIT"]
    assert [pv.get("name") for pv in plain.iter("pv")] == ["PL:STATUS", "PL:AUDIT", "PL:OUT:y"]
    anomaly = ae.find("pv[@name='AE:ANOMALY']")
    assert anomaly.findtext("latching") == "true" and anomaly.findtext("delay") == "0"
    status = plain.find("pv[@name='PL:STATUS']")
    assert status.findtext("latching") == "false" and int(status.findtext("delay")) > 0
    details = ae.find("pv[@name='AE:DRIFT']").findtext("guidance/details")
    assert "caput AE:ENABLE 0" in details and "AE:DRIFT:WORST" in details
    # ROLLBACK is recommended by name only once the IOC serves it (the layout decides).
    assert ("AE:ROLLBACK" in details) == ("AE:ROLLBACK" in model_pv_names(load_config(config).models[0]))


def test_cli_writes_the_file_and_refuses_a_bad_config(tmp_path):
    out = tmp_path / "alarms"
    done = subprocess.run([sys.executable, "-m", "ioc", "generate", "alarms", str(ROOT / "config" / "demo.yaml"),
                           "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "mlioc-alarms.xml")
    _validate(out / "mlioc-alarms.xml")
    bad = write_yaml(tmp_path / "bad.yaml", """
        models:
          - {name: m, prefix: "M:", store: s, inputs: [{name: a}], outputs: [{name: y}], drift: {method: x}}
        """)
    done = subprocess.run([sys.executable, "-m", "ioc", "generate", "alarms", str(bad), "-o", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1 and "drift.method" in done.stderr
