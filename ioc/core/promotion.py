"""The promotion policy: has the challenger earned the champion's place on live data?

A retrained version enters as the challenger and runs in shadow on the same input snapshots as the
champion. Where outputs have a measured ground truth, both are scored against the same truth
samples (:mod:`ioc.runtime.challenger`), and this module decides, from those numbers alone:

* **READY** (``$(P)PROMOTE:READY``) when, over the last ``min_samples`` cycles paired with truth, the
  challenger's error is lower than the champion's by at least ``margin`` (relative; each output
  counts equally: ``improvement = 1 - mean_j(MAE_challenger_j / MAE_champion_j)``), and the
  challenger has no drift alarm of its own (the live inputs are inside *its* training data);
* in ``promote: auto`` a READY challenger is **promoted**; in ``manual`` an operator decides;
* a challenger that has been judged (enough samples) and not READY for ``max_hours`` is **retired**.

Pure and clock-free: the caller passes ``now`` and keeps ``losing_since`` between calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MODES = ("manual", "auto")


@dataclass(frozen=True, slots=True)
class PromotionPolicy:
    mode: str = "manual"  # manual | auto
    margin: float = 0.05  # relative error reduction the challenger must show
    min_samples: int = 600  # live cycles paired with truth before it is judged
    max_hours: float = 24.0  # judged and not ready for this long: retired


@dataclass(frozen=True, slots=True)
class LiveComparison:
    """Champion and challenger on the same live truth samples (the policy's window)."""

    samples: int  # cycles where both predictions were paired with truth
    champion_mae: Sequence[float]
    challenger_mae: Sequence[float]
    challenger_drift_alarm: bool = False  # its own input drift is MAJOR


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    action: str  # "none" | "promote" | "retire"
    reason: str  # PROMOTE:READY's alarm message (fits 39 characters), the log, events.jsonl
    improvement: float | None  # None until judged
    losing_since: float | None  # keep and pass back on the next call


def improvement(champion_mae: Sequence[float], challenger_mae: Sequence[float]) -> float:
    """``1 - mean(challenger / champion)`` over outputs; -inf if the champion is perfect and the
    challenger is not (it cannot beat that), 0 for an output where both are perfect."""
    ratios = []
    for champ, chall in zip(champion_mae, challenger_mae, strict=True):
        if not (math.isfinite(champ) and math.isfinite(chall)):
            return -math.inf
        if champ > 0:
            ratios.append(chall / champ)
        else:
            ratios.append(1.0 if chall <= 0 else math.inf)
    if not ratios:
        return -math.inf
    return 1.0 - sum(ratios) / len(ratios)


def evaluate(policy: PromotionPolicy, live: LiveComparison | None, *, now: float,
             losing_since: float | None) -> Verdict:
    """The verdict for one evaluation (``live`` None: no challenger, or nothing to compare yet)."""
    if live is None:
        return Verdict(False, "none", "no challenger", None, None)
    if live.samples < policy.min_samples:
        return Verdict(False, "none", f"{live.samples}/{policy.min_samples} samples with truth", None, losing_since)
    gain = improvement(live.champion_mae, live.challenger_mae)
    gain_text = f"{gain:+.1%}" if math.isfinite(gain) else "n/a"
    if live.challenger_drift_alarm:
        why = f"challenger {gain_text}, own drift MAJOR"
    elif gain < policy.margin:
        why = f"challenger {gain_text}, needs {policy.margin:+.1%}"
    else:
        action = "promote" if policy.mode == "auto" else "none"
        return Verdict(True, action, f"ready: {gain_text} over {live.samples} samples", gain, None)
    since = now if losing_since is None else losing_since
    if now - since >= policy.max_hours * 3600.0:
        return Verdict(False, "retire", f"{why}; losing for {policy.max_hours:g} h: retired", gain, since)
    return Verdict(False, "none", why, gain, since)
