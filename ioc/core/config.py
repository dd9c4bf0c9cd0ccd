"""The YAML configuration: parsed into frozen dataclasses, validated in full before anything starts.

A bad config is refused with every problem listed as ``FILE:LINE: key.path: what is wrong`` so an
engineer can fix them all in one pass. The schema is documented in ``docs/reference/config.md``; unknown keys
are errors (with a "did you mean" hint), because a typo such as ``rnage`` silently ignored is how a
model ends up fed values it was never trained on.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ioc.core.arrays import DTYPES, MAX_ELEMENTS, size_of
from ioc.core.cron import CronError, parse_cron
from ioc.core.promotion import MODES
from ioc.core.yamlcheck import (
    NAME_PATTERN,
    PROTOCOLS,
    PV_CHARS,
    Checker,
    ConfigError,
    KeyPath,
    PVRef,
    line_index,
    typename,
)

MAX_DESC = 40  # DESC is a 41-byte field
MAX_EGU = 15  # EGU is a 16-byte field


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class AlarmConfig:
    lolo: float | None = None
    low: float | None = None
    high: float | None = None
    hihi: float | None = None
    hyst: float = 0.0


@dataclass(frozen=True, slots=True)
class InputConfig:
    """One model input. ``shape`` ``()`` is a scalar; ``(n,)`` a waveform; ``(h, w)`` an image.

    Its value comes from ``source`` (one PV: a scalar, or for an array a CA waveform, a PVA
    NTScalarArray or NTNDArray), from ``gather`` (scalar PVs gathered in order into a ``[n]`` vector),
    or, with neither, from client writes.
    """

    name: str
    source: PVRef | None = None
    units: str = ""
    description: str = ""
    range: tuple[float, float] | None = None
    max_age_s: float | None = None
    prec: int = 3
    initial: float | None = None
    mdel: float = 0.0
    adel: float = 0.0
    shape: tuple[int, ...] = ()
    gather: tuple[PVRef, ...] = ()
    dtype: str = "float64"  # of an array: float64 (FTVL DOUBLE) or float32 (FTVL FLOAT)

    @property
    def writable(self) -> bool:
        """No source at all: clients write it (caput / pvput)."""
        return self.source is None and not self.gather

    @property
    def source_text(self) -> str | None:
        """The source as a person reads it (None: writable)."""
        if self.gather:
            return f"{self.gather[0]} .. {self.gather[-1]} ({len(self.gather)} PVs)"
        return str(self.source) if self.source is not None else None


@dataclass(frozen=True, slots=True)
class ActionConfig:
    """An output that drives a machine setpoint (:mod:`ioc.edges.actions`, docs/how-to/actions.md).

    Defaults are the safe ones: ``dry_run`` (publish the proposal, never write) and trip after
    ``max_held`` consecutive cycles held by a safety guard.
    """

    target: PVRef
    min: float
    max: float
    max_step: float
    max_rate_hz: float = 1.0
    deadband: float = 0.0
    readback: PVRef | None = None  # None: the target's own value is the readback
    tolerance: float = 0.0  # resolved: default 1 % of (max - min)
    settle_s: float = 2.0
    mode: str = "dry_run"
    max_held: int = 50
    drift_limit: str = "MAJOR"

    @property
    def dry_run(self) -> bool:
        return self.mode == "dry_run"


@dataclass(frozen=True, slots=True)
class OutputConfig:
    name: str
    units: str = ""
    description: str = ""
    prec: int = 3
    display: tuple[float, float] | None = None
    alarm: AlarmConfig | None = None
    mdel: float = 0.0
    adel: float = 0.0
    truth: PVRef | None = None  # measured ground truth: rolling MAE/RMSE PVs (ioc.runtime.monitor)
    action: ActionConfig | None = None  # closed loop: write this output to a machine setpoint
    shape: tuple[int, ...] = ()  # () a scalar, (n,) a waveform / profile, (h, w) an image
    dtype: str = "float64"  # of an array: float64 (FTVL DOUBLE) or float32 (FTVL FLOAT)


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    """When a model runs: ``scan`` (periodic), ``on_change`` (any input update), or ``pv``."""

    kind: str
    scan_hz: float | None = None
    pv: PVRef | None = None


@dataclass(frozen=True, slots=True)
class RecordConfig:
    """Where and how the IOC records each cycle of a model (:mod:`ioc.edges.recorder`).

    ``targets`` are the measured ground truth of outputs (output name -> PV), recorded beside each
    cycle: a surrogate cannot be retrained on its own predictions.
    """

    dir: str  # resolved directory
    roll: str = "daily"  # daily | hourly | size
    max_mb: float = 64.0  # size roll threshold (and an upper bound for daily/hourly files)
    flush_s: float = 5.0  # how often buffered rows are written
    targets: tuple[tuple[str, PVRef], ...] = ()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Explicit HIGH/HIHI (and HYST) of a monitoring score, replacing the calibrated ones."""

    high: float
    hihi: float
    hyst: float | None = None


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """How a model's inputs and outputs are watched for drift (``drift:``, docs/how-to/drift.md).

    Times are seconds; ``rate_hz`` (the model's cycle rate, the scan rate by default) turns them
    into cycles. ``correlation_s`` is the autocorrelation time of the live inputs, which the
    calibration of the limits must know (0: cycles are independent). Default limits are
    ``null mean + sigmas * null std`` of the score on simulated reference windows
    (:mod:`ioc.core.thresholds`); ``limits`` / ``output_limits`` replace them.
    """

    method: str = "wasserstein"
    window_s: float = 60.0
    bins: int = 100  # default: every percentile (10 for psi, whose bins must each hold many samples)
    rate_hz: float = 10.0
    correlation_s: float = 0.0
    update_s: float = 5.0
    raise_s: float = 10.0
    clear_s: float = 30.0
    minor_sigmas: float = 6.0
    major_sigmas: float = 9.0
    limits: LimitsConfig | None = None
    output_limits: LimitsConfig | None = None
    anomaly_window_s: float = 10.0
    anomaly_limits: LimitsConfig = LimitsConfig(high=2.0, hihi=3.0)  # x the training reconstruction error
    error_window_s: float = 60.0
    error_factors: LimitsConfig = LimitsConfig(high=2.0, hihi=3.0)  # x the version's test RMSE
    truth_tolerance_s: float | None = None  # None: half a cycle

    @property
    def window(self) -> int:
        """The sliding window in cycles."""
        return max(1, round(self.window_s * self.rate_hz))


