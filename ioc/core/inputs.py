"""Input state and validity: is this value fit to be fed to the model, and if not, why.

Pure logic. An input is unusable when its source is disconnected or INVALID, it has no value yet,
it is NaN/Inf, it is outside its configured valid range, or it is older than its ``max_age_s``.
Each problem comes with a short reason (it ends up in ``$(P)MESSAGE``, 39 characters on CA) and
the EPICS alarm status that says the same thing to an alarm handler.

Arrays (:class:`ArrayInputState`, :class:`GatheredInputState`) add: a wrong length or shape, the
first NaN/Inf or out-of-range element (``orbit_x[17]: NaN``), a frame that cannot be decoded, and for
a vector gathered from scalar PVs the PV of the first bad element (``orbit_y: SIM:BPM04:Y disconnected``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ioc.core.arrays import BadArray, array_problem, as_array
from ioc.core.config import InputConfig
from ioc.core.pvmodel import Severity, Status


@dataclass(frozen=True, slots=True)
class Problem:
    """Why an input cannot be used."""

    input: str
    reason: str
    status: Status

    def __str__(self) -> str:
        return f"{self.input}: {self.reason}"


@dataclass(slots=True)
class InputState:
    """The latest known value of one input, as received from its source or a client write."""

    config: InputConfig
    value: float = math.nan
    severity: Severity = Severity.INVALID
    timestamp: float = 0.0
    connected: bool = False
    defined: bool = False
    ever_connected: bool = False

    @classmethod
    def for_config(cls, config: InputConfig, now: float) -> InputState:
        state = cls(config)
        if config.source is None:
            state.connected = state.ever_connected = True  # a writable input has nothing to disconnect from
            if config.initial is not None:
                state.value, state.defined, state.timestamp = float(config.initial), True, now
                state.severity = Severity.NO_ALARM
        return state

    def problem(self, now: float) -> Problem | None:
        """The reason this input is unusable at time ``now``, or None if it is fine."""
        name = self.config.name
        if not self.connected:
            return Problem(name, "disconnected" if self.ever_connected else "not connected yet", Status.COMM)
        if not self.defined:
            return Problem(name, "no value yet", Status.UDF)
        value = self.value
        if math.isnan(value):
            return Problem(name, "NaN", Status.UDF)
        if math.isinf(value):
            return Problem(name, f"{value}", Status.HWLIMIT)
        if self.severity >= Severity.INVALID:
            return Problem(name, "source INVALID", Status.LINK)
        rng = self.config.range
        if rng is not None and not rng[0] <= value <= rng[1]:
            return Problem(name, f"{value:.4g} outside [{rng[0]:g}, {rng[1]:g}]", Status.HWLIMIT)
        max_age = self.config.max_age_s
        if max_age is not None and now - self.timestamp > max_age:
            return Problem(name, f"stale (no update for > {max_age:g} s)", Status.TIMEOUT)
        return None

    def expires_at(self) -> float | None:
        """When this input turns stale if nothing new arrives (None: never)."""
        if self.config.max_age_s is None or not self.defined:
            return None
        return self.timestamp + self.config.max_age_s


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The inputs of one cycle, taken at once so a cycle never mixes two moments."""

    values: np.ndarray
    timestamp: float  # of the newest input: the prediction is "as of" this time
    problem: Problem | None


@dataclass(slots=True)
class ArrayInputState(InputState):
    """The latest array (waveform ``[n]`` or image ``[h, w]``) of one input.

    Its content (shape, NaN/Inf, range, an undecodable frame) is judged once, when it arrives
    (:meth:`accept`), not on every cycle: a 512x512 frame is not scanned again by each scan tick.
    ``value`` is the array as it came (converted to the input's dtype; an image sent as a flat
    waveform of h*w elements reshaped) and is never mutated, so it can be posted and snapshotted as is.
    Connection, severity and age are judged as for a scalar (:class:`InputState`).
    """

    content: Problem | None = None

    @classmethod
    def for_config(cls, config: InputConfig, now: float) -> ArrayInputState:
        state = cls(config, np.full(config.shape, math.nan, dtype=config.dtype))  # type: ignore[arg-type]  # an array
        if config.writable:
            state.connected = state.ever_connected = True
            if config.initial is not None:
                state.accept(np.full(config.shape, config.initial, dtype=config.dtype), Severity.NO_ALARM, now)
        return state

    def accept(self, value: Any, severity: Severity, timestamp: float) -> None:
        """A new array from the source or a client write (a :class:`BadArray` when it could not be decoded)."""
        cfg = self.config
        arr = as_array(value, cfg.shape, cfg.dtype)
        if isinstance(arr, BadArray):
            self.content = Problem(cfg.name, arr.reason, arr.status)  # the last good array stays served
        else:
            self.value = arr  # type: ignore[assignment]  # an array input's value is an array
            found = array_problem(arr, cfg.shape, cfg.range)
            self.content = None if found is None else Problem(f"{cfg.name}{found[0]}", found[1], found[2])
        self.severity = severity
        self.timestamp = timestamp
        self.defined = True

    def problem(self, now: float) -> Problem | None:
        if not self.connected or not self.defined:
            return InputState.problem(self, now)  # "disconnected", "no value yet"
        if self.content is not None:
            return self.content
        if self.severity >= Severity.INVALID:
            return Problem(self.config.name, "source INVALID", Status.LINK)
        max_age = self.config.max_age_s
        if max_age is not None and now - self.timestamp > max_age:
            return Problem(self.config.name, f"stale (no update for > {max_age:g} s)", Status.TIMEOUT)
        return None


