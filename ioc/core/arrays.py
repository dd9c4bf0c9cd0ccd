"""Arrays and images: the rules every part of the IOC applies to a waveform or an image value.

Pure logic (numpy only), shared by the config checks, the engine, the runner, the sources and both
protocol adapters, so a rule is written once:

* **the tensor layout rule** (:class:`TensorLayout`): a model's named inputs, in config order, are
  flattened row-major and concatenated into one vector, which the engine reshapes into the model's
  one input tensor; the one output tensor is flattened and cut into the named outputs the same way
  (docs/how-to/model-store.md, "Arrays and images");
* **validity of an array value** (:func:`array_problem`): its shape, the first NaN/Inf element and
  the first element outside the valid range, each named with its index (``orbit_x[17]: NaN``);
* **an NTNDArray frame from its parts** (:func:`frame_from_parts`): areaDetector order (``dimension[0]``
  is the fastest-varying axis, the width), ``codec``, ``ColorMode``. A frame this IOC cannot use comes
  back as a :class:`BadArray` with the reason, never as an exception, so a bad frame makes the model's
  outputs INVALID and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ioc.core.pvmodel import Status, all_finite

MAX_ELEMENTS = 1 << 24  # 16 Mi elements (64 MiB as float32): far beyond a camera frame, below CA's limits
DTYPES = ("float64", "float32")
Shape = tuple[int, ...]


def size_of(shape: Sequence[int]) -> int:
    """Elements in an array of ``shape`` (1 for a scalar, whose shape is ``()``)."""
    return math.prod(shape)


def shape_text(shape: Sequence[int]) -> str:
    """``[64, 48]`` -> ``64x48`` (height x width, the order of the config's ``shape``); ``[32]`` -> ``32``."""
    return "x".join(str(d) for d in shape) if shape else "scalar"


def index_text(name: str, shape: Sequence[int], flat_index: int) -> str:
    """The element at row-major ``flat_index`` of ``name``: ``orbit_x[17]``, ``screen[12,40]``."""
    if len(shape) <= 1:
        return f"{name}[{flat_index}]" if shape else name
    return f"{name}[{','.join(str(int(i)) for i in np.unravel_index(flat_index, tuple(shape)))}]"


def first_nonfinite(values: np.ndarray) -> int | None:
    """Row-major index of the first NaN/Inf element, or None. One pass (a sum) when all are finite."""
    if all_finite(values):
        return None
    return int((~np.isfinite(values.reshape(-1))).argmax())


class _Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Shape: ...


@dataclass(frozen=True, slots=True)
class TensorLayout:
    """Where each named signal sits in the model's flat input (or output) vector.

    The rule: signals in config order, each flattened row-major (an image ``[h, w]`` row after row),
    concatenated. A scalar takes one element. ``total`` is the vector's length; the manifest's
    ``onnx.input_shape`` must hold exactly ``total`` elements.
    """

    names: tuple[str, ...]
    shapes: tuple[Shape, ...]
    offsets: tuple[int, ...]
    total: int

    @classmethod
    def of(cls, signals: Iterable[_Named]) -> TensorLayout:
        names, shapes, offsets, total = [], [], [], 0
        for s in signals:
            names.append(s.name)
            shapes.append(tuple(s.shape))
            offsets.append(total)
            total += size_of(s.shape)
        return cls(tuple(names), tuple(shapes), tuple(offsets), total)

    @property
    def all_scalar(self) -> bool:
        return all(not s for s in self.shapes)

    def sizes(self) -> list[int]:
        return [size_of(s) for s in self.shapes]

    def locate(self, flat_index: int) -> str:
        """The signal element at ``flat_index`` of the flat vector: ``profile[17]`` or ``sigma_x``."""
        for name, shape, offset in zip(self.names, self.shapes, self.offsets, strict=True):
            if flat_index < offset + size_of(shape):
                return index_text(name, shape, flat_index - offset)
        raise IndexError(flat_index)

    def pieces(self, flat: np.ndarray, dtypes: Sequence[str | None] | None = None) -> list[Any]:
        """Cut ``flat`` into one value per signal: a float for a scalar, an array of the signal's shape
        (a view of ``flat``, or a copy in ``dtypes[i]`` when given) for an array."""
        out: list[Any] = []
        for i, (shape, offset) in enumerate(zip(self.shapes, self.offsets, strict=True)):
            if not shape:
                out.append(float(flat[offset]))
                continue
            piece = flat[offset:offset + size_of(shape)].reshape(shape)
            dtype = dtypes[i] if dtypes is not None else None
            out.append(piece.astype(dtype) if dtype is not None and piece.dtype != dtype else piece)
        return out


@dataclass(frozen=True, slots=True)
class BadArray:
    """An array value that cannot be used, and why (e.g. ``codec 'lz4' not decoded``)."""

    reason: str
    status: Status = Status.READ


def as_array(value: Any, shape: Shape, dtype: str) -> np.ndarray | BadArray:
    """A delivered or written value as a numpy array in ``dtype``; a flat array of exactly h*w
    elements (a CA waveform) becomes the image ``[h, w]`` (row-major); any other size is kept as it
    came, for :func:`array_problem` to name."""
    if isinstance(value, BadArray):
        return value
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return BadArray(f"not an array of numbers: {type(value).__name__}")
    if arr.dtype.kind not in "iuf":
        return BadArray(f"{arr.dtype} values, expected numbers")
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if len(shape) == 2 and arr.ndim == 1 and arr.size == size_of(shape):
        arr = arr.reshape(shape)
    return arr


def array_problem(value: np.ndarray, shape: Shape, valid: tuple[float, float] | None
                  ) -> tuple[str, str, Status] | None:
    """Why ``value`` cannot feed a model input of ``shape``: (element, reason, status), or None.

    ``element`` is ``""`` for the whole array or ``[17]`` / ``[12,40]`` for one element. Checked in
    order: shape, first NaN/Inf, first element outside ``valid``.
    """
    if value.shape != shape:
        got = f"{value.size} elements" if value.ndim == 1 else shape_text(value.shape)
        return "", f"{got}, expected {shape_text(shape)}", Status.READ
    bad = first_nonfinite(value)
    if bad is not None:
        x = float(value.reshape(-1)[bad])
        return (index_text("", shape, bad), "NaN" if math.isnan(x) else f"{x}",
                Status.UDF if math.isnan(x) else Status.HWLIMIT)
    if valid is not None and value.size:
        lo, hi = valid
        flat = value.reshape(-1)
        if flat.min() < lo or flat.max() > hi:
            k = int(((flat < lo) | (flat > hi)).argmax())
            return index_text("", shape, k), f"{float(flat[k]):.4g} outside [{lo:g}, {hi:g}]", Status.HWLIMIT
    return None


def frame_from_parts(data: np.ndarray | None, sizes: Sequence[int], codec: str = "",
                     color_mode: int | None = None) -> np.ndarray | BadArray:
    """An NTNDArray's pixels as a numpy array of shape ``[height, width]``, from its parts.

    ``sizes`` are ``dimension[].size`` in areaDetector order (fastest-varying first: width, height),
    so the numpy shape is their reverse. A compressed frame (``codec.name`` set), an empty union,
    non-numeric pixels, a colour frame or sizes that do not match the pixel count are a :class:`BadArray`.
    """
    if codec:
        return BadArray(f"codec {codec!r} not decoded")
    if data is None:
        return BadArray("empty frame (no value)")
    if data.dtype.kind not in "iuf":
        return BadArray(f"{data.dtype} pixels, expected numbers")
    if color_mode not in (None, 0):
        return BadArray(f"ColorMode {color_mode}, expected 0 (mono)")
    dims = [int(s) for s in sizes]
    if not dims:
        return data
    if math.prod(dims) != data.size:
        return BadArray(f"dimension {shape_text(dims[::-1])} but {data.size} pixels")
    while len(dims) > 2 and dims[-1] == 1:  # a trailing axis of 1 (e.g. one frame of a stack) is no axis
        dims.pop()
    if len(dims) > 2:
        return BadArray(f"{len(dims)}-D frame, expected 2-D")
    return data.reshape(tuple(reversed(dims)))


def is_ntndarray(value: Any) -> bool:
    """A PVA structure (p4p ``Value``) of type NTNDArray."""
    get_id = getattr(value, "getID", None)
    return get_id is not None and get_id().startswith("epics:nt/NTNDArray:")


def frame_from_ntndarray(value: Any) -> np.ndarray | BadArray:
    """The frame of an NTNDArray structure (a p4p ``Value``, read by key only): see :func:`frame_from_parts`."""
    try:
        sizes = [d["size"] for d in value["dimension"]]
        codec = value["codec.name"]
        color_mode = None
        for attribute in value["attribute"]:
            if attribute["name"] == "ColorMode":
                try:
                    color_mode = int(attribute["value"])
                except (TypeError, ValueError):
                    color_mode = -1
                break
        data = value["value"]
    except (KeyError, TypeError, ValueError) as exc:
        return BadArray(f"not an NTNDArray frame ({exc})")
    return frame_from_parts(data, sizes, codec, color_mode)