@dataclass(frozen=True, slots=True)
class AirflowConfig:
    """Where ``mlioc watch`` hands runs to (``retrain.runner: airflow``): Airflow's REST API."""

    url: str  # e.g. http://airflow:8080 (the API server)
    dag_id: str = "mlioc_retrain"
    user: str = ""
    password_env: str = ""  # the name of the environment variable holding the password (never the password)
    config_path: str = ""  # the config path as the Airflow workers see it ("" = this file's path)


@dataclass(frozen=True, slots=True)
class RetrainConfig:
    """The continual-learning loop of a model (``retrain:``, docs/how-to/retraining-loop.md).

    ``mlioc watch`` retrains on ``schedule`` (cron), when ``$(P)DRIFT`` has been MAJOR for
    ``on_drift_s`` (None: never), or on an operator's ``$(P)RETRAIN``; one run at a time, ``cooldown_s``
    between runs, a run killed after ``timeout_s``. Scheduled and operator runs train on the last
    ``window_s`` of recordings; drift runs on the drift window plus ``history_s`` before it. Every
    retrained version enters as the challenger; the promotion policy (:mod:`ioc.core.promotion`)
    judges it on live data.
    """

    schedule: str | None = None  # cron expression (ioc.core.cron), local time; None: no scheduled runs
    on_drift_s: float | None = None
    cooldown_s: float = 3600.0
    timeout_s: float = 3600.0
    window_s: float = 86400.0
    history_s: float = 600.0
    promote: str = "manual"  # manual | auto
    margin: float = 0.05
    min_samples: int = 600
    max_hours: float = 24.0
    runner: str = "local"  # local | airflow
    airflow: AirflowConfig | None = None
    poll_s: float = 1.0  # how often the IOC and the watcher read requests/


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    prefix: str
    store: str  # a resolved directory path, or a models:/ URI
    trigger: TriggerConfig
    inputs: tuple[InputConfig, ...]
    outputs: tuple[OutputConfig, ...]
    description: str = ""
    record: RecordConfig | None = None
    # Roll back to the previous champion automatically after this many consecutive failed inferences
    # (the model raising, or returning NaN/Inf); None: never, an operator decides.
    rollback_after_faults: int | None = None
    # A store to copy into ``store`` when that does not exist yet (resolved path; the demo's shipped model
    # stays pristine while its working copy takes pushes, promotions and events).
    store_template: str | None = None
    # The training sidecar's section, kept as the raw mapping: training/spec.py validates it (the IOC
    # never needs it, and must not import training to check it).
    training: Any = field(default=None, hash=False, compare=False)
    drift: DriftConfig | None = None
    retrain: RetrainConfig | None = None

    @property
    def has_arrays(self) -> bool:
        """Some input or output is a waveform or an image."""
        return any(s.shape for s in (*self.inputs, *self.outputs))

    @property
    def monitored(self) -> bool:
        """Drift is scored, or some output has a ground truth to compare with (ioc.runtime.monitor)."""
        return self.drift is not None or any(o.truth is not None for o in self.outputs)

    @property
    def store_is_registry(self) -> bool:
        return self.store.startswith("models:/")

    @property
    def store_path(self) -> Path:
        return Path(self.store)


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """How models run. ``provider``: auto (CUDA when really usable, else CPU), cpu, cuda.

    ``offload``: auto runs a model inline on the event loop when its measured run time is below
    ``inline_budget_ms`` (a thread hand-off costs ~70 us, more than a small MLP takes) and on a
    worker thread otherwise; ``always``/``never`` force one or the other.
    """

    provider: str = "auto"
    threads: int = 1
    offload: str = "auto"
    inline_budget_ms: float = 0.25


@dataclass(frozen=True, slots=True)
class IocConfig:
    protocols: tuple[str, ...] = PROTOCOLS
    ca_port: int | None = None  # None: EPICS_CA_SERVER_PORT, else 5064
    pva_port: int | None = None  # None: EPICS_PVA_SERVER_PORT, else 5075
    pva_broadcast_port: int | None = None
    interfaces: tuple[str, ...] | None = None  # None: EPICS_CAS_INTF_ADDR_LIST, else all
    metrics_port: int = 9105
    stats_hz: float = 2.0
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    store_poll_s: float = 0.5  # how often model stores are checked for a new champion / challenger
    registry_poll_s: float = 5.0  # how often an MLflow registry alias is asked (registry-mode stores)
    state_dir: str = ".mlioc-state"  # resolved against the config file: registry mirrors, autosave


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    prefix: str = "SIM:"
    rate_hz: float = 10.0
    seed: int = 0
    ca_port: int | None = None
    pva_port: int | None = None
    image_hz: float | None = None  # the screen image's rate (None: rate_hz)


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """The ``access:`` section: an EPICS ACF file, the shorthand ``control: {users, hosts}``, or full
    ``users`` / ``hosts`` / ``groups``. Turned into an :class:`ioc.core.access.AccessList` at start-up."""

    acf: str | None = None
    mapping: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    ioc: IocConfig
    models: tuple[ModelConfig, ...]
    simulator: SimulatorConfig | None = None
    access: AccessSettings = field(default_factory=AccessSettings)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} in {self.path} (have: {[m.name for m in self.models]})")


# ----------------------------------------------------------------------------- sections

_TOP = ("ioc", "simulator", "models", "access")
_ACCESS = ("acf", "control", "users", "hosts", "groups")
_IOC = ("protocols", "ca_port", "pva_port", "pva_broadcast_port", "interfaces", "metrics_port",
        "stats_hz", "inference", "store_poll_s", "registry_poll_s", "state_dir")