@dataclass(slots=True)
class GatheredInputState:
    """A vector ``[n]`` gathered from n scalar PVs in order, each with its own value, severity, age
    and connection. One unusable element makes the input unusable, and the problem names its PV."""

    config: InputConfig
    values: np.ndarray
    severities: np.ndarray
    timestamps: np.ndarray
    up: np.ndarray  # connected, per element
    seen: np.ndarray  # ever connected
    has_value: np.ndarray

    @classmethod
    def for_config(cls, config: InputConfig, now: float) -> GatheredInputState:
        n = len(config.gather)
        return cls(config, np.full(n, math.nan), np.full(n, int(Severity.INVALID), dtype=np.int8), np.zeros(n),
                   np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))

    # The same view of the input as a whole as InputState gives (metrics, the runner).
    @property
    def value(self) -> np.ndarray:
        return self.values

    @property
    def severity(self) -> Severity:
        return Severity(int(self.severities.max()))

    @property
    def timestamp(self) -> float:
        return float(self.timestamps.max())

    @property
    def connected(self) -> bool:
        return bool(self.up.all())

    @property
    def defined(self) -> bool:
        return bool(self.has_value.all())

    def accept(self, element: int, value: Any, severity: Severity, timestamp: float, connected: bool) -> bool:
        """An update of element ``element``'s PV; returns True if that PV just disconnected."""
        lost = bool(self.up[element]) and not connected
        self.up[element] = connected
        self.seen[element] |= connected
        if connected and value is not None:
            try:
                self.values[element] = float(value)
            except (TypeError, ValueError):  # an array, a string: not a scalar
                self.values[element] = math.nan
            self.severities[element] = int(severity)
            self.timestamps[element] = timestamp
            self.has_value[element] = True
        return lost

    def _first(self, mask: np.ndarray, reason: str, status: Status) -> Problem | None:
        if not mask.any():
            return None
        k = int(mask.argmax())
        text = reason.format(pv=self.config.gather[k].name, value=float(self.values[k]))
        return Problem(self.config.name, text, status)

    def problem(self, now: float) -> Problem | None:
        cfg = self.config
        v = self.values
        down = ~self.up
        checks = [(down & self.seen, "{pv} disconnected", Status.COMM),
                  (down, "{pv} not connected yet", Status.COMM),
                  (~self.has_value, "{pv} no value yet", Status.UDF),
                  (np.isnan(v), "{pv} NaN", Status.UDF),
                  (np.isinf(v), "{pv} {value}", Status.HWLIMIT),
                  (self.severities >= Severity.INVALID, "{pv} INVALID", Status.LINK)]
        if cfg.range is not None:
            lo, hi = cfg.range
            checks.append(((v < lo) | (v > hi), f"{{pv}} {{value:.4g}} outside [{lo:g}, {hi:g}]", Status.HWLIMIT))
        if cfg.max_age_s is not None:
            checks.append((now - self.timestamps > cfg.max_age_s, f"{{pv}} stale (> {cfg.max_age_s:g} s)",
                           Status.TIMEOUT))
        for mask, reason, status in checks:
            found = self._first(mask, reason, status)
            if found is not None:
                return found
        return None

    def expires_at(self) -> float | None:
        if self.config.max_age_s is None or not self.has_value.any():
            return None
        return float(self.timestamps[self.has_value].min()) + self.config.max_age_s


AnyInputState = InputState | ArrayInputState | GatheredInputState


def input_state(config: InputConfig, now: float) -> AnyInputState:
    """The state object that fits the input: a scalar, an array from one PV or written, or gathered."""
    if config.gather:
        return GatheredInputState.for_config(config, now)
    if config.shape:
        return ArrayInputState.for_config(config, now)
    return InputState.for_config(config, now)


def training_share(reference: dict, lo: float, hi: float) -> float | None:
    """The share of a version's training data of one input that lies inside ``[lo, hi]``.

    From the reference quantiles in the manifest (equally spaced probabilities, first = min, last = max),
    interpolated; None when the reference has none.
    """
    q = reference.get("quantiles")
    if not q or len(q) < 2:
        return None
    quantiles = np.maximum.accumulate(np.asarray(q, dtype=float))
    probs = np.linspace(0.0, 1.0, len(quantiles))
    below_hi = float(np.interp(hi, quantiles, probs, left=0.0, right=1.0))
    below_lo = float(np.interp(lo, quantiles, probs, left=0.0, right=1.0))
    return max(0.0, below_hi - below_lo)


def range_warnings(inputs: tuple[InputConfig, ...], reference: dict | None, version: str,
                   threshold: float = 0.5) -> list[str]:
    """Inputs whose configured valid ``range`` rejects most of the model's own training data.

    Such a range makes the outputs INVALID most of the time the machine runs where the model was trained:
    almost always a typo or a unit mismatch (mA for A), worth a warning from ``mlioc check``.
    """
    out = []
    ref_inputs = (reference or {}).get("inputs", {})
    for inp in inputs:
        ref = ref_inputs.get(inp.name)
        if inp.range is None or not ref:
            continue
        lo, hi = inp.range
        share = training_share(ref, lo, hi)
        if share is not None and share < threshold:
            span = f"{ref.get('min', float('nan')):.4g} .. {ref.get('max', float('nan')):.4g}"
            units = f" {inp.units}" if inp.units else ""
            out.append(f"input {inp.name} range [{lo:g}, {hi:g}] keeps {share:.0%} of the training data of v{version} "
                       f"(which spans {span}{units}): outputs would be INVALID most of the time")
    return out
