"""Which PVs a model serves, with their record types and fields: the PV contract of docs/reference/pvs.md.

This is the single place that turns a :class:`~ioc.core.config.ModelConfig` into :class:`~ioc.core.pvmodel.PVSpec`
objects. ``mlioc pvs``, the IOC itself and the generators (screens, archiver lists, .db files) all
read it, so none of them can name a PV the IOC does not serve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from ioc.core.config import Config, InputConfig, LimitsConfig, ModelConfig, OutputConfig
from ioc.core.guards import STATE_CHOICES as ACTION_STATE_CHOICES
from ioc.core.guards import STATE_SEVERITIES as ACTION_STATE_SEVERITIES
from ioc.core.pvmodel import AlarmLimits, Kind, PVSpec, Severity
from ioc.core.retrain_requests import STATE_CHOICES as RETRAIN_STATE_CHOICES
from ioc.core.retrain_requests import STATE_SEVERITIES as RETRAIN_STATE_SEVERITIES
from ioc.core.yamlcheck import MAX_PV_NAME, KeyPath

CONTROL_ASG = "CONTROL"  # access security group of ENABLE / ROLLBACK / PROMOTE / RELOAD
INPUT_ASG = "INPUTS"  # access security group of writable inputs


class ModelStatus(IntEnum):
    """``$(P)STATUS`` states (mbbi ZRST..)."""

    OK = 0
    DISABLED = 1
    NO_MODEL = 2
    INPUT_INVALID = 3
    FAULT = 4


STATUS_CHOICES = tuple(s.name for s in ModelStatus)
STATUS_SEVERITIES = (Severity.NO_ALARM, Severity.MINOR, Severity.MAJOR, Severity.MAJOR, Severity.MAJOR)
ENABLE_CHOICES = ("Disabled", "Enabled")


@dataclass(frozen=True, slots=True)
class ModelNames:
    """PV names of one model, from its prefix."""

    prefix: str

    def input(self, name: str) -> str:
        return f"{self.prefix}IN:{name}"

    def output(self, name: str) -> str:
        return f"{self.prefix}OUT:{name}"

    def input_shape(self, name: str) -> str:
        """``[h, w]`` of an image input (CA clients reshape the flat waveform with it)."""
        return f"{self.prefix}IN:{name}:SHAPE"

    def output_shape(self, name: str) -> str:
        return f"{self.prefix}OUT:{name}:SHAPE"

    def challenger_output(self, name: str) -> str:
        return f"{self.prefix}CHALLENGER:OUT:{name}"

    def challenger_mad(self, name: str) -> str:
        return f"{self.prefix}CHALLENGER:MAD:{name}"

    @property
    def enable(self) -> str:
        return f"{self.prefix}ENABLE"

    @property
    def recorder(self) -> str:
        return f"{self.prefix}RECORDER"

    @property
    def audit(self) -> str:
        return f"{self.prefix}AUDIT"

    @property
    def challenger(self) -> str:
        return f"{self.prefix}CHALLENGER"

    @property
    def version(self) -> str:
        return f"{self.prefix}VERSION"

    @property
    def rollback(self) -> str:
        return f"{self.prefix}ROLLBACK"

    @property
    def promote(self) -> str:
        return f"{self.prefix}PROMOTE"

    @property
    def reload(self) -> str:
        return f"{self.prefix}RELOAD"

    @property
    def status(self) -> str:
        return f"{self.prefix}STATUS"

    @property
    def message(self) -> str:
        return f"{self.prefix}MESSAGE"

    @property
    def champion(self) -> str:
        return f"{self.prefix}CHAMPION"

    @property
    def latency(self) -> str:
        return f"{self.prefix}LATENCY"

    @property
    def rate(self) -> str:
        return f"{self.prefix}RATE"

    @property
    def count(self) -> str:
        return f"{self.prefix}COUNT"

    # Monitoring (docs/how-to/drift.md): served only when the model's config enables drift / names a truth.
    @property
    def drift(self) -> str:
        return f"{self.prefix}DRIFT"

    def drift_input(self, name: str) -> str:
        return f"{self.prefix}DRIFT:{name}"

    @property
    def drift_out(self) -> str:
        return f"{self.prefix}DRIFT:OUT"

    @property
    def drift_worst(self) -> str:
        return f"{self.prefix}DRIFT:WORST"

    @property
    def anomaly(self) -> str:
        return f"{self.prefix}ANOMALY"

    def mae(self, output: str) -> str:
        return f"{self.prefix}MAE:{output}"

    def rmse(self, output: str) -> str:
        return f"{self.prefix}RMSE:{output}"

    # The continual-learning loop (docs/how-to/retraining-loop.md).
    def challenger_mae(self, output: str) -> str:
        return f"{self.prefix}CHALLENGER:MAE:{output}"

    @property
    def challenger_drift(self) -> str:
        return f"{self.prefix}CHALLENGER:DRIFT"

    @property
    def promote_ready(self) -> str:
        return f"{self.prefix}PROMOTE:READY"

    @property
    def retrain(self) -> str:
        return f"{self.prefix}RETRAIN"

    @property
    def retrain_status(self) -> str:
        return f"{self.prefix}RETRAIN:STATUS"

    @property
    def retrain_message(self) -> str:
        return f"{self.prefix}RETRAIN:MESSAGE"


def _alarm_limits(output: OutputConfig) -> AlarmLimits | None:
    a = output.alarm
    if a is None:
        return None
    return AlarmLimits(lolo=a.lolo, low=a.low, high=a.high, hihi=a.hihi, hyst=a.hyst)


FTVL = {"float64": "DOUBLE", "float32": "FLOAT"}


def _array_fields(sig: InputConfig | OutputConfig) -> dict:
    """An array signal is a waveform PV (shape, FTVL); a scalar an ai."""
    if not sig.shape:
        return dict(kind=Kind.AI)
    return dict(kind=Kind.WAVEFORM, shape=sig.shape, ftvl=FTVL[sig.dtype])


def input_spec(names: ModelNames, inp: InputConfig) -> PVSpec:
    writable = inp.writable
    origin = f"{len(inp.gather)} PVs" if inp.gather else inp.source.name if inp.source is not None else None
    desc = inp.description or (f"{inp.name} from {origin}"[:40] if origin else f"input {inp.name}")
    return PVSpec(
        name=names.input(inp.name),
        desc=desc,
        egu=inp.units,
        prec=inp.prec,
        display=inp.range,
        writable=writable,
        initial=inp.initial if inp.initial is not None else math.nan,
        mdel=inp.mdel,
        adel=inp.adel,
        scan="Passive" if writable else "I/O Intr",
        asg=INPUT_ASG,
        **_array_fields(inp),
    )


def output_spec(names: ModelNames, out: OutputConfig) -> PVSpec:
    return PVSpec(
        name=names.output(out.name),
        desc=out.description or f"prediction {out.name}",
        egu=out.units,
        prec=out.prec,
        display=out.display,
        alarm=_alarm_limits(out),
        initial=math.nan,
        mdel=out.mdel,
        adel=out.adel,
        version_field=True,
        **_array_fields(out),
    )


def challenger_output_spec(names: ModelNames, out: OutputConfig) -> PVSpec:
    return PVSpec(
        name=names.challenger_output(out.name),
        desc=f"challenger {out.description or out.name}"[:40],
        egu=out.units,
        prec=out.prec,
        display=out.display,
        alarm=_alarm_limits(out),
        initial=math.nan,
        mdel=out.mdel,
        adel=out.adel,
        version_field=True,
        **_array_fields(out),
    )


def shape_spec(name: str, sig: InputConfig | OutputConfig) -> PVSpec:
    """``$(P)IN:<name>:SHAPE`` / ``$(P)OUT:<name>:SHAPE`` of an image: ``[h, w]`` (waveform LONG)."""
    return PVSpec(name=name, kind=Kind.WAVEFORM, shape=(2,), ftvl="LONG", desc=f"[height, width] of {sig.name}"[:40],
                  initial=tuple(sig.shape))


def _action(name: str, verb: str, desc: str) -> PVSpec:
    """A momentary control: write 1 to act; reads 1 while the action runs, then 0."""
    return PVSpec(name=name, kind=Kind.BO, desc=desc, choices=("Idle", verb), writable=True, initial=0,
                  scan="Passive", asg=CONTROL_ASG, audit=True)


DRIFT_UNITS = {"wasserstein": "sigma", "psi": "", "ks": ""}
DRIFT_DISPLAY = {"wasserstein": (0.0, 3.0), "psi": (0.0, 1.0), "ks": (0.0, 1.0)}


def mirrors_inputs(model: ModelConfig) -> bool:
    """An autoencoder: its outputs are the reconstruction of its inputs (same names, same order)."""
    return tuple(o.name for o in model.outputs) == tuple(i.name for i in model.inputs)


def limits_of(limits: LimitsConfig | None) -> AlarmLimits | None:
    """HIGH -> MINOR, HIHI -> MAJOR (and HYST) of a monitoring score."""
    if limits is None:
        return None
    return AlarmLimits(high=limits.high, hihi=limits.hihi, hyst=limits.hyst or 0.0)


def monitor_pv_specs(model: ModelConfig) -> list[PVSpec]:
    """Drift, anomaly and ground-truth error PVs of a model (empty when it is not monitored).

    Limits from the config are set here; calibrated ones arrive with each model version
    (``PV.update_spec``), so until then a score without configured limits has none.
    """
    n = ModelNames(model.prefix)
    specs: list[PVSpec] = []
    drift = model.drift
    if drift is not None:
        egu, display = DRIFT_UNITS[drift.method], DRIFT_DISPLAY[drift.method]
        common = dict(kind=Kind.AI, egu=egu, prec=3, display=display, initial=math.nan)
        specs.append(PVSpec(name=n.drift, desc=f"input drift, worst input ({drift.method})"[:40],
                            alarm=limits_of(drift.limits), **common))
        specs += [PVSpec(name=n.drift_input(i.name), desc=f"drift of input {i.name}"[:40],
                         alarm=limits_of(drift.limits), **common) for i in model.inputs]
        specs.append(PVSpec(name=n.drift_out, desc=f"prediction drift, worst output ({drift.method})"[:40],
                            alarm=limits_of(drift.output_limits), **common))
        specs.append(PVSpec(name=n.drift_worst, kind=Kind.STRINGIN, desc="input that drifted most", initial=""))
        if mirrors_inputs(model):
            specs.append(PVSpec(name=n.anomaly, kind=Kind.AI, desc="reconstruction error / training's",
                                egu="x", prec=2, display=(0.0, 5.0), alarm=limits_of(drift.anomaly_limits),
                                initial=math.nan))
    for out in model.outputs:
        if out.truth is None:
            continue
        common = dict(kind=Kind.AI, egu=out.units, prec=out.prec, display=out.display, initial=math.nan)
        specs.append(PVSpec(name=n.mae(out.name), desc=f"rolling MAE of {out.name} vs truth"[:40], **common))
        specs.append(PVSpec(name=n.rmse(out.name), desc=f"rolling RMSE of {out.name} vs truth"[:40], **common))
    return specs


def model_pv_specs(model: ModelConfig) -> list[PVSpec]:
    """Every PV one model serves, in a stable order (inputs, outputs, control, diagnostics)."""
    n = ModelNames(model.prefix)
    specs = []
    for i in model.inputs:
        specs.append(input_spec(n, i))
        if len(i.shape) == 2:
            specs.append(shape_spec(n.input_shape(i.name), i))
    for o in model.outputs:
        specs.append(output_spec(n, o))
        if len(o.shape) == 2:
            specs.append(shape_spec(n.output_shape(o.name), o))
    specs += [
        PVSpec(name=n.enable, kind=Kind.BO, desc=f"enable model {model.name}"[:40], choices=ENABLE_CHOICES,
               writable=True, initial=1, scan="Passive", asg=CONTROL_ASG, audit=True),
        PVSpec(name=n.status, kind=Kind.MBBI, desc=f"status of model {model.name}"[:40], choices=STATUS_CHOICES,
               choice_severities=STATUS_SEVERITIES, initial=int(ModelStatus.NO_MODEL)),
        PVSpec(name=n.message, kind=Kind.STRINGIN, desc="last event or error", initial=""),
        PVSpec(name=n.champion, kind=Kind.STRINGIN, desc="model version being served", initial=""),
        PVSpec(name=n.challenger, kind=Kind.STRINGIN, desc="model version run in shadow", initial=""),
        PVSpec(name=n.version, kind=Kind.STRINGIN, desc="version that made the current outputs", initial=""),
        _action(n.rollback, "Rollback", "write 1: back to the previous champion"),
        _action(n.promote, "Promote", "write 1: challenger becomes champion"),
        _action(n.reload, "Reload", "write 1: rescan the model store now"),
        PVSpec(name=n.latency, kind=Kind.AI, desc="inference latency", egu="ms", prec=3, initial=0.0,
               display=(0.0, 10.0)),
        PVSpec(name=n.rate, kind=Kind.AI, desc="inference cycles per second", egu="Hz", prec=1, initial=0.0,
               display=(0.0, 1000.0)),
        PVSpec(name=n.count, kind=Kind.LONGIN, desc="inference cycles since start", initial=0),
        PVSpec(name=n.audit, kind=Kind.MBBI, desc="audit trail of operator actions", choices=("OK", "FAULT"),
               choice_severities=(Severity.NO_ALARM, Severity.MAJOR), initial=0),
    ]
    specs += [challenger_output_spec(n, o) for o in model.outputs]
    specs += [PVSpec(name=n.challenger_mad(o.name), kind=Kind.AI,
                     desc=f"mean |challenger - champion| {o.name}"[:40], egu=o.units, prec=o.prec + 1,
                     initial=math.nan) for o in model.outputs]
    specs += monitor_pv_specs(model)
    specs += loop_pv_specs(model)
    if model.record is not None:
        specs.append(PVSpec(name=n.recorder, kind=Kind.MBBI, desc="recording of cycles to disk",
                            choices=("OK", "FAULT"), choice_severities=(Severity.NO_ALARM, Severity.MAJOR), initial=0))
    specs += action_pv_specs(model)
    return specs


# ----------------------------------------------------------------------------- the continual-learning loop

READY_CHOICES = ("Not ready", "Ready")


def loop_pv_specs(model: ModelConfig) -> list[PVSpec]:
    """The challenger's live error beside the champion's (outputs with a truth), and, for a model
    with a ``retrain:`` section, the retrain request / status PVs and the promotion verdict."""
    n = ModelNames(model.prefix)
    specs = [PVSpec(name=n.challenger_mae(o.name), kind=Kind.AI, desc=f"challenger MAE of {o.name} vs truth"[:40],
                    egu=o.units, prec=o.prec, display=o.display, initial=math.nan)
             for o in model.outputs if o.truth is not None]
    if model.retrain is None:
        return specs
    if model.drift is not None:
        drift = model.drift
        specs.append(PVSpec(name=n.challenger_drift, kind=Kind.AI, desc="challenger's own input drift"[:40],
                            egu=DRIFT_UNITS[drift.method], prec=3, display=DRIFT_DISPLAY[drift.method],
                            alarm=limits_of(drift.limits), initial=math.nan))
    specs += [
        PVSpec(name=n.promote_ready, kind=Kind.MBBI, desc="challenger has earned PROMOTE", choices=READY_CHOICES,
               choice_severities=(Severity.NO_ALARM, Severity.NO_ALARM), initial=0),
        _action(n.retrain, "Retrain", "write 1: retrain now (mlioc watch)"),
        PVSpec(name=n.retrain_status, kind=Kind.MBBI, desc="retraining: state", choices=RETRAIN_STATE_CHOICES,
               choice_severities=RETRAIN_STATE_SEVERITIES, initial=0),
        PVSpec(name=n.retrain_message, kind=Kind.STRINGIN, desc="retraining: last event", initial=""),
    ]
    return specs


# ----------------------------------------------------------------------------- closed-loop actions


@dataclass(frozen=True, slots=True)
class ActionNames:
    """PV names of a model's closed-loop actions (docs/how-to/actions.md)."""

    prefix: str

    @property
    def actions(self) -> str:
        return f"{self.prefix}ACTIONS"

    @property
    def trip(self) -> str:
        return f"{self.prefix}ACTIONS:TRIP"

    def state(self, output: str) -> str:
        return f"{self.prefix}ACTION:{output}:STATE"

    def setpoint(self, output: str) -> str:
        return f"{self.prefix}ACTION:{output}:SETPOINT"

    def message(self, output: str) -> str:
        return f"{self.prefix}ACTION:{output}:MESSAGE"