_INFERENCE = ("provider", "threads", "offload", "inline_budget_ms")
_SIM = ("prefix", "rate_hz", "seed", "ca_port", "pva_port", "image_hz")
_MODEL = ("name", "prefix", "description", "store", "store_template", "trigger", "inputs", "outputs", "record",
          "training", "rollback_after_faults", "drift", "retrain")
_RECORD = ("dir", "roll", "max_mb", "flush_s", "targets")
ROLLS = ("daily", "hourly", "size")
_INPUT = ("name", "source", "units", "description", "range", "max_age_s", "prec", "initial", "mdel", "adel", "shape",
          "dtype")
_OUTPUT = ("name", "units", "description", "prec", "display", "alarm", "mdel", "adel", "truth", "action", "shape",
           "dtype")
# Keys an array input / output does not take, and why (the fix goes into the error message).
_NOT_FOR_ARRAYS = {
    "mdel": "an array posts on every change, as an EPICS waveform does; remove 'mdel'",
    "adel": "an array posts on every change, as an EPICS waveform does; remove 'adel'",
    "alarm": "arrays have no limit alarms (an EPICS waveform has none); INVALID marks a NaN/Inf element",
    "truth": "ground-truth errors are scalar; remove 'truth' from the array output",
    "action": "an action drives one scalar setpoint; remove 'action' from the array output",
}
_ACTION = ("target", "min", "max", "max_step", "max_rate_hz", "deadband", "readback", "tolerance", "settle_s", "mode",
           "max_held", "drift_limit")
ACTION_MODES = ("dry_run", "write")
DRIFT_LIMITS = ("MAJOR", "MINOR")
_ALARM = ("lolo", "low", "high", "hihi", "hyst")
_TRIGGER = ("scan_hz", "on_change", "pv")


def _port(c: Checker, value: Any, path: KeyPath) -> int | None:
    port = c.number(value, path, integer=True)
    if port is not None and not 0 < port < 65536:
        c.error(path, f"port must be 1..65535, got {port}")
        return None
    return port


def _parse_ioc(c: Checker, raw: Any, base: Path) -> IocConfig:
    path: KeyPath = ("ioc",)
    d = c.mapping(raw, path, _IOC)
    protocols = d.get("protocols", list(PROTOCOLS))
    if isinstance(protocols, str):
        protocols = [protocols]
    if not isinstance(protocols, list) or not protocols:
        c.error((*path, "protocols"), f"expected a non-empty list of {list(PROTOCOLS)}, got {protocols!r}")
        protocols = list(PROTOCOLS)
    for i, p in enumerate(protocols):
        if p not in PROTOCOLS:
            c.error((*path, "protocols", i), f"unknown protocol {p!r} (use ca and/or pva)")
    interfaces = d.get("interfaces")
    if interfaces is not None:
        if isinstance(interfaces, str):
            interfaces = interfaces.split()
        if not isinstance(interfaces, list) or not all(isinstance(i, str) for i in interfaces):
            c.error((*path, "interfaces"), f"expected a list of addresses, got {interfaces!r}")
            interfaces = None
    metrics_port = c.number(d.get("metrics_port"), (*path, "metrics_port"), integer=True, nonneg=True,
                            default=9105)
    if metrics_port is not None and metrics_port > 65535:
        c.error((*path, "metrics_port"), f"port must be 0..65535 (0 = off), got {metrics_port}")
    inf = c.mapping(d.get("inference"), (*path, "inference"), _INFERENCE)
    provider = c.string(inf.get("provider"), (*path, "inference", "provider"), default="auto")
    if provider not in ("auto", "cpu", "cuda"):
        c.error((*path, "inference", "provider"), f"expected auto, cpu or cuda, got {provider!r}")
    offload = c.string(inf.get("offload"), (*path, "inference", "offload"), default="auto")
    if offload not in ("auto", "always", "never"):
        c.error((*path, "inference", "offload"), f"expected auto, always or never, got {offload!r}")
    inference = InferenceConfig(
        provider=provider,
        threads=c.number(inf.get("threads"), (*path, "inference", "threads"), integer=True, positive=True,
                         default=1),
        offload=offload,
        inline_budget_ms=c.number(inf.get("inline_budget_ms"), (*path, "inference", "inline_budget_ms"),
                                  positive=True, default=0.25),
    )
    return IocConfig(
        protocols=tuple(p for p in protocols if p in PROTOCOLS) or PROTOCOLS,
        ca_port=_port(c, d.get("ca_port"), (*path, "ca_port")),
        pva_port=_port(c, d.get("pva_port"), (*path, "pva_port")),
        pva_broadcast_port=_port(c, d.get("pva_broadcast_port"), (*path, "pva_broadcast_port")),
        interfaces=tuple(interfaces) if interfaces else None,
        metrics_port=metrics_port if metrics_port is not None else 9105,
        stats_hz=c.number(d.get("stats_hz"), (*path, "stats_hz"), positive=True, default=2.0),
        inference=inference,
        store_poll_s=c.number(d.get("store_poll_s"), (*path, "store_poll_s"), positive=True, default=0.5),
        registry_poll_s=c.number(d.get("registry_poll_s"), (*path, "registry_poll_s"), positive=True, default=5.0),
        state_dir=str((base / os.path.expanduser(
            c.string(d.get("state_dir"), (*path, "state_dir"), default=".mlioc-state"))).resolve()),
    )


def _parse_sim(c: Checker, raw: Any) -> SimulatorConfig | None:
    if raw is None:
        return None
    path: KeyPath = ("simulator",)
    d = c.mapping(raw, path, _SIM)
    return SimulatorConfig(
        prefix=c.string(d.get("prefix"), (*path, "prefix"), default="SIM:", pattern=PV_CHARS,
                        what="PV prefix"),
        rate_hz=c.number(d.get("rate_hz"), (*path, "rate_hz"), positive=True, default=10.0),
        seed=c.number(d.get("seed"), (*path, "seed"), integer=True, nonneg=True, default=0),
        ca_port=_port(c, d.get("ca_port"), (*path, "ca_port")),
        pva_port=_port(c, d.get("pva_port"), (*path, "pva_port")),
        image_hz=c.number(d.get("image_hz"), (*path, "image_hz"), positive=True),
    )


