"""A structural validator for Phoebus ``.bob`` files, written from Phoebus' reader (there is no XSD).

Independent of the generator on purpose: it reads the XML as Phoebus would and reports problems
(not well formed, root not ``display`` 2.0.0, unknown widget type or version, a widget outside its
parent, an undefined macro, a display link to a missing file) and the PV names the screen uses,
macros expanded: widget ``pv_name``, write actions, rule inputs and strip-chart traces.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_FILE = ROOT / "tests" / "data" / "phoebus-widget-versions.txt"
ALARM_SCHEMA = ROOT / "tests" / "data" / "phoebus-alarm-config.xsd"
# Both files are copies of the project's shared reference (``../shared/schemas``), vendored so that a
# clean clone validates without it. The sha256 of each shared original is recorded here when it is
# vendored: a clean clone checks its copies against the record, a checkout beside ``shared/`` also
# checks the originals (a changed original means: vendor it again and record its new hash).
SHARED_SCHEMAS = [ROOT.parent / "shared" / "schemas", ROOT / "shared" / "schemas"]
SHARED_VERSIONS = [d / "phoebus-widget-versions.txt" for d in SHARED_SCHEMAS]
SHARED_ALARM_SCHEMA = [d / "phoebus-alarm-config.xsd" for d in SHARED_SCHEMAS]
SHARED_SHA256 = {
    "phoebus-widget-versions.txt": "3755e45441bdbf83a8c6bed7a38a0743b7831c1f5a30e52e87b802646f9fe633",
    "phoebus-alarm-config.xsd": "6df046c1926eccd2e3c65e330343168d72eebfb99870655015d520c2648aa0c8",
}


def check_vendored(copy: Path, originals: list[Path]) -> None:
    """The vendored ``copy`` is byte for byte the shared original it was taken from (by its recorded
    hash), and so is the original itself where a shared checkout is present."""
    import hashlib

    recorded = SHARED_SHA256[copy.name]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == recorded, f"{copy} was edited: vendor it again"
    for original in (p for p in originals if p.is_file()):
        assert hashlib.sha256(original.read_bytes()).hexdigest() == recorded, (
            f"{original} changed: copy it to {copy} and record its sha256 in SHARED_SHA256")
GROUP_INSET_TOP, GROUP_INSET_SIDE = 16, 1  # Phoebus' group box: title above the children's area
_MACRO = re.compile(r"\$\(([A-Za-z0-9_.\[\]]+)\)")


def widget_versions() -> dict[str, str]:
    out = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            wtype, version = line.split()
            out[wtype] = version
    return out


@dataclass
class BobReport:
    path: Path
    problems: list[str] = field(default_factory=list)
    pvs: list[str] = field(default_factory=list)  # expanded, in document order
    widgets: list[tuple[str, ET.Element, dict[str, str]]] = field(default_factory=list)  # (type, element, macros)
    width: int = 0
    height: int = 0
    links: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # open_display (file, macros)


def _macros(el: ET.Element | None) -> dict[str, str]:
    if el is None:
        return {}
    return {child.tag: child.text or "" for child in el}


def _int(el: ET.Element, tag: str) -> int | None:
    child = el.find(tag)
    if child is None or child.text is None:
        return None
    try:
        return int(child.text)
    except ValueError:
        return None


def validate(path: Path, macros: dict[str, str] | None = None, versions: dict[str, str] | None = None) -> BobReport:
    """Check one .bob; ``macros`` override the display's own (as opening it with macros would)."""
    report = BobReport(path)
    versions = versions or widget_versions()
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        report.problems.append(f"not well-formed XML: {exc}")
        return report
    if root.tag != "display":
        report.problems.append(f"root element is {root.tag!r}, not 'display'")
        return report
    if root.get("version") != "2.0.0":
        report.problems.append(f"display version {root.get('version')!r}, expected 2.0.0")
    width, height = _int(root, "width"), _int(root, "height")
    if not width or not height:
        report.problems.append("display has no width/height")
        return report
    report.width, report.height = width, height
    scope = {**_macros(root.find("macros")), **(macros or {})}
    _walk(root, report, versions, scope, width, height, path.name)
    return report


def _expand(text: str, scope: dict[str, str], report: BobReport, where: str) -> str:
    for _ in range(5):  # macros may refer to macros
        new = _MACRO.sub(lambda m: scope.get(m.group(1), m.group(0)), text)
        if new == text:
            break
        text = new
    for name in _MACRO.findall(text):
        report.problems.append(f"{where}: undefined macro $({name})")
    return text


def _walk(parent: ET.Element, report: BobReport, versions, scope, pw: int, ph: int, where: str) -> None:
    for w in parent.findall("widget"):
        wtype, version = w.get("type"), w.get("version")
        name = (w.findtext("name") or "?")
        here = f"{where}/{name}"
        if wtype not in versions:
            report.problems.append(f"{here}: unknown widget type {wtype!r}")
        elif version != versions[wtype]:
            report.problems.append(f"{here}: {wtype} version {version}, current Phoebus writes {versions[wtype]}")
        x, y, ww, wh = (_int(w, t) for t in ("x", "y", "width", "height"))
        if None in (x, y, ww, wh):
            report.problems.append(f"{here}: needs integer x, y, width, height")
            continue
        if x < 0 or y < 0 or ww <= 0 or wh <= 0 or x + ww > pw or y + wh > ph:
            report.problems.append(f"{here}: ({x}, {y}, {ww}x{wh}) is not inside its parent ({pw}x{ph})")
        local = {**scope, **_macros(w.find("macros"))}
        pv = w.findtext("pv_name")
        if pv:
            pv = _expand(pv, local, report, here)
            report.pvs.append(pv)
            local["pv_name"] = pv
        report.widgets.append((wtype, w, local))
        for action in w.findall("actions/action"):
            if action.get("type") == "write_pv":
                report.pvs.append(_expand(action.findtext("pv_name") or "", local, report, here))
            elif action.get("type") == "open_display":
                file = action.findtext("file") or ""
                link_macros = {k: _expand(v, local, report, here) for k, v in _macros(action.find("macros")).items()}
                report.links.append((file, link_macros))
                if not (report.path.parent / file).is_file():
                    report.problems.append(f"{here}: opens {file}, which does not exist")
        for rule_pv in w.findall("rules/rule/pv_name"):
            report.pvs.append(_expand(rule_pv.text or "", local, report, here))
        for tag in ("traces/trace/y_pv", "traces/trace/x_pv"):  # strip charts and X/Y plots (x: empty = index)
            for trace_pv in w.findall(tag):
                if trace_pv.text:
                    report.pvs.append(_expand(trace_pv.text, local, report, here))
        if wtype == "group":
            # A group box (style 0, the default) draws its title and border inside its bounds.
            boxed = (_int(w, "style") or 0) == 0
            _walk(w, report, versions, local, ww - 2 * GROUP_INSET_SIDE if boxed else ww,
                  wh - GROUP_INSET_TOP - GROUP_INSET_SIDE if boxed else wh, here)
