"""``mlioc generate db``: .db files that parse against EPICS base's record definitions and serve,
field by field, what the IOC serves. The reference is EPICS itself: the generated template is loaded
with dbLoadRecords into a real C IOC (epicscorelibs), and both IOCs are read through libca."""

from __future__ import annotations

import math

import pytest

from ioc.core.configfile import load_config
from ioc.core.layout import ModelNames, model_pv_names, model_pv_specs
from ioc.core.pvmodel import Kind
from ioc.generate import GenerateOptions, run
from tests.support.demo import demo_arrays_config
from tests.support.epicsdb import base_dbd, parse_db
from tests.support.generate import ROOT, extended_specs, linear_config
from tests.support.phoebus import validate
from tests.support.procs import ServerProcess, server_env


def _generate(config_path, tmp_path, specs=None):
    config = load_config(config_path)
    options = GenerateOptions(specs=specs) if specs else GenerateOptions()
    out = tmp_path / "db"
    run("db", config, out, options)
    return config, out


@pytest.mark.parametrize("specs", [None, extended_specs], ids=["layout", "with-store-and-drift-pvs"])
def test_db_files_parse_against_base_record_definitions(tmp_path, specs):
    config, out = _generate(ROOT / "config" / "demo.yaml", tmp_path, specs)
    model = config.models[0]
    expected = (specs or model_pv_specs)(model)
    db_records, problems = parse_db((out / "beam.db").read_text(), "beam.db")
    assert problems == []
    assert [(r.rtype, r.name) for r in db_records] == [(s.kind.value, s.name) for s in expected]
    tpl_records, problems = parse_db((out / "beam.template").read_text(), "beam.template", {"P": "X:"})
    assert problems == []
    assert [r.name for r in tpl_records] == ["X:" + s.name[len(model.prefix):] for s in expected]
    assert [r.fields for r in tpl_records] == [r.fields for r in db_records]
    sources = {r.name: r.info.get("mlioc:source") for r in db_records if r.info}
    assert sources == {f"{model.prefix}IN:{i.name}": str(i.source) for i in model.inputs}
    subs = (out / "demo.substitutions").read_text()
    assert 'file "beam.template"' in subs and '{ "DEMO:BEAM:" }' in subs


def test_the_validator_catches_what_epics_would_refuse():
    """The checks above can fail: a wrong field name, menu value or number is reported."""
    bad = 'record(ai, "X") {\n field(HHSVX, "MAJOR")\n field(HSV, "SEVERE")\n field(HIHI, "four")\n}\n'
    _, problems = parse_db(bad, "bad.db")
    assert len(problems) == 3
    _, problems = parse_db('record(nosuch, "X") {\n}\n', "bad.db")
    assert "unknown record type" in problems[0]


# Record fields both IOCs serve, compared per kind (and only where the record type defines them).
COMMON = ("NAME", "RTYP", "DESC", "ASG")
COMPARED = {
    "numeric": (*COMMON, "EGU", "PREC", "HOPR", "LOPR", "HIHI", "HIGH", "LOW", "LOLO", "HHSV", "HSV", "LSV", "LLSV",
                "HYST", "MDEL", "ADEL", "DRVH", "DRVL"),
    "waveform": (*COMMON, "EGU", "PREC", "HOPR", "LOPR", "NELM", "FTVL"),
    "bo": (*COMMON, "ZNAM", "ONAM", "ZSV", "OSV"),
    "other": COMMON,
}
MBBI = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
TEXT = ("DBF_STRING", "DBF_MENU")  # compared as the text caget shows


CALIBRATED = ("HIHI", "HIGH", "HHSV", "HSV", "HYST", "upper_alarm_limit", "upper_warning_limit")


def _calibrated(config) -> set[str]:
    """The PVs whose limits the IOC sets when a version loads: drift scores calibrated on its reference (no
    ``drift.limits`` in the config) and RMSE:<output> as multiples of its test RMSE. A .db cannot know them, so
    their HIHI/HIGH/HYST and severities are the C IOC's defaults and differ from ours once the version loaded."""
    names = set()
    for m in config.models:
        if m.drift is None:
            continue
        n = ModelNames(m.prefix)
        names |= {n.rmse(o.name) for o in m.outputs if o.truth is not None}
        if m.drift.limits is None:
            names |= {n.drift, *(n.drift_input(i.name) for i in m.inputs)}
        if m.drift.output_limits is None:
            names.add(n.drift_out)
    return names