def _parse_alarm(c: Checker, raw: Any, path: KeyPath) -> AlarmConfig | None:
    if raw is None:
        return None
    d = c.mapping(raw, path, _ALARM)
    vals = {k: c.number(d.get(k), (*path, k)) for k in ("lolo", "low", "high", "hihi")}
    hyst = c.number(d.get("hyst"), (*path, "hyst"), nonneg=True, default=0.0)
    order = [(k, vals[k]) for k in ("lolo", "low", "high", "hihi") if vals[k] is not None]
    for (k1, v1), (k2, v2) in zip(order, order[1:], strict=False):
        if not v1 < v2:
            c.error(path, f"limits must increase lolo < low < high < hihi, but {k1}={v1} >= {k2}={v2}")
    if not order:
        c.error(path, "an alarm needs at least one of lolo, low, high, hihi")
    return AlarmConfig(hyst=hyst, **vals)


def _names(c: Checker, value: Any, path: KeyPath) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        c.error(path, f"expected a list of names, got {value!r}")
        return []
    return list(value)


def _parse_access(c: Checker, raw: Any, base: Path) -> AccessSettings:
    if raw is None:
        return AccessSettings()
    path: KeyPath = ("access",)
    d = c.mapping(raw, path, _ACCESS)
    if "acf" in d:
        if len(d) > 1:
            c.error(path, "give either 'acf' or the YAML form (control / users, hosts, groups), not both")
        acf = c.string(d["acf"], (*path, "acf"))
        return AccessSettings(acf=str((base / os.path.expanduser(acf)).resolve()) if acf else None)
    mapping: dict[str, Any] = {}
    if "control" in d:
        control = c.mapping(d["control"], (*path, "control"), ("users", "hosts"))
        mapping["control"] = {k: _names(c, v, (*path, "control", k)) for k, v in control.items()}
    for key in ("users", "hosts"):
        if key in d:
            groups = c.mapping(d[key], (*path, key), list(d[key] or {}))
            mapping[key] = {g: _names(c, v, (*path, key, g)) for g, v in groups.items()}
    if "groups" in d:
        if "control" in d:
            c.error(path, "give either the 'control' shorthand or full 'groups', not both")
        groups = c.mapping(d["groups"], (*path, "groups"), list(d["groups"] or {}))
        parsed: dict[str, list[dict]] = {}
        for g, rules in groups.items():
            if not isinstance(rules, list) or not rules:
                c.error((*path, "groups", g), "expected a list of rules")
                continue
            parsed[g] = []
            for i, rule in enumerate(rules):
                r = c.mapping(rule, (*path, "groups", g, i), ("access", "users", "hosts"), required=("access",))
                level = str(r.get("access", "")).upper()
                if level not in ("NONE", "READ", "WRITE"):
                    c.error((*path, "groups", g, i, "access"), f"expected NONE, READ or WRITE, got {r.get('access')!r}")
                for key, known in (("users", mapping.get("users", {})), ("hosts", mapping.get("hosts", {}))):
                    for name in _names(c, r.get(key, []), (*path, "groups", g, i, key)):
                        if name not in known:
                            c.error((*path, "groups", g, i, key), f"no {key} group named {name!r}")
                parsed[g].append({"access": level, "users": r.get("users", []), "hosts": r.get("hosts", [])})
        mapping["groups"] = parsed
    return AccessSettings(mapping=mapping)


def _parse_named_list(c: Checker, raw: Any, path: KeyPath, parse: Callable[[dict, KeyPath], Any]) -> list:
    if raw is None:
        c.error(path, "missing (a list is required)")
        return []
    if not isinstance(raw, list) or not raw:
        c.error(path, f"expected a non-empty list, got {raw!r}")
        return []
    out, seen = [], {}
    for i, item in enumerate(raw):
        parsed = parse(item, (*path, i))
        if parsed is None:
            continue
        if parsed.name in seen:
            c.error((*path, i, "name"), f"duplicate name {parsed.name!r} (also at index {seen[parsed.name]})")
        seen[parsed.name] = i
        out.append(parsed)
    return out


def _parse_shape(c: Checker, d: dict, path: KeyPath) -> tuple[int, ...]:
    """``shape: [n]`` or ``[h, w]``: positive integers, rank 1 or 2 (absent: a scalar)."""
    raw = d.get("shape")
    if raw is None:
        return ()
    if (not isinstance(raw, list) or not 1 <= len(raw) <= 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in raw)):
        c.error((*path, "shape"), f"expected [n] (a waveform) or [height, width] (an image) of positive integers, "
                f"got {raw!r}")
        return ()
    if size_of(raw) > MAX_ELEMENTS:
        c.error((*path, "shape"), f"{size_of(raw)} elements; at most {MAX_ELEMENTS} per array")
        return ()
    return tuple(raw)


def _parse_dtype(c: Checker, d: dict, path: KeyPath, shape: tuple[int, ...]) -> str:
    dtype = c.string(d.get("dtype"), (*path, "dtype"), default="float64")
    if "dtype" in d and not shape:
        c.error((*path, "dtype"), "only an array (with 'shape') has a dtype; remove it or add 'shape'")
    if dtype not in DTYPES:
        c.error((*path, "dtype"), f"expected float64 (FTVL DOUBLE) or float32 (FTVL FLOAT), got {dtype!r}")
        return "float64"
    return dtype


def _refuse_for_arrays(c: Checker, d: dict, path: KeyPath, shape: tuple[int, ...]) -> None:
    if shape:
        for key, why in _NOT_FOR_ARRAYS.items():
            if key in d:
                c.error((*path, key), why)


