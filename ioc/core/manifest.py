"""``manifest.json``: what a model version promises, written by training and checked by the IOC.

A manifest names the ONNX tensors, the model's inputs and outputs in order (with units and the
normalisation the engine applies around the graph), the reference distribution of each input and
output from the training data (for drift scores), test vectors that must reproduce, and the
provenance that makes the version traceable (MLflow run, dataset digest, code version, environment).
Parsing is strict: a version whose manifest is malformed is rejected, never guessed at.

Arrays (docs/how-to/model-store.md, "Arrays and images"): a signal may carry a ``shape``; its normalisation
is one number (per channel) or one per element; ``onnx.input_shape`` / ``onnx.output_shape`` give the
tensors' shapes after the batch axis, and test-vector rows are the flat vectors of the tensor layout
rule (:class:`ioc.core.arrays.TensorLayout`).

Uncertainty (docs/how-to/uncertainty-and-episodes.md): ``uncertainty: {method: ensemble, members: N,
coverage}`` says the graph's one output tensor holds the means *then* the standard deviations of every
output element (``[batch, 2 * n_out]``, flat), and the test vectors carry the expected ``spread``;
``{method: conformal, coverage, halfwidth}`` says every prediction has the interval
``[y - halfwidth, y + halfwidth]`` (one half-width per output, or per element of an array output).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ioc.core.arrays import size_of

FORMAT = 1
KINDS = ("regression", "autoencoder")
UNCERTAINTY_METHODS = ("ensemble", "conformal")
ENSEMBLE_K = 2.0  # an ensemble's interval is the prediction +- ENSEMBLE_K standard deviations
ENSEMBLE_COVERAGE = 0.9545  # ... which covers this fraction of a normal distribution (the default promise)


class ManifestError(Exception):
    """The manifest is missing, malformed, or contradicts itself."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One model input or output: its name, units, shape and normalisation (x_norm = (x - mean) / std).

    ``shape`` ``()`` is a scalar, ``(n,)`` a waveform, ``(h, w)`` an image. For an array, ``mean`` and
    ``std`` are either one number (per channel: every element alike) or one number per element
    (row-major, a tuple of ``size`` numbers).
    """

    name: str
    units: str = ""
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    shape: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return size_of(self.shape)

    def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) expanded to one value per element (float64), whichever form the manifest used."""
        n = self.size
        return (np.broadcast_to(np.asarray(self.mean, dtype=np.float64), (n,)),
                np.broadcast_to(np.asarray(self.std, dtype=np.float64), (n,)))


@dataclass(frozen=True, slots=True, eq=False)
class TestVectors:
    """Raw-unit inputs and the outputs the full engine path must reproduce within tolerance.

    ``inputs`` (k, n_in) and ``outputs`` (k, n_out) are float64 arrays of flat rows: an image's
    test vectors are megabytes, which Python floats would multiply by four, for as long as the
    version is served. ``spread`` (k, n_out): an ensemble's expected standard deviations.
    """

    inputs: np.ndarray
    outputs: np.ndarray
    rtol: float = 1e-4
    atol: float = 1e-5
    spread: np.ndarray | None = None


@dataclass(frozen=True, slots=True, eq=False)
class Uncertainty:
    """What a version promises about its own error (the ``uncertainty`` section).

    ``coverage`` is the promise: the fraction of true values inside ``[LO, HI]`` (conformal) or within
    ``ENSEMBLE_K`` standard deviations of the prediction (ensemble). ``halfwidth`` (conformal) has one
    raw-unit number per element of the flat output vector, read-only.
    """

    method: str
    coverage: float
    members: int = 0
    halfwidth: np.ndarray | None = None
    halfwidth_values: tuple[float, ...] = ()  # the same as floats: the scalar hot path adds them without numpy

    @property
    def ensemble(self) -> bool:
        return self.method == "ensemble"


