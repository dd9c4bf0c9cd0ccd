"""The ``training:`` section of a model in the IOC's YAML config, parsed into one frozen :class:`TrainSpec`.

The IOC keeps this section as a raw mapping (it never trains); it is validated here with the IOC's own
checker, so a typo is refused with ``FILE:LINE: key.path: what is wrong`` like every other config key.
The whole spec is logged to MLflow as ``spec.json``: ``mlioc reproduce`` rebuilds the run from it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ioc.core.config import Config, ConfigError, ModelConfig
from ioc.core.yamlcheck import Checker, line_index

KINDS = ("regression", "autoencoder", "cnn1d", "cnn2d")
CONV_KINDS = ("cnn1d", "cnn2d")
DECODERS = ("dense", "conv")
NORMALISE = ("channel", "element")
ACTIVATIONS = ("silu", "relu", "tanh", "gelu")
WARM_STARTS = ("auto", "champion", "scratch")
SOURCES = ("recorded", "simulator", "file", "archiver")
SEVERITIES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")
PROMOTE_TO = ("champion", "challenger")
DEVICES = ("auto", "cpu", "cuda")

_TRAINING = ("kind", "hidden", "bottleneck", "activation", "epochs", "batch_size", "lr", "weight_decay", "seed",
             "warm_start", "device", "experiment", "data", "filters", "split", "gate", "reproduce", "log_dataset",
             "channels", "kernel", "stride", "decoder", "decoder_channels", "normalise", "search")
_DATA = ("source", "path", "samples", "seed", "shift", "archiver")
_ARCHIVER = ("url", "pvs", "start", "end", "max_age_s", "align_to")
_FILTERS = ("start", "end", "max_severity", "status", "exclude", "max_skew_s")
_EXCLUDE = ("start", "end", "reason")
_SPLIT = ("val", "test", "gap_s")
_GATE = ("parity_atol", "min_improvement", "max_output_regression", "promote_to", "test_vectors")
_REPRODUCE = ("pred_atol", "weight_rtol")


@dataclass(frozen=True)
class ArchiverSpec:
    """Where the Archiver Appliance is and which PV feeds each input/output (name -> PV)."""

    url: str
    pvs: dict[str, str]
    start: str | None = None
    end: str | None = None
    max_age_s: float = 1.0  # an as-of join takes a PV's last value only if it is at most this old
    align_to: str | None = None  # the signal whose events define the sample times (default: first target)


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from when ``mlioc train`` is given no ``--data``."""

    source: str = "recorded"
    path: str | None = None  # file source; recorded: override the model's record.dir
    samples: int = 20000  # simulator
    seed: int = 0  # simulator
    shift: float = 0.0  # simulator: knob shift in reference standard deviations
    archiver: ArchiverSpec | None = None


@dataclass(frozen=True)
class Exclusion:
    start: float
    end: float
    reason: str = ""


@dataclass(frozen=True)
class FilterSpec:
    start: float | None = None  # unix seconds
    end: float | None = None
    max_severity: str = "MINOR"  # rows where any input/target is worse are dropped
    status: tuple[str, ...] = ()  # recorded data: keep only these cycle statuses (empty: all)
    exclude: tuple[Exclusion, ...] = ()
    max_skew_s: float = 0.05  # recorded data: every input and target of a row within this of its snapshot time


@dataclass(frozen=True)
class SplitSpec:
    """Time-ordered split: the oldest rows train, then validation, then the newest rows test."""

    val: float = 0.1
    test: float = 0.2
    gap_s: float = 0.0  # rows this close to a split boundary are dropped (autocorrelated data)


@dataclass(frozen=True)
class GateSpec:
    parity_atol: float = 1e-4  # ONNX vs torch, max |diff| in normalised output units, on the test split
    min_improvement: float = 0.0  # challenger's mean normalised RMSE must be this much (relative) lower
    max_output_regression: float = 0.02  # and no output's RMSE may be more than this (relative) worse
    promote_to: str = "champion"  # a winner becomes champion, or challenger (shadow; an operator promotes)
    test_vectors: int = 16