def _parse_source(c: Checker, raw: Any, path: KeyPath, shape: tuple[int, ...]
                  ) -> tuple[PVRef | None, tuple[PVRef, ...]]:
    """One PV, or a list of scalar PVs gathered in order into a ``[n]`` vector."""
    if not isinstance(raw, list):
        return c.pvref(raw, path), ()
    if not raw:
        c.error(path, "an empty list; give one PV or a list of scalar PVs")
        return None, ()
    refs = [c.pvref(item, (*path, i)) for i, item in enumerate(raw)]
    if len(shape) != 1:
        c.error(path, f"a list of {len(raw)} PVs is gathered into a vector: add 'shape: [{len(raw)}]'"
                if not shape else f"a list of PVs is gathered into a vector [n], not an image {list(shape)}")
    elif shape[0] != len(raw):
        c.error(path, f"{len(raw)} PVs for shape [{shape[0]}]: the list must name exactly {shape[0]} PVs "
                f"(or set 'shape: [{len(raw)}]')")
    return None, tuple(r for r in refs if r is not None)


def _parse_input(c: Checker, raw: Any, path: KeyPath) -> InputConfig | None:
    d = c.mapping(raw, path, _INPUT, required=("name",))
    name = c.string(d.get("name"), (*path, "name"), pattern=NAME_PATTERN, what="input name (letters, digits, _)")
    if not name:
        return None
    shape = _parse_shape(c, d, path)
    _refuse_for_arrays(c, d, path, shape)
    rng = c.pair(d.get("range"), (*path, "range"), "valid range")
    initial = c.number(d.get("initial"), (*path, "initial"))
    source, gather = _parse_source(c, d.get("source"), (*path, "source"), shape)
    if initial is not None and (source is not None or gather):
        c.error((*path, "initial"), "an input with a source takes its value from the source; drop 'initial'")
    return InputConfig(
        name=name,
        source=source,
        units=c.string(d.get("units"), (*path, "units"), max_len=MAX_EGU),
        description=c.string(d.get("description"), (*path, "description"), max_len=MAX_DESC),
        range=rng,
        max_age_s=c.number(d.get("max_age_s"), (*path, "max_age_s"), positive=True),
        prec=c.number(d.get("prec"), (*path, "prec"), integer=True, nonneg=True, default=3),
        initial=initial,
        mdel=c.number(d.get("mdel"), (*path, "mdel"), default=0.0),
        adel=c.number(d.get("adel"), (*path, "adel"), default=0.0),
        shape=shape,
        gather=gather,
        dtype=_parse_dtype(c, d, path, shape),
    )


def _parse_output(c: Checker, raw: Any, path: KeyPath) -> OutputConfig | None:
    d = c.mapping(raw, path, _OUTPUT, required=("name",))
    name = c.string(d.get("name"), (*path, "name"), pattern=NAME_PATTERN, what="output name (letters, digits, _)")
    if not name:
        return None
    shape = _parse_shape(c, d, path)
    _refuse_for_arrays(c, d, path, shape)
    prec = c.number(d.get("prec"), (*path, "prec"), integer=True, nonneg=True, default=3)
    if prec is not None and prec > 17:
        c.error((*path, "prec"), f"precision must be 0..17, got {prec}")
    return OutputConfig(
        name=name,
        units=c.string(d.get("units"), (*path, "units"), max_len=MAX_EGU),
        description=c.string(d.get("description"), (*path, "description"), max_len=MAX_DESC),
        prec=prec if prec is not None else 3,
        display=c.pair(d.get("display"), (*path, "display"), "display range"),
        alarm=_parse_alarm(c, d.get("alarm"), (*path, "alarm")),
        mdel=c.number(d.get("mdel"), (*path, "mdel"), default=0.0),
        adel=c.number(d.get("adel"), (*path, "adel"), default=0.0),
        truth=c.pvref(d.get("truth"), (*path, "truth")),
        action=_parse_action(c, d.get("action"), (*path, "action")),
        shape=shape,
        dtype=_parse_dtype(c, d, path, shape),
    )


def _parse_action(c: Checker, raw: Any, path: KeyPath) -> ActionConfig | None:
    """``action:`` of an output: where to write it and the envelope the guards enforce."""
    if raw is None:
        return None
    d = c.mapping(raw, path, _ACTION, required=("target", "min", "max", "max_step"))
    if not d:
        return None
    target = c.pvref(d.get("target"), (*path, "target"))
    lo = c.number(d.get("min"), (*path, "min"))
    hi = c.number(d.get("max"), (*path, "max"))
    if lo is not None and hi is not None and not lo < hi:
        c.error(path, f"min must be < max, got min={lo} max={hi}")
    max_step = c.number(d.get("max_step"), (*path, "max_step"), positive=True)
    deadband = c.number(d.get("deadband"), (*path, "deadband"), nonneg=True, default=0.0)
    if max_step is not None and deadband is not None and deadband >= max_step:
        c.error((*path, "deadband"), f"must be < max_step ({max_step}), or nothing could ever be written")
    mode = c.string(d.get("mode"), (*path, "mode"), default="dry_run")
    if mode not in ACTION_MODES:
        c.error((*path, "mode"), f"expected one of {', '.join(ACTION_MODES)}, got {mode!r}")
    drift_limit = c.string(d.get("drift_limit"), (*path, "drift_limit"), default="MAJOR")
    if drift_limit not in DRIFT_LIMITS:
        c.error((*path, "drift_limit"), f"expected MAJOR or MINOR (hold at or above), got {drift_limit!r}")
    tolerance = c.number(d.get("tolerance"), (*path, "tolerance"), positive=True)
    if target is None or lo is None or hi is None or max_step is None or not lo < hi:
        return None
    return ActionConfig(
        target=target,
        min=lo,
        max=hi,
        max_step=max_step,
        max_rate_hz=c.number(d.get("max_rate_hz"), (*path, "max_rate_hz"), positive=True, default=1.0),
        deadband=deadband if deadband is not None else 0.0,
        readback=c.pvref(d.get("readback"), (*path, "readback")),
        tolerance=tolerance if tolerance is not None else 0.01 * (hi - lo),
        settle_s=c.number(d.get("settle_s"), (*path, "settle_s"), positive=True, default=2.0),
        mode=mode if mode in ACTION_MODES else "dry_run",
        max_held=c.number(d.get("max_held"), (*path, "max_held"), integer=True, positive=True, default=50),
        drift_limit=drift_limit if drift_limit in DRIFT_LIMITS else "MAJOR",
    )


