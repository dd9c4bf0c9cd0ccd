"""A small writer of Phoebus display files (``.bob``, display version 2.0.0).

Pure logic: builds an ElementTree and serialises it deterministically (same config, same bytes), so
the screens shipped in ``opi/`` can be regenerated and compared. Only properties that differ from
Phoebus' defaults are written, as Phoebus itself does. Widget ``version`` attributes are the ones the
current Phoebus writes (``/work/shared/schemas/phoebus-widget-versions.txt``, checked by a test).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

DISPLAY_VERSION = "2.0.0"
WIDGET_VERSIONS = {
    "action_button": "3.0.0",
    "bool_button": "2.0.0",
    "group": "3.0.0",
    "image": "2.0.0",
    "label": "2.0.0",
    "led": "2.0.0",
    "multi_state_led": "2.0.0",
    "progressbar": "2.0.0",
    "rectangle": "2.0.0",
    "stripchart": "2.1.0",
    "textupdate": "2.0.0",
    "xyplot": "3.0.0",
}


@dataclass(frozen=True)
class Color:
    name: str
    red: int
    green: int
    blue: int

    def element(self, tag: str) -> ET.Element:
        outer = ET.Element(tag)
        ET.SubElement(outer, "color", name=self.name, red=str(self.red), green=str(self.green), blue=str(self.blue))
        return outer


# Phoebus' named colours (color.def) used here, with their default values.
OK = Color("OK", 0, 255, 0)
MINOR = Color("MINOR", 255, 128, 0)
MAJOR = Color("MAJOR", 255, 0, 0)
INVALID = Color("INVALID", 255, 0, 255)
TEXT = Color("Text", 0, 0, 0)
BACKGROUND = Color("Background", 255, 255, 255)
HEADER_BG = Color("Header_Background", 77, 77, 77)
HEADER_FG = Color("Header_ForeGround", 255, 255, 255)
READ_BG = Color("Read_Background", 240, 240, 240)
OFF = Color("Off", 60, 100, 60)
SEVERITY_COLORS = (OK, MINOR, MAJOR, INVALID)  # index = EPICS severity
# Trace colours of the strip charts (Phoebus' default palette, first entries).
PALETTE = (Color("Trace 1", 21, 21, 196), Color("Trace 2", 242, 26, 26), Color("Trace 3", 33, 179, 33),
           Color("Trace 4", 0, 0, 0), Color("Trace 5", 128, 0, 255), Color("Trace 6", 255, 170, 0),
           Color("Trace 7", 255, 0, 240), Color("Trace 8", 243, 132, 132), Color("Trace 9", 126, 245, 126))


@dataclass(frozen=True)
class Font:
    name: str
    style: str
    size: float

    def element(self) -> ET.Element:
        outer = ET.Element("font")
        ET.SubElement(outer, "font", name=self.name, family="Liberation Sans", style=self.style,
                      size=f"{self.size:.1f}")
        return outer


DEFAULT = Font("Default", "REGULAR", 14)
DEFAULT_BOLD = Font("Default Bold", "BOLD", 14)
HEADER1 = Font("Header 1", "BOLD", 22)
HEADER2 = Font("Header 2", "BOLD", 18)
HEADER3 = Font("Header 3", "BOLD", 16)
FINE = Font("Fine Print", "REGULAR", 12)


def _text(parent: ET.Element, tag: str, value: object) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = "true" if value is True else "false" if value is False else str(value)
    return el


class Container:
    """A display or a group: holds widgets positioned relative to its own origin."""

    element: ET.Element

    def add(self, wtype: str, name: str, x: int, y: int, width: int, height: int, **props) -> ET.Element:
        """Append a widget; ``props`` are written in order (str/int/bool as text, Color/Font/Element as is)."""
        w = ET.SubElement(self.element, "widget", type=wtype, version=WIDGET_VERSIONS[wtype])
        _text(w, "name", name)
        for tag, value in props.items():
            if tag == "pv_name":
                continue
            _prop(w, tag, value)
        if "pv_name" in props:
            _text(w, "pv_name", props["pv_name"])
        for tag, value in (("x", x), ("y", y), ("width", width), ("height", height)):
            _text(w, tag, int(value))
        return w

    def group(self, name: str, x: int, y: int, width: int, height: int, macros: dict[str, str] | None = None,
              style: int | None = None) -> Group:
        el = self.add("group", name, x, y, width, height)
        if macros:
            m = ET.Element("macros")
            for k, v in macros.items():
                _text(m, k, v)
            el.insert(1, m)
        if style is not None:
            _text(el, "style", style)
        return Group(el)


def _prop(parent: ET.Element, tag: str, value: object) -> None:
    if isinstance(value, Color):
        parent.append(value.element(tag))
    elif isinstance(value, Font):
        parent.append(value.element())
    elif isinstance(value, ET.Element):
        parent.append(value)
    elif value is not None:
        _text(parent, tag, value)


@dataclass
class Group(Container):
    element: ET.Element


class Display(Container):
    def __init__(self, name: str, width: int, height: int, macros: dict[str, str] | None = None):
        self.element = ET.Element("display", version=DISPLAY_VERSION)
        _text(self.element, "name", name)
        if macros:
            m = ET.SubElement(self.element, "macros")
            for k, v in macros.items():
                _text(m, k, v)
        self._w = _text(self.element, "width", width)
        self._h = _text(self.element, "height", height)

    def resize(self, width: int, height: int) -> None:
        self._w.text, self._h.text = str(width), str(height)

    def to_bytes(self) -> bytes:
        tree = ET.ElementTree(self.element)
        ET.indent(tree, space="  ")
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(self.element, encoding="utf-8") + b"\n"


# ---------------------------------------------------------------------------- property helpers


def actions(*items: ET.Element) -> ET.Element:
    el = ET.Element("actions")
    el.extend(items)
    return el


def write_pv(pv: str, value: object, description: str) -> ET.Element:
    a = ET.Element("action", type="write_pv")
    _text(a, "pv_name", pv)
    _text(a, "value", value)
    _text(a, "description", description)
    return a


def open_display(file: str, description: str, macros: dict[str, str] | None = None, target: str = "tab") -> ET.Element:
    a = ET.Element("action", type="open_display")
    _text(a, "file", file)
    if macros:
        m = ET.SubElement(a, "macros")
        for k, v in macros.items():
            _text(m, k, v)
    _text(a, "target", target)
    _text(a, "description", description)
    return a


def states(choices: tuple[str, ...], severities: tuple[int, ...]) -> ET.Element:
    """multi_state_led states: one per enum choice, coloured by the alarm severity of that state."""
    el = ET.Element("states")
    sevs = list(severities) + [0] * len(choices)
    for index, choice in enumerate(choices):
        s = ET.SubElement(el, "state")
        _text(s, "value", index)
        _text(s, "label", choice)
        s.append(SEVERITY_COLORS[min(int(sevs[index]), 3)].element("color"))
    return el


def severity_color_rule(prop: str) -> ET.Element:
    """A rule that colours ``prop`` by the widget PV's alarm severity (display 2.x: pvSev0 0..3 =
    NO_ALARM, MINOR, MAJOR, INVALID). Used for bars, whose fill Phoebus does not colour by alarm."""
    rules = ET.Element("rules")
    rule = ET.SubElement(rules, "rule", name="Alarm colour", prop_id=prop, out_exp="false")
    for sev, color in ((3, INVALID), (2, MAJOR), (1, MINOR)):
        exp = ET.SubElement(rule, "exp", bool_exp=f"pvSev0 == {sev}")
        exp.append(color.element("value"))
    _text(rule, "pv_name", "$(pv_name)")
    return rules


@dataclass(frozen=True)
class Axis:
    title: str
    minimum: float
    maximum: float
    autoscale: bool = False


@dataclass(frozen=True)
class Trace:
    name: str
    pv: str
    axis: int
    color: Color


def _axis(el: ET.Element, a: Axis) -> ET.Element:
    """The children of a strip chart's or an X/Y plot's axis (PlotWidgetProperties' axis structure)."""
    _text(el, "title", a.title)
    _text(el, "autoscale", a.autoscale)
    _text(el, "log_scale", False)
    _text(el, "minimum", float(a.minimum))
    _text(el, "maximum", float(a.maximum))
    _text(el, "show_grid", True)
    _text(el, "visible", True)
    return el


def y_axes(axes: list[Axis]) -> ET.Element:
    el = ET.Element("y_axes")
    for a in axes:
        _axis(ET.SubElement(el, "y_axis"), a)
    return el


def x_axis(a: Axis) -> ET.Element:
    """An X/Y plot's x axis."""
    return _axis(ET.Element("x_axis"), a)


@dataclass(frozen=True)
class XYTrace:
    """One trace of an X/Y plot: a waveform ``y_pv`` against ``x_pv`` (empty: the element index)."""

    name: str
    y_pv: str
    x_pv: str
    color: Color
    points: bool = False  # mark each element (a BPM reading) as well as the line


def xy_traces(items: list[XYTrace]) -> ET.Element:
    el = ET.Element("traces")
    for t in items:
        tr = ET.SubElement(el, "trace")
        _text(tr, "name", t.name)
        _text(tr, "x_pv", t.x_pv)
        _text(tr, "y_pv", t.y_pv)
        _text(tr, "axis", 0)
        _text(tr, "trace_type", 1)  # PlotWidgetTraceType LINE: a waveform's elements joined in order
        tr.append(t.color.element("color"))
        _text(tr, "line_width", 2)
        _text(tr, "point_type", 2 if t.points else 0)  # PlotWidgetPointType CIRCLES / NONE
        _text(tr, "point_size", 6)
        _text(tr, "visible", True)
    return el


def color_map(name: str) -> ET.Element:
    """An Image widget's predefined colour map (PredefinedColorMaps: VIRIDIS, GRAY, JET, ...)."""
    el = ET.Element("color_map")
    _text(el, "name", name)
    return el


def image_axis(tag: str, title: str, maximum: int) -> ET.Element:
    """An Image widget's x or y axis, in pixels (0 .. the data width or height)."""
    el = ET.Element(tag)
    _text(el, "visible", True)
    _text(el, "title", title)
    _text(el, "minimum", 0.0)
    _text(el, "maximum", float(maximum))
    return el


def traces(items: list[Trace]) -> ET.Element:
    el = ET.Element("traces")
    for t in items:
        tr = ET.SubElement(el, "trace")
        _text(tr, "name", t.name)
        _text(tr, "y_pv", t.pv)
        _text(tr, "axis", t.axis)
        _text(tr, "trace_type", 2)  # STEP: EPICS values hold until the next update
        tr.append(t.color.element("color"))
        _text(tr, "line_width", 2)
        _text(tr, "point_type", 0)
        _text(tr, "point_size", 10)
        _text(tr, "visible", True)
    return el
