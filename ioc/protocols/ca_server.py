"""Channel Access adapter: serves a :class:`~ioc.core.pvmodel.PVDatabase` with our CA server (:mod:`ioc.protocols.ca`).

Thin by design. Each PV is a record: its main channel (``NAME`` and ``NAME.VAL``) reads the PV model's
current reading when a client asks or a monitor must be sent, never before, so a PV nobody monitors
costs one counter increment per post. The record fields EPICS tools read (``.EGU``, ``.DESC``,
``.PREC``, ``.HOPR``, ``.HIHI``, ``.HHSV``, ``.SEVR``, ``.STAT``, ``.NAME``, ``.RTYP``, ...) are channels of
their own, derived from the PV's spec and reading; like an EPICS IOC, a field read carries the record's
alarm and time stamp. Client writes go to :meth:`PVDatabase.put`, so a write is validated,
access-checked and audited exactly as over PVA; a refused write answers ECA_PUTFAIL (ECA_NOWTACCESS
when the access policy refused it), and a write whose handler returns an awaitable (a PROMOTE that
loads a model) is answered when it completes.

Alarms are the PV model's (never computed here); monitors honour the subscriber's event mask
(DBE_VALUE / DBE_LOG / DBE_ALARM / DBE_PROPERTY), so MDEL/ADEL deadbands and archive-only events
behave as in an EPICS IOC. ``.SEVR``, ``.STAT`` and a waveform's ``.NORD`` post when they change.
Alarm acknowledgement (DBR_PUT_ACKT / DBR_PUT_ACKS, read back with DBR_STSACK_STRING) follows
recGblResetAlarms.

A waveform PV (an array ``[n]`` or an image ``[h, w]``) is a ``waveform`` record: its value served
flat (row-major), FTVL DOUBLE/FLOAT/LONG, with ``.NELM``, ``.NORD``, ``.FTVL``, ``.EGU``, ``.PREC``,
``.HOPR``, ``.LOPR``; a put carries every element.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable
from typing import Any

import numpy as np

from ioc.core.pvmodel import (
    PV,
    AccessDenied,
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
from ioc.protocols.ca import wire
from ioc.protocols.ca.server import CaRefused, Channel, Config, Peer, Server

log = logging.getLogger("mlioc.ca")
audit_log = logging.getLogger("mlioc.audit")

SEVERITY_CHOICES = tuple(s.name for s in Severity)
STATUS_CHOICES = tuple(s.name for s in Status)
SCAN_CHOICES = ("Passive", "Event", "I/O Intr", "10 second", "5 second", "2 second", "1 second",
                ".5 second", ".2 second", ".1 second")
MBBI_PREFIXES = ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV", "EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
# menuFtype: a waveform's FTVL, served as an enum as an EPICS IOC serves it (caget X.FTVL -> DOUBLE)
FTYPE_CHOICES = ("STRING", "CHAR", "UCHAR", "SHORT", "USHORT", "LONG", "ULONG", "INT64", "UINT64", "FLOAT", "DOUBLE",
                 "ENUM")
_NATIVE_OF_FTVL = {"DOUBLE": wire.DOUBLE, "FLOAT": wire.FLOAT, "LONG": wire.LONG}
_CHANGED = int(Event.VALUE | Event.LOG)  # what a field's change posts
_ONE_NUMBER = frozenset((wire.SHORT, wire.FLOAT, wire.ENUM, wire.LONG, wire.DOUBLE))
_MAX_INT = (1 << 31) - 1


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def limit_meta(spec: PVSpec) -> wire.Meta:
    """DBR_GR/DBR_CTRL metadata of a PV: units, precision, display, alarm and control limits, enum strings.

    EPICS 7 reports a disabled alarm limit as NaN for floating-point records, 0 for integer ones.
    """
    if spec.kind.is_enum:
        return wire.Meta(enum_strings=spec.choices, record_type=spec.kind.value)
    if not (spec.kind.is_numeric or spec.kind.is_array):
        return wire.Meta(record_type=spec.kind.value)
    lo, hi = spec.display or (0.0, 0.0)
    clo, chi = spec.control or spec.display or (0.0, 0.0)
    a = spec.alarm
    alarms = [a.hihi, a.high, a.low, a.lolo] if a is not None else [None] * 4
    integer = spec.kind is Kind.LONGIN or (spec.kind.is_array and spec.ftvl == "LONG")
    if integer:
        limits = [float(int(v)) for v in (hi, lo)] + [float(int(v or 0)) for v in alarms] + \
                 [float(int(v)) for v in (chi, clo)]
        precision = 0
    else:
        limits = [float(hi), float(lo)] + [_nan_if_none(v) for v in alarms] + [float(chi), float(clo)]
        precision = spec.prec
    return wire.Meta(units=spec.egu, precision=precision, limits=tuple(limits),  # type: ignore[arg-type]
                     record_type=spec.kind.value)


def _native(spec: PVSpec) -> int:
    if spec.kind in (Kind.AI, Kind.AO):
        return wire.DOUBLE
    if spec.kind is Kind.LONGIN:
        return wire.LONG
    if spec.kind.is_array:
        return _NATIVE_OF_FTVL[spec.ftvl]
    if spec.kind.is_enum:
        return wire.ENUM
    return wire.STRING


# ------------------------------------------------------------------------------------------ fields

# A field: (native type, value from the spec, metadata kind). Metadata kinds: "" none, "pv" the PV's
# precision and units (limits and deadbands read like the value), "sevr"/"scan"/"ftvl" enum strings.
FieldDef = tuple[int, Any, str]
_ENUMS = {"sevr": SEVERITY_CHOICES, "scan": SCAN_CHOICES, "ftvl": FTYPE_CHOICES}


def _severity_field(name: str) -> FieldDef:
    return wire.ENUM, SEVERITY_CHOICES.index(name), "sevr"


def _double(value: float | None) -> FieldDef:
    return wire.DOUBLE, 0.0 if value is None else float(value), "pv"


def field_defs(spec: PVSpec) -> dict[str, FieldDef]:
    """The record fields served for one PV (besides VAL), with their values from the spec.

    ``SEVR``, ``STAT`` (and a waveform's ``NORD``) are listed too; their values come from the reading.
    ``STAT`` has 22 states and a CA enum at most 16, so it is served as its string (as caget shows it).
    """
    f: dict[str, FieldDef] = {
        "NAME": (wire.STRING, spec.name, ""),
        "RTYP": (wire.STRING, spec.kind.value, ""),
        "DESC": (wire.STRING, spec.desc, ""),
        "SCAN": (wire.ENUM, SCAN_CHOICES.index(spec.scan) if spec.scan in SCAN_CHOICES else 0, "scan"),
        "ASG": (wire.STRING, spec.asg, ""),
        "SEVR": (wire.ENUM, 0, "sevr"),
        "STAT": (wire.STRING, "", ""),
    }
    if spec.kind.is_numeric or spec.kind.is_array:
        lo, hi = spec.display or (0.0, 0.0)
        f.update(EGU=(wire.STRING, spec.egu, ""), PREC=(wire.LONG, spec.prec, ""), HOPR=_double(hi),
                 LOPR=_double(lo))
    if spec.kind.is_numeric:
        a = spec.alarm
        f.update(
            HIHI=_double(a.hihi if a else None), HIGH=_double(a.high if a else None),
            LOW=_double(a.low if a else None), LOLO=_double(a.lolo if a else None),
            HHSV=_severity_field(a.hhsv.name if a and a.hihi is not None else "NO_ALARM"),
            HSV=_severity_field(a.hsv.name if a and a.high is not None else "NO_ALARM"),
            LSV=_severity_field(a.lsv.name if a and a.low is not None else "NO_ALARM"),
            LLSV=_severity_field(a.llsv.name if a and a.lolo is not None else "NO_ALARM"),
            HYST=_double(a.hyst if a else 0.0), MDEL=_double(spec.mdel), ADEL=_double(spec.adel),
        )
        if spec.kind is Kind.AO:
            clo, chi = spec.control or spec.display or (0.0, 0.0)
            f.update(DRVH=_double(chi), DRVL=_double(clo))
    elif spec.kind.is_array:
        f.update(NELM=(wire.LONG, spec.nelm, ""), NORD=(wire.LONG, spec.nelm, ""),
                 FTVL=(wire.ENUM, FTYPE_CHOICES.index(spec.ftvl), "ftvl"))
    elif spec.kind is Kind.BO:
        zo = spec.choice_severities or (Severity.NO_ALARM, Severity.NO_ALARM)
        f.update(ZNAM=(wire.STRING, spec.choices[0], ""), ONAM=(wire.STRING, spec.choices[1], ""),
                 ZSV=_severity_field(zo[0].name), OSV=_severity_field(zo[1].name))
    elif spec.kind is Kind.MBBI:
        sevs = spec.choice_severities or tuple(Severity.NO_ALARM for _ in spec.choices)
        for prefix, choice, sev in zip(MBBI_PREFIXES, spec.choices, sevs, strict=False):
            f[f"{prefix}ST"] = (wire.STRING, choice, "")
            f[f"{prefix}SV"] = _severity_field(sev.name)
    return f


def _field_meta(kind: str, spec: PVSpec) -> wire.Meta:
    if kind == "pv":
        return wire.Meta(units=spec.egu, precision=spec.prec, record_type=spec.kind.value)
    return wire.Meta(enum_strings=_ENUMS.get(kind, ()), record_type=spec.kind.value)


# ------------------------------------------------------------------------------------------ channels

def _as_long(value: Any) -> int:
    if value.__class__ is int:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0
    return min(_MAX_INT, max(-_MAX_INT - 1, int(number))) if math.isfinite(number) else 0


class _Main(Channel):
    """A PV's value channel: what ``NAME`` and ``NAME.VAL`` serve."""

    __slots__ = ("record", "static_meta")

    def __init__(self, record: _Record):
        spec = record.pv.spec
        super().__init__(spec.name, _native(spec), spec.nelm)
        self.record = record
        self.static_meta = limit_meta(spec)

    def state(self) -> tuple[Any, int, int, float]:
        r = self.record.pv.reading
        value = r.value
        if self.record.array:
            value = self.record.flat(value)
        elif self.native == wire.LONG:
            value = _as_long(value)
        return value, r.severity, r.status, r.timestamp

    def meta(self) -> wire.Meta:
        return self.static_meta

    def generation(self) -> int:
        return self.record.gen

    def length(self) -> int:
        return self.record.length()

    def ack(self) -> tuple[int, int]:
        return int(self.record.ackt), self.record.acks

    def rights(self, peer: Peer) -> int:
        return self.record.rights(peer)

    def write(self, dbr_type: int, count: int, payload: bytes, peer: Peer) -> Awaitable[Any] | None:
        return self.record.write(dbr_type, count, payload, peer)


class _Field(Channel):
    """One record field, e.g. ``NAME.HIHI``: read-only, readable by whoever may read the record."""

    __slots__ = ("fname", "record", "static_meta")

    def __init__(self, record: _Record, fname: str, native: int, meta: wire.Meta):
        super().__init__(f"{record.pv.name}.{fname}", native)
        self.record = record
        self.fname = fname
        self.static_meta = meta

    def state(self) -> tuple[Any, int, int, float]:
        r = self.record.pv.reading
        return self.record.field_value(self.fname, r), r.severity, r.status, r.timestamp

    def meta(self) -> wire.Meta:
        return self.static_meta

    def generation(self) -> int:
        return self.record.gen

    def rights(self, peer: Peer) -> int:
        return self.record.rights(peer) & wire.ACCESS_READ


class _Record:
    """One PV as CA serves it: the main channel and its fields. ``gen`` counts changes (posts, spec
    changes); a channel's encodings are reused until it moves."""

    def __init__(self, pv: PV, db: PVDatabase):
        self.pv = pv
        self.db = db
        self.server: Server | None = None
        self.gen = 0
        self.array = pv.spec.kind.is_array
        self.ackt = True  # ACKT: transient alarms must be acknowledged
        self.acks = 0  # ACKS: the highest unacknowledged severity
        self._alarm = (pv.reading.severity, pv.reading.status)
        self._nord = self.length()
        self.main = _Main(self)
        defs = field_defs(pv.spec)
        self.static = {name: value for name, (_, value, _) in defs.items()}
        self.fields = {name: _Field(self, name, native, _field_meta(kind, pv.spec))
                       for name, (native, _, kind) in defs.items()}

    def channels(self) -> dict[str, Channel]:
        out: dict[str, Channel] = {self.pv.name: self.main, f"{self.pv.name}.VAL": self.main}
        out.update((f"{self.pv.name}.{name}", channel) for name, channel in self.fields.items())
        return out

    # ---- values
    def flat(self, value: Any) -> Any:
        """A waveform's value as served: flat (an image row-major), at most NELM elements (what fits of a
        larger source frame, as a record would)."""
        flat = value.reshape(-1)
        nelm = self.main.nelm
        return flat[:nelm] if flat.size > nelm else flat

    def length(self) -> int:
        if not self.array:
            return 1
        value = self.pv.reading.value
        return min(int(np.size(value)), self.pv.spec.nelm)

    def field_value(self, fname: str, reading: Reading) -> Any:
        if fname == "SEVR":
            return int(reading.severity)
        if fname == "STAT":
            return STATUS_CHOICES[reading.status]
        if fname == "NORD":
            return self.length()
        return self.static[fname]

    # ---- access and writes
    def rights(self, peer: Peer) -> int:
        rights = 0
        if self.db.can_read(self.pv, peer.user, peer.host):
            rights = wire.ACCESS_READ
            if self.db.can_write(self.pv, peer.user, peer.host):
                rights |= wire.ACCESS_WRITE
        return rights

    def write(self, dbr_type: int, count: int, payload: bytes, peer: Peer) -> Awaitable[Any] | None:
        if count == 1 and dbr_type in _ONE_NUMBER and not self.array:
            value = wire.decode_number(dbr_type, payload)
        else:
            values = wire.decode(dbr_type, count, payload)
            if dbr_type in (wire.PUT_ACKT, wire.PUT_ACKS):
                self._acknowledge(dbr_type, int(values[0]), peer)
                return None
            value = self._put_value(values, dbr_type)
        client = ClientInfo(user=peer.user, host=peer.host, protocol="ca", address=f"{peer.host}:{peer.port}")
        name = self.pv.name
        try:
            result = self.db.put(name, value, client)
        except AccessDenied as exc:
            raise CaRefused(wire.ECA_NOWTACCESS, str(exc)) from None
        except PutRejected as exc:
            raise CaRefused(wire.ECA_PUTFAIL, str(exc)) from None
        if result is None or not inspect.isawaitable(result):
            return None
        return _complete(result, name)

    def _put_value(self, values: list[str] | np.ndarray, dbr_type: int) -> Any:
        """A put's payload as one Python value for the PV's coercion: numbers stay numbers, strings strings."""
        if isinstance(values, list):  # DBR_STRING
            return values[0]
        if dbr_type == wire.CHAR:  # caput -S: a string as a char array (a waveform refuses it as text)
            return bytes(values).split(b"\0", 1)[0].decode("latin-1")
        if self.array:
            return values  # every element (the PV copies them into its own array)
        return values[0].item()

    def _acknowledge(self, dbr_type: int, value: int, peer: Peer) -> None:
        """DBR_PUT_ACKT / DBR_PUT_ACKS as recGbl does: ACKS >= the unacknowledged severity acknowledges it;
        ACKT off lowers ACKS to the current severity. Logged as the operator action it is."""
        severity = int(self.pv.reading.severity)
        if dbr_type == wire.PUT_ACKS:
            what = f"acknowledged {SEVERITY_CHOICES[min(value, 3)]}"
            if value >= self.acks:
                self.acks = 0
        else:
            what = f"ACKT {value}"
            self.ackt = bool(value)
            if not self.ackt and self.acks > severity:
                self.acks = severity
        self.gen += 1
        audit_log.info("alarm %s: %s by %s@%s (ca %s:%d)", self.pv.name, what, peer.user, peer.host, peer.host,
                       peer.port)

    # ---- the PV model's listeners
    def on_post(self, pv: PV, reading: Reading, events: int) -> None:
        self.gen += 1
        # ACKS first, as recGblResetAlarms does before the record posts: the update that raises an alarm
        # (DBR_STSACK_STRING, encoded once for this generation) must carry the severity to acknowledge.
        severity = reading.severity
        alarm = (severity, reading.status)
        old_severity = self._alarm[0]
        alarm_changed = alarm != self._alarm
        if alarm_changed:
            self._alarm = alarm
            if severity != old_severity and (not self.ackt or severity >= self.acks):
                self.acks = int(severity)
        server = self.server
        if server is None:
            return
        main = self.main
        if events and main.subs:
            server.post(main, events)
        if alarm_changed:
            fields = self.fields
            if fields["SEVR"].subs and severity != old_severity:
                server.post(fields["SEVR"], _CHANGED)
            if fields["STAT"].subs:
                server.post(fields["STAT"], _CHANGED)
        if self.array:
            nord = self.length()
            if nord != self._nord:
                self._nord = nord
                if self.fields["NORD"].subs:
                    server.post(self.fields["NORD"], _CHANGED)

    def on_spec(self, pv: PV, spec: PVSpec) -> None:
        """Metadata changed at run time (limits from a new model's reference): new DBR_CTRL data and fields."""
        self.gen += 1
        self.main.static_meta = limit_meta(spec)
        defs = field_defs(spec)
        changed = [name for name, (_, value, _) in defs.items() if self.static.get(name) != value]
        self.static = {name: value for name, (_, value, _) in defs.items()}
        for name, (_, _, kind) in defs.items():
            if name in self.fields:
                self.fields[name].static_meta = _field_meta(kind, spec)
        server = self.server
        if server is None:
            return
        for name in changed:
            if name in self.fields and self.fields[name].subs:
                server.post(self.fields[name], _CHANGED)
        if spec.kind.is_numeric and self.main.subs:
            server.post(self.main, int(Event.PROPERTY))


async def _complete(result: Awaitable[Any], name: str) -> None:
    """Finish a write whose handler returned an awaitable (a PROMOTE loading a model): WRITE_NOTIFY answers
    when it is done, ECA_PUTFAIL if it was refused on the way."""
    try:
        await result
    except PutRejected as exc:
        raise CaRefused(wire.ECA_PUTFAIL, str(exc)) from None
    except Exception as exc:
        log.exception("CA put to %s failed", name)
        raise CaRefused(wire.ECA_PUTFAIL, f"put failed: {exc}") from None


class CaServer:
    """The Channel Access server for one PV database; create it before the PVs' first posts matter."""

    def __init__(self, db: PVDatabase, *, port: int | None = None, interfaces: list[str] | None = None):
        self.db = db
        self.requested_port = port
        self.interfaces = interfaces
        self.records: list[_Record] = []
        self.channels: dict[str, Channel] = {}
        for pv in db:
            record = _Record(pv, db)
            self.records.append(record)
            self.channels.update(record.channels())
            pv.subscribe(record.on_post, record.on_spec)
        self.server: Server | None = None

    @property
    def port(self) -> int | None:
        return self.server.port if self.server is not None else None

    @property
    def circuits(self) -> set:
        """The connected clients' circuits (empty when not serving)."""
        return self.server.circuits if self.server is not None else set()

    @property
    def dropped_updates(self) -> int:
        """Monitor updates dropped for clients too slow to take them (the newest per channel is kept)."""
        return self.server.dropped if self.server is not None else 0

    def subscriptions(self) -> int:
        """Monitors open on every channel, all clients together."""
        return sum(len(c.subs) for c in set(self.channels.values()))

    async def start(self) -> None:
        """Bind and start serving; returns once the server really listens (raises if it cannot)."""
        config = Config.from_env(self.requested_port, self.interfaces)
        server = Server(self.channels, config)
        await server.start()
        self.server = server
        for record in self.records:
            record.server = server
        log.info("CA server listening on %s, TCP port %d, UDP port %d", ",".join(config.interfaces), server.port,
                 server.search_port)
        if config.port and server.port != config.port:
            # Expected with several IOCs on a host's standard port, but the UDP port is shared: a broadcast
            # search reaches every server, a unicast one (EPICS_CA_ADDR_LIST=host:port) only one of them.
            log.info("CA TCP port %d is taken (another CA server on this host); clients find this one on TCP port "
                     "%d by broadcast search on UDP port %d; a unicast search to that port reaches only one of "
                     "the servers sharing it", config.port, server.port, server.search_port)

    async def stop(self) -> None:
        server, self.server = self.server, None
        for record in self.records:
            record.server = None
        if server is not None:
            await server.stop()

