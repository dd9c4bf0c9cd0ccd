"""Training's side of the tensor layout contract with the IOC, in one place.

The IOC's rule (docs/how-to/model-store.md, "Arrays and images"; :class:`ioc.core.arrays.TensorLayout`,
whose offsets this module uses): one ONNX input tensor ``x`` and one output tensor ``y``, batch first;
the named inputs, in config order, each flattened row-major and concatenated into one flat vector
reshaped to ``[batch, *onnx.input_shape]``; the output tensor read back flat and cut into the named
outputs the same way; per signal a ``mean``/``std`` of one number (per channel) or one per element;
test vectors are rows of the flat vectors.

What training decides within it, here:

* the input tensor a network takes (``onnx.input_shape``): ``[1, h, w]`` for a model whose single
  input is an image, ``[1, n]`` for a ``cnn1d`` model's single waveform, else the flat ``[N]``;
  the output tensor is always flat ``[M]``;
* the manifest's signal entries (``shape``, and a per-channel normalisation written as one number);
* flattening batches of named signals into rows and back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ioc.core.arrays import TensorLayout

Shape = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Signal:
    """One named input or output; ``shape`` () is a scalar."""

    name: str
    shape: Shape = ()
    units: str = ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "units": self.units}


def _signals(items) -> tuple[Signal, ...]:
    """Config inputs/outputs -> signals (``shape`` absent or None: a scalar)."""
    return tuple(Signal(i.name, tuple(getattr(i, "shape", None) or ()), i.units) for i in items)


def slices(signals: tuple[Signal, ...]) -> dict[str, slice]:
    """Each signal's columns in the flattened, concatenated rows (the IOC's :class:`TensorLayout` offsets)."""
    flat = TensorLayout.of(signals)
    return {name: slice(offset, offset + s.size)
            for name, offset, s in zip(flat.names, flat.offsets, signals, strict=True)}


@dataclass(frozen=True)
class Layout:
    """How a model's named signals map onto its single input and output tensors."""

    inputs: tuple[Signal, ...]
    outputs: tuple[Signal, ...]
    input_tensor: Shape  # without the batch dimension

    @classmethod
    def build(cls, inputs: tuple[Signal, ...], outputs: tuple[Signal, ...], kind: str) -> Layout:
        single = inputs[0].shape if len(inputs) == 1 else ()
        if len(single) == 2 or (len(single) == 1 and kind == "cnn1d"):
            return cls(inputs, outputs, (1, *single))  # a one-channel image / waveform
        return cls(inputs, outputs, (sum(s.size for s in inputs),))

    @classmethod
    def from_model(cls, model, kind: str) -> Layout:
        """The layout of a config's model (``shape:`` of each input/output; an autoencoder's outputs are its
        inputs)."""
        inputs = _signals(model.inputs)
        outputs = inputs if kind == "autoencoder" else _signals(model.outputs)
        return cls.build(inputs, outputs, kind)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        sig = lambda items: tuple(Signal(i["name"], tuple(i.get("shape") or ()), i.get("units", ""))  # noqa: E731
                                  for i in items)
        return cls(sig(d["inputs"]), sig(d["outputs"]), tuple(d["input_tensor"]))

    def to_dict(self) -> dict[str, Any]:
        """Logged with a run (``layout.json``): ``mlioc reproduce`` rebuilds the same network from it."""
        return {"inputs": [s.to_dict() for s in self.inputs], "outputs": [s.to_dict() for s in self.outputs],
                "input_tensor": list(self.input_tensor)}

    # ------------------------------------------------------------------ sizes and slices

    @property
    def n_in(self) -> int:
        """Elements of the flat input vector (the IOC's :class:`TensorLayout` total)."""
        return TensorLayout.of(self.inputs).total

    @property
    def n_out(self) -> int:
        return TensorLayout.of(self.outputs).total

    @property
    def output_tensor(self) -> Shape:
        return (self.n_out,)

    @property
    def is_scalar(self) -> bool:
        """Every input and output a scalar: the layout of every model before arrays."""
        return all(not s.shape for s in (*self.inputs, *self.outputs))

    @property
    def input_slices(self) -> dict[str, slice]:
        return slices(self.inputs)

    @property
    def output_slices(self) -> dict[str, slice]:
        return slices(self.outputs)

    @property
    def shapes(self) -> dict[str, Shape]:
        """The array signals' shapes (scalars left out), as a :class:`~training.dataset.Dataset` keeps them."""
        return {s.name: s.shape for s in (*self.inputs, *self.outputs) if s.shape}

    # ------------------------------------------------------------------ tensors

    def to_input_tensor(self, x_flat: np.ndarray) -> np.ndarray:
        """Flattened normalised rows (b, N) -> the graph's input tensor (b, *input_tensor)."""
        return np.ascontiguousarray(x_flat, dtype=np.float32).reshape(len(x_flat), *self.input_tensor)

    @staticmethod
    def flatten(signals: tuple[Signal, ...], values: dict[str, np.ndarray]) -> np.ndarray:
        """Per-signal arrays (b, *shape) -> flattened, concatenated rows (b, total size)."""
        cols = [np.asarray(values[s.name], dtype=np.float64).reshape(len(values[s.name]), s.size) for s in signals]
        return np.concatenate(cols, axis=1)

    @staticmethod
    def unflatten(signals: tuple[Signal, ...], flat: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse of :meth:`flatten`: rows (b, total size) -> per-signal arrays (b, *shape)."""
        total = sum(s.size for s in signals)
        if total != flat.shape[1]:
            raise ValueError(f"{flat.shape[1]} columns, the signals take {total}")
        return {s.name: flat[:, cols].reshape(len(flat), *s.shape)
                for s, cols in zip(signals, slices(signals).values(), strict=True)}

    # ------------------------------------------------------------------ normalisation in the manifest

    @staticmethod
    def manifest_entries(signals: tuple[Signal, ...], mean: np.ndarray, std: np.ndarray) -> list[dict[str, Any]]:
        """One manifest entry per signal; an array's mean/std is one number when every element has the same
        (per channel), else a list of one per element."""
        entries, start = [], 0
        for s in signals:
            m, sd = mean[start:start + s.size], std[start:start + s.size]
            start += s.size
            entry: dict[str, Any] = {"name": s.name, "units": s.units}
            if s.shape:
                entry["shape"] = list(s.shape)
            per_channel = bool(np.all(m == m[0]) and np.all(sd == sd[0]))
            entry["mean"] = float(m[0]) if per_channel else [float(v) for v in m]
            entry["std"] = float(sd[0]) if per_channel else [float(v) for v in sd]
            entries.append(entry)
        return entries

    @staticmethod
    def expand(signals: tuple[Signal, ...], entries: list[dict[str, Any]], key: str) -> np.ndarray:
        """The flattened per-element vector of ``mean`` or ``std`` from manifest entries (inverse of
        :meth:`manifest_entries`); a number is broadcast over the signal's elements."""
        by_name = {e["name"]: e for e in entries}
        parts = []
        for s in signals:
            v = np.asarray(by_name[s.name].get(key, 0.0 if key == "mean" else 1.0), dtype=np.float64).reshape(-1)
            parts.append(np.broadcast_to(v, (s.size,)) if v.size == 1 else v)
        return np.concatenate(parts)

    def onnx_section(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_tensor), "output_shape": list(self.output_tensor)}


