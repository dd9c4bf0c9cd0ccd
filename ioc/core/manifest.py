"""``manifest.json``: what a model version promises, written by training and checked by the IOC.

A manifest names the ONNX tensors, the model's inputs and outputs in order (with units and the
normalisation the engine applies around the graph), the reference distribution of each input and
output from the training data (for drift scores), test vectors that must reproduce, and the
provenance that makes the version traceable (MLflow run, dataset digest, code version, environment).
Parsing is strict: a version whose manifest is malformed is rejected, never guessed at.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1
KINDS = ("regression", "autoencoder")


class ManifestError(Exception):
    """The manifest is missing, malformed, or contradicts itself."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One model input or output: its name, units and normalisation (x_norm = (x - mean) / std)."""

    name: str
    units: str = ""
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True, slots=True)
class TestVectors:
    """Raw-unit inputs and the outputs the full engine path must reproduce within tolerance."""

    inputs: tuple[tuple[float, ...], ...]
    outputs: tuple[tuple[float, ...], ...]
    rtol: float = 1e-4
    atol: float = 1e-5


@dataclass(frozen=True, slots=True)
class Manifest:
    model: str
    kind: str
    sha256: str
    onnx_input: str
    onnx_output: str
    inputs: tuple[Signal, ...]
    outputs: tuple[Signal, ...]
    test_vectors: TestVectors | None = None
    reference: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)


def _req(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing {key!r}")
    return d[key]


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


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
        std = _finite(item.get("std", 1.0), f"{w}.std")
        if std <= 0:
            raise ManifestError(f"{w}.std: must be > 0, got {std}")
        out.append(Signal(name=name, units=str(item.get("units", "")),
                          mean=_finite(item.get("mean", 0.0), f"{w}.mean"), std=std))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ManifestError(f"{where}: duplicate names {names}")
    return tuple(out)


def _vectors(raw: Any, n_in: int, n_out: int) -> TestVectors | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ManifestError("test_vectors: expected an object")
    xs, ys = _req(raw, "inputs", "test_vectors"), _req(raw, "outputs", "test_vectors")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not xs:
        raise ManifestError("test_vectors: inputs and outputs must be non-empty lists of equal length")
    rows_in, rows_out = [], []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if not isinstance(x, list) or len(x) != n_in:
            raise ManifestError(f"test_vectors.inputs[{i}]: expected {n_in} numbers")
        if not isinstance(y, list) or len(y) != n_out:
            raise ManifestError(f"test_vectors.outputs[{i}]: expected {n_out} numbers")
        rows_in.append(tuple(_finite(v, f"test_vectors.inputs[{i}]") for v in x))
        rows_out.append(tuple(_finite(v, f"test_vectors.outputs[{i}]") for v in y))
    rtol = _finite(raw.get("rtol", 1e-4), "test_vectors.rtol")
    atol = _finite(raw.get("atol", 1e-5), "test_vectors.atol")
    if rtol < 0 or atol < 0:
        raise ManifestError("test_vectors: rtol and atol must be >= 0")
    return TestVectors(tuple(rows_in), tuple(rows_out), rtol, atol)


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
    return Manifest(
        model=model,
        kind=kind,
        sha256=sha,
        onnx_input=str(onnx.get("input", "x")),
        onnx_output=str(onnx.get("output", "y")),
        inputs=inputs,
        outputs=outputs,
        test_vectors=_vectors(raw.get("test_vectors"), len(inputs), len(outputs)),
        reference=reference,
        provenance=provenance,
        version=version,
        raw=raw,
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
