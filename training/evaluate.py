"""Running an exported version exactly as the IOC would, for the models the IOC's engine cannot take yet.

The gate judges what the IOC would serve by loading it with the IOC's own engine
(:func:`ioc.core.engine.build_model`). That engine feeds ``[batch, n_inputs]`` tensors of scalars;
array models (waveforms, images) need the engine of the arrays work (docs/how-to/model-store.md).
Until it lands, an array model is checked and scored here with the same arithmetic — normalise with
the manifest, run ONNX Runtime on the layout's tensor, de-normalise — plus the engine's own checks
(tensor names and shapes, test vectors reproduce, outputs finite). Scalar models always go through
the IOC's engine. :data:`IOC_ENGINE_FEEDS_ARRAYS` is the one switch to flip when it does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import Normalisation
from training.layout import Layout

IOC_ENGINE_FEEDS_ARRAYS = False


class VersionError(Exception):
    """An exported version fails a check the IOC would make."""


def ioc_validates(layout: Layout) -> bool:
    """Whether the IOC's own engine loads (and so validates and scores) a model of this layout."""
    return layout.is_scalar or IOC_ENGINE_FEEDS_ARRAYS


def onnx_session(model: bytes | str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1  # a shared 2-core machine: one thread, as the IOC runs it
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True, eq=False)
class OnnxVersion:
    """A version ready to run raw-unit rows: the manifest's normalisation around the graph."""

    layout: Layout
    session: Any = field(repr=False)
    tensors: tuple[str, str]  # the graph's input and output names
    norm: Normalisation = field(repr=False)  # from the manifest, per flattened element
    version: str = ""

    def run_batch(self, xs: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Raw-unit flattened rows (b, N) -> raw-unit flattened outputs (b, M), float64 (the engine's
        ``(x - mean) * (1/std)`` before the graph, ``y * std + mean`` after it)."""
        out = []
        scale = 1.0 / self.norm.x_std
        for i in range(0, len(xs), chunk):
            xn = (np.asarray(xs[i:i + chunk], dtype=np.float64) - self.norm.x_mean) * scale
            y = self.session.run([self.tensors[1]], {self.tensors[0]: self.layout.to_input_tensor(xn)})[0]
            out.append(y.reshape(len(y), -1).astype(np.float64) * self.norm.y_std + self.norm.y_mean)
        return np.concatenate(out) if out else np.zeros((0, self.layout.n_out))


def load(onnx: bytes | Path, manifest: dict[str, Any], layout: Layout, version: str = "") -> OnnxVersion:
    """Load and check a version as the IOC would; raise :class:`VersionError` naming the failed check."""
    where = f"v{version}" if version else "this version"
    try:
        session = onnx_session(onnx if isinstance(onnx, bytes) else str(onnx))
    except Exception as exc:  # ORT raises its own types for corrupt files
        raise VersionError(f"{where}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:300]}") from exc
    ins, outs = session.get_inputs(), session.get_outputs()
    spec = manifest.get("onnx", {})
    if len(ins) != 1 or len(outs) != 1 or ins[0].name != spec.get("input", "x") or \
            outs[0].name != spec.get("output", "y"):
        raise VersionError(f"{where}: ONNX tensors {[i.name for i in ins]} -> {[o.name for o in outs]} are not the "
                           f"manifest's {spec.get('input')!r} -> {spec.get('output')!r}")
    for t, want, what in ((ins[0], layout.input_tensor, "input"), (outs[0], layout.output_tensor, "output")):
        dims = list(t.shape)[1:]
        if len(dims) != len(want) or any(isinstance(d, int) and d != w for d, w in zip(dims, want, strict=True)):
            raise VersionError(f"{where}: {what} tensor has shape {list(t.shape)}, the layout says "
                               f"[batch, {', '.join(map(str, want))}]")
    names = ([e["name"] for e in manifest.get("inputs", [])], [e["name"] for e in manifest.get("outputs", [])])
    if names != ([s.name for s in layout.inputs], [s.name for s in layout.outputs]):
        raise VersionError(f"{where}: manifest signals {names} are not the config's")
    model = OnnxVersion(layout, session, (ins[0].name, outs[0].name), Normalisation.from_manifest(layout, manifest),
                        version)
    _check_test_vectors(model, manifest.get("test_vectors"), where)
    return model


def _check_test_vectors(model: OnnxVersion, tv: dict[str, Any] | None, where: str) -> None:
    if tv is None:
        y = model.run_batch(model.norm.x_mean[None, :])
        if not np.all(np.isfinite(y)):
            raise VersionError(f"{where}: non-finite output at the reference mean input")
        return
    xs, want = np.array(tv["inputs"], dtype=np.float64), np.array(tv["outputs"], dtype=np.float64)
    if xs.ndim != 2 or xs.shape[1] != model.layout.n_in or want.shape != (len(xs), model.layout.n_out):
        raise VersionError(f"{where}: test vectors of shape {xs.shape} -> {want.shape}, the layout takes "
                           f"{model.layout.n_in} -> {model.layout.n_out} values a row")
    got = model.run_batch(xs)
    if not np.all(np.isfinite(got)):
        raise VersionError(f"{where}: non-finite outputs on the test vectors")
    bad = ~np.isclose(got, want, rtol=tv.get("rtol", 1e-4), atol=tv.get("atol", 1e-5))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise VersionError(f"{where}: test vector {i} output element {j} = {got[i, j]:.6g}, expected "
                           f"{want[i, j]:.6g}; {int(bad.sum())} mismatches")


def load_store_version(store, number: int, layout: Layout) -> OnnxVersion:
    """A store version (checksum first, as the engine does)."""
    from ioc.core.store import sha256_file

    try:
        manifest = json.loads(store.manifest_path(number).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VersionError(f"v{number}: manifest unreadable: {exc}") from exc
    path = store.onnx_path(number)
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise VersionError(f"v{number}: cannot read {path}: {exc.strerror or exc}") from exc
    if digest != manifest.get("sha256"):
        raise VersionError(f"v{number}: sha256 mismatch (file {digest[:12]}..., manifest "
                           f"{str(manifest.get('sha256'))[:12]}...)")
    return load(path, manifest, layout, str(number))