def _check_action_targets(c: Checker, config: Config) -> None:
    """No two actions may drive the same setpoint (they would fight, and each would trip the other)."""
    owner: dict[str, str] = {}
    for i, model in enumerate(config.models):
        for j, out in enumerate(model.outputs):
            if out.action is None:
                continue
            key = out.action.target.name
            if key in owner:
                c.error(("models", i, "outputs", j, "action", "target"),
                        f"{key} is already driven by {owner[key]}")
            owner[key] = f"{model.name}.{out.name}"


def _parse_trigger(c: Checker, raw: Any, path: KeyPath) -> TriggerConfig:
    if raw is None:
        return TriggerConfig(kind="on_change")
    d = c.mapping(raw, path, _TRIGGER)
    given = [k for k in _TRIGGER if k in d]
    if len(given) != 1:
        c.error(path, f"give exactly one of scan_hz, on_change, pv; got {given or 'none'}")
        return TriggerConfig(kind="on_change")
    key = given[0]
    if key == "scan_hz":
        hz = c.number(d["scan_hz"], (*path, "scan_hz"), positive=True)
        if hz is not None and hz > 10000:
            c.error((*path, "scan_hz"), f"at most 10000 Hz, got {hz}")
        return TriggerConfig(kind="scan", scan_hz=hz or 1.0)
    if key == "on_change":
        if d["on_change"] is not True:
            c.error((*path, "on_change"), "use 'on_change: true' (or another trigger)")
        return TriggerConfig(kind="on_change")
    return TriggerConfig(kind="pv", pv=c.pvref(d["pv"], (*path, "pv")))


def _parse_model(c: Checker, raw: Any, path: KeyPath, base: Path) -> ModelConfig | None:
    d = c.mapping(raw, path, _MODEL, required=("name", "prefix", "store", "inputs", "outputs"))
    if not d:
        return None
    name = c.string(d.get("name"), (*path, "name"), pattern=NAME_PATTERN, what="model name (letters, digits, _)")
    prefix = c.string(d.get("prefix"), (*path, "prefix"), pattern=PV_CHARS, what="PV prefix")
    store = c.string(d.get("store"), (*path, "store"))
    if store and not store.startswith("models:/"):
        store = str((base / os.path.expanduser(store)).resolve())
    elif store and not re.match(r"^models:/[A-Za-z0-9_.\-]+@[A-Za-z0-9_\-]+$", store):
        c.error((*path, "store"), f"registry stores look like models:/NAME@ALIAS, got {store!r}")
    template = c.string(d.get("store_template"), (*path, "store_template")) or None
    if template is not None:
        template = str((base / os.path.expanduser(template)).resolve())
        if store and store.startswith("models:/"):
            c.error((*path, "store_template"), "a registry store (models:/...) has no template")
        elif not Path(template, "versions").is_dir():
            c.error((*path, "store_template"), f"{template} is not a model store (no versions/ directory)")
    inputs = _parse_named_list(c, d.get("inputs"), (*path, "inputs"), lambda r, p: _parse_input(c, r, p))
    outputs = _parse_named_list(c, d.get("outputs"), (*path, "outputs"), lambda r, p: _parse_output(c, r, p))
    trigger = _parse_trigger(c, d.get("trigger"), (*path, "trigger"))
    record = _parse_record(c, d.get("record"), (*path, "record"), base, [o.name for o in outputs])
    training = d.get("training")
    if training is not None and not isinstance(training, dict):
        c.error((*path, "training"), f"expected a mapping, got {typename(training)}")
        training = None
    drift = _parse_drift(c, d.get("drift"), (*path, "drift"), trigger, inputs, outputs)
    if any(s.shape for s in (*inputs, *outputs)):
        # Arrays are served and run; drift scores, ground-truth errors and recording assume one element
        # per signal and are not built for arrays yet (issue 14).
        for key, what, given in (("drift", "drift scores", drift), ("record", "recording", record)):
            if given is not None:
                c.error((*path, key), f"{what} of a model with array inputs/outputs is not supported yet; "
                        f"remove '{key}'")
        for j, out in enumerate(outputs):
            if out.truth is not None and not out.shape:
                c.error((*path, "outputs", j, "truth"), "ground-truth errors of a model with array inputs/outputs "
                        "are not supported yet; remove 'truth'")
    retrain = _parse_retrain(c, d.get("retrain"), (*path, "retrain"), d, drift, outputs)
    if not name or prefix is None:
        return None
    return ModelConfig(
        name=name,
        prefix=prefix,
        store=store,
        trigger=trigger,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        description=c.string(d.get("description"), (*path, "description"), max_len=MAX_DESC),
        record=record,
        training=training,
        rollback_after_faults=c.number(d.get("rollback_after_faults"), (*path, "rollback_after_faults"),
                                       integer=True, positive=True),
        drift=drift,
        store_template=template,
        retrain=retrain,
    )


