"""Channel Access adapter: serves a :class:`~ioc.core.pvmodel.PVDatabase` with caproto.

Thin by design. Each PV becomes one caproto ``ChannelData`` whose value, severity, status and
timestamp are copied from the PV model on every post; the record fields EPICS tools read
(``.EGU``, ``.DESC``, ``.PREC``, ``.HOPR``, ``.HIHI``, ``.HHSV``, ``.SEVR``, ``.NAME``, ``.RTYP``, ...)
are served as their own channels. Client writes go to :meth:`PVDatabase.put`, never straight into
caproto's state, so a write is validated, access-checked and audited exactly as over PVA.

Three deliberate departures from caproto's own write/publish path:

* alarms are never computed by caproto (it shares one alarm per PVGroup and treats an unset lower
  limit as 0); the PV model computes them and we copy them in;
* a post is delivered synchronously (the publish coroutine never suspends: the context's queue is
  unbounded), which saves a task per update on the hot path;
* updates honour the subscriber's event mask (DBE_VALUE / DBE_LOG / DBE_ALARM / DBE_PROPERTY),
  which caproto ignores, so MDEL/ADEL deadbands and archive-only events behave as in an EPICS IOC.

A waveform PV (an array ``[n]`` or an image ``[h, w]``) is a ``waveform`` record: its value served
flat (row-major), FTVL DOUBLE/FLOAT/LONG, with ``.NELM``, ``.NORD``, ``.FTVL``, ``.EGU``, ``.PREC``,
``.HOPR``, ``.LOPR``; a put carries every element.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
from collections.abc import Coroutine
from typing import Any

from caproto import (
    AccessRights,
    AlarmSeverity,
    AlarmStatus,
    ChannelData,
    ChannelDouble,
    ChannelEnum,
    ChannelFloat,
    ChannelInteger,
    ChannelString,
    ChannelType,
)
from caproto._data import SubscriptionUpdate
from caproto._dbr import TimeStamp, _channel_type_by_name, native_type

from ioc.core.pvmodel import (
    PV,
    ClientInfo,
    Event,
    Kind,
    PutRejected,
    PVDatabase,
    PVSpec,
    Reading,
    Severity,
    Status,
)
from ioc.protocols.caproto_fixes import FastContext, fan_out, install_log_filters, register_context, unregister_context

log = logging.getLogger("mlioc.ca")

SEVERITY_CHOICES = tuple(s.name for s in Severity)
STATUS_CHOICES = tuple(s.name for s in Status)
SCAN_CHOICES = ("Passive", "Event", "I/O Intr", "10 second", "5 second", "2 second", "1 second",
                ".5 second", ".2 second", ".1 second")
MBBI_PREFIXES = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
# menuFtype: a waveform's FTVL, served as an enum as an EPICS IOC serves it (caget X.FTVL -> DOUBLE)
FTYPE_CHOICES = ("STRING", "CHAR", "UCHAR", "SHORT", "USHORT", "LONG", "ULONG", "INT64", "UINT64", "FLOAT", "DOUBLE",
                 "ENUM")


def drive(coro: Coroutine) -> Any:
    """Run a coroutine that never suspends to completion, synchronously."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a caproto coroutine suspended on the synchronous publish path")


class _MaskedPublish:
    """Deliver updates only to subscriptions whose event mask matches (caproto ignores masks)."""

    async def publish(self, flags):
        self._content.clear()
        for queue, syncs in self._queues.items():
            for sync, data_types in syncs.items():
                for data_type_name, sub_specs in data_types.items():
                    eligible = tuple(ss for ss in sub_specs if (ss.mask & flags) and self._is_eligible(ss))
                    if not eligible:
                        continue
                    channel_data = self if sync is None else self._snapshots[sync.s].get(sync.m)
                    if channel_data is None:
                        continue
                    try:
                        metadata, values = self._content[data_type_name]
                    except KeyError:
                        metadata, values = await channel_data._read(_channel_type_by_name[data_type_name])
                        self._content[data_type_name] = metadata, values
                    update = SubscriptionUpdate(eligible, metadata, values, flags, None)
                    if not fan_out(queue, update):
                        await queue.put(update)

    def publish_now(self, flags: int) -> None:
        if self._queues:
            drive(self.publish(flags))