def _compare(ca, records, specs, c_name, calibrated: frozenset[str] | set[str] = frozenset()) -> int:
    """Every field of each record, read through libca from our IOC and from the C IOC (``c_name(ours)``):
    1. every field the .db writes reads back the same from our IOC; 2. both IOCs agree on every field both
    serve (defaults included), but the ``calibrated`` PVs' alarm limits; 3. DBR_CTRL metadata. Returns how many
    values were compared."""
    dbd = base_dbd()
    compared = 0
    for rec in records:
        spec = specs[rec.name]
        theirs_rec = c_name(rec.name)
        defs = dbd.recordtypes[rec.rtype]
        for fname, text in rec.fields.items():
            if fname.endswith("VL") or fname == "INP":
                continue  # mbbi raw values, a constant link: not served (the IOC posts the value itself)
            if defs[fname].dbf in TEXT:  # a CA DBR_STRING holds 39 characters (DESC may hold 40: so do both IOCs)
                assert ca.get(f"{rec.name}.{fname}", as_string=True) == text[:39], (rec.name, fname)
            else:
                assert float(ca.get(f"{rec.name}.{fname}")) == pytest.approx(float(text)), (rec.name, fname)
            compared += 1
        group = "numeric" if spec.kind.is_numeric else "bo" if spec.kind is Kind.BO else \
            "waveform" if spec.kind.is_array else "other"
        fields = [f for f in COMPARED[group] if f in defs]
        if spec.kind is Kind.MBBI:
            fields += [f"{p}{s}" for p in MBBI[: len(spec.choices)] for s in ("ST", "SV")]
        if spec.kind is Kind.LONGIN:
            fields.remove("HYST") if "HYST" in fields else None
        for fname in fields:
            if rec.name in calibrated and fname in CALIBRATED:
                continue
            mine_name, theirs_name = f"{rec.name}.{fname}", f"{theirs_rec}.{fname}"
            if fname == "NAME":
                assert ca.get(mine_name) == rec.name[:39] and ca.get(theirs_name) == theirs_rec[:39]
                continue
            as_string = defs[fname].dbf in TEXT
            mine, theirs = ca.get(mine_name, as_string=as_string), ca.get(theirs_name, as_string=as_string)
            if as_string:
                assert mine == theirs, (mine_name, mine, theirs)
            else:
                assert float(mine) == pytest.approx(float(theirs)), (mine_name, mine, theirs)
            compared += 1
        if spec.kind.is_numeric or spec.kind.is_enum or spec.kind.is_array:
            mine, theirs = ca.ctrl(rec.name), ca.ctrl(theirs_rec)
            for key in ("units", "precision", "upper_disp_limit", "lower_disp_limit", "upper_alarm_limit",
                        "upper_warning_limit", "lower_warning_limit", "lower_alarm_limit", "upper_ctrl_limit",
                        "lower_ctrl_limit", "enum_strs"):
                if key not in theirs or (key == "precision" and spec.kind is Kind.LONGIN) or \
                        (rec.name in calibrated and key in CALIBRATED):
                    continue
                a, b = mine.get(key), theirs[key]
                if isinstance(b, float) and math.isnan(b):
                    assert a is not None and math.isnan(a), (rec.name, key, a)
                else:
                    assert a == b, (rec.name, key, a, b)
    return compared


@pytest.mark.integration
def test_db_equals_what_the_ioc_serves_and_what_epics_serves_for_it(tmp_path, launch, prefix, ca, port_pool):
    config_path = linear_config(tmp_path, prefix)
    config, out = _generate(config_path, tmp_path)
    ours = launch.ioc(config_path)
    c_prefix = f"{prefix}C:"
    cioc = _c_ioc(launch, port_pool, [str(out / "lin.template"), f"P={c_prefix}"])
    records, problems = parse_db((out / "lin.db").read_text(), "lin.db")
    assert problems == []
    specs = {s.name: s for s in model_pv_specs(config.models[0])}
    assert [r.name for r in records] == list(specs)
    assert _compare(ca, records, specs, lambda name: c_prefix + name[len(prefix):]) > 100
    assert ours.proc.poll() is None and cioc.proc.poll() is None


