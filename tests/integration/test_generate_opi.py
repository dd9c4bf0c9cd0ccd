"""``mlioc generate opi``: Phoebus screens that are structurally valid, name only PVs a running IOC
serves, place the store/drift widgets exactly when the layout has those PVs, and render previews
that put each widget where the file does."""

from __future__ import annotations

import shutil

import pytest

from ioc.core.configfile import load_config
from ioc.core.layout import model_pv_names
from ioc.generate import GenerateOptions, run
from ioc.generate.opi import TOP, expert_file, overview_file
from tests.support.generate import ROOT, demo_like_config, extended_specs, reduced_specs
from tests.support.phoebus import SHARED_VERSIONS, VERSIONS_FILE, check_vendored, validate

DEMO = ROOT / "config" / "demo.yaml"


def _generate(config_path, out, **options):
    config = load_config(config_path)
    run("opi", config, out, GenerateOptions(**options))
    return config


def test_widget_versions_table_is_the_shared_one():
    check_vendored(VERSIONS_FILE, SHARED_VERSIONS)


@pytest.mark.parametrize("specs", [None, extended_specs], ids=["layout", "with-store-and-drift-pvs"])
def test_screens_are_structurally_valid_and_name_only_layout_pvs(tmp_path, specs):
    config = _generate(DEMO, tmp_path, **({"specs": specs} if specs else {}))
    model = config.models[0]
    served = {s.name for s in specs(model)} if specs else set(model_pv_names(model))
    files = sorted(tmp_path.glob("*.bob"))
    assert [f.name for f in files] == sorted([overview_file("beam"), expert_file("beam"), TOP])
    for f in files:
        report = validate(f)
        assert report.problems == [], f.name
        assert report.pvs, f.name
        assert set(report.pvs) <= served, (f.name, set(report.pvs) - served)
    # the overview and expert screens show every input and output; the expert screen every further PV
    overview = validate(tmp_path / overview_file("beam"))
    expert = validate(tmp_path / expert_file("beam"))
    for name in [f"{model.prefix}OUT:{o.name}" for o in model.outputs]:
        assert name in overview.pvs and name in expert.pvs
    assert set(expert.pvs) | set(overview.pvs) == served


def test_store_and_drift_widgets_appear_only_with_their_pvs(tmp_path):
    _generate(DEMO, tmp_path / "now", specs=reduced_specs)
    _generate(DEMO, tmp_path / "later", specs=extended_specs)
    p = "DEMO:BEAM:"

    def widgets(path):
        return validate(path).widgets

    def writes(path):
        return {(w.findtext("actions/action/pv_name"), w.findtext("confirm_dialog"))
                for t, w, _ in widgets(path) if t == "action_button" and w.find("actions/action[@type='write_pv']")
                is not None}

    now, later = tmp_path / "now" / overview_file("beam"), tmp_path / "later" / overview_file("beam")
    assert writes(now) == set()
    assert writes(later) == {("$(P)ROLLBACK", "true"), ("$(P)PROMOTE", "true"), ("$(P)RELOAD", "true")}
    bars = [m["pv_name"] for t, w, m in widgets(later) if t == "progressbar"]
    assert bars == [f"{p}DRIFT"] + [f"{p}DRIFT:{i}" for i in ("q1", "q2", "rf_phase", "charge")]
    assert not [w for t, w, _ in widgets(now) if t == "progressbar"]
    for t, w, _ in widgets(later):
        if t == "progressbar":  # fill in alarm colours, from the bar's own PV
            rule = w.find("rules/rule")
            assert rule.get("prop_id") == "fill_color" and rule.findtext("pv_name") == "$(pv_name)"
            assert {e.get("bool_exp") for e in rule.findall("exp")} == {"pvSev0 == 1", "pvSev0 == 2", "pvSev0 == 3"}
    chart, = [w for t, w, _ in widgets(later) if t == "stripchart"]
    assert [t.findtext("y_pv") for t in chart.findall("traces/trace")][-1] == "$(P)DRIFT"
    assert f"{p}CHALLENGER" in validate(later).pvs and f"{p}CHALLENGER" not in validate(now).pvs
    assert f"{p}CHALLENGER:OUT:loss" in validate(later).pvs
    expert_later = validate(tmp_path / "later" / expert_file("beam"))
    assert f"{p}ANOMALY" in expert_later.pvs  # a PV with no role yet still gets a row


def test_the_validator_catches_broken_screens(tmp_path):
    _generate(DEMO, tmp_path)
    path = tmp_path / overview_file("beam")
    text = path.read_text()
    bad = tmp_path / "bad.bob"
    bad.write_text(text.replace('type="textupdate" version="2.0.0"', 'type="textupdate" version="1.0.0"', 1)
                   .replace("<x>10</x>", "<x>955</x>", 1).replace("$(P)MESSAGE", "$(Q)MESSAGE"))
    problems = validate(bad).problems
    assert any("version 1.0.0" in p for p in problems)
    assert any("not inside its parent" in p for p in problems)
    assert any("undefined macro $(Q)" in p for p in problems)
    bad.write_text(text.replace("</display>", ""))
    assert "not well-formed" in validate(bad).problems[0]


