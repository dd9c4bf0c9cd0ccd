"""``mlioc generate opi``: Phoebus screens for every model, and a top-level screen linking them.

Files: ``<model>_overview.bob`` (what an operator needs: status, enable, champion/challenger, roll
back / promote, predictions with alarm borders and units, drift bars, a strip chart),
``<model>_expert.bob`` (inputs with their sources and validity limits, latency / rate / count,
message, versions and where their provenance lives, and every further PV of the layout), and
``mlioc.bob`` (one row per model with buttons to its screens).

Model screens name PVs as ``$(P)<suffix>`` with ``P`` defaulting to the model's prefix, so one screen
serves any prefix (open it with another ``P``). Every PV comes from the layout via
:class:`~ioc.generate.model_pvs.ModelPVs`; widgets for PVs the layout does not list (yet) - PROMOTE,
ROLLBACK, CHALLENGER, DRIFT ... - are simply not placed, and appear once the IOC serves them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ioc.core.config import Config, InputConfig
from ioc.core.pvmodel import PVSpec
from ioc.generate import GenerateOptions
from ioc.generate.bob import (
    BACKGROUND,
    DEFAULT_BOLD,
    FINE,
    HEADER1,
    HEADER_BG,
    HEADER_FG,
    PALETTE,
    Axis,
    Container,
    Display,
    Trace,
    actions,
    open_display,
    severity_color_rule,
    states,
    traces,
    write_pv,
    y_axes,
)
from ioc.generate.model_pvs import ModelPVs

TOP = "mlioc.bob"
WIDTH = 960
ROW = 30  # vertical pitch of a row of widgets
H = 24  # widget height in a row
GROUP_TOP = 6  # first row inside a group (below Phoebus' group-box title)
GROUP_PAD = 34  # group height beyond its rows (title + border)
MARGIN = 10


def overview_file(model_name: str) -> str:
    return f"{model_name}_overview.bob"


def expert_file(model_name: str) -> str:
    return f"{model_name}_expert.bob"


class Screen:
    """Names PVs for one screen: ``$(P)<suffix>`` (macro) or full names, CA or ``pva://``."""

    def __init__(self, pvs: ModelPVs, protocol: str, macro: bool = True):
        self.pvs = pvs
        self.scheme = "pva://" if protocol == "pva" else ""
        self.macro = macro

    def pv(self, spec: PVSpec) -> str:
        name = "$(P)" + self.pvs.suffix(spec) if self.macro else spec.name
        return self.scheme + name


def _title(display: Display, text: str) -> None:
    display.add("label", "Title", 0, 0, WIDTH, 40, text=text, font=HEADER1, foreground_color=HEADER_FG,
                background_color=HEADER_BG, transparent=False, horizontal_alignment=0, vertical_alignment=1)


def _label(c: Container, text: str, x: int, y: int, w: int, bold: bool = False, fine: bool = False, **props) -> None:
    font = DEFAULT_BOLD if bold else FINE if fine else None
    c.add("label", f"Label {text}"[:40], x, y, w, H, text=text, font=font, vertical_alignment=1, **props)


def _value(c: Container, s: Screen, spec: PVSpec, x: int, y: int, w: int, name: str | None = None) -> None:
    """A read-back with the PV's units and an alarm-sensitive border (Phoebus' default for PV widgets)."""
    c.add("textupdate", name or f"{s.pvs.suffix(spec)}", x, y, w, H, pv_name=s.pv(spec), horizontal_alignment=2,
          vertical_alignment=1, tooltip=f"$(pv_name): {spec.desc}")


def _bar(c: Container, s: Screen, spec: PVSpec, x: int, y: int, w: int) -> None:
    """A bar whose fill takes the alarm colour of its PV (MINOR / MAJOR / INVALID), limits from the PV."""
    c.add("progressbar", f"Bar {s.pvs.suffix(spec)}", x, y, w, H - 4, pv_name=s.pv(spec),
          rules=severity_color_rule("fill_color"), tooltip=f"$(pv_name): {spec.desc}")


