"""The model kinds, as plain ``torch.nn.Sequential`` networks on standardised data.

* ``regression`` — the surrogate, an MLP: inputs -> hidden layers -> outputs (the demo: 4-64-64-3,
  SiLU). Array inputs are flattened (in the graph when the input tensor is an image).
* ``autoencoder`` — anomaly detection: inputs -> hidden -> bottleneck -> mirrored hidden -> inputs; its
  outputs are the reconstruction of its inputs (manifest kind ``autoencoder``), and the reconstruction
  error is the anomaly score.
* ``cnn1d`` / ``cnn2d`` — one waveform / one image input: convolutions (``channels``, ``kernel``, each
  downsampling by ``stride``, zero padding), flattened, then the hidden dense layers and the outputs.
  Position matters (a centroid, an orbit shape), so no global pooling: the dense layers see where.
* ``decoder: conv`` (any kind but autoencoder) — a single array output made by transposed
  convolutions (each upsampling by ``stride``) from a small dense seed, instead of one dense layer
  with an output per element: fewer weights and smooth profiles/images.

Sequential keeps parameter names (``0.weight``, ``2.bias`` ...) identical to the initializer names of
the exported ONNX graph, which is what makes a warm start from the champion's ONNX file possible
(:func:`load_onnx_weights`): the store alone is enough to continue training the served model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from training.layout import Layout
from training.spec import CONV_KINDS, TrainSpec

_ACT = {"silu": torch.nn.SiLU, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": torch.nn.GELU}


class WarmStartError(Exception):
    """The champion's weights cannot be loaded into this architecture."""


def layer_widths(spec: TrainSpec, n_in: int, n_out: int) -> list[int]:
    """The dense layers' widths, from the (flattened) features they take to the outputs they give."""
    if spec.kind == "autoencoder":
        hidden = list(spec.hidden)
        return [n_in, *hidden, spec.bottleneck, *reversed(hidden), n_in]
    return [n_in, *spec.hidden, n_out]


def _conv_stack(spec: TrainSpec, tensor: tuple[int, ...]) -> tuple[list[torch.nn.Module], int]:
    """Convolutions over a (1, *spatial) input tensor -> (layers, flattened features after them)."""
    conv = torch.nn.Conv1d if len(tensor) == 2 else torch.nn.Conv2d
    layers: list[torch.nn.Module] = []
    c_in, spatial = tensor[0], list(tensor[1:])
    pad = spec.kernel // 2
    for c in spec.channels:
        layers += [conv(c_in, c, spec.kernel, stride=spec.stride, padding=pad), _ACT[spec.activation]()]
        c_in = c
        spatial = [(d + 2 * pad - spec.kernel) // spec.stride + 1 for d in spatial]
    return layers, c_in * math.prod(spatial)


def _decoder(spec: TrainSpec, n_in: int, shape: tuple[int, ...]) -> list[torch.nn.Module]:
    """Dense seed (decoder_channels[0] x shape / stride^k) -> k transposed convolutions -> the output shape."""
    k = len(spec.decoder_channels)
    base = [d // spec.stride**k for d in shape]
    up = torch.nn.ConvTranspose1d if len(shape) == 1 else torch.nn.ConvTranspose2d
    chans = [*spec.decoder_channels, 1]
    layers: list[torch.nn.Module] = [torch.nn.Linear(n_in, chans[0] * math.prod(base)), _ACT[spec.activation](),
                                     torch.nn.Unflatten(1, (chans[0], *base))]
    for i, (a, b) in enumerate(zip(chans[:-1], chans[1:], strict=True)):
        layers.append(up(a, b, spec.stride, stride=spec.stride))
        if i < k - 1:
            layers.append(_ACT[spec.activation]())
    return [*layers, torch.nn.Flatten()]


def build_model(spec: TrainSpec, layout: Layout) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    tensor = layout.input_tensor
    if spec.kind in CONV_KINDS:
        layers, n_features = _conv_stack(spec, tensor)
        layers.append(torch.nn.Flatten())
    else:
        if len(tensor) > 1:
            layers.append(torch.nn.Flatten())
        n_features = math.prod(tensor)
    decoder = spec.decoder == "conv" and spec.kind != "autoencoder"
    widths = layer_widths(spec, n_features, layout.n_out)
    if decoder:
        widths = widths[:-1]  # the decoder makes the outputs from the last hidden layer
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b))
        if decoder or i < len(widths) - 2:
            layers.append(_ACT[spec.activation]())
    if decoder:
        layers += _decoder(spec, widths[-1], layout.outputs[0].shape)
    return torch.nn.Sequential(*layers)


def architecture(spec: TrainSpec, layout: Layout) -> dict:
    """What goes in the manifest's provenance, so a later run knows whether it can warm-start.

    A scalar MLP's entry is what it always was (kind, widths, activation), so the champions of earlier
    versions still warm-start; the array kinds add what shapes their weights.
    """
    n_features = math.prod(layout.input_tensor)
    if spec.kind in CONV_KINDS:
        n_features = _conv_stack(spec, layout.input_tensor)[1]
    arch: dict = {"kind": spec.kind, "widths": layer_widths(spec, n_features, layout.n_out),
                  "activation": spec.activation}
    if not layout.is_scalar:
        arch["input_tensor"] = list(layout.input_tensor)
    if spec.kind in CONV_KINDS:
        arch |= {"channels": list(spec.channels), "kernel": spec.kernel, "stride": spec.stride}
    if spec.decoder == "conv" and spec.kind != "autoencoder":
        arch["widths"] = arch["widths"][:-1]  # the decoder, not a dense layer, makes the outputs
        arch |= {"decoder": "conv", "decoder_channels": list(spec.decoder_channels), "stride": spec.stride,
                 "output_shape": list(layout.outputs[0].shape)}
    return arch


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
