"""What the drift monitor scores of each signal: a scalar itself, an array its principal-component scores.

Pure logic (numpy only). A waveform of 32 BPMs or a 64 x 64 image cannot be scored element by element
(thousands of scores, each blind to the shape of the whole), so training stores a low-dimensional
summary of each array signal in the manifest (``reference.inputs.<name>``, written by
``training.layout.pca_summary``)::

    {"summary": "pca", "space": "normalised", "center": [...size], "components": [[...size] x k],
     "explained_variance_ratio": [...k], "scores": {"pc1": <reference>, ..., "pck": <reference>}}

The IOC projects each live value onto the same components, in the same space (``normalised``: after
the manifest's normalisation of that signal, ``raw``: as served), and scores the ``k`` component
scores against their reference distributions exactly as it scores a scalar input
(:mod:`ioc.core.drift`, calibrated by :mod:`ioc.core.thresholds`). So one array input becomes ``k``
scored *features* named ``orbit_x[pc1]`` ... ``orbit_x[pck]``; a scalar is one feature, its own name.

Why PCA scores: a shift of the orbit or a change of the beam spot moves the leading components (they
carry most of the training data's variance), and each score is a plain 1-D distribution, so the
calibration (simulated reference windows with the live autocorrelation), the debouncing and the
limits are the very ones of the scalar scores. What a handful of components cannot see — a change
confined to directions the training data never varied in — is not scored; see docs/how-to/drift.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ioc.core.drift import NoReference, Reference, reference_section

SPACES = ("normalised", "raw")


class _Signal(Protocol):
    """A manifest signal (:class:`ioc.core.manifest.Signal`): name, shape and normalisation."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]: ...


def feature_label(signal: str, component: int) -> str:
    """The name of an array signal's ``component``-th (1-based) principal-component score: ``orbit_x[pc2]``."""
    return f"{signal}[pc{component}]"


@dataclass(frozen=True, slots=True, eq=False)
class _Projection:
    """features = x[:, start:stop] @ weights.T - bias: normalise, centre and project in one product."""

    start: int  # the signal's columns in the flat vector
    stop: int
    first: int  # its features' columns in the feature matrix
    weights: np.ndarray  # (k, size): components / std (the normalisation folded in)
    bias: np.ndarray  # (k,): (mean / std + centre) @ components.T


