"""ONNX export, the torch-vs-ONNX parity check, and the version manifest (docs/how-to/model-store.md, "Format").

Export uses torch's dynamo exporter with the weights inside the file (``external_data=False``): the
store's contract is one ``model.onnx`` per version. The graph works on standardised values; the
manifest carries the normalisation and the IOC applies it around the graph, exactly as
``ioc.core.engine.LoadedModel.run`` does.

Parity is checked on the whole test split in normalised output units (max |ONNX - torch| <=
``gate.parity_atol``, default 1e-4; measured ~2e-6 for the demo MLP on CPU). A failure stops the push.

Tensor shapes, the manifest's signal entries (shape, per-channel or per-element normalisation) and the
test vectors' row format follow :mod:`training.layout`, the one place the contract with the IOC lives.
"""

from __future__ import annotations

import datetime as dt
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ioc.core.config import ModelConfig
from training.dataset import Dataset, Normalisation, Split, reference_stats
from training.layout import Layout, pca_summary, slices
from training.spec import TrainSpec

OPSET = 18
INPUT, OUTPUT = "x", "y"


def export_onnx(net: torch.nn.Sequential, input_tensor: tuple[int, ...]) -> bytes:
    """Serialise ``net`` (CPU, eval) to ONNX bytes with a dynamic batch dimension; ``input_tensor`` is the
    input's shape without the batch (:attr:`training.layout.Layout.input_tensor`)."""
    import logging

    import onnx

    for name in ("torch.onnx", "onnx_ir", "onnxscript"):  # INFO lines about every optimisation pass
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about deprecations we do not use
        program = torch.onnx.export(
            net, (torch.zeros(1, *input_tensor),), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
            external_data=False, dynamic_shapes={"input": {0: torch.export.Dim("batch")}}, opset_version=OPSET,
            verbose=False,
        )
    buf = io.BytesIO()
    onnx.save(program.model_proto, buf)
    return buf.getvalue()


def onnx_session(model: bytes | str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass
class Parity:
    max_abs: float
    atol: float
    n: int

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.atol


def check_parity(onnx_bytes: bytes, torch_pred_norm: np.ndarray, x_norm: np.ndarray, atol: float,
                 chunk: int = 256) -> Parity:
    """ONNX Runtime vs torch on the same normalised inputs (the test split, in the input tensor's shape)."""
    session = onnx_session(onnx_bytes)
    got = np.concatenate([session.run([OUTPUT], {INPUT: x_norm[i:i + chunk].astype(np.float32)})[0]
                          for i in range(0, len(x_norm), chunk)]) if len(x_norm) else np.zeros((0,))
    return Parity(float(np.abs(got - torch_pred_norm).max()) if len(got) else float("nan"), atol, len(got))


def manifest_kind(kind: str) -> str:
    """What the IOC needs to know of a network: it reconstructs its inputs (autoencoder) or predicts."""
    return "autoencoder" if kind == "autoencoder" else "regression"


def _reference(signals, values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """Drift references: a scalar's distribution; an array's principal-component summary (normalised)."""
    out = {}
    for s, sl in zip(signals, slices(signals).values(), strict=True):
        col = values[:, sl]
        out[s.name] = pca_summary((col - mean[sl]) / std[sl]) if s.shape else reference_stats(col[:, 0])
    return out


def _significant(a: np.ndarray, digits: int = 7) -> np.ndarray:
    return np.array([[float(f"{v:.{digits}g}") for v in row] for row in a]).reshape(a.shape)


def build_manifest(model: ModelConfig, spec: TrainSpec, layout: Layout, norm: Normalisation, split: Split,
                   onnx_bytes: bytes, provenance: dict[str, Any], reference: Dataset | None = None) -> dict[str, Any]:
    """The version manifest (docs/how-to/model-store.md); ``sha256``, ``version``: set by ``ModelStore.add_version``.

    ``reference``: the rows the drift reference is taken from (default: the training split); a drift-triggered
    run passes the new regime's rows (training/pipeline.py, ``--reference-since``).
    """
    ref = split.train if reference is None else reference
    # Test vectors: raw-unit rows of the test split through the exported graph and the manifest's
    # normalisation: exactly the arithmetic the IOC's engine does, so the IOC's check must reproduce them.
    # An array model's inputs are rounded to float32 precision first (an image is thousands of numbers).
    tv_x = split.test.x[: spec.gate.test_vectors]
    if not layout.is_scalar:
        tv_x = _significant(tv_x)
    xn = layout.to_input_tensor((tv_x - norm.x_mean) / norm.x_std)
    tv_y = onnx_session(onnx_bytes).run([OUTPUT], {INPUT: xn})[0].astype(np.float64) * norm.y_std + norm.y_mean
    onnx = {"input": INPUT, "output": OUTPUT, "opset": OPSET}
    if not layout.is_scalar:
        onnx |= layout.onnx_section()
    return {
        "format": 1,
        "model": model.name,
        "kind": manifest_kind(spec.kind),
        "onnx": onnx,
        "inputs": Layout.manifest_entries(layout.inputs, norm.x_mean, norm.x_std),
        "outputs": Layout.manifest_entries(layout.outputs, norm.y_mean, norm.y_std),
        "reference": {
            # A drift run's reference is the new regime's rows (training/pipeline.py, --reference-since).
            "source": "training split" if reference is None else f"{len(reference)} rows of the new regime",
            "inputs": _reference(layout.inputs, ref.x, norm.x_mean, norm.x_std),
            "outputs": _reference(layout.outputs, ref.y, norm.y_mean, norm.y_std),
        },
        "test_vectors": {"inputs": tv_x.tolist(), "outputs": tv_y.tolist(), "rtol": 1e-4, "atol": 1e-5},
        "provenance": {"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                       "created_by": "mlioc train"} | provenance,
    }