def _status_led(c: Container, s: Screen, x: int, y: int) -> None:
    spec = s.pvs.status
    c.add("multi_state_led", "Status LED", x, y + 2, 20, 20, pv_name=s.pv(spec),
          states=states(spec.choices, tuple(int(v) for v in spec.choice_severities)))


def _command(c: Container, s: Screen, spec: PVSpec, text: str, x: int, y: int, w: int, confirm: str) -> None:
    """An action button writing 1 to a command PV, after the operator confirms."""
    c.add("action_button", f"{text} button", x, y, w, H + 4,
          actions=actions(write_pv(s.pv(spec), 1, text)), pv_name=s.pv(spec), text=text,
          tooltip=f"{spec.desc}: writes 1 to $(pv_name)", confirm_dialog=True, confirm_message=confirm)


def _group_height(rows: int) -> int:
    return GROUP_TOP + rows * ROW + GROUP_PAD - 8


# ---------------------------------------------------------------------------- overview


def overview(pvs: ModelPVs, protocol: str) -> Display:
    model = pvs.model
    s = Screen(pvs, protocol)
    d = Display(f"{model.name} overview", WIDTH, 100, macros={"P": model.prefix})
    _title(d, f"{model.name}: {model.description}" if model.description else f"Model {model.name}")
    col_w = (WIDTH - 3 * MARGIN) // 2
    left_x, right_x = MARGIN, 2 * MARGIN + col_w
    y0 = 50

    # --- model state and the operator's actions
    commands = [(spec, text, confirm) for spec, text, confirm in (
        (pvs.rollback, "Roll back", f"Roll {model.name} back to the previous champion?"),
        (pvs.promote, "Promote", f"Make the challenger of {model.name} the champion?"),
        (pvs.reload, "Reload", f"Rescan the model store of {model.name} now?"),
    ) if spec is not None]
    rows = 4 + (1 if commands else 0)
    g = d.group("Model", left_x, y0, col_w, _group_height(rows) + 6)
    y = GROUP_TOP
    _label(g, "Status", 5, y, 90, bold=True)
    _status_led(g, s, 100, y)
    _value(g, s, pvs.status, 130, y, 180, name="STATUS")
    y += ROW
    _label(g, "Enable", 5, y, 90, bold=True)
    enable = pvs.enable
    g.add("bool_button", "ENABLE", 100, y, 180, H + 2, pv_name=s.pv(enable), off_label=enable.choices[0],
          on_label=enable.choices[1], tooltip=f"$(pv_name): {enable.desc}")
    y += ROW + 2
    _label(g, "Champion", 5, y, 90, bold=True)
    _value(g, s, pvs.champion, 100, y, 100, name="CHAMPION")
    if pvs.challenger is not None:
        _label(g, "Challenger", 215, y, 90, bold=True)
        _value(g, s, pvs.challenger, 310, y, 100, name="CHALLENGER")
    y += ROW
    if commands:
        x = 100
        for spec, text, confirm in commands:
            _command(g, s, spec, text, x, y, 105, confirm)
            x += 112
        y += ROW + 4
    _label(g, "Message", 5, y, 90, bold=True)
    _value(g, s, pvs.message, 100, y, col_w - 112, name="MESSAGE")
    left_bottom = y0 + _group_height(rows) + 6

    # --- predictions (and the challenger's, when one is shadowed)
    outputs = pvs.outputs
    shadow = {o.name: spec for o, _ in outputs if (spec := pvs.challenger_output(o.name)) is not None}
    g = d.group("Predictions", right_x, y0, col_w, _group_height(len(outputs) + 1))
    y = GROUP_TOP
    _label(g, "Output", 5, y, 150, bold=True)
    _label(g, "Champion", 160, y, 130, bold=True, horizontal_alignment=2)
    if shadow:
        _label(g, "Challenger", 300, y, 130, bold=True, horizontal_alignment=2)
    for out, spec in outputs:
        y += ROW
        _label(g, out.name, 5, y, 150, tooltip=out.description or spec.desc)
        _value(g, s, spec, 160, y, 130)
        if out.name in shadow:
            _value(g, s, shadow[out.name], 300, y, 130)
    right_bottom = y0 + _group_height(len(outputs) + 1)

    # --- drift: overall and per input, as bars in alarm colours
    drift_rows: list[tuple[str, PVSpec]] = []
    if pvs.drift is not None:
        drift_rows.append(("overall", pvs.drift))
    drift_rows += [(inp.name, spec) for inp, spec in pvs.input_drifts]
    if drift_rows:
        gy = right_bottom + MARGIN
        g = d.group("Drift", right_x, gy, col_w, _group_height(len(drift_rows)))
        y = GROUP_TOP
        for label, spec in drift_rows:
            _label(g, label, 5, y, 150, bold=label == "overall")
            _bar(g, s, spec, 160, y + 2, 170)
            _value(g, s, spec, 340, y, 90)
            y += ROW
        right_bottom = gy + _group_height(len(drift_rows))

    # --- strip chart: predictions (one axis per unit) and drift
    y = max(left_bottom, right_bottom) + MARGIN
    by_unit: dict[str, list[PVSpec]] = {}  # one y axis per unit, in output order
    names: dict[str, str] = {}
    for out, spec in outputs:
        by_unit.setdefault(spec.egu or out.name, []).append(spec)
        names[spec.name] = out.name
    axes: list[Axis] = []
    chart: list[Trace] = []
    for specs in by_unit.values():
        title = ", ".join(names[sp.name] for sp in specs) + (f" [{specs[0].egu}]" if specs[0].egu else "")
        shown = [sp.display for sp in specs if sp.display is not None]
        lo = min((d[0] for d in shown), default=0.0)
        hi = max((d[1] for d in shown), default=1.0)
        axes.append(Axis(title, lo, hi, autoscale=not shown))
        for sp in specs:
            chart.append(Trace(names[sp.name], s.pv(sp), len(axes) - 1, PALETTE[len(chart) % len(PALETTE)]))
    if pvs.drift is not None:
        lo, hi = pvs.drift.display or (0.0, 1.0)
        axes.append(Axis("drift", lo, hi, autoscale=pvs.drift.display is None))
        chart.append(Trace("drift", s.pv(pvs.drift), len(axes) - 1, PALETTE[len(chart) % len(PALETTE)]))
    d.add("stripchart", "Predictions and drift", MARGIN, y, WIDTH - 2 * MARGIN, 280,
          title="Predictions" + (" and drift" if pvs.drift is not None else ""), show_legend=True,
          start="10 minutes", y_axes=y_axes(axes), traces=traces(chart))
    y += 280 + MARGIN

    # --- navigation
    d.add("action_button", "Expert screen", MARGIN, y, 160, 30,
          actions=actions(open_display(expert_file(model.name), "Expert screen", {"P": "$(P)"})),
          text="Expert screen...")
    d.add("action_button", "All models", MARGIN + 170, y, 160, 30,
          actions=actions(open_display(TOP, "All models")), text="All models...")
    d.resize(WIDTH, y + 30 + MARGIN)
    return d