def _c_ioc(launch, port_pool, args: list[str]) -> ServerProcess:
    """A real EPICS C IOC loading the generated templates (tests/support/cioc.py)."""
    cioc = ServerProcess(args, server_env(port_pool.take()), "cioc", module="tests.support.cioc")
    launch.started.append(cioc)
    cioc.start()
    cioc.wait_for_line("CIOC READY", timeout=30)
    return cioc


@pytest.mark.integration
@pytest.mark.slow
def test_array_demo_db_and_screens_match_the_ioc_and_a_c_ioc(tmp_path, launch, prefix, ca, port_pool):
    """config/demo-arrays.yaml: waveform records (NELM, FTVL, EGU, PREC, HOPR/LOPR, DESC) for the orbit,
    the screen image (h*w elements) and its SHAPE, the profile; a C IOC serves them as the IOC does."""
    config_path, p, _ = demo_arrays_config(tmp_path, prefix)
    config, out = _generate(config_path, tmp_path)
    ours = launch.ioc(config_path)
    c_prefix = f"{prefix}C:"
    args = []
    for m in config.models:
        args += [str(out / f"{m.name}.template"), f"P={c_prefix}{m.name.upper()}:"]
    cioc = _c_ioc(launch, port_pool, args)
    compared = 0
    waveforms = {}
    calibrated = _calibrated(config)
    assert f"{p}ORBIT:DRIFT:orbit_x" in calibrated
    for m in config.models:
        records, problems = parse_db((out / f"{m.name}.db").read_text(), f"{m.name}.db")
        assert problems == []
        specs = {s.name: s for s in model_pv_specs(m)}
        assert [r.name for r in records] == list(specs)
        waveforms |= {r.name: r.fields for r in records if r.rtype == "waveform"}
        compared += _compare(ca, records, specs, lambda name, m=m: f"{c_prefix}{m.name.upper()}:{name[len(m.prefix):]}",
                             calibrated)
    assert compared > 200
    assert {k: waveforms[f"{p}{k}"] for k in ("ORBIT:IN:orbit_x", "SCREEN:IN:screen", "PROFILE:OUT:profile_x")} == {
        "ORBIT:IN:orbit_x": {"DESC": "orbit_x from " + f"{prefix}SIM:ORBIT:X"[:40 - len("orbit_x from ")],
                             "SCAN": "I/O Intr", "ASG": "INPUTS", "NELM": "32", "FTVL": "DOUBLE", "EGU": "mm",
                             "PREC": "3", "HOPR": "10", "LOPR": "-10"},  # display: the valid range
        "SCREEN:IN:screen": {"DESC": waveforms[f"{p}SCREEN:IN:screen"]["DESC"], "SCAN": "I/O Intr", "ASG": "INPUTS",
                             "NELM": "4096", "FTVL": "FLOAT", "EGU": "counts", "PREC": "3"},
        "PROFILE:OUT:profile_x": {"DESC": "horizontal beam profile", "SCAN": "I/O Intr", "ASG": "DEFAULT",
                                  "NELM": "100", "FTVL": "DOUBLE", "EGU": "nC/mm", "PREC": "4", "HOPR": "0.5",
                                  "LOPR": "0"},
    }
    # The image's SHAPE: the same [h w] from both IOCs (the C IOC from the record's constant INP link).
    assert list(ca.get(f"{p}SCREEN:IN:screen:SHAPE")) == list(ca.get(f"{c_prefix}SCREEN:IN:screen:SHAPE")) == [64, 64]
    # The generated screens of the same config name only PVs this IOC serves (and the simulator's x axes).
    run("opi", config, tmp_path / "opi", GenerateOptions())
    shown = set()
    for bob in sorted((tmp_path / "opi").glob("*.bob")):
        report = validate(bob)
        assert report.problems == [], bob.name
        shown |= set(report.pvs)
    axes = {str(c.x_axis.name) for m in config.models for c in (*m.inputs, *m.outputs) if c.x_axis is not None}
    served = {name for m in config.models for name in model_pv_names(m)}
    assert shown - axes == served  # every PV of the layout on some screen, and nothing else
    for name in sorted(shown - axes):
        assert ca.pv(name, auto_monitor=False).connected, name
    assert ours.proc.poll() is None and cioc.proc.poll() is None