ACTIONS_CHOICES = ("Off", "On")


def action_pv_specs(model: ModelConfig) -> list[PVSpec]:
    """The PVs of a model's actions; none for a model without any ``action:``.

    ``ACTIONS`` is the master switch: it starts at 0 on every start (it is never persisted), sits in
    the CONTROL access group and every write is audited. ``ACTIONS:TRIP`` holds the reason of the
    last trip, MAJOR until an operator re-arms.
    """
    outputs = [o for o in model.outputs if o.action is not None]
    if not outputs:
        return []
    a = ActionNames(model.prefix)
    specs = [
        PVSpec(name=a.actions, kind=Kind.BO, desc="closed-loop actions: write 1 to arm", choices=ACTIONS_CHOICES,
               choice_severities=(Severity.NO_ALARM, Severity.NO_ALARM), writable=True, initial=0,
               scan="Passive", asg=CONTROL_ASG, audit=True),
        PVSpec(name=a.trip, kind=Kind.STRINGIN, desc="why actions tripped (MAJOR until re-armed)", initial=""),
    ]
    for o in outputs:
        act = o.action
        specs += [
            PVSpec(name=a.state(o.name), kind=Kind.MBBI, desc=f"action {o.name}: state"[:40],
                   choices=ACTION_STATE_CHOICES, choice_severities=ACTION_STATE_SEVERITIES, initial=0),
            PVSpec(name=a.setpoint(o.name), kind=Kind.AI, desc=f"{o.name} -> {act.target.name}"[:40], egu=o.units,
                   prec=o.prec, display=(act.min, act.max), initial=math.nan, version_field=True),
            PVSpec(name=a.message(o.name), kind=Kind.STRINGIN, desc=f"action {o.name}: last event"[:40],
                   initial=""),
        ]
    return specs


def model_pv_names(model: ModelConfig) -> list[str]:
    return [s.name for s in model_pv_specs(model)]


def pv_name_problems(config: Config) -> list[tuple[KeyPath, str]]:
    """Every PV name must be unique across models and fit EPICS' 60-character limit.

    Returned as (key path, message) for the config checker, so a clash points at the ``prefix`` line.
    """
    problems: list[tuple[KeyPath, str]] = []
    owner: dict[str, str] = {}
    for i, model in enumerate(config.models):
        for pv in model_pv_names(model):
            if len(pv) > MAX_PV_NAME:
                problems.append((("models", i, "prefix"), f"PV name {pv!r} is longer than {MAX_PV_NAME} characters"))
            if pv in owner and owner[pv] != model.name:
                problems.append((("models", i, "prefix"), f"PV {pv!r} is also served by model {owner[pv]!r}"))
            owner[pv] = model.name
    return problems