@dataclass(frozen=True, slots=True)
class Manifest:
    model: str
    kind: str
    sha256: str
    onnx_input: str
    onnx_output: str
    inputs: tuple[Signal, ...]
    outputs: tuple[Signal, ...]
    test_vectors: TestVectors | None = field(default=None, compare=False)
    # The ONNX tensors' shapes after the batch axis (the tensor layout rule, docs/how-to/model-store.md):
    # default one flat vector of every input (output) element.
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    reference: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    uncertainty: Uncertainty | None = field(default=None, compare=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # less its test vectors

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    @property
    def n_in(self) -> int:
        """Elements of the flat input vector: every input flattened, in order."""
        return sum(s.size for s in self.inputs)

    @property
    def n_out(self) -> int:
        return sum(s.size for s in self.outputs)


def _req(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing {key!r}")
    return d[key]


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if (not isinstance(raw, list) or not raw
            or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in raw)):
        raise ManifestError(f"{where}: expected a list of positive integers, got {raw!r}")
    return tuple(raw)


def _per_element(value: Any, shape: tuple[int, ...], where: str, positive: bool = False) -> float | tuple[float, ...]:
    """A normalisation number: one for the whole signal, or (an array) one per element."""
    if not isinstance(value, list):
        x = _finite(value, where)
        if positive and x <= 0:
            raise ManifestError(f"{where}: must be > 0, got {x}")
        return x
    if not shape:
        raise ManifestError(f"{where}: a list is only allowed for an array signal (one with 'shape')")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: expected numbers") from None
    if arr.shape not in (shape, (size_of(shape),)):
        raise ManifestError(f"{where}: {list(arr.shape)} numbers for shape {list(shape)}")
    if not np.isfinite(arr).all() or (positive and (arr <= 0).any()):
        raise ManifestError(f"{where}: every element must be finite{' and > 0' if positive else ''}")
    return tuple(arr.reshape(-1).tolist())


def _signals(raw: Any, where: str) -> tuple[Signal, ...]:
    if not isinstance(raw, list) or not raw:
        raise ManifestError(f"{where}: expected a non-empty list")
    out = []
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{w}: expected an object")
        name = _req(item, "name", w)
        if not isinstance(name, str) or not name:
            raise ManifestError(f"{w}.name: expected a string")
        shape = _shape(item["shape"], f"{w}.shape") if item.get("shape") is not None else ()
        out.append(Signal(name=name, units=str(item.get("units", "")),
                          mean=_per_element(item.get("mean", 0.0), shape, f"{w}.mean"),
                          std=_per_element(item.get("std", 1.0), shape, f"{w}.std", positive=True),
                          shape=shape))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: duplicate names {names}")
    return tuple(out)


def _rows(raw: Any, n: int, where: str) -> np.ndarray:
    """Test-vector rows: each the flat vector of every signal (the tensor layout rule), ``n`` numbers."""
    out = np.empty((len(raw), n))
    for i, row in enumerate(raw):
        if not isinstance(row, list) or len(row) != n:
            raise ManifestError(f"{where}[{i}]: expected {n} numbers")
        try:
            out[i] = np.asarray(row, dtype=np.float64)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}[{i}]: expected {n} numbers") from None
        if not np.isfinite(out[i]).all():
            raise ManifestError(f"{where}[{i}]: expected {n} finite numbers")
    out.flags.writeable = False
    return out


def _vectors(raw: Any, n_in: int, n_out: int, uncertainty: Uncertainty | None = None) -> TestVectors | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError("test_vectors: expected an object")
    xs, ys = _req(raw, "inputs", "test_vectors"), _req(raw, "outputs", "test_vectors")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not xs:
        raise ManifestError("test_vectors: inputs and outputs must be non-empty lists of equal length")
    rows_in = _rows(xs, n_in, "test_vectors.inputs")
    rows_out = _rows(ys, n_out, "test_vectors.outputs")
    rtol = _finite(raw.get("rtol", 1e-4), "test_vectors.rtol")
    atol = _finite(raw.get("atol", 1e-5), "test_vectors.atol")
    if rtol < 0 or atol < 0:
        raise ManifestError("test_vectors: rtol and atol must be >= 0")
    spread = None
    if uncertainty is not None and uncertainty.ensemble:
        raw_spread = _req(raw, "spread", "test_vectors (an ensemble's test vectors carry its spread)")
        if not isinstance(raw_spread, list) or len(raw_spread) != len(xs):
            raise ManifestError("test_vectors.spread: expected one row per test vector")
        spread = _rows(raw_spread, n_out, "test_vectors.spread")
        if (spread < 0).any():
            raise ManifestError("test_vectors.spread: a standard deviation cannot be negative")
    elif "spread" in raw:
        raise ManifestError("test_vectors.spread: only an ensemble (uncertainty.method: ensemble) has a spread")
    return TestVectors(rows_in, rows_out, rtol, atol, spread)


def _halfwidths(raw: Any, outputs: tuple[Signal, ...], where: str) -> np.ndarray:
    """One half-width per output (a number, or for an array output one per element), flattened."""
    if not isinstance(raw, list) or len(raw) != len(outputs):
        raise ManifestError(f"{where}: expected a list of {len(outputs)} half-widths, one per output")
    parts = []
    for i, (value, sig) in enumerate(zip(raw, outputs, strict=True)):
        per = _per_element(value, sig.shape, f"{where}[{i}] ({sig.name})")
        arr = np.broadcast_to(np.asarray(per, dtype=np.float64), (sig.size,))
        if (arr < 0).any():
            raise ManifestError(f"{where}[{i}] ({sig.name}): a half-width cannot be negative")
        parts.append(arr)
    out = np.concatenate(parts)
    out.flags.writeable = False
    return out


