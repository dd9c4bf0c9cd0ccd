"""ONNX export, the torch-vs-ONNX parity check, and the version manifest (docs/how-to/model-store.md, "Format").

Export uses torch's dynamo exporter with the weights inside the file (``external_data=False``): the
store's contract is one ``model.onnx`` per version. The graph works on standardised values; the
manifest carries the normalisation and the IOC applies it around the graph, exactly as
``ioc.core.engine.LoadedModel.run`` does.

Parity is checked on the whole test split in normalised output units (max |ONNX - torch| <=
``gate.parity_atol``, default 1e-4; measured ~2e-6 for the demo MLP on CPU). A failure stops the push.
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
from training.dataset import Normalisation, Split, reference_stats
from training.spec import TrainSpec

OPSET = 18
INPUT, OUTPUT = "x", "y"


def export_onnx(net: torch.nn.Module, n_in: int) -> bytes:
    """Serialise ``net`` (CPU, eval) to ONNX bytes with a dynamic batch dimension."""
    import logging

    import onnx

    for name in ("torch.onnx", "onnx_ir", "onnxscript"):  # INFO lines about every optimisation pass
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about deprecations we do not use
        program = torch.onnx.export(
            net, (torch.zeros(1, n_in),), input_names=[INPUT], output_names=[OUTPUT], dynamo=True,
            external_data=False, dynamic_shapes={"input": {0: torch.export.Dim("batch")}}, opset_version=OPSET,
            verbose=False,
        )
    buf = io.BytesIO()
    onnx.save(program.model_proto, buf)
    return buf.getvalue()


@dataclass
class Parity:
    max_abs: float
    atol: float
    n: int

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.atol


def onnx_session(model: bytes | str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def check_parity(onnx_bytes: bytes, torch_pred_norm: np.ndarray, x_norm: np.ndarray, atol: float) -> Parity:
    """ONNX Runtime vs torch on the same normalised inputs (the test split)."""
    got = onnx_session(onnx_bytes).run([OUTPUT], {INPUT: x_norm.astype(np.float32)})[0]
    return Parity(float(np.abs(got - torch_pred_norm).max()) if len(got) else float("nan"), atol, len(got))


def build_manifest(model: ModelConfig, spec: TrainSpec, norm: Normalisation, split: Split, onnx_bytes: bytes,
                   provenance: dict[str, Any], uncertainty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The version manifest (docs/how-to/model-store.md); ``sha256``, ``version``: set by ``ModelStore.add_version``.

    ``uncertainty`` is the manifest's section of that name (training/uncertainty.py). An ensemble's graph
    returns the means then the standard deviations: its test vectors carry both (``spread``)."""
    units_in = {i.name: i.units for i in model.inputs}
    units_out = {o.name: o.units for o in model.outputs} | ({} if spec.kind == "regression" else units_in)
    names_in, names_out = split.train.input_names, split.train.output_names
    # Test vectors: raw-unit rows of the test split through the exported graph and the manifest's
    # normalisation: exactly the arithmetic the IOC's engine does, so the IOC's check must reproduce them.
    tv_x = split.test.x[: spec.gate.test_vectors]
    xn = ((tv_x - norm.x_mean) / norm.x_std).astype(np.float32)
    y = onnx_session(onnx_bytes).run([OUTPUT], {INPUT: xn})[0].astype(np.float64)
    n_out = len(names_out)
    tv_y = y[:, :n_out] * norm.y_std + norm.y_mean
    vectors: dict[str, Any] = {"inputs": tv_x.tolist(), "outputs": tv_y.tolist(), "rtol": 1e-4, "atol": 1e-5}
    onnx_doc: dict[str, Any] = {"input": INPUT, "output": OUTPUT, "opset": OPSET}
    if y.shape[1] == 2 * n_out:  # an ensemble: means, then standard deviations (scaled, never shifted)
        vectors["spread"] = (y[:, n_out:] * norm.y_std).tolist()
        onnx_doc["output_shape"] = [2 * n_out]
    doc = {
        "format": 1,
        "model": model.name,
        "kind": spec.kind,
        "onnx": onnx_doc,
        "inputs": [{"name": n, "units": units_in.get(n, ""), "mean": float(m), "std": float(s)}
                   for n, m, s in zip(names_in, norm.x_mean, norm.x_std, strict=True)],
        "outputs": [{"name": n, "units": units_out.get(n, ""), "mean": float(m), "std": float(s)}
                    for n, m, s in zip(names_out, norm.y_mean, norm.y_std, strict=True)],
        "reference": {
            "source": "training split",
            "inputs": {n: reference_stats(split.train.x[:, i]) for i, n in enumerate(names_in)},
            "outputs": {n: reference_stats(split.train.y[:, j]) for j, n in enumerate(names_out)},
        },
        "test_vectors": vectors,
        "provenance": {"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                       "created_by": "mlioc train"} | provenance,
    }
    if uncertainty is not None:
        doc["uncertainty"] = uncertainty
    return doc
