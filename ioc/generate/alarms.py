"""``mlioc generate alarms CONFIG -o DIR``: a Phoebus alarm-server configuration for the IOC's models.

One ``<component>`` per model, with a ``<pv>`` for each PV whose severity an operator must act on:

* ``$(P)DRIFT`` (and ``$(P)DRIFT:OUT``) — the inputs (predictions) left the training distribution;
* ``$(P)ANOMALY`` — an autoencoder's reconstruction error (when the model is one);
* ``$(P)STATUS`` — the model is disabled, has no model, invalid inputs or faults;
* the outputs' health: every ``$(P)OUT:<name>`` with alarm limits, and ``$(P)RMSE:<name>`` where the
  config names a ground truth.

Every PV name comes from :func:`ioc.core.layout.model_pv_specs`, so the file can only name PVs the IOC
serves; a control PV the guidance recommends (``ROLLBACK``) is mentioned only once the layout serves
it. Each entry says what the alarm means and exactly what to do. Delays are 0 for scores the IOC
already debounces (a second delay would only add latency) and a few seconds for STATUS and
outputs, which can flicker for one cycle when an input update is late. Drift, anomaly and error
alarms latch (an episode must be acknowledged even if it cleared); STATUS and outputs do not (they
are states that clear when fixed). The display link follows the screen naming of ``mlioc generate
opi``: ``<display_base>/<model>_overview.bob``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ioc.core.config import Config, ModelConfig
from ioc.core.layout import ModelNames, mirrors_inputs, model_pv_specs

ROOT_NAME = "mlioc"
FILE_NAME = "mlioc-alarms.xml"
DEFAULT_DISPLAY_BASE = "opi"
STATUS_DELAY_S = 5
OUTPUT_DELAY_S = 5


def screen_path(model: ModelConfig, display_base: str = DEFAULT_DISPLAY_BASE) -> str:
    """The model's overview screen (issue 6's ``mlioc generate opi`` names it ``<model>_overview.bob``)."""
    return f"{display_base.rstrip('/')}/{model.name}_overview.bob"


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = str(text)
    return el


def _titled(parent: ET.Element, tag: str, title: str, details: str) -> None:
    el = _sub(parent, tag)
    _sub(el, "title", title)
    _sub(el, "details", details)


def _pv(component: ET.Element, name: str, description: str, *, delay: int, latching: bool,
        guidance: tuple[str, str], display: tuple[str, str]) -> None:
    pv = _sub(component, "pv", name=name)
    _sub(pv, "description", description)
    _sub(pv, "enabled", "true")
    _sub(pv, "latching", "true" if latching else "false")
    _sub(pv, "annunciating", "false")
    _sub(pv, "delay", delay)
    _titled(pv, "guidance", *guidance)
    _titled(pv, "display", *display)


def _actions(model: ModelConfig, served: set[str]) -> str:
    """The common remedies, naming only PVs the IOC serves."""
    n = ModelNames(model.prefix)
    lines = [f"- Stop using the predictions: caput {n.enable} 0 (outputs go INVALID; caput {n.enable} 1 "
             "re-enables). Who did it is logged."]
    rollback = n.rollback
    if rollback in served:
        lines.append(f"- If this started after a new version was loaded ({n.champion} changed), roll back to "
                     f"the previous champion: caput {rollback} 1.")
    else:
        lines.append(f"- If this started after a new version was loaded ({n.champion} changed), roll back to "
                     "the previous champion (model store: champion pointer).")
    if model.retrain is not None and n.retrain in served:
        lines.append(f"- Retraining: caput {n.retrain} 1 asks mlioc watch to retrain {model.name} now on the recorded "
                     f"data; {n.retrain_status} / {n.retrain_message} follow the run.")
    else:
        lines.append(f"- Then call the model's owner: it needs retraining on current data (mlioc train ... --model "
                     f"{model.name}).")
    return "\n".join(lines)


def _loop_guidance(model: ModelConfig) -> str:
    """What the continual-learning loop will do about a drift alarm, and when a person must act."""
    r = model.retrain
    if r is None:
        return ""
    n = ModelNames(model.prefix)
    auto = (f"after {n.drift} has been MAJOR for {r.on_drift_s:g} s mlioc watch retrains on the recorded drift "
            f"window (plus {r.history_s:g} s before it)" if r.on_drift_s is not None
            else "drift does not start a retrain by itself (retrain.on_drift_s is off)")
    if r.promote == "auto":
        promote = (f"The new version runs as the challenger ({n.challenger}); it is promoted automatically once it "
                   f"beats the champion's live error by {r.margin:.0%} over {r.min_samples} cycles with truth "
                   f"({n.challenger_mae('<out>')} vs {n.mae('<out>')}) and has no drift alarm of its own.")
    else:
        promote = (f"The new version runs as the challenger ({n.challenger}); when {n.promote_ready} says Ready "
                   f"(it beats the champion's live error by {r.margin:.0%} over {r.min_samples} cycles), compare "
                   f"{n.challenger_mae('<out>')} with {n.mae('<out>')} and promote it: caput {n.promote} 1. "
                   "An operator must decide: nothing is promoted automatically.")
    return (f"\nThe retraining loop: {auto}, at most one run at a time, {r.cooldown_s:g} s apart "
            f"({n.retrain_status} shows REQUESTED/RUNNING/DONE/FAILED, {n.retrain_message} why). {promote} "
            f"A challenger that has not earned promotion within {r.max_hours:g} h is retired. Act yourself when "
            f"{n.retrain_status} is FAILED, when no challenger appears within {r.timeout_s:g} s of RUNNING, or "
            "when the machine must not wait (disable or roll back as below).")


def _model_component(root: ET.Element, model: ModelConfig, display_base: str) -> None:
    n = ModelNames(model.prefix)
    served = {s.name for s in model_pv_specs(model)}
    what = model.description or f"model {model.name}"
    outputs = ", ".join(n.output(o.name) for o in model.outputs)
    inputs_in = ", ".join(n.input(i.name) for i in model.inputs)
    screen = ("Model overview screen", screen_path(model, display_base))
    comp = _sub(root, "component", name=model.name)
    _titled(comp, "guidance", f"About {model.name}",
            f"{what}: an ML model served by mlioc under {model.prefix}. Its predictions are {outputs}; "
            f"{n.status} and {n.message} say what it is doing; {n.enable} switches it off.")
    _titled(comp, "display", *screen)
    actions = _actions(model, served)
    drift = model.drift
    if drift is not None:
        inputs = ", ".join(n.drift_input(i.name) for i in model.inputs)
        sources = "; ".join(f"{n.input(i.name)} <- {i.source.name}" if i.source else n.input(i.name)
                            for i in model.inputs)
        _pv(comp, n.drift, f"{model.name}: inputs drifted from the training data", delay=0, latching=True,
            guidance=("Input drift: what to do",
                      f"The live inputs of {model.name} no longer look like the data it was trained on, so its "
                      f"predictions may be wrong. The score is the worst input's {drift.method} distance over the "
                      f"last {drift.window_s:g} s; MINOR/MAJOR limits (.HIGH/.HIHI) are calibrated from the "
                      f"served version's training data; raised after {drift.raise_s:g} s, cleared after "
                      f"{drift.clear_s:g} s back in range.\n"
                      f"1. Which input: {n.drift_worst} names it (also in {n.message}); per-input scores: {inputs}.\n"
                      f"2. Look at that input and its source: {sources}. A moved setpoint, a new operating "
                      "point or a faulty/stuck readback all show here.\n"
                      f"3. If the machine really is somewhere the model was not trained for:\n{actions}\n"
                      "If the input's source is faulty, fix the source: the alarm clears by itself once the data "
                      "are back in range." + _loop_guidance(model)),
            display=screen)
        _pv(comp, n.drift_out, f"{model.name}: predictions drifted from training", delay=0, latching=True,
            guidance=("Prediction drift: what to do",
                      f"The predictions ({outputs}) are distributed unlike the training targets. Usually "
                      f"follows input drift ({n.drift}); if {n.drift} is quiet, the inputs are jointly unusual or "
                      f"the model changed ({n.champion}).\n{actions}"),
            display=screen)
        if mirrors_inputs(model) and n.anomaly in served:
            _pv(comp, n.anomaly, f"{model.name}: anomaly (reconstruction error)", delay=0, latching=True,
                guidance=("Anomaly: what to do",
                          f"{n.anomaly} is the autoencoder's reconstruction error relative to training (1 = as in "
                          f"training). The inputs ({inputs_in}) form a combination it has not seen. Check "
                          f"the inputs and their sources; {n.drift_worst} names the input furthest from training."
                          f"\n{actions}"),
                display=screen)
    if model.retrain is not None and n.retrain_status in served:
        _pv(comp, n.retrain_status, f"{model.name}: retraining failed", delay=0, latching=False,
            guidance=("Retraining failed: what to do",
                      f"The last retraining run of {model.name} (mlioc watch) failed: {n.retrain_message} says why "
                      "(the run's log is named in the model store's requests/status.json; the decision is in "
                      "events.jsonl). The champion keeps serving. Fix the cause (no recorded data, the tracking "
                      f"server down, the run timed out after {model.retrain.timeout_s:g} s), then caput "
                      f"{n.retrain} 1 to try again."),
            display=screen)
    _pv(comp, n.status, f"{model.name}: model not serving", delay=STATUS_DELAY_S, latching=False,
        guidance=("Model status: what to do",
                  f"{n.status}: DISABLED (someone wrote {n.enable} 0: see {n.message}), NO_MODEL (no valid version "
                  f"in the store), INPUT_INVALID ({n.message} names the input: its source IOC is down, stale or "
                  f"out of range), FAULT (inference failed). Outputs are INVALID meanwhile.\n"
                  f"To serve again: fix the input source, or caput {n.enable} 1, or ask the model's owner to "
                  "publish a valid version."),
        display=screen)
    if n.audit in served:
        _pv(comp, n.audit, f"{model.name}: audit trail cannot be written", delay=0, latching=True,
            guidance=("Audit trail: what to do",
                      f"An operator action or refused write on {model.prefix} could not be written to the audit "
                      f"trail ({n.audit} says which file and why: the IOC's state_dir/audit.jsonl, the model "
                      "store's events.jsonl or the actions' audit file). Actions still work and still go to the "
                      "IOC log. Free the disk or fix the file's permissions; the alarm clears at the next line "
                      "written."),
            display=screen)
    for out in model.outputs:
        if out.alarm is not None:
            _pv(comp, n.output(out.name), f"{model.name}: predicted {out.name} out of range", delay=OUTPUT_DELAY_S,
                latching=False,
                guidance=(f"Predicted {out.name}: what to do",
                          f"The model predicts {out.name} beyond its configured limits (.HIGH/.HIHI). Treat it "
                          f"like the measured quantity it stands for; if {n.drift} is also in alarm, the "
                          f"prediction itself is suspect.\n{actions}"),
                display=screen)
        if out.truth is not None:
            _pv(comp, n.rmse(out.name), f"{model.name}: {out.name} error vs measured too large", delay=0,
                latching=True,
                guidance=(f"Prediction error of {out.name}: what to do",
                          f"{n.rmse(out.name)} (and {n.mae(out.name)}) compare the prediction with the measured "
                          f"{out.truth.name}; limits are multiples of the served version's test error. The model "
                          f"no longer tracks the machine.\n{actions}"),
                display=screen)


def build(config: Config, display_base: str = DEFAULT_DISPLAY_BASE) -> ET.ElementTree:
    root = ET.Element("config", name=ROOT_NAME)
    for model in config.models:
        _model_component(root, model, display_base)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree


def generate(config: Config, out_dir: Path, options: Any = None, *,
             display_base: str = DEFAULT_DISPLAY_BASE) -> list[Path]:
    """Write ``<out_dir>/mlioc-alarms.xml``; returns the paths written.

    ``options`` (the ``mlioc generate`` GenerateOptions) may give the screens' ``display_base``.
    """
    if options is not None and getattr(options, "display_base", None):
        display_base = options.display_base
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILE_NAME
    build(config, display_base).write(path, encoding="UTF-8", xml_declaration=True)
    return [path]