@dataclass(frozen=True)
class ReproduceSpec:
    pred_atol: float = 1e-3  # max |prediction difference| on the test split, normalised output units
    weight_rtol: float = 1e-3  # relative L2 distance of all weights


@dataclass(frozen=True)
class TrainSpec:
    model: str
    kind: str = "regression"
    hidden: tuple[int, ...] = (64, 64)
    bottleneck: int = 2  # autoencoder only
    activation: str = "silu"
    channels: tuple[int, ...] = (8, 16)  # cnn1d / cnn2d: output channels of each convolution
    kernel: int = 3  # cnn1d / cnn2d (and a conv decoder): odd kernel size
    stride: int = 2  # each convolution downsamples (a conv decoder upsamples) by this factor
    decoder: str = "dense"  # an array output from a dense layer, or from transposed convolutions ("conv")
    decoder_channels: tuple[int, ...] = (16, 8)  # conv decoder: channels before each upsampling step
    normalise: str = "channel"  # an array signal: one mean/std for all its elements, or one per element
    epochs: int = 200
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    warm_start: str = "auto"
    device: str = "auto"
    experiment: str = ""
    log_dataset: bool = True
    data: DataSpec = field(default_factory=DataSpec)
    filters: FilterSpec = field(default_factory=FilterSpec)
    split: SplitSpec = field(default_factory=SplitSpec)
    gate: GateSpec = field(default_factory=GateSpec)
    reproduce: ReproduceSpec = field(default_factory=ReproduceSpec)

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"mlioc-{self.model}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSpec:
        """Inverse of :meth:`to_dict` (for ``spec.json`` logged with a run)."""
        d = dict(d)
        data = dict(d.pop("data"))
        arch = data.pop("archiver", None)
        filters = dict(d.pop("filters"))
        filters["exclude"] = tuple(Exclusion(**e) for e in filters.get("exclude", ()))
        filters["status"] = tuple(filters.get("status", ()))
        for key in ("channels", "decoder_channels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(
            **{**d, "hidden": tuple(d["hidden"]),
               "split": SplitSpec(**d.get("split", {})),
               "gate": GateSpec(**d.get("gate", {})),
               "reproduce": ReproduceSpec(**d.get("reproduce", {}))},
            data=DataSpec(**data, archiver=ArchiverSpec(**arch) if arch else None),
            filters=FilterSpec(**filters),
        )


