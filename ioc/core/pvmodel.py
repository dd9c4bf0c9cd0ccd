"""One PV model: each PV is defined once here and served identically over CA and PVA.

This module is pure logic. It holds every PV's definition (:class:`PVSpec`: record type, units,
precision, display/control/alarm limits, enum choices) and its current :class:`Reading` (value,
severity, status, timestamp, message). Alarm severities are computed *here*, once, because the
Phoebus alarm server trusts the severity the IOC serves: both protocols serve the same one (p4p ignores
``valueAlarm``; caproto, which served CA before, shared one alarm per group and set an unset lower limit to 0).

The protocol adapters (:mod:`ioc.protocols.ca_server`, :mod:`ioc.protocols.pva_server`) subscribe to PVs and translate
readings to wire formats; client writes come back through :meth:`PVDatabase.put`, which checks the
access policy, coerces the value, calls the PV's put handler and audits the action.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import IntEnum, IntFlag, StrEnum
from typing import Any, NamedTuple, Protocol

import numpy as np

audit_log = logging.getLogger("mlioc.audit")

FTVL_DTYPES = {"DOUBLE": "float64", "FLOAT": "float32", "LONG": "int32"}  # waveform FTVL -> numpy dtype
MESSAGE_LEN = 39  # a CA DBR_STRING holds 39 characters + NUL; both protocols serve the same text


_PATH = re.compile(r"/[^\s:,;'\"()]*/[^\s:,;'\"()]+")  # an absolute path of two or more parts


def clip_message(text: str, limit: int = MESSAGE_LEN) -> str:
    """A message as a string PV can serve it: at most ``limit`` (MESSAGE_LEN) characters.

    The useful end of a path is kept: ``/opt/site/models/beam: no champion`` becomes
    ``.../models/beam: no champion`` (leading directories go first, the tail as long as it fits);
    what still does not fit is cut, ``~`` marking the cut. Callers log the whole text.
    """
    if len(text) <= limit:
        return text
    for match in _PATH.finditer(text):
        path = match.group()
        parts = path.split("/")
        for keep in range(len(parts) - 2, 0, -1):  # longest tail first
            short = "..." + "/".join(["", *parts[-keep:]])
            shortened = text[: match.start()] + short + text[match.end():]
            if len(shortened) <= limit or keep == 1:
                text = shortened
                break
        if len(text) <= limit:
            return text
    return text[: limit - 1] + "~"


class Severity(IntEnum):
    """EPICS alarm severity (menuAlarmSevr)."""

    NO_ALARM = 0
    MINOR = 1
    MAJOR = 2
    INVALID = 3


class Status(IntEnum):
    """EPICS alarm status / condition (menuAlarmStat, epicsAlarmCondition)."""

    NO_ALARM = 0
    READ = 1
    WRITE = 2
    HIHI = 3
    HIGH = 4
    LOLO = 5
    LOW = 6
    STATE = 7
    COS = 8
    COMM = 9
    TIMEOUT = 10
    HWLIMIT = 11
    CALC = 12
    SCAN = 13
    LINK = 14
    SOFT = 15
    BAD_SUB = 16
    UDF = 17
    DISABLE = 18
    SIMM = 19
    READ_ACCESS = 20
    WRITE_ACCESS = 21


class Kind(StrEnum):
    """The EPICS record type a PV mimics; decides its wire types and the fields it serves."""

    AI = "ai"
    AO = "ao"
    BO = "bo"
    MBBI = "mbbi"
    STRINGIN = "stringin"
    LONGIN = "longin"
    WAVEFORM = "waveform"  # an array ``[n]`` or an image ``[h, w]`` (PVSpec.shape, PVSpec.ftvl)

    @property
    def is_numeric(self) -> bool:
        """A scalar number (ai/ao/longin): limits, deadbands and alarm evaluation apply."""
        return self in (Kind.AI, Kind.AO, Kind.LONGIN)

    @property
    def is_array(self) -> bool:
        return self is Kind.WAVEFORM

    @property
    def is_enum(self) -> bool:
        return self in (Kind.BO, Kind.MBBI)


class Event(IntFlag):
    """Which kinds of change a post carries. Same bits as EPICS ``DBE_*``."""

    NONE = 0
    VALUE = 1
    LOG = 2
    ALARM = 4
    PROPERTY = 8


ALL_EVENTS = Event.VALUE | Event.LOG | Event.ALARM


@dataclass(frozen=True, slots=True)
class AlarmLimits:
    """HIHI/HIGH/LOW/LOLO limits with their severities, evaluated like an EPICS ai record.

    A limit that is ``None`` is disabled (EPICS: severity NO_ALARM). ``hyst`` is the record's HYST:
    an alarm raised at a limit clears only once the value is ``hyst`` back inside it.
    """

    lolo: float | None = None
    low: float | None = None
    high: float | None = None
    hihi: float | None = None
    llsv: Severity = Severity.MAJOR
    lsv: Severity = Severity.MINOR
    hsv: Severity = Severity.MINOR
    hhsv: Severity = Severity.MAJOR
    hyst: float = 0.0

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.lolo, self.low, self.high, self.hihi))

    def evaluate(self, value: float, last_limit: float | None = None) -> tuple[int, int, float | None]:
        """Return (severity, status, limit that raised it) for ``value``, as plain ints (hot path).

        ``last_limit`` is the limit that raised the previous alarm (EPICS LALM), for hysteresis.
        Order and comparisons follow aiRecord.c ``checkAlarms``: HIHI, LOLO, HIGH, LOW; ``>=``/``<=``.
        """
        h = self.hyst
        hihi, lolo, high, low = self.hihi, self.lolo, self.high, self.low
        if hihi is not None and self.hhsv and (
            value >= hihi or (last_limit == hihi and value >= hihi - h)
        ):
            return self.hhsv, 3, hihi
        if lolo is not None and self.llsv and (
            value <= lolo or (last_limit == lolo and value <= lolo + h)
        ):
            return self.llsv, 5, lolo
        if high is not None and self.hsv and (
            value >= high or (last_limit == high and value >= high - h)
        ):
            return self.hsv, 4, high
        if low is not None and self.lsv and (
            value <= low or (last_limit == low and value <= low + h)
        ):
            return self.lsv, 6, low
        return 0, 0, None


@dataclass(frozen=True, slots=True)
class PVSpec:
    """Everything static about a PV: what EPICS tools read from its record fields.

    ``display`` is (LOPR, HOPR), ``control`` is (DRVL, DRVH): writes outside it are refused.
    ``choices`` are the enum strings of a bo (ZNAM, ONAM) or mbbi (ZRST, ONST, ...), and
    ``choice_severities`` their alarm severities (ZSV/OSV, ZRSV/ONSV, ...).
    ``mdel``/``adel`` are the monitor and archive deadbands (a negative value posts every change).
    ``asg`` is the access security group that decides who may write it.
    ``audit`` marks control PVs whose every write is logged with who, from where and when.
    """

    name: str
    kind: Kind
    desc: str = ""
    egu: str = ""
    prec: int = 0
    display: tuple[float, float] | None = None
    control: tuple[float, float] | None = None
    alarm: AlarmLimits | None = None
    choices: tuple[str, ...] = ()
    choice_severities: tuple[Severity, ...] = ()
    writable: bool = False
    initial: float | int | str | tuple = 0
    mdel: float = 0.0
    adel: float = 0.0
    scan: str = "I/O Intr"
    asg: str = "DEFAULT"
    audit: bool = False
    max_length: int = 40
    version_field: bool = False  # PVA carries the model version that made each value (Reading.tag)
    # A waveform: ``(n,)`` (CA waveform / PVA NTScalarArray) or ``(h, w)`` (CA waveform of h*w elements,
    # row-major / PVA NTNDArray); FTVL DOUBLE, FLOAT or LONG. Its values are numpy arrays of that shape.
    # ``initial`` is a fill value, or a tuple of every element.
    shape: tuple[int, ...] = ()
    ftvl: str = "DOUBLE"

    def __post_init__(self) -> None:
        if self.kind.is_enum and not self.choices:
            raise ValueError(f"{self.name}: a {self.kind} PV needs choices")
        if self.kind.is_array and (not 1 <= len(self.shape) <= 2 or self.ftvl not in FTVL_DTYPES):
            raise ValueError(f"{self.name}: a waveform needs a shape [n] or [h, w] and FTVL in {list(FTVL_DTYPES)}")

    @property
    def nelm(self) -> int:
        """NELM: the elements a waveform holds (h*w for an image)."""
        return math.prod(self.shape) if self.kind.is_array else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(FTVL_DTYPES[self.ftvl])

    def initial_value(self) -> Any:
        """The value before the first post (a numpy array for a waveform)."""
        if not self.kind.is_array:
            return self.initial
        if isinstance(self.initial, tuple):
            return np.array(self.initial, dtype=self.dtype).reshape(self.shape)
        return np.full(self.shape, self.initial, dtype=self.dtype)

    def _coerce_array(self, value: Any) -> np.ndarray:
        """A written array in this waveform's type: numbers only, at most NELM of them. An image
        written as a flat waveform of h*w elements takes the image's shape; any other count is kept
        (the input it feeds names it as unusable)."""
        if isinstance(value, (str, bytes)):
            raise PutRejected(f"not an array of numbers: {value!r}")
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):
            raise PutRejected(f"not an array of numbers: {value!r}") from None
        if arr.dtype.kind not in "iufb":
            raise PutRejected(f"not an array of numbers ({arr.dtype})")
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.size > self.nelm:
            raise PutRejected(f"{arr.size} elements; {self.name} holds at most {self.nelm} (NELM)")
        arr = arr.astype(self.dtype)  # always a copy: a client's buffer is never kept
        if len(self.shape) == 2 and arr.ndim == 1 and arr.size == self.nelm:
            arr = arr.reshape(self.shape)
        return arr

    def coerce(self, value: Any) -> float | int | str | np.ndarray:
        """Turn a client-written value into this PV's Python type, or raise :class:`PutRejected`."""
        kind = self.kind
        if kind is Kind.WAVEFORM:
            return self._coerce_array(value)
        if kind in (Kind.AI, Kind.AO):
            if isinstance(value, bool):
                return float(value)
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, (str, bytes)):
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                try:
                    return float(text.strip())
                except ValueError:
                    raise PutRejected(f"not a number: {text!r}") from None
            try:
                return float(value)
            except (TypeError, ValueError):
                raise PutRejected(f"not a number: {value!r}") from None
        if kind is Kind.LONGIN:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                raise PutRejected(f"not an integer: {value!r}") from None
            if not math.isfinite(number) or number != int(number):
                raise PutRejected(f"not an integer: {value!r}")
            return int(number)
        if kind.is_enum:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            if isinstance(value, str):
                if value in self.choices:
                    return self.choices.index(value)
                try:
                    value = int(value.strip())
                except ValueError:
                    raise PutRejected(f"{value!r} is not one of {list(self.choices)}") from None
            try:
                index = int(value)
            except (TypeError, ValueError, OverflowError):
                raise PutRejected(f"not a choice: {value!r}") from None
            if index != value or not 0 <= index < len(self.choices):
                raise PutRejected(f"{value!r} is not a valid index 0..{len(self.choices) - 1}")
            return index
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if len(text) >= self.max_length:
            raise PutRejected(f"string longer than {self.max_length - 1} characters")
        return text