def pca_summary(values: np.ndarray, k: int = 3) -> dict[str, Any]:
    """A low-dimensional summary of an array signal's training data for drift scoring: the ``k`` leading
    principal components of the (normalised) values, and each component's score distribution.

    ``values``: (n, size) normalised rows. Components are rounded to 4 significant digits (a summary,
    not arithmetic to reproduce) and the scores are computed with the rounded components, so the IOC
    projecting live values with the manifest's numbers gets the same distribution.
    """
    from training.dataset import reference_stats

    centre = values.mean(axis=0)
    k = max(1, min(k, values.shape[1], len(values) - 1))
    # Components from at most 1000 evenly spaced rows, through their Gram matrix (1000 x 1000) rather
    # than an SVD of every row of a 4096-pixel image: seconds, not minutes, and the same leading directions.
    sample = values[np.linspace(0, len(values) - 1, min(len(values), 1000)).astype(int)] - centre
    eigval, eigvec = np.linalg.eigh(sample @ sample.T)
    order = np.argsort(eigval)[::-1][:k]
    vt = (sample.T @ eigvec[:, order]).T
    vt /= np.maximum(np.linalg.norm(vt, axis=1, keepdims=True), 1e-300)
    comps = np.array([[float(f"{c:.4g}") for c in row] for row in vt])
    centre = np.array([float(f"{c:.4g}") for c in centre])
    scores = (values - centre) @ comps.T
    explained = np.clip(eigval[order], 0, None) / max(float(np.clip(eigval, 0, None).sum()), 1e-300)
    return {"summary": "pca", "space": "normalised", "center": centre.tolist(), "components": comps.tolist(),
            "explained_variance_ratio": [float(v) for v in explained],
            "scores": {f"pc{i + 1}": reference_stats(scores[:, i]) for i in range(k)}}