def parse_time(value: Any) -> float | None:
    """ISO 8601 (naive = UTC) or unix seconds -> unix seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        t = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    else:
        raise ValueError(f"expected a time (ISO 8601 or unix seconds), got {value!r}")
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


class _SpecChecker:
    """Typed getters over the IOC's :class:`Checker` (which records FILE:LINE problems)."""

    def __init__(self, c: Checker):
        self.c = c

    def time(self, value: Any, path) -> float | None:
        try:
            return parse_time(value)
        except ValueError as exc:
            self.c.error(path, str(exc))
            return None

    def choice(self, value: Any, path, choices: tuple[str, ...], default: str) -> str:
        s = self.c.string(value, path, default=default)
        if s not in choices:
            self.c.error(path, f"expected one of {', '.join(choices)}, got {s!r}")
            return default
        return s

    def widths(self, value: Any, path, default: list[int], what: str) -> tuple[int, ...]:
        """A non-empty list of positive integers (layer widths, channel counts)."""
        if value is None:
            return tuple(default)
        if (not isinstance(value, list) or not value
                or any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in value)):
            self.c.error(path, f"expected a non-empty list of positive {what}, got {value!r}")
            return tuple(default)
        return tuple(value)

    def fraction(self, value: Any, path, default: float) -> float:
        v = self.c.number(value, path, nonneg=True, default=default)
        if v is not None and v >= 1:
            self.c.error(path, f"must be < 1, got {v}")
            return default
        return v


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _coerce_numbers(raw: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` — no dot — as a string; in this section it means a number."""
    if isinstance(raw, dict):
        return {k: _coerce_numbers(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_coerce_numbers(v) for v in raw]
    if isinstance(raw, str) and _SCIENTIFIC.match(raw.strip()):
        return float(raw)
    return raw


def parse_spec(model: ModelConfig, raw: Any, c: Checker, base: Path, path: tuple) -> TrainSpec:
    """Validate one model's ``training:`` mapping (``raw`` may be None: every default)."""
    raw = _coerce_numbers(raw)
    s = _SpecChecker(c)
    d = c.mapping(raw, path, _TRAINING)
    kind = s.choice(d.get("kind"), (*path, "kind"), KINDS, "regression")
    hidden = s.widths(d.get("hidden"), (*path, "hidden"), {"regression": [64, 64], "autoencoder": [32]}.get(kind, [64]),
                      "layer widths")
    network = _parse_architecture(model, d, kind, s, path)

    dd = c.mapping(d.get("data"), (*path, "data"), _DATA)
    default_source = "recorded" if model.record is not None else "file"
    source = s.choice(dd.get("source"), (*path, "data", "source"), SOURCES, default_source)
    arch = None
    if "archiver" in dd or source == "archiver":
        ap = (*path, "data", "archiver")
        ad = c.mapping(dd.get("archiver"), ap, _ARCHIVER, required=("url", "pvs"))
        pvs = ad.get("pvs") or {}
        names = [i.name for i in model.inputs] + ([o.name for o in model.outputs] if kind != "autoencoder" else [])
        if not isinstance(pvs, dict):
            c.error((*ap, "pvs"), "expected a mapping signal name -> archived PV name")
            pvs = {}
        for n in names:
            if n not in pvs:
                c.error((*ap, "pvs"), f"no archived PV for {n!r} (need one per input" +
                        (" and output)" if kind != "autoencoder" else ")"))
        for n in pvs:
            if n not in names:
                c.error((*ap, "pvs", n), f"not an input{' or output' if kind != 'autoencoder' else ''} of the model")
        arch = ArchiverSpec(
            url=c.string(ad.get("url"), (*ap, "url")),
            pvs={str(k): str(v) for k, v in pvs.items()},
            start=None if ad.get("start") is None else str(ad.get("start")),
            end=None if ad.get("end") is None else str(ad.get("end")),
            max_age_s=c.number(ad.get("max_age_s"), (*ap, "max_age_s"), positive=True, default=1.0),
            align_to=c.string(ad.get("align_to"), (*ap, "align_to"), default="") or None,
        )
    data_path = c.string(dd.get("path"), (*path, "data", "path"), default="") or None
    if data_path:
        data_path = str((base / data_path).resolve())
    data = DataSpec(
        source=source,
        path=data_path,
        samples=c.number(dd.get("samples"), (*path, "data", "samples"), integer=True, positive=True, default=20000),
        seed=c.number(dd.get("seed"), (*path, "data", "seed"), integer=True, nonneg=True, default=0),
        shift=c.number(dd.get("shift"), (*path, "data", "shift"), default=0.0),
        archiver=arch,
    )

    fp = (*path, "filters")
    fd = c.mapping(d.get("filters"), fp, _FILTERS)
    status = fd.get("status") or []
    if isinstance(status, str):
        status = [status]
    excl = []
    raw_excl = fd.get("exclude") or []
    if not isinstance(raw_excl, list):
        c.error((*fp, "exclude"), "expected a list of {start, end, reason}")
        raw_excl = []
    for i, e in enumerate(raw_excl):
        ed = c.mapping(e, (*fp, "exclude", i), _EXCLUDE, required=("start", "end"))
        a, b = s.time(ed.get("start"), (*fp, "exclude", i, "start")), s.time(ed.get("end"), (*fp, "exclude", i, "end"))
        if a is not None and b is not None:
            if b <= a:
                c.error((*fp, "exclude", i), "end must be after start")
            excl.append(Exclusion(a, b, str(ed.get("reason", ""))))
    filters = FilterSpec(
        start=s.time(fd.get("start"), (*fp, "start")),
        end=s.time(fd.get("end"), (*fp, "end")),
        max_severity=s.choice(fd.get("max_severity"), (*fp, "max_severity"), SEVERITIES, "MINOR"),
        status=tuple(str(x) for x in status),
        exclude=tuple(excl),
        max_skew_s=c.number(fd.get("max_skew_s"), (*fp, "max_skew_s"), nonneg=True,
                                   default=0.05),
    )
    sp = (*path, "split")
    sd = c.mapping(d.get("split"), sp, _SPLIT)
    split = SplitSpec(val=s.fraction(sd.get("val"), (*sp, "val"), 0.1),
                      test=s.fraction(sd.get("test"), (*sp, "test"), 0.2),
                      gap_s=c.number(sd.get("gap_s"), (*sp, "gap_s"), nonneg=True, default=0.0))
    if split.test <= 0 or split.val + split.test >= 0.9:
        c.error(sp, f"test must be > 0 and val + test < 0.9, got val {split.val}, test {split.test}")
    gp = (*path, "gate")
    gd = c.mapping(d.get("gate"), gp, _GATE)
    gate = GateSpec(
        parity_atol=c.number(gd.get("parity_atol"), (*gp, "parity_atol"), nonneg=True, default=1e-4),
        min_improvement=c.number(gd.get("min_improvement"), (*gp, "min_improvement"), default=0.0),
        max_output_regression=c.number(gd.get("max_output_regression"), (*gp, "max_output_regression"),
                                       nonneg=True, default=0.02),
        promote_to=s.choice(gd.get("promote_to"), (*gp, "promote_to"), PROMOTE_TO, "champion"),
        test_vectors=c.number(gd.get("test_vectors"), (*gp, "test_vectors"), integer=True, positive=True, default=16),
    )
    rp = (*path, "reproduce")
    rd = c.mapping(d.get("reproduce"), rp, _REPRODUCE)
    reproduce = ReproduceSpec(
        pred_atol=c.number(rd.get("pred_atol"), (*rp, "pred_atol"), nonneg=True, default=1e-3),
        weight_rtol=c.number(rd.get("weight_rtol"), (*rp, "weight_rtol"), nonneg=True, default=1e-3),
    )
    log_dataset = d.get("log_dataset", True)
    if not isinstance(log_dataset, bool):
        c.error((*path, "log_dataset"), f"expected true or false, got {log_dataset!r}")
        log_dataset = True
    lr = c.number(d.get("lr"), (*path, "lr"), positive=True, default=3e-3)
    return TrainSpec(
        model=model.name,
        kind=kind,
        hidden=hidden,
        **network,
        bottleneck=c.number(d.get("bottleneck"), (*path, "bottleneck"), integer=True, positive=True, default=2),
        activation=s.choice(d.get("activation"), (*path, "activation"), ACTIVATIONS, "silu"),
        epochs=c.number(d.get("epochs"), (*path, "epochs"), integer=True, positive=True, default=200),
        batch_size=c.number(d.get("batch_size"), (*path, "batch_size"), integer=True, positive=True, default=512),
        lr=lr if lr is not None and math.isfinite(lr) else 3e-3,
        weight_decay=c.number(d.get("weight_decay"), (*path, "weight_decay"), nonneg=True, default=0.0),
        seed=c.number(d.get("seed"), (*path, "seed"), integer=True, nonneg=True, default=0),
        warm_start=s.choice(d.get("warm_start"), (*path, "warm_start"), WARM_STARTS, "auto"),
        device=s.choice(d.get("device"), (*path, "device"), DEVICES, "auto"),
        experiment=c.string(d.get("experiment"), (*path, "experiment"), default=""),
        log_dataset=log_dataset,
        data=data,
        filters=filters,
        split=split,
        gate=gate,
        reproduce=reproduce,
    )


def _shape(item) -> tuple[int, ...]:
    return tuple(getattr(item, "shape", None) or ())


def _parse_architecture(model: ModelConfig, d: dict, kind: str, s: _SpecChecker, path: tuple) -> dict[str, Any]:
    """The array-model keys (``channels``, ``kernel``, ``stride``, ``decoder``, ``decoder_channels``,
    ``normalise``), and whether the model's inputs/outputs suit the kind."""
    c = s.c
    conv = kind in CONV_KINDS
    for key in ("channels", "kernel"):
        if key in d and not conv and not (key == "kernel" and d.get("decoder") == "conv"):
            c.error((*path, key), f"only for kind {' or '.join(CONV_KINDS)} (this model is {kind})")
    channels = s.widths(d.get("channels"), (*path, "channels"), [8, 16], "channel counts")
    kernel = c.number(d.get("kernel"), (*path, "kernel"), integer=True, positive=True, default=3)
    if kernel is not None and kernel % 2 == 0:
        c.error((*path, "kernel"), f"must be odd (the convolution keeps its input centred), got {kernel}")
        kernel = 3
    stride = c.number(d.get("stride"), (*path, "stride"), integer=True, positive=True, default=2)
    decoder = s.choice(d.get("decoder"), (*path, "decoder"), DECODERS, "dense")
    decoder_channels = s.widths(d.get("decoder_channels"), (*path, "decoder_channels"), [16, 8], "channel counts")
    normalise = s.choice(d.get("normalise"), (*path, "normalise"), NORMALISE, "channel")
    shapes = [(i.name, _shape(i)) for i in model.inputs]
    have = ", ".join(f"{n} {list(sh) or 'scalar'}" for n, sh in shapes)
    if kind in CONV_KINDS:
        rank = 1 if kind == "cnn1d" else 2
        what = "waveform input (shape: [n])" if rank == 1 else "image input (shape: [h, w])"
        if len(shapes) != 1 or len(shapes[0][1]) != rank:
            c.error((*path, "kind"), f"{kind} needs exactly one {what}; this model has {have}")
    if kind == "autoencoder" and any(sh for _, sh in shapes):
        c.error((*path, "kind"), f"autoencoder takes scalar inputs only; this model has {have}")
    if decoder == "conv":
        outs = [(o.name, _shape(o)) for o in model.outputs]
        factor = stride ** len(decoder_channels)
        if kind == "autoencoder" or len(outs) != 1 or not outs[0][1]:
            c.error((*path, "decoder"), "conv needs exactly one array output (shape: [n] or [h, w]); this model has "
                    + ", ".join(f"{n} {list(sh) or 'scalar'}" for n, sh in outs))
        elif any(dim % factor for dim in outs[0][1]):
            c.error((*path, "decoder"), f"output {outs[0][0]} {list(outs[0][1])}: each dimension must be divisible "
                    f"by stride ** len(decoder_channels) = {factor} (change stride or decoder_channels)")
    return {"channels": channels, "kernel": kernel or 3, "stride": stride or 2, "decoder": decoder,
            "decoder_channels": decoder_channels, "normalise": normalise}


# ----------------------------------------------------------------------------- hyperparameter search

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "successive_halving", "none")
_SEARCH = ("trials", "study", "epochs", "sampler", "pruner", "space")
_SAMPLER = ("type", "seed", "startup_trials")
_PRUNER = ("type", "startup_trials", "warmup_epochs", "min_epochs", "reduction_factor")
_RANGE = ("low", "high", "log", "step")
# key -> (value type, what a value must be); conv_channels: the ``channels`` of a cnn1d / cnn2d model.
_SPACE: dict[str, tuple[str, str]] = {
    "lr": ("float", "positive"),
    "weight_decay": ("float", "nonneg"),
    "width": ("int", "positive"),
    "depth": ("int", "positive"),
    "activation": ("activation", ""),
    "batch_size": ("int", "positive"),
    "bottleneck": ("int", "positive"),
    "conv_channels": ("channels", ""),
}


@dataclass(frozen=True)
class Param:
    """One key of the search space: ``fixed`` (not searched), a ``float`` / ``int`` range, or a ``choice``."""

    kind: str
    value: Any = None  # fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"


@dataclass(frozen=True)
class SearchSpec:
    """``training.search``: what ``mlioc tune`` searches and how (docs/how-to/training.md)."""

    trials: int = 20  # the study stops at this many complete or pruned trials
    study: str = ""  # Optuna study name (default mlioc-<model>)
    epochs: int = 200  # cap: each trial trains at most this many epochs (the pruner's budget)
    sampler: str = "tpe"
    seed: int = 0  # sampler seed (default training.seed)
    startup_trials: int = 10  # tpe: random trials before the model-based ones
    pruner: str = "median"
    pruner_startup_trials: int = 5  # median: trials that are never pruned
    warmup_epochs: int = 5  # median: epochs before a trial can be pruned
    min_epochs: int = 5  # successive_halving: the first rung
    reduction_factor: int = 3  # successive_halving
    space: dict[str, Param] = field(default_factory=dict)

    def study_name(self, model: str) -> str:
        return self.study or f"mlioc-{model}"

    def searched(self) -> dict[str, Param]:
        return {k: p for k, p in self.space.items() if p.searched}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _space_value(c: Checker, key: str, value: Any, path) -> Any:
    """One value of a space key (a fixed value or one choice), validated; None when invalid."""
    vtype, rule = _SPACE[key]
    if vtype == "activation":
        if value not in ACTIVATIONS:
            c.error(path, f"expected one of {', '.join(ACTIVATIONS)}, got {value!r}")
            return None
        return value
    if vtype == "channels":
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)):
            c.error(path, f"expected a list of channel counts per convolution layer, e.g. [8, 16], got {value!r}")
            return None
        return tuple(value)
    before = len(c.problems)
    v = c.number(value, path, integer=vtype == "int", positive=rule == "positive", nonneg=rule == "nonneg")
    return v if len(c.problems) == before else None


def _space_param(c: Checker, key: str, value: Any, path) -> Param | None:
    vtype, rule = _SPACE[key]
    if isinstance(value, dict):
        if vtype in ("activation", "channels"):
            c.error(path, "expected a list of choices (this key has no range)")
            return None
        d = c.mapping(value, path, _RANGE, required=("low", "high"))
        if "low" not in d or "high" not in d:
            return None
        integer = vtype == "int"
        before = len(c.problems)
        lo = c.number(d.get("low"), (*path, "low"), integer=integer)
        hi = c.number(d.get("high"), (*path, "high"), integer=integer)
        log = d.get("log", key == "lr")
        if not isinstance(log, bool):
            c.error((*path, "log"), f"expected true or false, got {log!r}")
        step = c.number(d.get("step"), (*path, "step"), integer=integer, positive=True)
        if len(c.problems) > before or lo is None or hi is None:
            return None
        if not lo < hi:
            c.error(path, f"low ({lo:g}) must be < high ({hi:g}); for a fixed value write `{key}: {lo:g}`")
            return None
        if rule == "positive" and lo <= 0:
            c.error((*path, "low"), f"must be > 0, got {lo:g}")
            return None
        if rule == "nonneg" and lo < 0:
            c.error((*path, "low"), f"must be >= 0, got {lo:g}")
            return None
        if log and lo <= 0:
            c.error((*path, "log"), f"a log scale needs low > 0, got {lo:g}")
            return None
        if log and step is not None:
            c.error(path, "log and step cannot be combined")
            return None
        if step is not None:
            n = (hi - lo) / step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                c.error((*path, "step"), f"high - low ({hi - lo:g}) must be a multiple of step ({step:g})")
                return None
        return Param(vtype if vtype == "int" else "float", low=lo, high=hi, log=bool(log), step=step)
    channels_hint = "a list of choices, each a list of channel counts (e.g. [[8, 16], [16, 32]])"
    if isinstance(value, list):
        if not value:
            c.error(path, "empty list of choices")
            return None
        if vtype == "channels" and not all(isinstance(v, list) for v in value):
            c.error(path, f"expected {channels_hint}, got {value!r}")
            return None
        choices = [_space_value(c, key, v, (*path, i)) for i, v in enumerate(value)]
        if any(v is None for v in choices):
            return None
        dupes = sorted({str(v) for v in choices if choices.count(v) > 1})
        if dupes:
            c.error(path, f"duplicate choice(s) {', '.join(dupes)}")
            return None
        return Param("choice", choices=tuple(choices))
    if vtype == "channels":
        c.error(path, f"expected {channels_hint}, got {value!r}")
        return None
    v = _space_value(c, key, value, path)
    return None if v is None else Param("fixed", value=v)


def parse_search(raw: Any, spec: TrainSpec, model: ModelConfig, c: Checker, path: tuple) -> SearchSpec:
    """Validate ``training.search`` (``raw`` is the mapping under that key; numbers already coerced)."""
    d = c.mapping(raw, path, _SEARCH)
    epochs = c.number(d.get("epochs"), (*path, "epochs"), integer=True, positive=True, default=spec.epochs)
    trials = c.number(d.get("trials"), (*path, "trials"), integer=True, positive=True, default=20)
    study = c.string(d.get("study"), (*path, "study"), default="")
    if "study" in d and not str(d.get("study") or "").strip():
        c.error((*path, "study"), "must not be empty (leave the key out for the default mlioc-<model>)")

    sp = (*path, "sampler")
    sd = d.get("sampler")
    sd = {"type": sd} if isinstance(sd, str) else sd
    sd = c.mapping(sd, sp, _SAMPLER)
    s = _SpecChecker(c)
    sampler = s.choice(sd.get("type"), (*sp, "type"), SAMPLERS, "tpe")
    seed = c.number(sd.get("seed"), (*sp, "seed"), integer=True, nonneg=True, default=spec.seed)
    startup = c.number(sd.get("startup_trials"), (*sp, "startup_trials"), integer=True, nonneg=True, default=10)
    if sampler != "tpe" and "startup_trials" in sd:
        c.error((*sp, "startup_trials"), "only for the tpe sampler")

    pp = (*path, "pruner")
    pd = d.get("pruner")
    pd = {"type": pd} if isinstance(pd, str) else pd
    pd = c.mapping(pd, pp, _PRUNER)
    pruner = s.choice(pd.get("type"), (*pp, "type"), PRUNERS, "median")
    p_startup = c.number(pd.get("startup_trials"), (*pp, "startup_trials"), integer=True, nonneg=True, default=5)
    warmup = c.number(pd.get("warmup_epochs"), (*pp, "warmup_epochs"), integer=True, nonneg=True,
                      default=min(5, max(epochs - 1, 0)))
    min_epochs = c.number(pd.get("min_epochs"), (*pp, "min_epochs"), integer=True, positive=True,
                          default=max(1, min(5, epochs // 3)))
    factor = c.number(pd.get("reduction_factor"), (*pp, "reduction_factor"), integer=True, positive=True, default=3)
    own = {"median": ("startup_trials", "warmup_epochs"), "successive_halving": ("min_epochs", "reduction_factor"),
           "none": ()}[pruner]
    for key in ("startup_trials", "warmup_epochs", "min_epochs", "reduction_factor"):
        if key in pd and key not in own:
            c.error((*pp, key), f"not a setting of the {pruner} pruner" + (f" (it takes {', '.join(own)})" if own
                                                                            else ""))
    if pruner == "median" and warmup >= epochs:
        c.error((*pp, "warmup_epochs"), f"must be < search.epochs ({epochs}), or the pruner never prunes")
    if pruner == "successive_halving":
        if min_epochs >= epochs:
            c.error((*pp, "min_epochs"), f"must be < search.epochs ({epochs}), or the pruner never prunes")
        if factor < 2:
            c.error((*pp, "reduction_factor"), f"must be >= 2, got {factor}")

    spp = (*path, "space")
    raw_space = d.get("space")
    space: dict[str, Param] = {}
    if raw_space is None or raw_space == {}:
        c.error(spp, "empty search space: give at least one key a range ({low, high}) or a list of choices")
    else:
        before = len(c.problems)
        sd = c.mapping(raw_space, spp, tuple(_SPACE))
        for key, value in sd.items():
            if key not in _SPACE:
                continue
            if key == "bottleneck" and spec.kind != "autoencoder":
                c.error((*spp, key), f"only for autoencoder models (this one is a {spec.kind})")
                continue
            param = _space_param(c, key, value, (*spp, key))
            if param is None:
                continue
            if key == "conv_channels" and spec.kind not in CONV_KINDS:
                c.error((*spp, key), f"only for array models with convolutions (kind {' or '.join(CONV_KINDS)}); "
                        f"model {model.name} is a {spec.kind}")
                continue
            space[key] = param
        if len(c.problems) == before and not any(p.searched for p in space.values()):
            c.error(spp, "nothing to search: every key is fixed; give at least one a range ({low, high}) or a "
                    "list of choices")
    return SearchSpec(trials=trials, study=study, epochs=epochs, sampler=sampler, seed=seed, startup_trials=startup,
                      pruner=pruner, pruner_startup_trials=p_startup, warmup_epochs=warmup, min_epochs=min_epochs,
                      reduction_factor=factor, space=space)


def _load(config: Config, model_name: str) -> tuple[TrainSpec, SearchSpec | None, Checker, tuple]:
    model = config.model(model_name)  # KeyError names the models there are
    text = Path(config.path).read_text()
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    c = Checker(Path(config.path), line_index(node) if node is not None else {})
    index = [m.name for m in config.models].index(model_name)
    path = ("models", index, "training")
    spec = parse_spec(model, model.training, c, Path(config.path).parent, path)
    raw = _coerce_numbers(model.training) if isinstance(model.training, dict) else {}
    search = parse_search(raw.get("search"), spec, model, c, (*path, "search")) if "search" in raw else None
    return spec, search, c, path


def load_spec(config: Config, model_name: str) -> TrainSpec:
    """The validated :class:`TrainSpec` of ``model_name``; raise :class:`ConfigError` listing every problem.

    The ``search:`` section is validated too (a config is either valid or not), though training ignores it.
    """
    spec, _search, c, _path = _load(config, model_name)
    if c.problems:
        raise ConfigError(config.path, c.problems)
    return spec


def load_spec_and_search(config: Config, model_name: str) -> tuple[TrainSpec, SearchSpec | None]:
    """:func:`load_spec` and the ``search:`` section when there is one."""
    spec, search, c, _path = _load(config, model_name)
    if c.problems:
        raise ConfigError(config.path, c.problems)
    return spec, search


def load_search(config: Config, model_name: str) -> tuple[TrainSpec, SearchSpec]:
    """The model's :class:`TrainSpec` and its ``training.search`` (required here); :class:`ConfigError` else."""
    spec, search, c, path = _load(config, model_name)
    if search is None and not c.problems:
        c.error((*path, "search"), "missing: `mlioc tune` needs a search section (docs/how-to/training.md, "
                "\"Hyperparameter search\")")
    if c.problems:
        raise ConfigError(config.path, c.problems)
    assert search is not None
    return spec, search