def test_macros_make_one_screen_serve_any_prefix(tmp_path):
    _generate(DEMO, tmp_path)
    report = validate(tmp_path / overview_file("beam"), macros={"P": "OTHER:"})
    assert report.problems == [] and all(pv.startswith("OTHER:") for pv in report.pvs)
    top = validate(tmp_path / TOP)
    assert (overview_file("beam"), {"P": "DEMO:BEAM:"}) in top.links


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_every_pv_of_every_screen_exists_on_a_running_ioc(tmp_path, launch, prefix, ca, pva, protocol):
    config_path = demo_like_config(tmp_path, prefix)
    config = _generate(config_path, tmp_path / "opi", protocol=protocol)
    ioc = launch.ioc(config_path)
    client = pva(ioc)
    names = set()
    for f in sorted((tmp_path / "opi").glob("*.bob")):
        report = validate(f)
        assert report.problems == [], f.name
        names |= set(report.pvs)
    scheme = "pva://" if protocol == "pva" else ""
    assert names == {scheme + n for n in model_pv_names(config.models[0])}  # all of them, and only them
    for name in sorted(names):
        if protocol == "pva":
            assert name.startswith("pva://")
            assert client.get(name.removeprefix("pva://")) is not None
        else:
            assert "://" not in name
            assert ca.pv(name, auto_monitor=False).connected, name


def test_preview_puts_each_widget_where_the_file_does(tmp_path):
    from ioc.generate.preview import render_all
    from tests.support.phoebus import GROUP_INSET_SIDE, GROUP_INSET_TOP

    _generate(DEMO, tmp_path / "opi")
    pngs = render_all(tmp_path / "opi", tmp_path / "img")
    assert sorted(p.name for p in pngs) == ["beam_expert.png", "beam_overview.png", "mlioc.png"]
    from PIL import Image

    bob = tmp_path / "opi" / overview_file("beam")
    report = validate(bob)
    image = Image.open(tmp_path / "img" / "beam_overview.png").convert("RGB")
    assert image.size == (report.width, report.height)
    # absolute position of each widget: its x/y plus its enclosing groups' (and their box insets)
    import xml.etree.ElementTree as ET

    root = ET.parse(bob).getroot()

    def place(parent, ox, oy):
        for w in parent.findall("widget"):
            x, y = ox + int(w.findtext("x")), oy + int(w.findtext("y"))
            yield w, x, y, int(w.findtext("width")), int(w.findtext("height"))
            if w.get("type") == "group":
                yield from place(w, x + GROUP_INSET_SIDE, y + GROUP_INSET_TOP)

    checked = 0
    for w, x, y, width, height in place(root, 0, 0):
        if w.get("type") == "multi_state_led":  # the LED's centre has its first state's colour
            c = w.find("states/state/color/color")
            assert image.getpixel((x + width // 2, y + height // 2)) == tuple(int(c.get(k)) for k in ("red", "green",
                                                                                                          "blue"))
            checked += 1
        if w.get("type") == "textupdate":  # a read-back's box: its background just inside the corner
            assert image.getpixel((x + 1, y + 1)) == (240, 240, 240)
            checked += 1
        if w.findtext("name") == "Title":
            assert image.getpixel((x + width - 2, y + height - 2)) == (77, 77, 77)
            checked += 1
    assert checked >= 8
    assert image.getpixel((report.width - 1, report.height - 1)) == (255, 255, 255)  # nothing drawn there


def test_shipped_previews_match_the_shipped_screens():
    from PIL import Image

    for bob in sorted((ROOT / "opi").glob("*.bob")):
        png = ROOT / "docs" / "img" / f"{bob.stem}.png"
        assert png.is_file(), f"{bob.name}: run mlioc generate opi config/demo.yaml -o opi --preview docs/img"
        report = validate(bob)
        assert Image.open(png).size == (report.width, report.height), png.name


def test_cli_generate_opi_with_preview(tmp_path):
    import subprocess
    import sys

    run_ = subprocess.run([sys.executable, "-m", "ioc", "generate", "opi", str(DEMO), "-o", str(tmp_path / "o"),
                           "--preview", str(tmp_path / "i")], capture_output=True, text=True, timeout=60)
    assert run_.returncode == 0, run_.stderr
    assert sorted(p.name for p in (tmp_path / "i").glob("*.png")) == ["beam_expert.png", "beam_overview.png",
                                                                      "mlioc.png"]
    shutil.rmtree(tmp_path / "o")