# ---------------------------------------------------------------------------- expert screen


def _range_text(inp: InputConfig) -> str:
    if inp.range is None:
        return "any"
    lo, hi = inp.range
    return f"[{lo:g}, {hi:g}] {inp.units}".strip()


def _limits_text(spec: PVSpec) -> str:
    a = spec.alarm
    if a is None:
        return "no alarm limits"
    parts = [f"{k} {v:g}" for k, v in (("LOLO", a.lolo), ("LOW", a.low), ("HIGH", a.high), ("HIHI", a.hihi))
             if v is not None]
    return ", ".join(parts) + (f" {spec.egu}" if spec.egu else "")


def expert(pvs: ModelPVs, protocol: str, store_text: str, trigger_text: str) -> Display:
    model = pvs.model
    s = Screen(pvs, protocol)
    d = Display(f"{model.name} expert", WIDTH, 100, macros={"P": model.prefix})
    _title(d, f"{model.name}: expert screen")
    inner = WIDTH - 2 * MARGIN
    y0 = 50

    # --- inputs: value, source, validity
    inputs = pvs.inputs
    drifts = {inp.name: spec for inp, spec in pvs.input_drifts}
    g = d.group("Inputs", MARGIN, y0, inner, _group_height(len(inputs) + 1))
    y = GROUP_TOP
    for text, x, w in (("Input", 5, 110), ("Value", 120, 130), ("Source", 260, 250), ("Valid range", 520, 150),
                       ("Max age", 680, 80)):
        _label(g, text, x, y, w, bold=True)
    if drifts:
        _label(g, "Drift", 770, y, 150, bold=True)
    for inp, spec in inputs:
        y += ROW
        _label(g, inp.name, 5, y, 110, tooltip=spec.desc)
        _value(g, s, spec, 120, y, 130)
        _label(g, inp.source_text or "writable (caput / pvput)", 260, y, 250)
        _label(g, _range_text(inp), 520, y, 150)
        _label(g, f"{inp.max_age_s:g} s" if inp.max_age_s else "-", 680, y, 80)
        if inp.name in drifts:
            _bar(g, s, drifts[inp.name], 770, y + 2, 150)
    y = y0 + _group_height(len(inputs) + 1) + MARGIN

    # --- outputs: value, limits, challenger
    outputs = pvs.outputs
    shadow = {o.name: spec for o, _ in outputs if (spec := pvs.challenger_output(o.name)) is not None}
    g = d.group("Outputs", MARGIN, y, inner, _group_height(len(outputs) + 1))
    gy = GROUP_TOP
    for text, x, w in (("Output", 5, 110), ("Champion", 120, 130), ("Alarm limits", 260, 250)):
        _label(g, text, x, gy, w, bold=True)
    if shadow:
        _label(g, "Challenger", 520, gy, 130, bold=True)
    # live error against the measured truth, champion and challenger side by side (the promotion policy's data)
    errors = {o.name: (m, pvs.challenger_mae(o.name)) for o, _ in outputs if (m := pvs.mae(o.name)) is not None}
    if errors:
        _label(g, "MAE champion", 660, gy, 130, bold=True)
        _label(g, "MAE challenger", 795, gy, 130, bold=True)
    for out, spec in outputs:
        gy += ROW
        _label(g, out.name, 5, gy, 110, tooltip=spec.desc)
        _value(g, s, spec, 120, gy, 130)
        _label(g, _limits_text(spec), 260, gy, 250)
        if out.name in shadow:
            _value(g, s, shadow[out.name], 520, gy, 130)
        champion_mae, challenger_mae = errors.get(out.name, (None, None))
        if champion_mae is not None:
            _value(g, s, champion_mae, 660, gy, 125)
        if challenger_mae is not None:
            _value(g, s, challenger_mae, 795, gy, 125)
    y += _group_height(len(outputs) + 1) + MARGIN

    # --- inference statistics and state | versions and provenance
    col_w = (inner - MARGIN) // 2
    g = d.group("Inference", MARGIN, y, col_w, _group_height(5))
    gy = GROUP_TOP
    _label(g, "Status", 5, gy, 110, bold=True)
    _status_led(g, s, 120, gy)
    _value(g, s, pvs.status, 150, gy, 160, name="STATUS")
    for label, spec in (("Latency", pvs.latency), ("Rate", pvs.rate), ("Cycles", pvs.count)):
        gy += ROW
        _label(g, label, 5, gy, 110, bold=True, tooltip=spec.desc)
        _value(g, s, spec, 120, gy, 140)
    gy += ROW
    _label(g, "Message", 5, gy, 110, bold=True)
    _value(g, s, pvs.message, 120, gy, col_w - 130, name="MESSAGE")

    commands = [(spec, text, confirm) for spec, text, confirm in (
        (pvs.reload, "Reload", f"Rescan the model store of {model.name} now?"),
        (pvs.rollback, "Roll back", f"Roll {model.name} back to the previous champion?"),
        (pvs.promote, "Promote", f"Make the challenger of {model.name} the champion?"),
    ) if spec is not None]
    vx = 2 * MARGIN + col_w
    g = d.group("Versions", vx, y, col_w, _group_height(5))
    gy = GROUP_TOP
    _label(g, "Champion", 5, gy, 110, bold=True)
    _value(g, s, pvs.champion, 120, gy, 100, name="CHAMPION")
    if pvs.challenger is not None:
        _label(g, "Challenger", 235, gy, 90, bold=True)
        _value(g, s, pvs.challenger, 330, gy, 100, name="CHALLENGER")
    gy += ROW
    _label(g, "Store", 5, gy, 110, bold=True)
    _label(g, store_text, 120, gy, col_w - 130)
    gy += ROW
    _label(g, "Provenance", 5, gy, 110, bold=True)
    _label(g, "versions/<champion>/manifest.json: sha256, run, data", 120, gy, col_w - 130, fine=True)
    gy += ROW
    _label(g, "Trigger", 5, gy, 110, bold=True)
    _label(g, trigger_text, 120, gy, col_w - 130)
    gy += ROW
    x = 120
    for spec, text, confirm in commands:
        _command(g, s, spec, text, x, gy - 2, 100, confirm)
        x += 108
    y += _group_height(5) + MARGIN
    y = _retraining(d, s, pvs, y, inner)

    # --- every further PV of the layout (e.g. ANOMALY): shown until a screen gives it a place
    others = pvs.others
    if others:
        g = d.group("Other PVs", MARGIN, y, inner, _group_height(len(others)))
        gy = GROUP_TOP
        for spec in others:
            _label(g, pvs.suffix(spec), 5, gy, 200, bold=True)
            _value(g, s, spec, 210, gy, 160)
            _label(g, spec.desc, 380, gy, inner - 400, fine=True)
            gy += ROW
        y += _group_height(len(others)) + MARGIN

    d.add("action_button", "Overview", MARGIN, y, 160, 30,
          actions=actions(open_display(overview_file(model.name), "Overview", {"P": "$(P)"})), text="Overview...")
    d.add("action_button", "All models", MARGIN + 170, y, 160, 30,
          actions=actions(open_display(TOP, "All models")), text="All models...")
    d.resize(WIDTH, y + 30 + MARGIN)
    return d