class Reading(NamedTuple):
    """A PV's current state, as both protocols serve it. A waveform's value is a numpy array that
    nobody mutates once posted (a new value is a new array)."""

    value: float | int | str | np.ndarray
    severity: Severity
    status: Status
    timestamp: float
    message: str = ""
    tag: str = ""  # e.g. the model version that computed the value


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who is writing: taken from the CA circuit or the PVA operation."""

    user: str
    host: str
    protocol: str
    address: str = ""

    def __str__(self) -> str:
        return f"{self.user}@{self.host} via {self.protocol}"


LOCAL_CLIENT = ClientInfo(user="ioc", host="localhost", protocol="internal")


class PutRejected(Exception):
    """A client write was refused; the message goes back to the client."""


class AccessDenied(PutRejected):
    """The access policy refused the write."""


class AccessPolicy(Protocol):
    """Decides read/write rights per access security group, user and host."""

    def can_write(self, asg: str, user: str, host: str) -> bool: ...

    def can_read(self, asg: str, user: str, host: str) -> bool: ...


class AllowAll:
    """The access policy of an IOC with no access configuration: everything readable and writable."""

    def can_write(self, asg: str, user: str, host: str) -> bool:
        return True

    def can_read(self, asg: str, user: str, host: str) -> bool:
        return True


Listener = Callable[["PV", Reading, Event], None]
# (severity, status, timestamp) the limits give -> (severity, status) to serve: e.g. a debouncer.
AlarmFilter = Callable[[int, int, float], tuple[int, int]]
SpecListener = Callable[["PV", PVSpec], None]
PutHandler = Callable[["PV", Any, ClientInfo], "Awaitable[None] | None"]


_VALUE, _LOG, _ALARM = int(Event.VALUE), int(Event.LOG), int(Event.ALARM)
_ALL = _VALUE | _LOG | _ALARM
_isfinite = math.isfinite


def all_finite(values: np.ndarray) -> bool:
    """No NaN/Inf in ``values``: one pass (a sum) when all are finite, an exact check otherwise (a
    sum of finite values can overflow)."""
    if values.dtype.kind != "f":
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        if _isfinite(float(values.sum())):
            return True
    return bool(np.isfinite(values).all())


def _changed_beyond(old: Any, new: Any, deadband: float) -> bool:
    """EPICS monitor rule: post when |new - old| > deadband (a negative deadband posts always)."""
    if deadband < 0:
        return True
    if new.__class__ is float and (old.__class__ is float or old.__class__ is int):
        if _isfinite(new) and _isfinite(old):
            return abs(new - old) > deadband
        if new != new or old != old:  # NaN: a change unless both are NaN
            return not (new != new and old != old)
        return new != old
    return new != old


class PV:
    """One PV: its spec, its current reading, and the adapters listening to it."""

    __slots__ = ("_adel_last", "_array", "_choice_severities", "_last_limit", "_listeners", "_mdel_last", "_numeric",
                 "_spec_listeners", "alarm_filter", "put_handler", "reading", "spec")

    def __init__(self, spec: PVSpec, timestamp: float = 0.0, put_handler: PutHandler | None = None):
        self.spec = spec
        self.put_handler = put_handler
        # Like an EPICS record before its first processing: undefined, INVALID.
        initial = spec.initial_value()
        self.reading = Reading(initial, Severity.INVALID, Status.UDF, timestamp, "")
        self._listeners: list[Listener] = []
        self._spec_listeners: list[SpecListener] = []
        self._mdel_last: Any = initial
        self._adel_last: Any = initial
        self._last_limit: float | None = None
        # Optional: filters the limit alarm in time (ioc.core.thresholds.Debouncer), so that CA and PVA
        # serve the same debounced severity. Not applied to the caller's severity or to INVALID.
        self.alarm_filter: AlarmFilter | None = None
        self._cache_spec()

    def _cache_spec(self) -> None:
        self._numeric = self.spec.kind.is_numeric
        self._array = self.spec.kind.is_array
        self._choice_severities = tuple(int(s) for s in self.spec.choice_severities) if self.spec.kind.is_enum else ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def value(self) -> Any:
        return self.reading.value

    def subscribe(self, listener: Listener, spec_listener: SpecListener | None = None) -> None:
        self._listeners.append(listener)
        if spec_listener is not None:
            self._spec_listeners.append(spec_listener)

    def post(
        self,
        value: Any,
        timestamp: float,
        severity: int = 0,
        status: int = 0,
        message: str = "",
        force: bool = False,
        tag: str = "",
    ) -> int:
        """Set a new reading and tell the adapters; returns the events (:class:`Event` bits) it carried.

        The served severity is the worse of ``severity`` (a condition the caller knows, e.g.
        INVALID because an input is stale) and the one the PV's own alarm limits / enum state
        severities give. A non-finite analog value is always INVALID. Every post updates the
        reading (a ``caget`` sees it); monitors are posted only for events that pass MDEL/ADEL,
        exactly as an EPICS record does. This is the hot path of every cycle: plain ints inside.

        A waveform (a numpy array, never mutated once posted) is INVALID when any element is NaN/Inf,
        has no limit alarms, and posts value and archive events on any change (EPICS waveform
        semantics): a re-post of the same array carries only what else changed.
        """
        spec = self.spec
        sev = 0
        stat = 0
        if self._numeric:
            if value.__class__ is float and not _isfinite(value):
                sev, stat = 3, 17  # INVALID, UDF
                self._last_limit = None
            elif spec.alarm is not None:
                sev, stat, self._last_limit = spec.alarm.evaluate(value, self._last_limit)
                if self.alarm_filter is not None:
                    sev, stat = self.alarm_filter(sev, stat, timestamp)
                    # HYST holds the alarm that is *served*: a crossing the filter has not (yet) passed on
                    # must not lower the bar for raising it.
                    a = spec.alarm
                    self._last_limit = (a.hihi if stat == 3 else a.high if stat == 4 else a.lolo if stat == 5
                                        else a.low if stat == 6 else None)
        elif self._choice_severities:
            try:
                sev = self._choice_severities[value]
            except (IndexError, TypeError):
                sev = 3
            if sev:
                stat = 7  # STATE
        elif self._array:
            if value.__class__ is not np.ndarray:
                value = np.asarray(value, dtype=spec.dtype)
            if not all_finite(value):
                sev, stat = 3, 17  # INVALID, UDF
        if severity and severity >= sev:
            sev = severity
            stat = status or 15  # SOFT
        old = self.reading
        new = Reading(value, sev, stat, timestamp, message, tag)
        self.reading = new
        if force:
            events = _ALL
            self._mdel_last = self._adel_last = value
        elif self._array:
            events = 0
            if value is not self._mdel_last and not np.array_equal(self._mdel_last, value):
                events = _VALUE | _LOG
                self._mdel_last = self._adel_last = value
            if old.severity != sev or old.status != stat or old.message != message:
                events |= _ALARM
            if old.tag != tag:
                events |= _VALUE
        else:
            events = 0
            if _changed_beyond(self._mdel_last, value, spec.mdel):
                events = _VALUE
                self._mdel_last = value
            if _changed_beyond(self._adel_last, value, spec.adel):
                events |= _LOG
                self._adel_last = value
            if old.severity != sev or old.status != stat or old.message != message:
                events |= _ALARM
            if old.tag != tag:
                events |= _VALUE
        for listener in self._listeners:
            listener(self, new, events)
        return events

    def update_spec(self, **changes: Any) -> None:
        """Change metadata at run time (e.g. alarm limits from a new model's reference)."""
        self.spec = replace(self.spec, **changes)
        self._cache_spec()
        for listener in self._spec_listeners:
            listener(self, self.spec)
        reading = self.reading
        if reading.status != Status.UDF:
            # Re-evaluate the alarm of the current value against the new limits.
            self.post(reading.value, reading.timestamp)


@dataclass
class PVDatabase:
    """All PVs of one IOC process, with the write path shared by both protocols."""

    access: AccessPolicy = field(default_factory=AllowAll)
    _pvs: dict[str, PV] = field(default_factory=dict)

    def add(self, spec: PVSpec, timestamp: float = 0.0, put_handler: PutHandler | None = None) -> PV:
        if spec.name in self._pvs:
            raise ValueError(f"duplicate PV name {spec.name}")
        pv = PV(spec, timestamp, put_handler)
        self._pvs[spec.name] = pv
        return pv

    def __getitem__(self, name: str) -> PV:
        return self._pvs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._pvs

    def __iter__(self) -> Iterator[PV]:
        return iter(self._pvs.values())

    def __len__(self) -> int:
        return len(self._pvs)

    def names(self) -> list[str]:
        return list(self._pvs)

    def can_write(self, pv: PV, user: str, host: str) -> bool:
        return pv.spec.writable and self.access.can_write(pv.spec.asg, user, host)

    def can_read(self, pv: PV, user: str, host: str) -> bool:
        return self.access.can_read(pv.spec.asg, user, host)

    def put(self, name: str, value: Any, client: ClientInfo) -> Awaitable[None] | None:
        """Apply a client write: access check, coercion, the PV's handler, audit.

        Raises :class:`PutRejected` (or :class:`AccessDenied`) with a message for the client.
        The handler may return an awaitable for work that has to wait (e.g. loading a model);
        the adapter completes the client's put when it finishes. Such a write is audited when it
        is decided, i.e. when the awaitable returned here completes: refused (with the reason) if it
        raises, accepted otherwise.
        """
        pv = self._pvs[name]
        spec = pv.spec
        old = pv.reading.value
        try:
            if not spec.writable or pv.put_handler is None:
                raise PutRejected(f"{name} is read-only")
            if not self.access.can_write(spec.asg, client.user, client.host):
                raise AccessDenied(f"{client.user}@{client.host} may not write {name}")
            coerced = spec.coerce(value)
            if spec.control is not None and isinstance(coerced, float):
                lo, hi = spec.control
                if lo < hi and not lo <= coerced <= hi:
                    raise PutRejected(f"{coerced} outside control limits [{lo}, {hi}]")
            result = pv.put_handler(pv, coerced, client)
        except PutRejected as exc:
            _audit(name, old, value, client, str(exc))
            raise
        if result is not None and inspect.isawaitable(result):
            return _audited(result, name, old, coerced, client, spec.audit)
        if spec.audit:
            _audit(name, old, coerced, client)
        return result


def _audit(name: str, old: Any, new: Any, client: ClientInfo, refused: str | None = None) -> None:
    """One line on ``mlioc.audit``: a refused write (any PV, WARNING) or an accepted audited one (INFO)."""
    extra = {"pv": name, "old": old, "new": new, "user": client.user, "host": client.host,
             "protocol": client.protocol, "address": client.address, "accepted": refused is None}
    where = f"put {name} {old!r} -> {new!r} by {client.user}@{client.host} ({client.protocol} {client.address})"
    if refused is None:
        audit_log.info("%s accepted", where, extra=extra)
    else:
        audit_log.warning("%s refused: %s", where, refused, extra={**extra, "reason": refused})


async def _audited(result: Awaitable[Any], name: str, old: Any, new: Any, client: ClientInfo,
                   audit: bool) -> None:
    """Complete a write whose handler returned an awaitable, and audit what it came to."""
    try:
        await result
    except PutRejected as exc:
        _audit(name, old, new, client, str(exc))
        raise
    except Exception as exc:
        _audit(name, old, new, client, f"failed: {type(exc).__name__}: {exc}")
        raise
    if audit:
        _audit(name, old, new, client)
