"""The two model kinds, as plain ``torch.nn.Sequential`` MLPs on standardised data.

* ``regression`` — the surrogate: inputs -> hidden layers -> outputs (the demo: 4-64-64-3, SiLU).
* ``autoencoder`` — anomaly detection: inputs -> hidden -> bottleneck -> mirrored hidden -> inputs; its
  outputs are the reconstruction of its inputs (manifest kind ``autoencoder``), and the reconstruction
  error is the anomaly score.

Sequential keeps parameter names (``0.weight``, ``2.bias`` ...) identical to the initializer names of
the exported ONNX graph, which is what makes a warm start from the champion's ONNX file possible
(:func:`load_onnx_weights`): the store alone is enough to continue training the served model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.spec import TrainSpec

_ACT = {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU}


class WarmStartError(Exception):
    """The champion's weights cannot be loaded into this architecture."""


def layer_widths(spec: TrainSpec, n_in: int, n_out: int) -> list[int]:
    if spec.kind == "autoencoder":
        hidden = list(spec.hidden)
        return [n_in, *hidden, spec.bottleneck, *reversed(hidden), n_in]
    return [n_in, *spec.hidden, n_out]


def build_model(spec: TrainSpec, n_in: int, n_out: int) -> torch.nn.Sequential:
    widths = layer_widths(spec, n_in, n_out)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(_ACT[spec.activation]())
    return torch.nn.Sequential(*layers)


def architecture(spec: TrainSpec, n_in: int, n_out: int) -> dict:
    """What goes in the manifest's provenance, so a later run knows whether it can warm-start."""
    return {"kind": spec.kind, "widths": layer_widths(spec, n_in, n_out), "activation": spec.activation}


def load_onnx_weights(net: torch.nn.Sequential, onnx_path: Path) -> None:
    """Copy the champion's weights from its ONNX initializers into ``net`` (names and shapes must match).

    The caller checks the result against ONNX Runtime on real data: a silent mismatch cannot pass.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state = net.state_dict()
    missing = [k for k in state if k not in inits]
    if missing:
        raise WarmStartError(f"the champion's ONNX has no initializer(s) {missing} (different architecture)")
    new = {}
    for k, v in state.items():
        arr = inits[k]
        if tuple(arr.shape) != tuple(v.shape):
            raise WarmStartError(f"{k}: champion has shape {tuple(arr.shape)}, this model {tuple(v.shape)}")
        new[k] = torch.from_numpy(np.array(arr, dtype=np.float32))
    net.load_state_dict(new)