@dataclass(frozen=True, slots=True, eq=False)
class Features:
    """The scored features of a set of signals (a model's inputs, or its outputs) and how to compute them.

    ``groups[i]`` are the feature columns of signal ``i`` (one for a scalar, ``k`` for an array), so a
    per-signal score is the worst of its features'. :meth:`project` turns rows of flat vectors (the
    tensor layout rule) into rows of features; for signals that are all scalars it is the identity.
    """

    names: tuple[str, ...]  # the signals, in order
    labels: tuple[str, ...]  # one per feature: "q1", "orbit_x[pc1]", ...
    refs: tuple[Reference, ...]  # one per feature, named by its label
    groups: tuple[slice, ...]  # per signal: its features' columns
    width: int  # columns of the flat vector
    _scalar_from: np.ndarray  # flat columns of the scalar signals ...
    _scalar_to: np.ndarray  # ... and their feature columns
    _projections: tuple[_Projection, ...]

    @property
    def identity(self) -> bool:
        """Every signal a scalar: the features are the flat vector itself."""
        return not self._projections

    @property
    def d(self) -> int:
        return len(self.labels)

    def project(self, rows: np.ndarray) -> np.ndarray:
        """Rows (n, width) of flat vectors -> rows (n, d) of features (float64)."""
        if self.identity:
            return rows
        out = np.empty((rows.shape[0], self.d))
        if len(self._scalar_from):
            out[:, self._scalar_to] = rows[:, self._scalar_from]
        for p in self._projections:
            k = len(p.bias)
            np.subtract(rows[:, p.start:p.stop] @ p.weights.T, p.bias, out=out[:, p.first:p.first + k])
        return out

    def per_signal(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per signal: the worst of its features' scores, and which feature that is (a column of ``scores``)."""
        worst = np.array([int(g.start + scores[g].argmax()) for g in self.groups], dtype=np.int64)
        return scores[worst], worst


def _components(raw: Mapping, size: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        comps = np.asarray(raw.get("components"), dtype=np.float64)
        centre = np.asarray(raw.get("center", np.zeros(size)), dtype=np.float64)
    except (TypeError, ValueError):
        raise NoReference(f"{where}: components and center must be numbers") from None
    if comps.ndim != 2 or comps.shape[1] != size or not 1 <= comps.shape[0] <= size:
        raise NoReference(f"{where}: components must be k lists of {size} numbers (the signal's elements), got "
                          f"shape {list(comps.shape)}")
    if centre.shape != (size,):
        raise NoReference(f"{where}: center must hold {size} numbers, got {centre.size}")
    if not (np.isfinite(comps).all() and np.isfinite(centre).all()):
        raise NoReference(f"{where}: components and center must be finite")
    if (np.linalg.norm(comps, axis=1) == 0).any():
        raise NoReference(f"{where}: a component is all zeros")
    return comps, centre


def _array_summary(name: str, raw: Any, signal: _Signal) -> tuple[np.ndarray, np.ndarray, list[Reference]]:
    """(weights, bias, references of pc1..pck) of one array signal's ``summary: pca`` entry."""
    where = f"reference of {name!r}"
    if not isinstance(raw, Mapping):
        raise NoReference(f"{where}: expected an object")
    kind = raw.get("summary")
    if kind != "pca":
        raise NoReference(f"{where}: an array needs a 'summary: pca' reference (principal components), got "
                          f"{kind!r}: retrain with this version of mlioc train")
    space = raw.get("space", "normalised")
    if space not in SPACES:
        raise NoReference(f"{where}: space must be one of {', '.join(SPACES)}, got {space!r}")
    size = math.prod(signal.shape)
    comps, centre = _components(raw, size, where)
    scores = raw.get("scores")
    if not isinstance(scores, Mapping):
        raise NoReference(f"{where}: no scores (the reference of each component's score)")
    refs = []
    for i in range(len(comps)):
        key = f"pc{i + 1}"
        if key not in scores:
            raise NoReference(f"{where}: no reference for scores.{key}")
        refs.append(Reference.parse(feature_label(name, i + 1), scores[key]))
    if space == "normalised":
        mean, std = signal.normalisation()
    else:
        mean, std = np.zeros(size), np.ones(size)
    weights = comps / std  # ((x - mean) / std - centre) @ C.T == x @ (C / std).T - (mean / std + centre) @ C.T
    bias = (mean / std + centre) @ comps.T
    return weights, bias, refs


def build_features(reference: Any, section: str, signals: Sequence[_Signal]) -> Features:
    """The scored features of ``signals`` (a manifest's inputs or outputs) from its ``reference.<section>``.

    Raises :class:`NoReference` naming what is missing or malformed: the monitor then says, on the drift
    PVs, that it cannot score drift (it never guesses).
    """
    part = reference_section(reference, section, [s.name for s in signals])
    labels: list[str] = []
    refs: list[Reference] = []
    groups: list[slice] = []
    scalar_from: list[int] = []
    scalar_to: list[int] = []
    projections: list[_Projection] = []
    offset = 0
    for s in signals:
        size = math.prod(s.shape)
        first = len(labels)
        if not s.shape:
            refs.append(Reference.parse(s.name, part[s.name]))
            labels.append(s.name)
            scalar_from.append(offset)
            scalar_to.append(first)
        else:
            weights, bias, pcs = _array_summary(s.name, part[s.name], s)
            refs += pcs
            labels += [r.name for r in pcs]
            projections.append(_Projection(offset, offset + size, first, weights, bias))
        groups.append(slice(first, len(labels)))
        offset += size
    return Features(names=tuple(s.name for s in signals), labels=tuple(labels), refs=tuple(refs),
                    groups=tuple(groups), width=offset, _scalar_from=np.array(scalar_from, dtype=np.int64),
                    _scalar_to=np.array(scalar_to, dtype=np.int64), _projections=tuple(projections))