def _retraining(d: Display, s: Screen, pvs: ModelPVs, y: int, inner: int) -> int:
    """The continual-learning loop (a model with ``retrain:``): what the watcher is doing, whether the
    challenger has earned promotion, and the RETRAIN / PROMOTE buttons. Returns the next free y."""
    if pvs.retrain_status is None or pvs.retrain_message is None:
        return y
    model = pvs.model
    g = d.group("Retraining", MARGIN, y, inner, _group_height(3))
    gy = GROUP_TOP
    _label(g, "Retrain", 5, gy, 110, bold=True, tooltip=pvs.retrain_status.desc)
    _value(g, s, pvs.retrain_status, 120, gy, 130, name="RETRAIN_STATUS")
    _value(g, s, pvs.retrain_message, 260, gy, 390, name="RETRAIN_MESSAGE")
    if pvs.retrain is not None:
        _command(g, s, pvs.retrain, "Retrain", 660, gy - 2, 120, f"Retrain {model.name} now (mlioc watch)?")
    gy += ROW
    if pvs.promote_ready is not None:
        _label(g, "Challenger", 5, gy, 110, bold=True, tooltip=pvs.promote_ready.desc)
        _value(g, s, pvs.promote_ready, 120, gy, 130, name="PROMOTE_READY")
    if pvs.challenger_drift is not None:
        _label(g, "its own drift", 260, gy, 100, fine=True)
        _bar(g, s, pvs.challenger_drift, 360, gy + 2, 150)
    if pvs.promote is not None:
        _command(g, s, pvs.promote, "Promote", 660, gy - 2, 120, f"Make the challenger of {model.name} the champion?")
    gy += ROW
    policy = model.retrain
    if policy is not None:
        schedule = f"nightly retrain (cron '{policy.schedule}')" if policy.schedule else "no scheduled retrain"
        drift = f", after DRIFT MAJOR {policy.on_drift_s:g} s" if policy.on_drift_s is not None else ""
        text = (f"promote: {policy.promote} (margin {policy.margin:+.0%} over {policy.min_samples} samples); "
                f"{schedule}{drift}")
        _label(g, text, 5, gy, inner - 20, fine=True)
    return y + _group_height(3) + MARGIN


