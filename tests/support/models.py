"""Small real ONNX models and model stores for tests, built with onnx.helper (no torch needed).

``linear_model`` computes y = x @ W.T + b exactly, so a test can predict every output by hand;
``slow_model`` burns a configurable amount of CPU per call to test that inference runs off the loop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ioc.core.store import ModelStore, sha256_file

OPSET = 17


def _save(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_model(w: np.ndarray, b: np.ndarray, input_name: str = "x", output_name: str = "y") -> bytes:
    w = np.asarray(w, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    n_out, n_in = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "wt"], ["xw"]), helper.make_node("Add", ["xw", "b"], [output_name])],
        "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])],
        initializer=[numpy_helper.from_array(w.T.copy(), "wt"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph)


def slow_model(n_in: int, n_out: int, size: int = 1024) -> bytes:
    """y = first n_out inputs (zero-padded) + 0 * sum(C @ C), C an input-dependent size x size matrix.

    The matrix product (2 size^3 flops) cannot be constant-folded because C depends on x.
    """
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1),  # [batch, 1]
        helper.make_node("ReduceSum", ["s"], ["s0"], keepdims=0),  # a scalar
        helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Mul", ["ones", "s0"], ["c"]),
        helper.make_node("MatMul", ["c", "c"], ["cc"]),
        helper.make_node("ReduceSum", ["cc"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["x", "pick"], ["picked"]),
        helper.make_node("Add", ["picked", "nothing"], ["y"]),
    ]
    pick = np.zeros((n_in, n_out), dtype=np.float32)
    for i in range(min(n_in, n_out)):
        pick[i, i] = 1.0
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        initializer=[numpy_helper.from_array(np.array([size, size], dtype=np.int64), "shape"),
                     numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
                     numpy_helper.from_array(pick, "pick")],
    )
    return _save(graph)


def manifest_for(inputs: Sequence[str], outputs: Sequence[str], *, units_in: Sequence[str] | None = None,
                 units_out: Sequence[str] | None = None, test_inputs: np.ndarray | None = None,
                 test_outputs: np.ndarray | None = None, model: str = "m") -> dict:
    doc = {
        "format": 1,
        "model": model,
        "kind": "regression",
        "onnx": {"input": "x", "output": "y"},
        "inputs": [{"name": n, "units": (units_in or [""] * len(inputs))[i], "mean": 0.0, "std": 1.0}
                   for i, n in enumerate(inputs)],
        "outputs": [{"name": n, "units": (units_out or [""] * len(outputs))[i], "mean": 0.0, "std": 1.0}
                    for i, n in enumerate(outputs)],
        "provenance": {"created_by": "tests"},
    }
    if test_inputs is not None:
        doc["test_vectors"] = {"inputs": np.asarray(test_inputs).tolist(),
                               "outputs": np.asarray(test_outputs).tolist(), "rtol": 1e-5, "atol": 1e-5}
    return doc


def publish_linear(root: Path, inputs: Sequence[str], outputs: Sequence[str], w, b, *, champion: bool = True,
                   units_in=None, units_out=None) -> tuple[ModelStore, int]:
    """Publish a linear model version (with test vectors) into the store at ``root``."""
    w = np.asarray(w, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 5, size=(4, len(inputs)))
    ys = xs @ w.T + b
    store = ModelStore(root)
    number = store.add_version(linear_model(w, b), manifest_for(inputs, outputs, units_in=units_in,
                                                                units_out=units_out, test_inputs=xs,
                                                                test_outputs=ys))
    if champion:
        store.write_pointer("champion", number)
    return store, number


def version_files(tmp_path: Path, k: float, *, n_out: int = 2) -> tuple[Path, Path]:
    """An ONNX + manifest (with test vectors) for 'version k', in a scratch directory."""
    w = np.array([[k, 1.0], [1.0, -1.0], [0.5, 0.5]])[:n_out]
    b = np.zeros(n_out)
    xs = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]])
    d = tmp_path / f"v{k}-{n_out}"
    d.mkdir(exist_ok=True)
    (d / "model.onnx").write_bytes(linear_model(w, b))
    outputs = ["y0", "y1", "y2"][:n_out]
    doc = manifest_for(["a", "b"], outputs, test_inputs=xs, test_outputs=xs @ w.T + b, model="lin")
    doc["sha256"] = sha256_file(d / "model.onnx")
    doc["provenance"] = {"created_by": "tests", "scale": k}
    (d / "manifest.json").write_text(json.dumps(doc))
    return d / "model.onnx", d / "manifest.json"


def publish_version(store: ModelStore, tmp_path: Path, k: float, pointer: str | None = None, **kw) -> int:
    onnx, manifest = version_files(tmp_path, k, **kw)
    n = store.add_version(onnx, json.loads(manifest.read_text()))
    if pointer:
        store.write_pointer(pointer, n)
    return n


def sqrt_version(store: ModelStore, pointer: str | None = None) -> int:
    """A version computing y = sqrt(a): valid on its test vectors, NaN for a < 0 at run time."""
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])], "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])])
    xs = np.array([[1.0], [4.0], [9.0]])
    n = store.add_version(_save(graph), manifest_for(["a"], ["y"], test_inputs=xs, test_outputs=np.sqrt(xs)))
    if pointer:
        store.write_pointer(pointer, n)
    return n


# ----------------------------------------------------------------------------- arrays and images

Signals = Sequence[tuple[str, tuple[int, ...]]]  # (name, shape) in order; shape () is a scalar


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def array_linear_model(w: np.ndarray, b: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> bytes:
    """y = flatten(x) @ W.T + b, reshaped: input tensor [batch, *in_shape], output [batch, *out_shape].

    Serves every array layout a test needs: a waveform in, scalars out; an image [1, h, w] in (as a
    CNN takes it); scalars in, a profile or an image out.
    """
    w = np.asarray(w, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    n_out, n_in = w.shape
    assert _size(in_shape) == n_in and _size(out_shape) == n_out
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "flat_in"], ["xf"]),
         helper.make_node("MatMul", ["xf", "wt"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["yf"]),
         helper.make_node("Reshape", ["yf", "shape_out"], ["y"])],
        "array_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=[numpy_helper.from_array(w.T.copy(), "wt"), numpy_helper.from_array(b, "b"),
                     numpy_helper.from_array(np.array([-1, n_in], dtype=np.int64), "flat_in"),
                     numpy_helper.from_array(np.array([-1, *out_shape], dtype=np.int64), "shape_out")],
    )
    return _save(graph)


def conv_mean_model(h: int, w: int, kernels: np.ndarray) -> bytes:
    """A tiny CNN: input [batch, 1, h, w] -> Conv (k kernels, valid) -> mean over the image -> [batch, k]."""
    kernels = np.asarray(kernels, dtype=np.float32)
    k = kernels.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["c"]),
         helper.make_node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=0)],
        "conv_mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, h, w])],
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, ["batch", k])],
        initializer=[numpy_helper.from_array(kernels.reshape(k, 1, *kernels.shape[1:]), "k")],
    )
    return _save(graph)


def conv_mean(images: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """What :func:`conv_mean_model` computes, in numpy (valid cross-correlation, then the mean)."""
    from numpy.lib.stride_tricks import sliding_window_view

    kernels = np.asarray(kernels, dtype=np.float64)
    windows = sliding_window_view(np.asarray(images, dtype=np.float64), kernels.shape[1:], axis=(-2, -1))
    return np.einsum("bijkl,ckl->bijc", windows, kernels).mean(axis=(1, 2))


def array_manifest(inputs: Signals, outputs: Signals, test_inputs: np.ndarray, test_outputs: np.ndarray, *,
                   input_shape: Sequence[int] | None = None, output_shape: Sequence[int] | None = None,
                   onnx_output: str = "y", norm: dict | None = None, units: dict | None = None) -> dict:
    """A manifest with shaped signals; ``norm`` maps a name to (mean, std) (numbers or per-element lists)."""
    norm, units = norm or {}, units or {}

    def signal(name, shape):
        mean, std = norm.get(name, (0.0, 1.0))
        doc = {"name": name, "units": units.get(name, ""), "mean": mean, "std": std}
        if shape:
            doc["shape"] = list(shape)
        return doc

    onnx = {"input": "x", "output": onnx_output}
    if input_shape is not None:
        onnx["input_shape"] = list(input_shape)
    if output_shape is not None:
        onnx["output_shape"] = list(output_shape)
    return {"format": 1, "model": "arrays", "kind": "regression", "onnx": onnx,
            "inputs": [signal(n, s) for n, s in inputs], "outputs": [signal(n, s) for n, s in outputs],
            "test_vectors": {"inputs": np.asarray(test_inputs).tolist(), "outputs": np.asarray(test_outputs).tolist(),
                             "rtol": 1e-4, "atol": 1e-4},
            "provenance": {"created_by": "tests"}}


def publish_array_linear(root: Path, inputs: Signals, outputs: Signals, w, b, *, input_shape=None, output_shape=None,
                         pointer: str | None = "champion", seed: int = 0) -> tuple[ModelStore, int]:
    """Publish y = flat(inputs) @ W.T + b with shaped signals (test vectors computed here in numpy)."""
    n_in = sum(_size(s) for _, s in inputs)
    n_out = sum(_size(s) for _, s in outputs)
    w = np.asarray(w, dtype=np.float64).reshape(n_out, n_in)
    b = np.asarray(b, dtype=np.float64).reshape(n_out)
    xs = np.random.default_rng(seed).uniform(-1, 1, size=(3, n_in))
    ys = xs @ w.T + b
    store = ModelStore(root)
    onnx = array_linear_model(w, b, input_shape or (n_in,), output_shape or (n_out,))
    number = store.add_version(onnx, array_manifest(inputs, outputs, xs, ys, input_shape=input_shape,
                                                    output_shape=output_shape))
    if pointer:
        store.write_pointer(pointer, number)
    return store, number


# ----------------------------------------------------------------------------- uncertainty


def ensemble_linear_model(ws: Sequence[np.ndarray], bs: Sequence[np.ndarray]) -> bytes:
    """An ensemble of linear members as one graph, exactly as the training sidecar exports one: output
    ``[batch, 2 * n_out]``, the members' mean then their (population) standard deviation."""
    nodes, inits, stacked = [], [], []
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        w = np.asarray(w, dtype=np.float32)
        inits += [numpy_helper.from_array(w.T.copy(), f"w{i}"), numpy_helper.from_array(np.asarray(b, np.float32),
                                                                                        f"b{i}")]
        nodes += [helper.make_node("MatMul", ["x", f"w{i}"], [f"xw{i}"]),
                  helper.make_node("Add", [f"xw{i}", f"b{i}"], [f"y{i}"]),
                  helper.make_node("Unsqueeze", [f"y{i}", "axis0"], [f"u{i}"])]
        stacked.append(f"u{i}")
    n_out, n_in = np.asarray(ws[0]).shape
    inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"))
    nodes += [helper.make_node("Concat", stacked, ["all"], axis=0),
              helper.make_node("ReduceMean", ["all"], ["mean"], axes=[0], keepdims=0),
              helper.make_node("Sub", ["all", "mean"], ["dev"]),
              helper.make_node("Mul", ["dev", "dev"], ["sq"]),
              helper.make_node("ReduceMean", ["sq"], ["var"], axes=[0], keepdims=0),
              helper.make_node("Sqrt", ["var"], ["std"]),
              helper.make_node("Concat", ["mean", "std"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "ensemble",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2 * n_out])],
                              initializer=inits)
    return _save(graph)