class _Field(_MaskedPublish):
    """A record field served as its own channel; read-only, and readable by whoever may read the record."""

    _main: _Bridge | None = None

    def check_access(self, hostname, username):
        if self._main is None:
            return AccessRights.READ
        return self._main.check_access(hostname, username) & AccessRights.READ

    def set(self, value: Any) -> None:
        if self._data["value"] != value:
            self._data["value"] = value
            self.publish_now(Event.VALUE | Event.LOG)


class _FieldDouble(_Field, ChannelDouble):
    pass


class _FieldInteger(_Field, ChannelInteger):
    pass


class _FieldString(_Field, ChannelString):
    pass


class _FieldEnum(_Field, ChannelEnum):
    pass


class _Bridge(_MaskedPublish):
    """The main channel of a PV: state copied from the PV model, writes sent to the PV database."""

    _pv: PV
    _db: PVDatabase
    _sevr: _FieldEnum
    _stat: _FieldString

    def check_access(self, hostname, username):
        rights = AccessRights.NO_ACCESS
        if self._db.can_read(self._pv, username or "", hostname or ""):
            rights |= AccessRights.READ
            if self._db.can_write(self._pv, username or "", hostname or ""):
                rights |= AccessRights.WRITE
        return rights

    async def auth_write(self, hostname, username, data, data_type, metadata, *, flags=0, user_address=None):
        if data_type in (ChannelType.PUT_ACKT, ChannelType.PUT_ACKS):
            return await super().auth_write(hostname, username, data, data_type, metadata, flags=flags,
                                            user_address=user_address)
        address = f"{user_address[0]}:{user_address[1]}" if user_address else ""
        client = ClientInfo(user=username or "", host=hostname or "", protocol="ca", address=address)
        value = self._decode_put(data, data_type)
        result = self._db.put(self._pv.name, value, client)
        if inspect.isawaitable(result):
            await result

    def apply(self, pv: PV, reading: Reading, events: Event) -> None:
        data = self._data
        data["value"] = self._to_channel(reading.value)
        data["timestamp"] = TimeStamp.from_unix_timestamp(reading.timestamp)
        alarm = self.alarm._data
        if alarm["severity"] != reading.severity or alarm["status"] != reading.status:
            alarm["status"] = AlarmStatus(reading.status)
            alarm["severity"] = AlarmSeverity(reading.severity)
            if not alarm["must_acknowledge_transient"] or alarm["severity_to_acknowledge"] < reading.severity:
                alarm["severity_to_acknowledge"] = AlarmSeverity(reading.severity)
            self._sevr.set(SEVERITY_CHOICES[reading.severity])
            self._stat.set(STATUS_CHOICES[reading.status])
        if events:
            self.publish_now(int(events))

    def _to_channel(self, value: Any) -> Any:
        return value

    def _decode_put(self, data: Any, data_type: ChannelType) -> Any:
        return _decode(data, data_type, self.string_encoding)


class _Waveform(_Bridge):
    """A waveform record: the value is served flat (an image row-major, h*w elements), ``.NORD``
    follows its current length. caproto converts it to the wire type once per post and data type
    (``_content``), shared by every subscriber asking for that type."""

    _nord: _FieldInteger

    def _to_channel(self, value: Any) -> Any:
        flat = value.reshape(-1)
        if flat.size > self._max_length:  # a source frame larger than NELM: what fits, as a record would
            flat = flat[: self._max_length]
        if flat.size != self._nord.value:
            self._nord.set(flat.size)
        return flat

    def _decode_put(self, data: Any, data_type: ChannelType) -> Any:
        if native_type(data_type) in (ChannelType.STRING, ChannelType.CHAR):
            return _decode(data, data_type, self.string_encoding)  # refused by the PV's coercion
        return data  # every element (the PV copies it into its own array)