def _uncertainty(raw: Any, outputs: tuple[Signal, ...]) -> Uncertainty | None:
    """The ``uncertainty`` section (absent: the version makes no promise about its error)."""
    if raw is None:
        return None
    where = "uncertainty"
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected an object")
    method = raw.get("method")
    if method not in UNCERTAINTY_METHODS:
        raise ManifestError(f"{where}.method: expected one of {UNCERTAINTY_METHODS}, got {method!r}")
    if "coverage" not in raw and method == "ensemble":
        coverage = ENSEMBLE_COVERAGE
    else:
        coverage = _finite(_req(raw, "coverage", where), f"{where}.coverage")
    if not 0 < coverage < 1:
        raise ManifestError(f"{where}.coverage: expected a fraction in (0, 1), got {coverage}")
    if method == "ensemble":
        members = raw.get("members")
        if isinstance(members, bool) or not isinstance(members, int) or members < 2:
            raise ManifestError(f"{where}.members: expected an integer >= 2, got {members!r}")
        return Uncertainty("ensemble", coverage, members=members)
    halfwidth = _halfwidths(_req(raw, "halfwidth", where), outputs, f"{where}.halfwidth")
    return Uncertainty("conformal", coverage, halfwidth=halfwidth, halfwidth_values=tuple(halfwidth.tolist()))


def _tensor_shape(onnx: dict, key: str, n: int, what: str) -> tuple[int, ...]:
    """``onnx.input_shape`` / ``output_shape``: the tensor's dims after the batch axis; they must hold
    exactly the ``n`` elements of the flat vector."""
    if onnx.get(key) is None:
        return (n,)
    shape = _shape(onnx[key], f"onnx.{key}")
    if size_of(shape) != n:
        raise ManifestError(f"onnx.{key}: {list(shape)} holds {size_of(shape)} elements, but the {what} "
                            f"flatten to {n}")
    return shape


def parse_manifest(raw: Any) -> Manifest:
    """Validate a manifest document; raise :class:`ManifestError` naming the first bad field."""
    if not isinstance(raw, dict):
        raise ManifestError("manifest: expected a JSON object")
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise ManifestError(f"format: this IOC reads manifest format {FORMAT}, got {fmt!r}")
    kind = raw.get("kind", "regression")
    if kind not in KINDS:
        raise ManifestError(f"kind: expected one of {KINDS}, got {kind!r}")
    sha = _req(raw, "sha256", "manifest")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ManifestError(f"sha256: expected 64 lowercase hex digits, got {sha!r}")
    onnx = raw.get("onnx", {})
    if not isinstance(onnx, dict):
        raise ManifestError("onnx: expected an object")
    inputs = _signals(_req(raw, "inputs", "manifest"), "inputs")
    outputs = _signals(_req(raw, "outputs", "manifest"), "outputs")
    reference = raw.get("reference")
    if reference is not None and not isinstance(reference, dict):
        raise ManifestError("reference: expected an object")
    provenance = raw.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ManifestError("provenance: expected an object")
    version = raw.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ManifestError(f"version: expected an integer, got {version!r}")
    model = raw.get("model", "")
    if not isinstance(model, str):
        raise ManifestError("model: expected a string")
    uncertainty = _uncertainty(raw.get("uncertainty"), outputs)
    n_in, n_out = sum(s.size for s in inputs), sum(s.size for s in outputs)
    # An ensemble's one output tensor holds the means, then the standard deviations (docs/how-to/model-store.md).
    n_tensor_out = 2 * n_out if uncertainty is not None and uncertainty.ensemble else n_out
    return Manifest(
        model=model,
        kind=kind,
        sha256=sha,
        onnx_input=str(onnx.get("input", "x")),
        onnx_output=str(onnx.get("output", "y")),
        inputs=inputs,
        outputs=outputs,
        test_vectors=_vectors(raw.get("test_vectors"), n_in, n_out, uncertainty),
        input_shape=_tensor_shape(onnx, "input_shape", n_in, "inputs"),
        output_shape=_tensor_shape(onnx, "output_shape", n_tensor_out,
                                   "outputs" if n_tensor_out == n_out else "outputs' means and spreads"),
        reference=reference,
        provenance=provenance,
        version=version,
        uncertainty=uncertainty,
        raw={k: v for k, v in raw.items() if k != "test_vectors"},  # they are kept once, as arrays
    )


def read_manifest(path: Path) -> Manifest:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    return parse_manifest(raw)