def ensemble_predict(ws, bs, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`ensemble_linear_model` computes, in numpy: (mean, std) of the members."""
    ys = np.stack([np.asarray(xs) @ np.asarray(w).T + b for w, b in zip(ws, bs, strict=True)])
    return ys.mean(axis=0), ys.std(axis=0)


def publish_ensemble(root: Path, inputs: Sequence[str], outputs: Sequence[str], ws, bs, *,
                     pointer: str | None = "champion", spread_offset: float = 0.0) -> tuple[ModelStore, int]:
    """Publish an ensemble version (manifest ``uncertainty: {method: ensemble}``, test vectors with the
    spread; ``spread_offset`` corrupts the expected spread)."""
    xs = np.random.default_rng(1).uniform(0, 5, size=(4, len(inputs)))
    mean, std = ensemble_predict(ws, bs, xs)
    doc = manifest_for(inputs, outputs, test_inputs=xs, test_outputs=mean)
    doc["test_vectors"]["spread"] = (std + spread_offset).tolist()
    doc["uncertainty"] = {"method": "ensemble", "members": len(ws)}
    store = ModelStore(root)
    number = store.add_version(ensemble_linear_model(ws, bs), doc)
    if pointer:
        store.write_pointer(pointer, number)
    return store, number


def publish_conformal(root: Path, inputs: Sequence[str], outputs: Sequence[str], w, b, halfwidth: Sequence[float],
                      *, coverage: float = 0.9, pointer: str | None = "champion") -> tuple[ModelStore, int]:
    """Publish a linear version with a conformal interval of these half-widths (one per output)."""
    w, b = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
    xs = np.random.default_rng(2).uniform(0, 5, size=(4, len(inputs)))
    doc = manifest_for(inputs, outputs, test_inputs=xs, test_outputs=xs @ w.T + b)
    doc["uncertainty"] = {"method": "conformal", "coverage": coverage, "halfwidth": list(halfwidth)}
    store = ModelStore(root)
    number = store.add_version(linear_model(w, b), doc)
    if pointer:
        store.write_pointer(pointer, number)
    return store, number