class _CaWaveDouble(_Waveform, ChannelDouble):
    pass


class _CaWaveFloat(_Waveform, ChannelFloat):
    pass


class _CaWaveLong(_Waveform, ChannelInteger):
    pass


_WAVEFORMS: dict[str, type[_Waveform]] = {"DOUBLE": _CaWaveDouble, "FLOAT": _CaWaveFloat, "LONG": _CaWaveLong}


class _CaDouble(_Bridge, ChannelDouble):
    pass


class _CaInteger(_Bridge, ChannelInteger):
    pass


class _CaString(_Bridge, ChannelString):
    pass


class _CaEnum(_Bridge, ChannelEnum):
    def _to_channel(self, value: Any) -> Any:
        try:
            return self.enum_strings[value]
        except (IndexError, TypeError):
            return value


def _decode(data: Any, data_type: ChannelType, encoding: str) -> Any:
    """A CA put payload -> one Python value (numbers stay numbers, strings stay strings)."""
    native = native_type(data_type)
    if native == ChannelType.STRING:
        first = data[0] if len(data) else b""
        return first.decode(encoding) if isinstance(first, bytes) else str(first)
    if native == ChannelType.CHAR:
        raw = bytes(data).split(b"\0", 1)[0]
        return raw.decode(encoding)
    if not len(data):
        raise PutRejected("empty put")
    first = data[0]
    return first.item() if hasattr(first, "item") else first


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _limit_metadata(spec: PVSpec) -> dict[str, Any]:
    """DBR_GR/DBR_CTRL metadata: units, precision, display, control and alarm limits."""
    lo, hi = spec.display or (0.0, 0.0)
    clo, chi = spec.control or spec.display or (0.0, 0.0)
    a = spec.alarm
    md: dict[str, Any] = dict(units=spec.egu, lower_disp_limit=lo, upper_disp_limit=hi,
                              lower_ctrl_limit=clo, upper_ctrl_limit=chi)
    if spec.kind is Kind.LONGIN or (spec.ftvl == "LONG" and spec.kind.is_array):
        md = {k: (int(v) if isinstance(v, float) else v) for k, v in md.items()}
        md.update(lower_alarm_limit=0, lower_warning_limit=0, upper_warning_limit=0, upper_alarm_limit=0)
        if a is not None:
            md.update(lower_alarm_limit=int(a.lolo or 0), lower_warning_limit=int(a.low or 0),
                      upper_warning_limit=int(a.high or 0), upper_alarm_limit=int(a.hihi or 0))
        return md
    # EPICS 7 reports a disabled alarm limit as NaN in DBR_GR/DBR_CTRL.
    md.update(
        lower_alarm_limit=_nan_if_none(a.lolo if a else None),
        lower_warning_limit=_nan_if_none(a.low if a else None),
        upper_warning_limit=_nan_if_none(a.high if a else None),
        upper_alarm_limit=_nan_if_none(a.hihi if a else None),
    )
    return md


SUBSCRIPTION_BACKLOG_BYTES = 8 << 20  # per CA subscription of a waveform


