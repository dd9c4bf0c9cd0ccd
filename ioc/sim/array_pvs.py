"""The simulator's array PVs (waveforms and an areaDetector-style image) on its own CA and PVA servers.

A stand-in until the PV model serves arrays: the IOC's :class:`~ioc.core.pvmodel.PVDatabase` and its
protocol adapters carry scalars today, so the simulator adds its array channels beside them, on the
same servers (same ports), through the adapters' public tables (``CaServer.pvdb``, the PVA server's
``provider``). Read-only, as a BPM or camera IOC's arrays are.

* CA: a waveform record (``.NELM``, ``.NORD``, ``.FTVL``, ``.EGU``, ``.PREC``, ``.DESC``, ``.HOPR``/
  ``.LOPR``, ``.RTYP``); an image is a waveform of h*w elements, row-major (row = y).
* PVA: NTScalarArray for a waveform; NTNDArray for an image with areaDetector's conventions:
  ``dimension[0]`` is x (width, fastest varying), ``dimension[1]`` y, ``uniqueId`` counts frames,
  ``timeStamp`` = ``dataTimeStamp`` = the frame's time, attribute ``ColorMode`` = 0 (mono).

A bad element (NaN, as with ``FAULT`` = NAN) is published as is, with no alarm: a waveform record
does not look inside its array, so whoever consumes it must (the IOC's bad-input checks do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from caproto import AccessRights, ChannelData, ChannelDouble, ChannelEnum, ChannelFloat, ChannelInteger, ChannelString
from p4p import Value
from p4p.nt import NTNDArray, NTScalar
from p4p.server.raw import SharedPV as RawSharedPV

FTVL_CHOICES = ("STRING", "CHAR", "UCHAR", "SHORT", "USHORT", "LONG", "ULONG", "INT64", "UINT64", "FLOAT", "DOUBLE",
                "ENUM")


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One array PV: ``shape`` (n,) is a waveform, (h, w) an image; ``dtype`` ``d`` (DOUBLE) or ``f`` (FLOAT)."""

    name: str
    shape: tuple[int, ...]
    desc: str = ""
    egu: str = ""
    prec: int = 3
    display: tuple[float, float] = (0.0, 0.0)
    dtype: str = "d"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 2

    @property
    def ftvl(self) -> str:
        return "DOUBLE" if self.dtype == "d" else "FLOAT"


class _ReadOnly:
    def check_access(self, hostname, username):
        return AccessRights.READ


class _WaveDouble(_ReadOnly, ChannelDouble):
    pass


class _WaveFloat(_ReadOnly, ChannelFloat):
    pass


class _FieldInteger(_ReadOnly, ChannelInteger):
    pass


class _FieldString(_ReadOnly, ChannelString):
    pass


class _FieldDouble(_ReadOnly, ChannelDouble):
    pass


class _FieldEnum(_ReadOnly, ChannelEnum):
    pass


def _ca_channels(spec: ArraySpec) -> dict[str, ChannelData]:
    lo, hi = spec.display
    cls = _WaveDouble if spec.dtype == "d" else _WaveFloat
    main = cls(value=np.zeros(spec.size, dtype=spec.dtype), max_length=spec.size, precision=spec.prec,
               units=spec.egu, lower_disp_limit=lo, upper_disp_limit=hi, reported_record_type="waveform")
    fields: dict[str, ChannelData] = {
        "NELM": _FieldInteger(value=spec.size),
        "NORD": _FieldInteger(value=spec.size),
        "FTVL": _FieldEnum(value=spec.ftvl, enum_strings=list(FTVL_CHOICES)),
        "EGU": _FieldString(value=spec.egu),
        "PREC": _FieldInteger(value=spec.prec),
        "DESC": _FieldString(value=spec.desc[:40]),
        "HOPR": _FieldDouble(value=hi),
        "LOPR": _FieldDouble(value=lo),
        "RTYP": _FieldString(value="waveform"),
        "NAME": _FieldString(value=spec.name),
    }
    return {spec.name: main, f"{spec.name}.VAL": main} | {f"{spec.name}.{k}": v for k, v in fields.items()}


def _time(ts: float) -> dict[str, int]:
    sec = math.floor(ts)
    return {"secondsPastEpoch": int(sec), "nanoseconds": int((ts - sec) * 1e9)}


_IMAGE_TYPE = NTNDArray.buildType()
_NTND = NTNDArray()
_WAVE_TYPES = {d: NTScalar.buildType("a" + d, display=True, form=True) for d in ("d", "f")}


def pva_value(spec: ArraySpec, value: np.ndarray, timestamp: float, unique_id: int = 0) -> Value:
    """The whole PVA structure for one update (a new frame replaces every field)."""
    if spec.is_image:
        v = _NTND.wrap(np.asarray(value, dtype=spec.dtype).reshape(spec.shape), attrib={"ColorMode": 0})
        v["uniqueId"] = unique_id
        v["timeStamp"] = _time(timestamp)
        v["dataTimeStamp"] = _time(timestamp)
        return v
    lo, hi = spec.display
    return Value(_WAVE_TYPES[spec.dtype], {
        "value": np.asarray(value, dtype=spec.dtype),
        "timeStamp": _time(timestamp),
        "display": {"limitLow": lo, "limitHigh": hi, "description": spec.desc, "units": spec.egu,
                    "precision": spec.prec},
    })


class ArrayPVs:
    """The simulator's array PVs: the latest value of each, served on CA and PVA once attached."""

    def __init__(self, specs: list[ArraySpec], timestamp: float = 0.0):
        self.specs = {s.name: s for s in specs}
        self.ca: dict[str, dict[str, ChannelData]] = {}
        self.pva: dict[str, RawSharedPV] = {}
        self.latest: dict[str, tuple[np.ndarray, float, int]] = {
            s.name: (np.zeros(s.size, dtype=s.dtype), timestamp, 0) for s in specs}

    def names(self) -> list[str]:
        return list(self.specs)

    def ca_channels(self) -> dict[str, ChannelData]:
        """Every CA channel (main and fields) to add to the simulator's CA server table."""
        out: dict[str, ChannelData] = {}
        for spec in self.specs.values():
            channels = _ca_channels(spec)
            self.ca[spec.name] = channels
            out |= channels
        return out

    def pva_channels(self) -> dict[str, RawSharedPV]:
        """One opened SharedPV per array, to add to the simulator's PVA provider (inside the running loop)."""
        for name, spec in self.specs.items():
            value, ts, uid = self.latest[name]
            shared = RawSharedPV()
            shared.open(pva_value(spec, value, ts, uid))
            self.pva[name] = shared
        return dict(self.pva)

    async def post(self, name: str, value: np.ndarray, timestamp: float, unique_id: int = 0) -> None:
        """Publish a new array (flattened row-major for an image) on both protocols."""
        spec = self.specs[name]
        flat = np.ascontiguousarray(value, dtype=spec.dtype).reshape(-1)
        if flat.size != spec.size:
            raise ValueError(f"{name}: {flat.size} elements, expected {spec.size}")
        self.latest[name] = (flat, timestamp, unique_id)
        shared = self.pva.get(name)
        if shared is not None:
            shared.post(pva_value(spec, flat, timestamp, unique_id))
        channels = self.ca.get(name)
        if channels is not None:
            await channels[name].write(flat, timestamp=timestamp)

    def close(self) -> None:
        for shared in self.pva.values():
            shared.close()