# ---------------------------------------------------------------------------- top level


def top_level(models: list[ModelPVs], protocol: str, title: str) -> Display:
    d = Display(title, WIDTH, 100)
    _title(d, title)
    y = 50
    headers = [("Model", 5, 190), ("Status", 200, 200), ("Champion", 410, 90)]
    if any(pvs.drift is not None for pvs in models):
        headers.append(("Drift", 510, 90))
    for header, x, w in headers:
        d.add("label", f"Header {header}", MARGIN + x, y, w, H, text=header, font=DEFAULT_BOLD, vertical_alignment=1)
    y += ROW
    for pvs in models:
        model = pvs.model
        s = Screen(pvs, protocol)
        # A group per model carries P, so the row's widgets read that model's PVs.
        g = d.group(model.name, MARGIN, y, WIDTH - 2 * MARGIN, 66, macros={"P": model.prefix}, style=3)
        _label(g, model.name, 5, 2, 190, bold=True, tooltip=model.description or model.name)
        _label(g, model.description or model.prefix, 5, 30, 390, fine=True)
        _status_led(g, s, 200, 2)
        _value(g, s, pvs.status, 230, 2, 170, name="STATUS")
        _value(g, s, pvs.champion, 410, 2, 90, name="CHAMPION")
        if pvs.drift is not None:
            _value(g, s, pvs.drift, 510, 2, 90, name="DRIFT")
        g.add("action_button", "Overview", 620, 0, 150, 28,
              actions=actions(open_display(overview_file(model.name), f"{model.name} overview", {"P": model.prefix})),
              text="Overview...")
        g.add("action_button", "Expert", 780, 0, 150, 28,
              actions=actions(open_display(expert_file(model.name), f"{model.name} expert", {"P": model.prefix})),
              text="Expert...")
        y += 66 + 4
    d.resize(WIDTH, y + MARGIN)
    d.element.insert(1, BACKGROUND.element("background_color"))
    return d


def _store_text(config: Config, store: str) -> str:
    if store.startswith("models:/"):
        return store
    return os.path.relpath(store, config.path.parent)


def _trigger_text(trigger) -> str:
    if trigger.kind == "scan":
        return f"scan at {trigger.scan_hz:g} Hz"
    if trigger.kind == "pv":
        return f"on updates of {trigger.pv}"
    return "on every input update"


def generate(config: Config, out: Path, options: GenerateOptions) -> list[Path]:
    models = [ModelPVs.of(m, options.specs) for m in config.models]
    files: dict[str, bytes] = {}
    for pvs in models:
        files[overview_file(pvs.model.name)] = overview(pvs, options.protocol).to_bytes()
        files[expert_file(pvs.model.name)] = expert(
            pvs, options.protocol, _store_text(config, pvs.model.store), _trigger_text(pvs.model.trigger)).to_bytes()
    files[TOP] = top_level(models, options.protocol, f"ML IOC: {config.path.name}").to_bytes()
    written = []
    for name, data in files.items():
        path = out / name
        path.write_bytes(data)
        written.append(path)
    return written

