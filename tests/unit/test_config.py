"""Config parsing: the demo loads; every kind of mistake is refused with file, line, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names
from tests.conftest import write_yaml

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
ioc:
  protocols: [ca]
  metrics_port: 0
models:
  - name: m
    prefix: "P:"
    store: store
    trigger: {on_change: true}
    inputs:
      - {name: a, units: A, range: [0, 10]}
      - {name: b, source: "pva://OTHER:B", max_age_s: 1.5}
    outputs:
      - {name: y, units: mm, prec: 2, display: [0, 5], alarm: {high: 3, hihi: 4}}
"""


def test_the_default_config_is_the_shipped_demo():
    from ioc.core.config import default_config_path

    assert default_config_path() == ROOT / "config" / "demo.yaml"  # what `mlioc serve` / `mlioc pvs` use


def test_demo_config_loads():
    cfg = load_config(ROOT / "config" / "demo.yaml")
    (model,) = cfg.models
    assert model.name == "beam" and model.prefix == "DEMO:BEAM:"
    assert model.trigger.kind == "scan" and model.trigger.scan_hz == 10
    assert [i.name for i in model.inputs] == ["q1", "q2", "rf_phase", "charge"]
    assert model.inputs[0].source.protocol == "ca" and model.inputs[0].source.name == "SIM:Q1:I"
    # The demo works on an ignored copy of the shipped store (issue 19.6): the checkout stays clean.
    assert model.store_path == (ROOT / "data" / "store" / "beam").resolve()
    assert model.store_template == str((ROOT / "models" / "beam").resolve())
    assert cfg.ioc.state_dir == str((ROOT / "data" / "state").resolve())
    assert cfg.simulator.prefix == "SIM:"


def test_good_config_values(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", GOOD))
    m = cfg.models[0]
    assert cfg.ioc.protocols == ("ca",)
    assert cfg.ioc.metrics_port == 0
    assert m.inputs[0].source is None and m.inputs[0].range == (0.0, 10.0)
    assert str(m.inputs[1].source) == "pva://OTHER:B" and m.inputs[1].max_age_s == 1.5
    assert m.outputs[0].alarm.high == 3 and m.outputs[0].alarm.hihi == 4 and m.outputs[0].alarm.low is None
    assert m.store == str((tmp_path / "store").resolve())
    assert model_pv_names(m)[:3] == ["P:IN:a", "P:IN:b", "P:OUT:y"]


def _problems(tmp_path, text) -> list[str]:
    path = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    return info.value.problems


def test_unknown_key_gets_line_and_hint(tmp_path):
    problems = _problems(tmp_path, GOOD.replace("range: [0, 10]", "rnage: [0, 10]"))
    assert len(problems) == 1
    assert problems[0] == (f"{tmp_path / 'bad.yaml'}:10: models[0].inputs[0].rnage: "
                           "unknown key (did you mean 'range'?)")


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD.replace("range: [0, 10]", "range: [10, 0]").replace("hihi: 4", "hihi: 2") \
        .replace('"pva://OTHER:B"', '"http://x"').replace("prec: 2", "prec: two")
    problems = "\n".join(_problems(tmp_path, text))
    assert "models[0].inputs[0].range: expected [low, high] with low < high" in problems
    assert "models[0].outputs[0].alarm: limits must increase" in problems
    assert "models[0].inputs[1].source: unknown protocol 'http'" in problems
    assert "models[0].outputs[0].prec: expected a number, got a string 'two'" in problems


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("    prefix: \"P:\"\n", ""), "models[0]: missing required key 'prefix'"),
        (lambda t: t.replace("name: b,", "name: a,"), "models[0].inputs[1].name: duplicate name 'a'"),
        (lambda t: t.replace("units: mm", "units: millimetres_of_mercury"), "at most 15 characters"),
        (lambda t: t.replace("{on_change: true}", "{on_change: true, scan_hz: 5}"),
         "give exactly one of scan_hz, on_change, pv"),
        (lambda t: t.replace("protocols: [ca]", "protocols: [ca, http]"), "ioc.protocols[1]: unknown protocol"),
        (lambda t: t.replace("metrics_port: 0", "metrics_port: 70000"), "ioc.metrics_port: port must be"),
        (lambda t: t.replace('prefix: "P:"', 'prefix: "P WITH SPACE:"'), "is not a valid PV prefix"),
        (lambda t: t.replace('prefix: "P:"', f'prefix: "{"X" * 60}:"'), "is longer than 60 characters"),
        (lambda t: t.replace("max_age_s: 1.5", "max_age_s: -1"), "models[0].inputs[1].max_age_s: must be > 0"),
        (lambda t: t.replace("    outputs:\n", "    outputz:\n"), "unknown key (did you mean 'outputs'?)"),
    ],
)
def test_refused(tmp_path, edit, expected):
    assert expected in "\n".join(_problems(tmp_path, edit(GOOD)))


def test_not_yaml(tmp_path):
    (problem,) = _problems(tmp_path, "models: [\n  - name: x\n")
    assert problem.startswith(f"{tmp_path / 'bad.yaml'}:") and "not valid YAML" in problem


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read config" in str(info.value)


def test_two_models_cannot_serve_the_same_pv(tmp_path):
    text = GOOD + GOOD.split("models:\n", 1)[1].replace("name: m", "name: m2")
    assert "PV 'P:IN:a' is also served by model 'm'" in "\n".join(_problems(tmp_path, text))


def test_registry_store_is_kept_as_uri(tmp_path):
    cfg = load_config(write_yaml(tmp_path / "c.yaml", GOOD.replace("store: store", 'store: "models:/beam@champion"')))
    assert cfg.models[0].store == "models:/beam@champion" and cfg.models[0].store_is_registry


def test_store_template_must_be_a_store_and_not_for_a_registry(tmp_path):
    doc = """
        models:
          - {{name: m, prefix: "P:", store: {store}, store_template: {template}, inputs: [a], outputs: [y]}}
        """
    with pytest.raises(ConfigError) as err:
        load_config(write_yaml(tmp_path / "c.yaml", doc.format(store="s", template="nowhere")))
    assert f"store_template: {tmp_path / 'nowhere'} is not a model store (no versions/ directory)" in str(err.value)
    (tmp_path / "t" / "versions").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"a registry store .* has no template"):
        load_config(write_yaml(tmp_path / "c.yaml", doc.format(store="models:/m@champion", template="t")))
