"""Uncertainty for the models ``mlioc train`` makes: deep ensembles and split-conformal intervals.

``training.uncertainty`` (docs/how-to/uncertainty-and-episodes.md):

* ``{method: ensemble, members: N}`` trains N members of the configured network, member ``i`` from seed
  ``seed + i`` (its initial weights and its batch order), each warm-started from the champion's member
  ``i`` when the champion is an ensemble of the same architecture. They are exported as ONE graph
  (:class:`EnsembleNet`) whose output is ``[batch, 2 * n_out]``: the members' mean, then the predictive
  standard deviation ``sqrt(spread^2 + noise^2)``. ``spread`` is the members' disagreement (it grows
  away from the training data); ``noise`` is a per-output floor calibrated on the calibration split so
  that ``mean +- 2 STD`` covers ``coverage`` (default 95.45 %, what +-2 sigma covers of a normal
  distribution) of it, because a deep ensemble's spread alone knows nothing of the measurement noise
  and would promise far more than it delivers.
* ``{method: conformal, coverage: 0.9}`` trains one network and calibrates split-conformal half-widths:
  per output element, the ``ceil((n + 1) coverage)``-th smallest absolute residual of the ``n``
  calibration rows (the finite-sample correction). Under exchangeability every future interval
  ``[y - h, y + h]`` then covers the truth with probability >= ``coverage``.

The calibration rows are the **validation split**: held out from the weights (training never selects
epochs or stops early on it), and time-ordered between the training and the test rows. Machine data
are autocorrelated, not exchangeable, so the guarantee is approximate: the test split's coverage is
measured and logged (``test_coverage_<output>``), and the IOC measures it live (``COVERAGE:<output>``).
The ensemble's noise floor is the same conformal step on the score ``(r / 2)^2 - spread^2``.
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ioc.core.manifest import ENSEMBLE_K
from training.layout import Layout, Signal, slices
from training.spec import TrainSpec
from training.trainer import EpochStats, TrainResult, predict, seed_everything, train


class CalibrationError(Exception):
    """Too few calibration rows for the promised coverage (the interval would be infinite)."""


class EnsembleNet(torch.nn.Module):
    """N member networks as one module: ``[batch, *input_tensor] -> [batch, 2 * n_out]`` (mean, then STD).

    The members' parameters are ``members.<i>.<layer>.weight`` ..., the names the exported ONNX graph
    gives its initializers, so a later run warm-starts member ``i`` from them. ``noise`` (normalised
    units) is calibrated per run and is not part of the state dict (nothing to warm-start).
    """

    noise: torch.Tensor

    def __init__(self, members: list[torch.nn.Sequential], n_out: int):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.n_out = n_out
        self.register_buffer("noise", torch.zeros(n_out), persistent=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # named like Sequential's: the exporter keys on it
        ys = torch.stack([m(input) for m in self.members])  # (members, batch, n_out)
        mean = ys.mean(dim=0)
        var = ((ys - mean) ** 2).mean(dim=0)
        return torch.cat([mean, torch.sqrt(var + self.noise * self.noise)], dim=1)

    def member_predictions(self, x: np.ndarray) -> np.ndarray:
        """(members, rows, n_out) in normalised units (what the calibration looks at)."""
        with torch.no_grad():
            xt = torch.as_tensor(x, dtype=torch.float32)
            return torch.stack([m(xt) for m in self.members]).numpy()


def members_of(spec: TrainSpec) -> int:
    return spec.uncertainty.members if spec.uncertainty.method == "ensemble" else 1


def build_ensemble(spec: TrainSpec, layout: Layout,
                   build: Callable[[TrainSpec, Layout], torch.nn.Sequential]) -> EnsembleNet:
    """N freshly initialised members: member ``i`` after ``torch.manual_seed(seed + i)``.

    Every member takes the layout's input tensor and returns the flat output vector, so the ensemble's
    graph is ``[batch, *input_tensor] -> [batch, 2 * n_out]`` for array models too."""
    members = []
    for i in range(spec.uncertainty.members):
        seed_everything(spec.seed + i)
        members.append(build(spec, layout))
    seed_everything(spec.seed)
    return EnsembleNet(members, layout.n_out)


def train_ensemble(spec: TrainSpec, ens: EnsembleNet, arrays: dict[str, np.ndarray],
                   on_epoch: Callable[[int, EpochStats], None] | None = None) -> TrainResult:
    """Train every member in turn (member ``i`` with seed ``seed + i``); one result for the whole ensemble.

    ``history`` is the members' mean loss per epoch; ``init_state`` the ensemble's starting weights.
    """
    init_state = {k: v.detach().clone() for k, v in ens.state_dict().items()}
    results = []
    for i, member in enumerate(typing.cast(list[torch.nn.Sequential], list(ens.members))):
        member_spec = _with_seed(spec, spec.seed + i)
        seed_everything(member_spec.seed)
        hook = (lambda stats, i=i: on_epoch(i, stats)) if on_epoch is not None else None
        results.append(train(member_spec, member, arrays["x_train"], arrays["y_train"], arrays["x_val"],
                             arrays["y_val"], on_epoch=hook))
    seed_everything(spec.seed)
    trained = EnsembleNet([typing.cast(torch.nn.Sequential, r.net) for r in results], ens.n_out).eval()
    history = [EpochStats(e.epoch, float(np.mean([r.history[k].train_loss for r in results])),
                          float(np.mean([r.history[k].val_loss for r in results])), e.lr)
               for k, e in enumerate(results[0].history)]
    seconds = sum(r.seconds for r in results)
    rows = sum(len(r.history) for r in results) * len(arrays["x_train"])
    return TrainResult(trained, init_state, history, results[0].device, seconds, rows / seconds if seconds else 0.0)


def _with_seed(spec: TrainSpec, seed: int) -> TrainSpec:
    import dataclasses

    return dataclasses.replace(spec, seed=seed)


# ----------------------------------------------------------------------------- calibration


def conformal_quantile(scores: np.ndarray, coverage: float) -> np.ndarray:
    """Per column, the ``ceil((n + 1) coverage)``-th smallest of ``n`` calibration scores.

    Split-conformal's finite-sample correction: with exchangeable data a new score is at or below it
    with probability >= ``coverage``. Raises :class:`CalibrationError` when ``n`` is too small for
    that (the quantile would be the infinite one).
    """
    n = len(scores)
    k = math.ceil((n + 1) * coverage)
    if k > n:
        need = math.ceil(coverage / (1 - coverage))
        raise CalibrationError(f"{n} calibration rows cannot calibrate coverage {coverage:g}: at least {need} "
                               f"are needed (more validation rows: split.val, or more data)")
    return np.sort(scores, axis=0)[k - 1]


@dataclass
class Calibration:
    """What a run calibrated: in normalised units for the graph, in raw units for the manifest."""

    method: str
    coverage: float
    rows: int  # calibration rows (the validation split)
    members: int = 0
    halfwidth: np.ndarray | None = None  # conformal, raw units, per output element
    noise: np.ndarray | None = None  # ensemble, raw units, per output element
    test: dict[str, float] = field(default_factory=dict)  # measured on the test split (filled by measure())

    def manifest(self, outputs: tuple[Signal, ...]) -> dict[str, Any]:
        """The manifest's ``uncertainty`` section (docs/how-to/model-store.md): one entry per output, a
        number for a scalar and a list of one per element for an array output."""
        doc: dict[str, Any] = {"method": self.method, "coverage": self.coverage,
                               "calibration": {"split": "val", "rows": self.rows}}

        def per_output(values: np.ndarray) -> list[Any]:
            return [[float(v) for v in values[cols]] if s.shape else float(values[cols][0])
                    for s, cols in zip(outputs, slices(outputs).values(), strict=True)]

        if self.method == "ensemble":
            doc["members"] = self.members
            assert self.noise is not None
            doc["noise_std"] = per_output(self.noise)
            doc["k"] = ENSEMBLE_K
        else:
            assert self.halfwidth is not None
            doc["halfwidth"] = per_output(self.halfwidth)
        if self.test:
            doc["test"] = dict(self.test)
        return doc

    def to_dict(self) -> dict[str, Any]:
        """The run's ``uncertainty.json`` artifact (what ``mlioc reproduce`` compares with)."""
        return {"method": self.method, "coverage": self.coverage, "rows": self.rows, "members": self.members,
                "halfwidth": None if self.halfwidth is None else [float(v) for v in self.halfwidth],
                "noise": None if self.noise is None else [float(v) for v in self.noise], "test": self.test}


