"""``mlioc generate db``: .db files that parse against EPICS base's record definitions and serve,
field by field, what the IOC serves. The reference is EPICS itself: the generated template is loaded
with dbLoadRecords into a real C IOC (epicscorelibs), and both IOCs are read through libca."""

from __future__ import annotations

import math

import pytest

from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_specs
from ioc.core.pvmodel import Kind
from ioc.generate import GenerateOptions, run
from tests.support.epicsdb import base_dbd, parse_db
from tests.support.generate import ROOT, extended_specs, linear_config
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
    "bo": (*COMMON, "ZNAM", "ONAM", "ZSV", "OSV"),
    "other": COMMON,
}
MBBI = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
TEXT = ("DBF_STRING", "DBF_MENU")  # compared as the text caget shows


@pytest.mark.integration
def test_db_equals_what_the_ioc_serves_and_what_epics_serves_for_it(tmp_path, launch, prefix, ca, port_pool):
    config_path = linear_config(tmp_path, prefix)
    config, out = _generate(config_path, tmp_path)
    ours = launch.ioc(config_path)
    c_prefix = f"{prefix}C:"
    ports = port_pool.take()
    cioc = ServerProcess([str(out / "lin.template"), f"P={c_prefix}"], server_env(ports), "cioc",
                         module="tests.support.cioc")
    launch.started.append(cioc)
    cioc.start()
    cioc.wait_for_line("CIOC READY", timeout=30)

    records, problems = parse_db((out / "lin.db").read_text(), "lin.db")
    assert problems == []
    dbd = base_dbd()
    specs = {s.name: s for s in model_pv_specs(config.models[0])}
    assert [r.name for r in records] == list(specs)
    compared = 0
    for rec in records:
        spec = specs[rec.name]
        suffix = rec.name[len(prefix):]
        defs = dbd.recordtypes[rec.rtype]
        # 1. every field written in the .db reads back the same from our IOC
        for fname, text in rec.fields.items():
            if fname.endswith("VL"):
                continue  # mbbi raw values: not served (the IOC posts the state index itself)
            if defs[fname].dbf in TEXT:
                assert ca.get(f"{rec.name}.{fname}", as_string=True) == text, (rec.name, fname)
            else:
                assert float(ca.get(f"{rec.name}.{fname}")) == pytest.approx(float(text)), (rec.name, fname)
            compared += 1
        # 2. our IOC and EPICS itself agree on every field both serve (defaults included)
        group = "numeric" if spec.kind.is_numeric else "bo" if spec.kind is Kind.BO else "other"
        fields = [f for f in COMPARED[group] if f in defs]
        if spec.kind is Kind.MBBI:
            fields += [f"{p}{s}" for p in MBBI[: len(spec.choices)] for s in ("ST", "SV")]
        if spec.kind is Kind.LONGIN:
            fields.remove("HYST") if "HYST" in fields else None
        for fname in fields:
            mine_name, theirs_name = f"{rec.name}.{fname}", f"{c_prefix}{suffix}.{fname}"
            if fname == "NAME":
                assert ca.get(mine_name) == rec.name and ca.get(theirs_name) == c_prefix + suffix
                continue
            as_string = defs[fname].dbf in TEXT
            mine, theirs = ca.get(mine_name, as_string=as_string), ca.get(theirs_name, as_string=as_string)
            if as_string:
                assert mine == theirs, (mine_name, mine, theirs)
            else:
                assert float(mine) == pytest.approx(float(theirs)), (mine_name, mine, theirs)
            compared += 1
        # 3. DBR_CTRL metadata (what display managers and the archiver read on connect)
        if spec.kind.is_numeric or spec.kind.is_enum:
            mine, theirs = ca.ctrl(rec.name), ca.ctrl(c_prefix + suffix)
            for key in ("units", "precision", "upper_disp_limit", "lower_disp_limit", "upper_alarm_limit",
                        "upper_warning_limit", "lower_warning_limit", "lower_alarm_limit", "upper_ctrl_limit",
                        "lower_ctrl_limit", "enum_strs"):
                if key not in theirs or (key == "precision" and spec.kind is Kind.LONGIN):
                    continue
                a, b = mine.get(key), theirs[key]
                if isinstance(b, float) and math.isnan(b):
                    assert a is not None and math.isnan(a), (rec.name, key, a)
                else:
                    assert a == b, (rec.name, key, a, b)
    assert compared > 100
    assert ours.proc.poll() is None and cioc.proc.poll() is None