def subscription_backlog(spec: PVSpec) -> int:
    """How many updates caproto may keep per subscription of this waveform.

    caproto keeps the last ``max_subscription_backlog`` updates of every subscription (1000 by
    default) in a deque, sent or not: for a 1 MB image that is 1 GB per subscriber, and the IOC's
    memory grows by a frame per post until it gets there (measured: +30 MB/s at 30 Hz). Bounded by
    bytes instead; a client too slow for the frame rate gets the newest frames, older ones are dropped.
    """
    return max(2, min(1000, SUBSCRIPTION_BACKLOG_BYTES // max(1, spec.nelm * spec.dtype.itemsize)))


def _main_channel(pv: PV, db: PVDatabase) -> _Bridge:
    spec = pv.spec
    common = dict(reported_record_type=spec.kind.value)
    if spec.kind in (Kind.AI, Kind.AO):
        value = float(spec.initial)
        ch: _Bridge = _CaDouble(value=value, precision=spec.prec, **_limit_metadata(spec), **common)
    elif spec.kind is Kind.LONGIN:
        ch = _CaInteger(value=int(spec.initial), **_limit_metadata(spec), **common)
    elif spec.kind.is_array:
        kw = {"precision": spec.prec} if spec.ftvl != "LONG" else {}
        ch = _WAVEFORMS[spec.ftvl](value=spec.initial_value().reshape(-1), max_length=spec.nelm,
                                   max_subscription_backlog=subscription_backlog(spec), **_limit_metadata(spec),
                                   **kw, **common)
    elif spec.kind.is_enum:
        ch = _CaEnum(value=spec.choices[int(spec.initial)], enum_strings=list(spec.choices), **common)
    else:
        ch = _CaString(value=str(spec.initial), **common)
    ch._pv = pv
    ch._db = db
    return ch


def _enum_field(value: str, choices: tuple[str, ...]) -> _FieldEnum:
    return _FieldEnum(value=value, enum_strings=list(choices))


def _string_field(value: str) -> _FieldString:
    return _FieldString(value=value[:39])


def _double_field(value: float | None, spec: PVSpec | None = None) -> _FieldDouble:
    kw = {}
    if spec is not None:
        kw = dict(precision=spec.prec, units=spec.egu)
    return _FieldDouble(value=0.0 if value is None else float(value), **kw)


def _display_fields(spec: PVSpec) -> dict[str, ChannelData]:
    """.EGU, .PREC, .HOPR, .LOPR of a number or a waveform."""
    lo, hi = spec.display or (0.0, 0.0)
    return dict(EGU=_string_field(spec.egu), PREC=_FieldInteger(value=spec.prec), HOPR=_double_field(hi, spec),
                LOPR=_double_field(lo, spec))


def _fields(spec: PVSpec, main: _Bridge) -> dict[str, ChannelData]:
    """The record fields served for one PV, keyed by field name."""
    f: dict[str, ChannelData] = {
        "VAL": main,
        "NAME": _string_field(spec.name),
        "RTYP": _string_field(spec.kind.value),
        "DESC": _string_field(spec.desc),
        "SCAN": _enum_field(spec.scan if spec.scan in SCAN_CHOICES else "Passive", SCAN_CHOICES),
        "ASG": _string_field(spec.asg),
        "SEVR": _enum_field("INVALID", SEVERITY_CHOICES),
        # STAT has 22 states; a CA enum carries at most 16, so it is served as its string (as caget shows it).
        "STAT": _string_field("UDF"),
    }
    if spec.kind.is_numeric:
        a = spec.alarm
        f.update(
            **_display_fields(spec),
            HIHI=_double_field(a.hihi if a else None, spec),
            HIGH=_double_field(a.high if a else None, spec),
            LOW=_double_field(a.low if a else None, spec),
            LOLO=_double_field(a.lolo if a else None, spec),
            HHSV=_enum_field(a.hhsv.name if a and a.hihi is not None else "NO_ALARM", SEVERITY_CHOICES),
            HSV=_enum_field(a.hsv.name if a and a.high is not None else "NO_ALARM", SEVERITY_CHOICES),
            LSV=_enum_field(a.lsv.name if a and a.low is not None else "NO_ALARM", SEVERITY_CHOICES),
            LLSV=_enum_field(a.llsv.name if a and a.lolo is not None else "NO_ALARM", SEVERITY_CHOICES),
            HYST=_double_field(a.hyst if a else 0.0, spec),
            MDEL=_double_field(spec.mdel, spec),
            ADEL=_double_field(spec.adel, spec),
        )
        if spec.kind is Kind.AO:
            clo, chi = spec.control or spec.display or (0.0, 0.0)
            f.update(DRVH=_double_field(chi, spec), DRVL=_double_field(clo, spec))
    elif spec.kind.is_array:
        f.update(
            **_display_fields(spec),
            NELM=_FieldInteger(value=spec.nelm),
            NORD=_FieldInteger(value=spec.nelm),
            FTVL=_enum_field(spec.ftvl, FTYPE_CHOICES),
        )
    elif spec.kind is Kind.BO:
        f.update(ZNAM=_string_field(spec.choices[0]), ONAM=_string_field(spec.choices[1]))
        sev = spec.choice_severities or (Severity.NO_ALARM, Severity.NO_ALARM)
        f.update(ZSV=_enum_field(sev[0].name, SEVERITY_CHOICES), OSV=_enum_field(sev[1].name, SEVERITY_CHOICES))
    elif spec.kind is Kind.MBBI:
        sevs = spec.choice_severities or tuple(Severity.NO_ALARM for _ in spec.choices)
        for prefix, choice, sev in zip(MBBI_PREFIXES, spec.choices, sevs, strict=False):
            f[f"{prefix}ST"] = _string_field(choice)
            f[f"{prefix}SV"] = _enum_field(sev.name, SEVERITY_CHOICES)
    return f


class CaServer:
    """The caproto server for one PV database."""

    def __init__(self, db: PVDatabase, *, port: int | None = None, interfaces: list[str] | None = None):
        self.db = db
        self.requested_port = port
        self.interfaces = interfaces
        self.pvdb: dict[str, ChannelData] = {}
        self._fields: dict[str, dict[str, ChannelData]] = {}
        for pv in db:
            main = _main_channel(pv, db)
            fields = _fields(pv.spec, main)
            main._sevr, main._stat = fields["SEVR"], fields["STAT"]
            if isinstance(main, _Waveform):
                main._nord = fields["NORD"]
            self.pvdb[pv.name] = main
            for fname, channel in fields.items():
                self.pvdb[f"{pv.name}.{fname}"] = channel
                if channel is not main:
                    channel._main = main  # .SEVR, .HIHI, .EGU ... follow the record's read rule
            self._fields[pv.name] = fields
            pv.subscribe(main.apply, self._on_spec)
            main.apply(pv, pv.reading, Event.NONE)
        self.context: FastContext | None = None
        self._task: asyncio.Task | None = None

    def _on_spec(self, pv: PV, spec: PVSpec) -> None:
        """Metadata changed at run time: refresh DBR_CTRL data and the limit fields."""
        main = self.pvdb[pv.name]
        if spec.kind.is_numeric:
            for key, value in _limit_metadata(spec).items():
                if key in main._data:
                    main._data[key] = value
            fields = _fields(spec, main)
            for fname in ("HIHI", "HIGH", "LOW", "LOLO", "HHSV", "HSV", "LSV", "LLSV", "HOPR", "LOPR", "EGU",
                          "DESC", "HYST", "MDEL", "ADEL"):
                self._fields[pv.name][fname].set(fields[fname].value)
            main.publish_now(Event.PROPERTY)

    @property
    def port(self) -> int | None:
        return self.context.port if self.context is not None else None

    async def start(self, timeout: float = 10.0) -> None:
        """Bind and start serving; returns once the server really listens (raises if it cannot)."""
        if self.requested_port is not None:
            os.environ["EPICS_CA_SERVER_PORT"] = str(self.requested_port)
        interfaces = self.interfaces
        if interfaces is None:
            env = os.environ.get("EPICS_CAS_INTF_ADDR_LIST", "").split()
            interfaces = env or ["0.0.0.0"]
        install_log_filters()
        self.context = FastContext(self.pvdb, interfaces)
        register_context(self.context)
        self._task = asyncio.get_running_loop().create_task(self.context.run(), name="ca-server")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.context.port and len(self.context.udp_socks) == len(interfaces)):
            if self._task.done():
                exc = self._task.exception()
                raise RuntimeError(f"CA server failed to start: {exc}") from exc
            if loop.time() > deadline:
                raise RuntimeError("CA server did not start in time")
            await asyncio.sleep(0.005)
        log.info("CA server listening on %s, TCP port %d, UDP port %d", ",".join(interfaces),
                 self.context.port, self.context.ca_server_port)

    async def stop(self) -> None:
        if self.context is not None:
            unregister_context(self.context)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