def calibrate_conformal(net: torch.nn.Module, x_cal: np.ndarray, y_cal: np.ndarray, y_std: np.ndarray,
                        coverage: float) -> Calibration:
    """Half-widths (raw units) from normalised calibration rows: residuals scale with the output's std."""
    residual = np.abs(predict(net, x_cal).astype(np.float64) - y_cal)
    return Calibration("conformal", coverage, len(x_cal), halfwidth=conformal_quantile(residual, coverage) * y_std)


def calibrate_ensemble(ens: EnsembleNet, x_cal: np.ndarray, y_cal: np.ndarray, y_std: np.ndarray,
                       coverage: float) -> Calibration:
    """The noise floor (set on ``ens``, raw units in the result): the smallest ``noise`` for which
    ``|mean - y| <= K sqrt(spread^2 + noise^2)`` on the conformal share of the calibration rows."""
    preds = ens.member_predictions(x_cal).astype(np.float64)
    mean, spread = preds.mean(axis=0), preds.std(axis=0)
    needed = np.maximum(0.0, ((mean - y_cal) / ENSEMBLE_K) ** 2 - spread**2)  # noise^2 that covers each row
    noise = np.sqrt(conformal_quantile(needed, coverage))
    ens.noise.copy_(torch.as_tensor(noise, dtype=torch.float32))
    return Calibration("ensemble", coverage, len(x_cal), members=len(ens.members), noise=noise * y_std)


def measure(calibration: Calibration, y: np.ndarray, pred: np.ndarray, spread: np.ndarray | None,
            outputs: dict[str, slice]) -> dict[str, float]:
    """Coverage and mean band width (raw units) on held-out rows, per output: ``test_coverage_<name>``,
    ``test_band_width_<name>`` (HI - LO, or 2 K STD). ``outputs``: each output's columns of the flat
    output vector (:attr:`training.layout.Layout.output_slices`); an array output's figures are over
    all its elements."""
    if calibration.method == "ensemble":
        assert spread is not None
        bound = ENSEMBLE_K * spread
    else:
        assert calibration.halfwidth is not None
        bound = np.broadcast_to(calibration.halfwidth, pred.shape)
    inside = np.abs(pred - y) <= bound
    out: dict[str, float] = {}
    for name, cols in outputs.items():
        out[f"test_coverage_{name}"] = float(inside[:, cols].mean())
        out[f"test_band_width_{name}"] = float(2 * bound[:, cols].mean())
    return out


def ensemble_state(ens: EnsembleNet) -> dict[str, torch.Tensor]:
    """A CPU copy of the ensemble's weights (the run's ``torch/state_dict.pt``)."""
    return copy.deepcopy(ens).cpu().state_dict()
