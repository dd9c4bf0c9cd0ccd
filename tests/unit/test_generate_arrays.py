"""Control-room artefacts of config/demo-arrays.yaml (issue 14.7), without a running IOC: Phoebus screens plot a
waveform in an X/Y plot and show an image in an Image widget (checked with the structural validator written from
Phoebus' reader), the archiver request samples waveforms on SCAN and leaves images out with the reason, the .db
has waveform records. The running-IOC and C-IOC checks are in tests/integration/test_generate_db.py."""

from __future__ import annotations

from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names
from ioc.generate import GenerateOptions, run
from ioc.generate.archiver import LEFT_OUT_NAME, WAVEFORM_SCAN_S, entries, left_out
from ioc.generate.opi import expert_file, overview_file
from tests.support.epicsdb import parse_db
from tests.support.generate import ROOT
from tests.support.phoebus import validate

ARRAYS = ROOT / "config" / "demo-arrays.yaml"


def _widgets(path, wtype):
    return [(w, m) for t, w, m in validate(path).widgets if t == wtype]


def test_waveforms_are_xy_plots_and_images_are_image_widgets(tmp_path):
    config = load_config(ARRAYS)
    run("opi", config, tmp_path, GenerateOptions())
    shown: set[str] = set()
    for bob in sorted(tmp_path.glob("*.bob")):
        report = validate(bob)
        assert report.problems == [], (bob.name, report.problems)  # widget versions: xyplot 3.0.0, image 2.0.0
        shown |= set(report.pvs)
    served = {name for m in config.models for name in model_pv_names(m)}
    assert shown - {"SIM:ORBIT:S", "SIM:PROFILE:X:POS"} == served  # the x axes are the simulator's PVs

    (orbit, _), = _widgets(tmp_path / overview_file("orbit"), "xyplot")
    trace = orbit.find("traces/trace")
    assert (trace.findtext("y_pv"), trace.findtext("x_pv")) == ("$(P)IN:orbit_x", "SIM:ORBIT:S")
    assert orbit.findtext("x_axis/title") == "SIM:ORBIT:S" and orbit.findtext("x_axis/autoscale") == "true"
    assert orbit.findtext("title") == "input orbit_x [mm]" and trace.findtext("point_type") == "2"  # a marker per BPM

    (profile, _), = _widgets(tmp_path / overview_file("profile"), "xyplot")
    assert [t.findtext("y_pv") for t in profile.findall("traces/trace")] == [
        "$(P)OUT:profile_x", "$(P)CHALLENGER:OUT:profile_x"]  # champion and challenger on one plot
    assert (profile.findtext("y_axes/y_axis/minimum"), profile.findtext("y_axes/y_axis/maximum")) == ("0.0", "0.5")
    (chart, _), = _widgets(tmp_path / overview_file("profile"), "stripchart")  # drift only: no scalar outputs
    assert [t.findtext("y_pv") for t in chart.findall("traces/trace")] == ["$(P)DRIFT"]

    for screen in (overview_file("screen"), expert_file("screen")):
        (image, macros), = _widgets(tmp_path / screen, "image")
        assert macros["pv_name"] == "DEMO:SCREEN:IN:screen"
        assert (image.findtext("data_width"), image.findtext("data_height")) == ("64", "64")
        assert image.findtext("color_map/name") == "VIRIDIS" and image.findtext("autoscale") == "true"
        assert image.findtext("x_axis/maximum") == "64.0" and image.findtext("y_axis/maximum") == "64.0"
    # The tables show an image's shape PV instead of 4096 numbers.
    expert = validate(tmp_path / expert_file("screen"))
    assert "DEMO:SCREEN:IN:screen:SHAPE" in expert.pvs


def test_the_pva_screens_name_pva_pvs_and_keep_the_x_axis_protocol(tmp_path):
    run("opi", load_config(ARRAYS), tmp_path, GenerateOptions(protocol="pva"))
    (orbit, _), = _widgets(tmp_path / overview_file("orbit"), "xyplot")
    trace = orbit.find("traces/trace")
    assert (trace.findtext("y_pv"), trace.findtext("x_pv")) == ("pva://$(P)IN:orbit_x", "SIM:ORBIT:S")
    (image, macros), = _widgets(tmp_path / overview_file("screen"), "image")
    assert macros["pv_name"] == "pva://DEMO:SCREEN:IN:screen"  # the NTNDArray itself


def test_the_archiver_scans_waveforms_and_leaves_images_out_with_the_reason(tmp_path):
    config = load_config(ARRAYS)
    body = {e["pv"]: e for e in entries(config, GenerateOptions())}
    for pv in ("DEMO:ORBIT:IN:orbit_x", "DEMO:PROFILE:OUT:profile_x", "DEMO:PROFILE:CHALLENGER:OUT:profile_x"):
        assert body[pv]["samplingmethod"] == "SCAN" and float(body[pv]["samplingperiod"]) == WAVEFORM_SCAN_S
    assert body["DEMO:SCREEN:IN:screen:SHAPE"]["samplingmethod"] == "MONITOR"
    assert body["DEMO:SCREEN:OUT:sigma_x"]["samplingmethod"] == "MONITOR"
    assert "DEMO:SCREEN:IN:screen" not in body
    (pv, why), = left_out(config, GenerateOptions())
    assert pv == "DEMO:SCREEN:IN:screen" and "64x64" in why and "areaDetector" in why
    written = run("archiver", config, tmp_path, GenerateOptions())
    notes = tmp_path / LEFT_OUT_NAME
    assert notes in written and "DEMO:SCREEN:IN:screen\tan image (64x64 FLOAT" in notes.read_text()
    run("archiver", load_config(ROOT / "config" / "demo.yaml"), tmp_path, GenerateOptions())
    assert not notes.exists()  # nothing left out: no stale list beside the request


def test_db_waveform_records_parse_against_base(tmp_path):
    config = load_config(ARRAYS)
    run("db", config, tmp_path, GenerateOptions())
    records, problems = parse_db((tmp_path / "screen.db").read_text(), "screen.db")
    assert problems == []
    rec = {r.name: r for r in records}
    assert rec["DEMO:SCREEN:IN:screen"].rtype == "waveform"
    assert rec["DEMO:SCREEN:IN:screen"].fields["NELM"] == "4096" and rec["DEMO:SCREEN:IN:screen"].fields[
        "FTVL"] == "FLOAT"
    assert {"NELM": "2", "FTVL": "LONG", "INP": "[64, 64]"}.items() <= rec["DEMO:SCREEN:IN:screen:SHAPE"].fields.items()
