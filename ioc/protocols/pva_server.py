"""PV Access adapter: serves a :class:`~ioc.core.pvmodel.PVDatabase` with p4p (pvxs).

Numeric PVs are NTScalar with ``alarm``, ``timeStamp``, ``display`` (with ``form``), ``control`` and
``valueAlarm``; bo/mbbi are NTEnum; stringin is an NTScalar string. p4p neither evaluates
``valueAlarm`` nor stamps a time, so every post carries the severity, status and timestamp the PV
model computed. PVA's ``alarm.status`` is a coarser enum than EPICS' alarm condition; the condition
name (``HIHI``, ``LINK``, ``DISABLE`` ...) is the first word of ``alarm.message`` so both protocols say
the same thing (details, such as which input is stale, follow after a colon).

Arrays and images: see :class:`PvaServer`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from p4p import Type, Value
from p4p._p4p import logger_level_set, logLevelError  # noqa: PLC2701 - p4p has no public per-logger level
from p4p.nt import NTEnum, NTNDArray, NTScalar
from p4p.server import Server, StaticProvider
from p4p.server.asyncio import SharedPV
from p4p.server.raw import SharedPV as RawSharedPV

from ioc.core.access import host_of
from ioc.core.arrays import BadArray, frame_from_ntndarray, is_ntndarray
from ioc.core.pvmodel import PV, ClientInfo, Event, Kind, PutRejected, PVDatabase, PVSpec, Reading, Status

log = logging.getLogger("mlioc.pva")

# alarm_t.status: NONE, DEVICE, DRIVER, RECORD, DB, CONF, UNDEFINED, CLIENT
_PVA_STATUS = {
    Status.NO_ALARM: 0,
    Status.READ: 2, Status.WRITE: 2, Status.COMM: 2, Status.TIMEOUT: 2, Status.HWLIMIT: 1,
    Status.LINK: 4, Status.UDF: 6, Status.READ_ACCESS: 7, Status.WRITE_ACCESS: 7, Status.SIMM: 5,
}
_POSTED = int(Event.VALUE | Event.ALARM | Event.PROPERTY)
FORM_CHOICES = ["Default", "String", "Binary", "Decimal", "Hex", "Exponential", "Engineering"]


def pva_status(status: Status) -> int:
    return _PVA_STATUS.get(status, 3)  # limit, state, calc, soft, disable ...: the record's own alarm


_PVA_STATUS_LIST = [pva_status(Status(i)) for i in range(len(Status))]
_raw_post = RawSharedPV.post


def pva_message(reading: Reading) -> str:
    if reading.status == Status.NO_ALARM:
        return reading.message
    name = Status(reading.status).name
    return f"{name}: {reading.message}" if reading.message else name


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


_NT_CODE = {"DOUBLE": "d", "FLOAT": "f", "LONG": "i"}
_UNION_MEMBER = {"DOUBLE": "doubleValue", "FLOAT": "floatValue", "LONG": "intValue"}
_NTNDARRAY_FIELDS = NTNDArray.buildType().aspy()  # ('S', id, fields); p4p's buildType(extra=) fails on it


def _ndarray_type(extra: list) -> Type:
    return Type(list(_NTNDARRAY_FIELDS[2]) + extra, id=_NTNDARRAY_FIELDS[1])


def nt_type(spec: PVSpec) -> Type:
    extra = [("version", "s")] if spec.version_field else []
    if spec.kind.is_array:
        if len(spec.shape) == 2:
            return _ndarray_type(extra)
        return NTScalar.buildType("a" + _NT_CODE[spec.ftvl], extra=extra, display=True, control=True, form=True)
    if spec.kind in (Kind.AI, Kind.AO):
        extra = [("version", "s")] if spec.version_field else []
        return NTScalar.buildType("d", extra=extra, display=True, control=True, valueAlarm=True, form=True)
    if spec.kind is Kind.LONGIN:
        return NTScalar.buildType("i", display=True, control=True, valueAlarm=True, form=True)
    if spec.kind.is_enum:
        return NTEnum.buildType(display=True)
    return NTScalar.buildType("s", display=True)


def _time(ts: float) -> dict[str, int]:
    sec = math.floor(ts)
    return {"secondsPastEpoch": int(sec), "nanoseconds": int((ts - sec) * 1e9)}


def _dimension(shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """NTNDArray ``dimension`` for a numpy shape, areaDetector order: [0] is the fastest-varying axis
    (an image's width), [1] the next (its height)."""
    return [{"size": int(n), "offset": 0, "fullSize": int(n), "binning": 1, "reverse": False} for n in reversed(shape)]


def _attributes(version: str) -> list[dict[str, Any]]:
    """NTNDArray attributes: ColorMode 0 (mono) as areaDetector clients expect, and the model version."""
    return [{"name": "ColorMode", "value": 0, "descriptor": "Color mode", "sourceType": 0, "source": ""},
            {"name": "ModelVersion", "value": version, "descriptor": "model version that made this frame",
             "sourceType": 0, "source": "mlioc"}]


def _metadata(spec: PVSpec) -> dict[str, Any]:
    if spec.kind.is_array:
        if len(spec.shape) == 2:
            return {}
        lo, hi = spec.display or (0.0, 0.0)
        return {"display": {"limitLow": lo, "limitHigh": hi, "description": spec.desc, "units": spec.egu,
                            "precision": spec.prec, "form": {"index": 0, "choices": FORM_CHOICES}},
                "control": {"limitLow": lo, "limitHigh": hi, "minStep": 0.0}}
    if spec.kind.is_numeric:
        lo, hi = spec.display or (0.0, 0.0)
        clo, chi = spec.control or spec.display or (0.0, 0.0)
        a = spec.alarm
        md: dict[str, Any] = {
            "display": {"limitLow": lo, "limitHigh": hi, "description": spec.desc, "units": spec.egu,
                        "precision": spec.prec, "form": {"index": 0, "choices": FORM_CHOICES}},
            "control": {"limitLow": clo, "limitHigh": chi, "minStep": 0.0},
            "valueAlarm": {
                "active": bool(a and a.active),
                "lowAlarmLimit": _nan(a.lolo if a else None),
                "lowWarningLimit": _nan(a.low if a else None),
                "highWarningLimit": _nan(a.high if a else None),
                "highAlarmLimit": _nan(a.hihi if a else None),
                "lowAlarmSeverity": int(a.llsv) if a and a.lolo is not None else 0,
                "lowWarningSeverity": int(a.lsv) if a and a.low is not None else 0,
                "highWarningSeverity": int(a.hsv) if a and a.high is not None else 0,
                "highAlarmSeverity": int(a.hhsv) if a and a.hihi is not None else 0,
                "hysteresis": float(a.hyst) if a else 0.0,
            },
        }
        if spec.kind is Kind.LONGIN:
            for section in ("display", "control"):
                for key in ("limitLow", "limitHigh", "minStep"):
                    if key in md[section]:
                        md[section][key] = int(md[section][key])
            va = md["valueAlarm"]
            for key in ("lowAlarmLimit", "lowWarningLimit", "highWarningLimit", "highAlarmLimit"):
                va[key] = 0 if math.isnan(va[key]) else int(va[key])
        return md
    if spec.kind.is_enum:
        return {"display": {"description": spec.desc}}
    return {"display": {"description": spec.desc, "units": spec.egu}}


def _converter(spec: PVSpec):
    """How a PV model value becomes this PV's ``value`` field."""
    if spec.kind.is_enum:
        return lambda v: {"index": int(v)}
    if spec.kind.is_array:
        if len(spec.shape) == 2:
            member = _UNION_MEMBER[spec.ftvl]
            return lambda v: (member, v.reshape(-1))
        return lambda v: v.reshape(-1)
    if spec.kind is Kind.LONGIN:
        return int
    if spec.kind in (Kind.AI, Kind.AO):
        return float
    return str


class _Handler:
    """PVA puts for one PV: unpack, then the shared write path of the PV database."""

    def __init__(self, db: PVDatabase, pv: PV):
        self.db = db
        self.pv = pv

    def put(self, shared: SharedPV, op) -> None:
        try:
            raw = op.value()
            if self.pv.spec.kind.is_enum:
                value = raw["value.index"] if raw.changed("value.index") else raw["value"]
            elif self.pv.spec.kind.is_array:
                value = _array_put(raw)
            else:
                value = raw["value"]
            account = op.account() if hasattr(op, "account") else ""
            peer = op.peer() if hasattr(op, "peer") else ""
            client = ClientInfo(user=account, host=host_of(peer) if peer else "", protocol="pva", address=peer)
            result = self.db.put(self.pv.name, value, client)
        except PutRejected as exc:
            op.done(error=str(exc))
            return
        except Exception as exc:  # never let a bad put reach pvxs as an unhandled exception
            log.exception("PVA put to %s failed", self.pv.name)
            op.done(error=f"put failed: {exc}")
            return
        if result is None:
            op.done()
            return

        async def finish():
            try:
                await result
            except PutRejected as exc:
                op.done(error=str(exc))
            except Exception as exc:
                log.exception("PVA put to %s failed", self.pv.name)
                op.done(error=f"put failed: {exc}")
            else:
                op.done()

        return finish()


def _array_put(raw: Value) -> Any:
    """The array a client wrote: an NTScalarArray's value, or an NTNDArray frame from its parts."""
    if is_ntndarray(raw):
        frame = frame_from_ntndarray(raw)
        if isinstance(frame, BadArray):
            raise PutRejected(frame.reason)
        return frame
    return raw["value"]


@dataclass(slots=True)
class _Target:
    """Where a PV's posts go, and what its PVA structure holds already (posted only when it changes)."""

    shared: SharedPV
    type: Type
    convert: Any
    tagged: bool
    array: int  # 0 scalar, 1 array, 2 image
    alarm: tuple  # (severity, status, message) last posted
    tag: str  # model version last posted


class PvaServer:
    """The p4p server for one PV database; create and start it inside the running event loop.

    Arrays: ``[n]`` is an NTScalarArray (``display``, ``control``); an image ``[h, w]`` an NTNDArray
    with ``dimension`` (areaDetector order), ``uniqueId`` (one more per new frame), ``timeStamp`` and
    ``dataTimeStamp``, and attributes ``ColorMode`` (0, mono) and ``ModelVersion``. A post hands p4p one
    copy of the array, shared by every subscriber (pvxs encodes it on its own threads).
    """

    def __init__(self, db: PVDatabase, *, port: int | None = None, broadcast_port: int | None = None,
                 interfaces: list[str] | None = None):
        self.db = db
        self.port_requested = port
        self.broadcast_port = broadcast_port
        self.interfaces = interfaces
        self.shared: dict[str, SharedPV] = {}
        self.types: dict[str, Type] = {}
        self._targets: dict[str, _Target] = {}
        self._frames: dict[str, list] = {}  # image PVs: [uniqueId, shape, version] of the last post
        self.server: Server | None = None
        self.provider: StaticProvider | None = None

    def _open(self, pv: PV) -> SharedPV:
        spec = pv.spec
        shared = SharedPV(handler=_Handler(self.db, pv))
        T = nt_type(spec)
        self.types[pv.name] = T
        reading = pv.reading
        initial = {
            "value": _converter(spec)(reading.value) if not spec.kind.is_enum
            else {"index": int(reading.value), "choices": list(spec.choices)},
            "alarm": {"severity": int(reading.severity), "status": pva_status(reading.status),
                      "message": pva_message(reading)},
            "timeStamp": _time(reading.timestamp),
            **_metadata(spec),
        }
        if spec.version_field:  # a model may have run before this server opened its PVs
            initial["version"] = reading.tag
        if spec.kind.is_array and len(spec.shape) == 2:
            initial.update(self._frame_fields(pv, reading, True))
        shared.open(Value(T, initial))
        return shared

    def _frame_fields(self, pv: PV, reading: Reading, new_value: bool) -> dict[str, Any]:
        """The NTNDArray fields a post of an image changes: uniqueId and dataTimeStamp with a new
        frame; dimension when its shape changes; the attributes when the model version does."""
        state = self._frames.setdefault(pv.name, [0, None, None])
        fields: dict[str, Any] = {}
        value = reading.value
        if new_value:
            state[0] += 1
            fields["uniqueId"] = state[0]
            fields["dataTimeStamp"] = _time(reading.timestamp)
            nbytes = int(value.nbytes)
            fields["compressedSize"] = fields["uncompressedSize"] = nbytes
        if value.shape != state[1]:
            state[1] = value.shape
            fields["dimension"] = _dimension(value.shape)
        if reading.tag != state[2]:
            state[2] = reading.tag
            fields["attribute"] = _attributes(reading.tag)
        return fields

    def _post(self, pv: PV, reading: Reading, events: int) -> None:
        """One update: the value and time stamp, and only what else changed (alarm, version, frame fields).
        pvxs keeps the PV's whole structure and sends subscribers the fields marked changed."""
        if not events & _POSTED or self.server is None:
            return
        t = self._targets[pv.name]
        update = t.type()
        array = t.array
        if array:  # an alarm-only post (e.g. outputs invalidated) does not copy the array again
            if array == 2:
                for key, value in self._frame_fields(pv, reading, bool(events & Event.VALUE)).items():
                    update[key] = value
            if events & Event.VALUE:
                update["value"] = t.convert(reading.value)
        else:
            update["value"] = t.convert(reading.value)
        if t.tagged and reading.tag != t.tag:
            t.tag = reading.tag
            update["version"] = reading.tag
        alarm = (reading.severity, reading.status, reading.message)
        if alarm != t.alarm:
            t.alarm = alarm
            status = reading.status
            update["alarm.severity"] = reading.severity
            update["alarm.status"] = _PVA_STATUS_LIST[status]
            update["alarm.message"] = pva_message(reading) if status else reading.message
        ts = reading.timestamp
        sec = int(ts // 1)
        update["timeStamp.secondsPastEpoch"] = sec
        update["timeStamp.nanoseconds"] = int((ts - sec) * 1e9)
        _raw_post(t.shared, update)

    def _on_spec(self, pv: PV, spec: PVSpec) -> None:
        if self.server is None:
            return
        RawSharedPV.post(self.shared[pv.name], Value(self.types[pv.name], _metadata(spec)))

    def _conf(self) -> dict[str, str]:
        conf: dict[str, str] = {}
        if self.port_requested is not None:
            conf["EPICS_PVAS_SERVER_PORT"] = str(self.port_requested)
        if self.broadcast_port is not None:
            conf["EPICS_PVAS_BROADCAST_PORT"] = str(self.broadcast_port)
        if self.interfaces is not None:
            conf["EPICS_PVAS_INTF_ADDR_LIST"] = " ".join(self.interfaces)
        return conf

    async def start(self) -> None:
        for pv in self.db:
            self.shared[pv.name] = self._open(pv)
            array = 2 if pv.name in self._frames else 1 if pv.spec.kind.is_array else 0  # image, array, scalar
            reading = pv.reading
            self._targets[pv.name] = _Target(self.shared[pv.name], self.types[pv.name], _converter(pv.spec),
                                             pv.spec.version_field, array,
                                             (reading.severity, reading.status, reading.message), reading.tag)
            pv.subscribe(self._post, self._on_spec)
        self.provider = StaticProvider("mlioc")
        for name, shared in self.shared.items():
            self.provider.add(name, shared)
        # pvxs warns "unable to bind port 5075, falling back to [::]:N" whenever another PVA server on
        # this host (the demo's simulator, a second IOC) has the TCP port. That is how EPICS hosts work,
        # not a fault: say so below in plain words instead.
        logger_level_set("pvxs.tcp.setup", logLevelError)
        self.server = Server(providers=[self.provider], conf=self._conf(), useenv=True)
        conf = self.server.conf()
        wanted = self._conf().get("EPICS_PVAS_SERVER_PORT") or os.environ.get("EPICS_PVAS_SERVER_PORT") or "5075"
        log.info("PVA server listening on %s, TCP port %s, UDP port %s",
                 conf.get("EPICS_PVAS_INTF_ADDR_LIST"), conf.get("EPICS_PVAS_SERVER_PORT"),
                 conf.get("EPICS_PVAS_BROADCAST_PORT"))
        if wanted not in ("0", conf.get("EPICS_PVAS_SERVER_PORT")):
            log.info("PVA TCP port %s is taken (another PVA server on this host); clients find this one on "
                     "port %s by the usual UDP search on port %s", wanted, conf.get("EPICS_PVAS_SERVER_PORT"),
                     conf.get("EPICS_PVAS_BROADCAST_PORT"))

    @property
    def port(self) -> int | None:
        if self.server is None:
            return None
        return int(self.server.conf().get("EPICS_PVAS_SERVER_PORT", 0)) or None

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        for shared in self.shared.values():
            shared.close()


def env_port(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value and value.isdigit() else None
