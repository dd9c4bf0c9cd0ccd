"""Input state and validity: is this value fit to be fed to the model, and if not, why.

Pure logic. An input is unusable when its source is disconnected or INVALID, it has no value yet,
it is NaN/Inf, it is outside its configured valid range, or it is older than its ``max_age_s``.
Each problem comes with a short reason (it ends up in ``$(P)MESSAGE``, 39 characters on CA) and
the EPICS alarm status that says the same thing to an alarm handler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