def _parse_record(c: Checker, raw: Any, path: KeyPath, base: Path, outputs: list[str]) -> RecordConfig | None:
    if raw is None:
        return None
    d = c.mapping(raw, path, _RECORD, required=("dir",))
    directory = c.string(d.get("dir"), (*path, "dir"))
    roll = c.string(d.get("roll"), (*path, "roll"), default="daily")
    if roll not in ROLLS:
        c.error((*path, "roll"), f"expected one of {', '.join(ROLLS)}, got {roll!r}")
    targets = []
    raw_targets = d.get("targets")
    if raw_targets is not None and not isinstance(raw_targets, dict):
        c.error((*path, "targets"), f"expected a mapping output name -> PV, got {typename(raw_targets)}")
        raw_targets = None
    for key, value in (raw_targets or {}).items():
        if key not in outputs:
            hint = difflib.get_close_matches(str(key), outputs, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f" (outputs: {', '.join(outputs)})"
            c.error((*path, "targets", key), f"not an output of this model{extra}")
            continue
        ref = c.pvref(value, (*path, "targets", key))
        if ref is not None:
            targets.append((str(key), ref))
    if not directory:
        return None
    return RecordConfig(
        dir=str((base / os.path.expanduser(directory)).resolve()),
        roll=roll if roll in ROLLS else "daily",
        max_mb=c.number(d.get("max_mb"), (*path, "max_mb"), positive=True, default=64.0),
        flush_s=c.number(d.get("flush_s"), (*path, "flush_s"), positive=True, default=5.0),
        targets=tuple(targets),
    )


_DRIFT = ("enabled", "method", "window_s", "bins", "rate_hz", "correlation_s", "update_s", "raise_s", "clear_s",
          "sigmas", "limits", "output_limits", "anomaly", "error")
_SIGMAS = ("minor", "major")
_LIMITS = ("high", "hihi", "hyst")
_WINDOWED = ("window_s", "high", "hihi")
_ERROR = ("window_s", "high", "hihi", "tolerance_s")
MIN_DRIFT_WINDOW = 10  # cycles: fewer cannot tell a distribution from noise


def _parse_limits(c: Checker, raw: Any, path: KeyPath) -> LimitsConfig | None:
    if raw is None:
        return None
    d = c.mapping(raw, path, _LIMITS, required=("high", "hihi"))
    high = c.number(d.get("high"), (*path, "high"))
    hihi = c.number(d.get("hihi"), (*path, "hihi"))
    hyst = c.number(d.get("hyst"), (*path, "hyst"), nonneg=True)
    if high is None or hihi is None:
        return None
    if not high < hihi:
        c.error(path, f"high must be < hihi, got high={high} hihi={hihi}")
    return LimitsConfig(high=high, hihi=hihi, hyst=hyst)


def _parse_drift(c: Checker, raw: Any, path: KeyPath, trigger: TriggerConfig, inputs: list, outputs: list
                 ) -> DriftConfig | None:
    """The ``drift:`` section of a model (docs/how-to/drift.md); absent or ``enabled: false``: no drift PVs."""
    from ioc.core.drift import BIN_CHOICES, METHODS  # pure numpy module: no import cycle

    if raw is None:
        return None
    d = c.mapping(raw, path, _DRIFT)
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        c.error((*path, "enabled"), f"expected true or false, got {enabled!r}")
    if enabled is False:  # kept in the file, switched off: no drift PVs
        return None
    method = c.string(d.get("method"), (*path, "method"), default="wasserstein")
    if method not in METHODS:
        c.error((*path, "method"), f"expected one of {', '.join(METHODS)}, got {method!r}")
    bins = c.number(d.get("bins"), (*path, "bins"), integer=True, default=10 if method == "psi" else 100)
    if bins is not None and bins not in BIN_CHOICES:
        c.error((*path, "bins"), f"expected one of {list(BIN_CHOICES)} (edges are reference percentiles), "
                f"got {bins}")
    rate = c.number(d.get("rate_hz"), (*path, "rate_hz"), positive=True)
    if rate is None:
        if trigger.kind == "scan" and trigger.scan_hz:
            rate = trigger.scan_hz
        else:
            c.error(path, "rate_hz is required when the trigger is not scan_hz (the expected cycles per "
                    "second turn window_s into cycles)")
            rate = 10.0
    num = lambda key, default, **kw: c.number(d.get(key), (*path, key), default=default, **kw)  # noqa: E731
    window_s = num("window_s", 60.0, positive=True)
    if window_s * rate < MIN_DRIFT_WINDOW:
        c.error((*path, "window_s"), f"window of {window_s} s at {rate} Hz is {window_s * rate:.0f} cycles; "
                f"at least {MIN_DRIFT_WINDOW} are needed")
    sig = c.mapping(d.get("sigmas"), (*path, "sigmas"), _SIGMAS)
    minor = c.number(sig.get("minor"), (*path, "sigmas", "minor"), positive=True, default=6.0)
    major = c.number(sig.get("major"), (*path, "sigmas", "major"), positive=True, default=9.0)
    if not minor < major:
        c.error((*path, "sigmas"), f"minor must be < major, got minor={minor} major={major}")
    anomaly = c.mapping(d.get("anomaly"), (*path, "anomaly"), _WINDOWED)
    error = c.mapping(d.get("error"), (*path, "error"), _ERROR)
    windowed = {}
    for key, section, defaults in (("anomaly", anomaly, (10.0, 2.0, 3.0)), ("error", error, (60.0, 2.0, 3.0))):
        w = c.number(section.get("window_s"), (*path, key, "window_s"), positive=True, default=defaults[0])
        hi = c.number(section.get("high"), (*path, key, "high"), positive=True, default=defaults[1])
        hh = c.number(section.get("hihi"), (*path, key, "hihi"), positive=True, default=defaults[2])
        if not hi < hh:
            c.error((*path, key), f"high must be < hihi, got high={hi} hihi={hh}")
        windowed[key] = (w, LimitsConfig(high=hi, hihi=hh))
    tolerance = c.number(error.get("tolerance_s"), (*path, "error", "tolerance_s"), positive=True)
    if any(getattr(i, "name", None) == "OUT" for i in inputs):
        c.error(path, "an input named OUT would clash with the output drift PV $(P)DRIFT:OUT; rename it")
    return DriftConfig(
        method=method if method in METHODS else "wasserstein",
        window_s=window_s,
        bins=bins if bins in BIN_CHOICES else 100,
        rate_hz=rate,
        correlation_s=num("correlation_s", 0.0, nonneg=True),
        update_s=num("update_s", 5.0, positive=True),
        raise_s=num("raise_s", 10.0, nonneg=True),
        clear_s=num("clear_s", 30.0, nonneg=True),
        minor_sigmas=minor,
        major_sigmas=major,
        limits=_parse_limits(c, d.get("limits"), (*path, "limits")),
        output_limits=_parse_limits(c, d.get("output_limits"), (*path, "output_limits")),
        anomaly_window_s=windowed["anomaly"][0],
        anomaly_limits=windowed["anomaly"][1],
        error_window_s=windowed["error"][0],
        error_factors=windowed["error"][1],
        truth_tolerance_s=tolerance,
    )


_RETRAIN = ("schedule", "on_drift_s", "cooldown_s", "timeout_s", "window_s", "history_s", "promote", "margin",
            "min_samples", "max_hours", "runner", "airflow", "poll_s")
_AIRFLOW = ("url", "dag_id", "user", "password_env", "config_path")
RETRAIN_RUNNERS = ("local", "airflow")


def _parse_retrain(c: Checker, raw: Any, path: KeyPath, model: dict, drift: DriftConfig | None,
                   outputs: list[OutputConfig]) -> RetrainConfig | None:
    """The ``retrain:`` section (docs/reference/config.md): absent means no loop for this model."""
    if raw is None:
        return None
    d = c.mapping(raw, path, _RETRAIN)
    schedule = c.string(d.get("schedule"), (*path, "schedule"), default="") or None
    if schedule is not None:
        try:
            parse_cron(schedule)
        except CronError as exc:
            c.error((*path, "schedule"), f"not a cron expression: {exc}")
    num = lambda key, default, **kw: c.number(d.get(key), (*path, key), default=default, **kw)  # noqa: E731
    if "on_drift_s" in d and d["on_drift_s"] is not None and drift is None:
        c.error((*path, "on_drift_s"), "needs a drift: section (it watches $(P)DRIFT)")
    on_drift = num("on_drift_s", 600.0 if drift is not None and "on_drift_s" not in d else None, nonneg=True)
    promote = c.string(d.get("promote"), (*path, "promote"), default="manual")
    if promote not in MODES:
        c.error((*path, "promote"), f"expected manual or auto, got {promote!r}")
    if promote == "auto" and not any(o.truth is not None for o in outputs):
        c.error((*path, "promote"), "auto needs a truth: PV on at least one output (live error decides)")
    if not model.get("record"):
        c.error(path, "needs a record: section (retraining learns from what the IOC recorded)")
    runner = c.string(d.get("runner"), (*path, "runner"), default="local")
    if runner not in RETRAIN_RUNNERS:
        c.error((*path, "runner"), f"expected local or airflow, got {runner!r}")
    airflow = None
    if "airflow" in d or runner == "airflow":
        ap = (*path, "airflow")
        ad = c.mapping(d.get("airflow"), ap, _AIRFLOW, required=("url",))
        url = c.string(ad.get("url"), (*ap, "url"))
        if url and not url.startswith(("http://", "https://")):
            c.error((*ap, "url"), f"expected an http(s) URL, got {url!r}")
        airflow = AirflowConfig(url=url.rstrip("/"), dag_id=c.string(ad.get("dag_id"), (*ap, "dag_id"),
                                                                     default="mlioc_retrain"),
                                user=c.string(ad.get("user"), (*ap, "user")),
                                password_env=c.string(ad.get("password_env"), (*ap, "password_env")),
                                config_path=c.string(ad.get("config_path"), (*ap, "config_path")))
    margin = num("margin", 0.05)
    if margin is not None and not -1 < margin < 1:
        c.error((*path, "margin"), f"a relative error reduction between -1 and 1, got {margin}")
    return RetrainConfig(
        schedule=schedule,
        on_drift_s=on_drift,
        cooldown_s=num("cooldown_s", 3600.0, nonneg=True),
        timeout_s=num("timeout_s", 3600.0, positive=True),
        window_s=num("window_s", 86400.0, positive=True),
        history_s=num("history_s", 600.0, nonneg=True),
        promote=promote if promote in MODES else "manual",
        margin=margin if margin is not None else 0.05,
        min_samples=num("min_samples", 600, integer=True, positive=True),
        max_hours=num("max_hours", 24.0, positive=True),
        runner=runner if runner in RETRAIN_RUNNERS else "local",
        airflow=airflow,
        poll_s=num("poll_s", 1.0, positive=True),
    )


def parse_config(raw: Any, file: Path, lines: dict[KeyPath, int] | None = None,
                 extra_checks: Callable[[Config], Iterable[tuple[KeyPath, str]]] | None = None) -> Config:
    """Validate an already-loaded YAML document; raise :class:`ConfigError` listing every problem.

    ``extra_checks`` are whole-config checks of the layers above (the PV layout's unique names):
    :func:`ioc.core.configfile.load_config` passes them, so this module never imports them.
    """
    c = Checker(file, lines or {})
    top = c.mapping(raw, (), _TOP, required=("models",))
    ioc = _parse_ioc(c, top.get("ioc"), file.parent)
    sim = _parse_sim(c, top.get("simulator"))
    base = file.parent
    models = _parse_named_list(c, top.get("models"), ("models",), lambda r, p: _parse_model(c, r, p, base))
    access = _parse_access(c, top.get("access"), file.parent)
    config = Config(path=file, ioc=ioc, models=tuple(models), simulator=sim, access=access)
    if not c.problems:
        _check_action_targets(c, config)
        for path, message in (extra_checks(config) if extra_checks is not None else ()):
            c.error(path, message)
    if c.problems:
        raise ConfigError(file, c.problems)
    return config


def read_config(path: str | os.PathLike,
                extra_checks: Callable[[Config], Iterable[tuple[KeyPath, str]]] | None = None) -> Config:
    """Read and validate a YAML config file; raise :class:`ConfigError` on any problem."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(file, [f"{file}: cannot read config: {exc.strerror or exc}"]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark is not None else str(file)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file, [f"{where}: not valid YAML: {problem}"]) from exc
    lines = line_index(node) if node is not None else {}
    return parse_config(raw, file, lines, extra_checks)


def default_config_path() -> Path:
    """The shipped demo config: ``config/demo.yaml`` beside the ``ioc`` package (source checkout)."""
    return Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
