"""Channel Access on the wire, without any I/O: message framing and DBR payloads.

Everything here is pure and synchronous (bytes in, bytes out), so it is unit-tested on its own
(``tests/unit/test_ca_wire.py`` decodes what it encodes with caproto, an independent implementation).
The asyncio server (:mod:`ioc.protocols.ca.server`) only moves these bytes.

A CA message is a 16-byte big-endian header ``command, payload size, data type, data count,
parameter 1, parameter 2`` followed by its payload, padded to a multiple of 8 bytes. A payload of
0xFFFF bytes or more (or a count of 0xFFFF or more) uses the extended header: size 0xFFFF and count 0,
then the real size and count as two 32-bit words.

DBR payloads follow EPICS base's ``db_access.h``: a fixed metadata part that depends on the requested
family (plain, STS, TIME, GR, CTRL) and element type, then ``count`` elements. Strings are 40 bytes
(39 characters and a NUL), units 8, enum strings 26, at most 16 enum strings. Time stamps count from
the EPICS epoch (1990-01-01 UTC). Text is encoded as Latin-1, like caproto's server.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

# ------------------------------------------------------------------------------------------ commands
VERSION = 0
EVENT_ADD = 1
EVENT_CANCEL = 2
READ = 3
WRITE = 4
SEARCH = 6
EVENTS_OFF = 8
EVENTS_ON = 9
READ_SYNC = 10
ERROR = 11
CLEAR_CHANNEL = 12
RSRV_IS_UP = 13  # a beacon
NOT_FOUND = 14
READ_NOTIFY = 15
REPEATER_CONFIRM = 17
CREATE_CHAN = 18
WRITE_NOTIFY = 19
CLIENT_NAME = 20
HOST_NAME = 21
ACCESS_RIGHTS = 22
ECHO = 23
REPEATER_REGISTER = 24
CREATE_CH_FAIL = 26
SERVER_DISCONN = 27
N_COMMANDS = 28

MINOR_VERSION = 13  # CA protocol 4.13
DO_REPLY = 10  # a search that wants NOT_FOUND when the name is not served here
NO_REPLY = 5
EVENT_VALUE, EVENT_LOG, EVENT_ALARM, EVENT_PROPERTY = 1, 2, 4, 8  # DBE_* bits of a subscription's mask
ACCESS_READ = 1
ACCESS_WRITE = 2
SERVER_ADDRESS_FROM_SENDER = 0xFFFFFFFF  # search reply: "connect to the address this reply came from"

# ------------------------------------------------------------------------------------------ status codes
# ECA codes as clients decode them: (message number << 3) | severity (db_access.h / caerr.h).
ECA_NORMAL = 1
ECA_INTERNAL = 142
ECA_BADTYPE = 114
ECA_GETFAIL = 152
ECA_PUTFAIL = 160
ECA_BADCOUNT = 176
ECA_BADMASK = 330
ECA_NORDACCESS = 368
ECA_NOWTACCESS = 376
ECA_BADCHID = 410

# ------------------------------------------------------------------------------------------ DBR types
STRING, SHORT, FLOAT, ENUM, CHAR, LONG, DOUBLE = range(7)
PLAIN, STS, TIME, GR, CTRL = 0, 1, 2, 3, 4  # families: dbr_type = family * 7 + element type
PUT_ACKT, PUT_ACKS, STSACK_STRING, CLASS_NAME = 35, 36, 37, 38
LAST_READ_TYPE = CLASS_NAME

MAX_STRING = 40
MAX_UNITS = 8
MAX_ENUM_STRING = 26
MAX_ENUM_STATES = 16
EPICS_EPOCH = 631152000  # 1990-01-01 00:00:00 UTC in Unix time

ELEMENT_SIZE = (MAX_STRING, 2, 4, 2, 1, 4, 8)
NUMPY_TYPES = (None, np.dtype(">i2"), np.dtype(">f4"), np.dtype(">u2"), np.dtype("u1"), np.dtype(">i4"),
               np.dtype(">f8"))
_INT_RANGE = {SHORT: (-(1 << 15), (1 << 15) - 1), ENUM: (0, (1 << 16) - 1), CHAR: (0, 255),
              LONG: (-(1 << 31), (1 << 31) - 1)}
_ELEMENT_CODE = ("40s", "h", "f", "H", "B", "i", "d")

HEADER = struct.Struct(">HHHHII")
_EXTENDED = struct.Struct(">HHHHIIII")
_SIZES = struct.Struct(">II")
_U16 = struct.Struct(">H")
_EVENT_MASK = struct.Struct(">12xH")  # EVENT_ADD payload: three unused floats, then the DBE mask


def family(dbr_type: int) -> int:
    return dbr_type // 7


def element_type(dbr_type: int) -> int:
    """The element type of a readable DBR type (DBR_STSACK_STRING and DBR_CLASS_NAME: STRING)."""
    return dbr_type % 7 if dbr_type < 35 else STRING


def readable(dbr_type: int) -> bool:
    return 0 <= dbr_type < PUT_ACKT or dbr_type in (STSACK_STRING, CLASS_NAME)


def pad8(n: int) -> int:
    return (n + 7) & ~7


# ------------------------------------------------------------------------------------------ messages

def header(command: int, size: int, data_type: int = 0, count: int = 0, p1: int = 0, p2: int = 0) -> bytes:
    """A message header for a payload of ``size`` bytes (already padded), extended when it must be."""
    if size < 0xFFFF and count < 0xFFFF:
        return HEADER.pack(command, size, data_type, count, p1, p2)
    return _EXTENDED.pack(command, 0xFFFF, data_type, 0, p1, p2, size, count)


def message(command: int, payload: bytes = b"", data_type: int = 0, count: int = 0, p1: int = 0,
            p2: int = 0) -> bytes:
    """One whole message; the payload is padded with NULs to a multiple of 8 bytes."""
    size = pad8(len(payload))
    if size != len(payload):
        payload += bytes(size - len(payload))
    return header(command, size, data_type, count, p1, p2) + payload


def text_payload(text: str) -> bytes:
    """A name as CA carries it (search, create channel, client and host name): NUL-terminated, padded."""
    raw = text.encode("latin-1", "replace") + b"\0"
    return raw + bytes(pad8(len(raw)) - len(raw))


def payload_text(payload: bytes) -> str:
    return bytes(payload).split(b"\0", 1)[0].decode("latin-1")


def event_mask(payload: bytes) -> int:
    """The DBE mask of an EVENT_ADD request (0 if the payload is too short)."""
    return _EVENT_MASK.unpack_from(payload)[0] if len(payload) >= 14 else 0


def version_message() -> bytes:
    return HEADER.pack(VERSION, 0, 0, MINOR_VERSION, 0, 0)


def search_reply(port: int, cid: int, address: int = SERVER_ADDRESS_FROM_SENDER) -> bytes:
    return HEADER.pack(SEARCH, 8, port, 0, address, cid) + _U16.pack(MINOR_VERSION) + bytes(6)


def not_found_reply(data_type: int, count: int, cid: int) -> bytes:
    return HEADER.pack(NOT_FOUND, 0, data_type, count, cid, cid)


def beacon(port: int, sequence: int, address: int) -> bytes:
    return HEADER.pack(RSRV_IS_UP, 0, MINOR_VERSION, port, sequence, address)


def error_message(request: Message, cid: int, status: int, text: str) -> bytes:
    """CA_PROTO_ERROR: the request's header (so the client can match it), then the reason."""
    original = HEADER.pack(request.command, min(len(request.payload), 0xFFFF), request.data_type,
                           min(request.data_count, 0xFFFF), request.p1, request.p2)
    return message(ERROR, original + text.encode("latin-1", "replace")[:255] + b"\0", 0, 0, cid, status)


class Message(NamedTuple):
    command: int
    data_type: int
    data_count: int
    p1: int
    p2: int
    payload: bytes


class FramingError(Exception):
    """The byte stream cannot be a CA stream (a message larger than the limit): drop the circuit."""


class Framer:
    """Cuts a TCP byte stream (or one datagram) into messages; keeps an incomplete tail for next time.

    ``max_payload`` bounds what one message may make us buffer (a client announcing a 4 GB payload
    must not make the server allocate it).
    """

    __slots__ = ("_tail", "max_payload")

    def __init__(self, max_payload: int):
        self._tail = b""
        self.max_payload = max_payload

    def feed(self, data: bytes) -> list[Message]:
        if self._tail:
            data = self._tail + data
            self._tail = b""
        out: list[Message] = []
        pos = 0
        end = len(data)
        unpack = HEADER.unpack_from
        while end - pos >= 16:
            command, size, data_type, count, p1, p2 = unpack(data, pos)
            start = pos + 16
            if size == 0xFFFF and count == 0:
                if end - pos < 24:
                    break
                size, count = _SIZES.unpack_from(data, start)
                start += 8
            if size > self.max_payload:
                raise FramingError(f"a message of {size} bytes (command {command}); the limit is {self.max_payload}")
            stop = start + size
            if stop > end:
                break
            out.append(Message(command, data_type, count, p1, p2, data[start:stop] if size else b""))
            pos = stop
        if pos < end:
            self._tail = data[pos:]
        return out

    @property
    def buffered(self) -> int:
        return len(self._tail)


# ------------------------------------------------------------------------------------------ DBR payloads

@dataclass(frozen=True, slots=True)
class Meta:
    """What DBR_GR / DBR_CTRL carry besides the value, and a record's enum strings and type.

    ``limits`` in DBR order: upper/lower display, upper alarm, upper warning, lower warning, lower alarm,
    upper/lower control. A disabled alarm limit is NaN (EPICS 7 does so for floating-point types).
    """

    units: str = ""
    precision: int = 0
    limits: tuple[float, float, float, float, float, float, float, float] = (0.0,) * 8
    enum_strings: tuple[str, ...] = ()
    record_type: str = ""


NO_META = Meta()


def epics_time(timestamp: float) -> tuple[int, int]:
    """Unix seconds -> (seconds past the EPICS epoch, nanoseconds); before 1990 is 0, 0 (never set)."""
    if not timestamp > EPICS_EPOCH:  # also NaN
        return 0, 0
    sec = int(timestamp)
    return sec - EPICS_EPOCH, int((timestamp - sec) * 1e9)


def format_double(value: float, precision: int) -> str:
    """A floating-point value as DBR_STRING carries it: PREC decimals (EPICS' cvtDoubleToString)."""
    if not math.isfinite(value):
        return "nan" if value != value else ("inf" if value > 0 else "-inf")
    precision = max(0, precision)
    if precision > 8 or abs(value) >= 1e8:
        return f"{value:.{min(precision, 17)}e}"
    return f"{value:.{precision}f}"


def _cstring(text: str, size: int) -> bytes:
    raw = text.encode("latin-1", "replace")[: size - 1]
    return raw + bytes(size - len(raw))


def _text(src: int, value: Any, meta: Meta) -> str:
    if src == STRING:
        return value if isinstance(value, str) else str(value)
    if src == ENUM:
        strings = meta.enum_strings
        return strings[value] if 0 <= value < len(strings) else str(value)
    if src in (DOUBLE, FLOAT):
        return format_double(float(value), meta.precision)
    return str(int(value))


def _number(src: int, value: Any) -> float:
    if src == STRING:
        try:
            return float(str(value).strip())
        except ValueError:
            return 0.0
    return float(value)


def _integer(number: float, target: int) -> int:
    if not math.isfinite(number):
        return 0
    lo, hi = _INT_RANGE[target]
    return min(hi, max(lo, int(number)))


def _scalar_bytes(src: int, target: int, value: Any, meta: Meta) -> bytes:
    if target == STRING:
        return _cstring(_text(src, value, meta), MAX_STRING)
    number = _number(src, value)
    if target in (DOUBLE, FLOAT):
        return struct.pack(">" + _ELEMENT_CODE[target], number)
    return struct.pack(">" + _ELEMENT_CODE[target], _integer(number, target))


def _array_bytes(src: int, target: int, values: np.ndarray, count: int, meta: Meta) -> bytes:
    values = values[:count]
    if target == STRING:
        return b"".join(_cstring(_text(src, v, meta), MAX_STRING) for v in values.tolist())
    dtype = NUMPY_TYPES[target]
    if target in (DOUBLE, FLOAT):
        return values.astype(dtype).tobytes()
    as_float = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = _INT_RANGE[target]
    return np.clip(np.trunc(as_float), lo, hi).astype(dtype).tobytes()


def value_bytes(src: int, target: int, value: Any, count: int, meta: Meta = NO_META) -> bytes:
    """``count`` elements of type ``target`` from a value of the channel's type ``src`` (a scalar, or a
    flat numpy array); missing elements are zeros, as an EPICS IOC fills them."""
    if isinstance(value, np.ndarray):
        out = _array_bytes(src, target, value, count, meta)
    else:
        out = _scalar_bytes(src, target, value, meta)
    want = count * ELEMENT_SIZE[target]
    if len(out) < want:
        out += bytes(want - len(out))
    return out


def _limits_for(target: int, limits: Sequence[float], n: int) -> list:
    if target in (DOUBLE, FLOAT):
        return [float(v) for v in limits[:n]]
    return [_integer(float(v), target) for v in limits[:n]]


def _enum_strings(strings: Sequence[str]) -> bytes:
    kept = list(strings[:MAX_ENUM_STATES])
    raw = b"".join(_cstring(s, MAX_ENUM_STRING) for s in kept)
    return raw + bytes(MAX_ENUM_STRING * MAX_ENUM_STATES - len(raw))


# The metadata part of each (family, element type): struct format after ">" (status and severity first).
_META_FORMAT = {
    (STS, STRING): "hh", (STS, SHORT): "hh", (STS, FLOAT): "hh", (STS, ENUM): "hh", (STS, CHAR): "hhx",
    (STS, LONG): "hh", (STS, DOUBLE): "hh4x",
    (TIME, STRING): "hhII", (TIME, SHORT): "hhII2x", (TIME, FLOAT): "hhII", (TIME, ENUM): "hhII2x",
    (TIME, CHAR): "hhII3x", (TIME, LONG): "hhII", (TIME, DOUBLE): "hhII4x",
    (GR, STRING): "hh", (GR, SHORT): "hh8s6h", (GR, FLOAT): "hhh2x8s6f", (GR, ENUM): "hhh416s",
    (GR, CHAR): "hh8s6Bx", (GR, LONG): "hh8s6i", (GR, DOUBLE): "hhh2x8s6d",
    (CTRL, STRING): "hh", (CTRL, SHORT): "hh8s8h", (CTRL, FLOAT): "hhh2x8s8f", (CTRL, ENUM): "hhh416s",
    (CTRL, CHAR): "hh8s8Bx", (CTRL, LONG): "hh8s8i", (CTRL, DOUBLE): "hhh2x8s8d",
}
META_STRUCTS = {key: struct.Struct(">" + fmt) for key, fmt in _META_FORMAT.items()}
_STSACK = struct.Struct(">hhHH")


def _metadata(fam: int, target: int, severity: int, status: int, timestamp: float, meta: Meta) -> bytes:
    s = META_STRUCTS[fam, target]
    if fam in (STS, TIME) or target == STRING:
        if fam == TIME:
            return s.pack(status, severity, *epics_time(timestamp))
        return s.pack(status, severity)
    if target == ENUM:
        strings = meta.enum_strings
        return s.pack(status, severity, min(len(strings), MAX_ENUM_STATES), _enum_strings(strings))
    n = 6 if fam == GR else 8
    units = _cstring(meta.units, MAX_UNITS)
    limits = _limits_for(target, meta.limits, n)
    if target in (DOUBLE, FLOAT):
        return s.pack(status, severity, meta.precision, units, *limits)
    return s.pack(status, severity, units, *limits)


# Hot path: the scalar reads every monitor of a number makes, one struct.pack each.
_TIME_DOUBLE = struct.Struct(">hhII4xd")
_TIME_LONG = struct.Struct(">hhIIi")
_DOUBLE = struct.Struct(">d")


def encode(src: int, dbr_type: int, count: int, value: Any, severity: int, status: int, timestamp: float,
           meta: Meta = NO_META, ack: tuple[int, int] = (0, 0)) -> bytes:
    """The payload (padded) of a read or monitor update of ``count`` elements as ``dbr_type``.

    ``src`` is the channel's own element type and ``value`` its current value (a flat numpy array for
    an array channel); ``ack`` the (ACKT, ACKS) DBR_STSACK_STRING carries. Raises ValueError for a type
    that cannot be read.
    """
    if count == 1 and not isinstance(value, np.ndarray):
        if dbr_type == 20 and src == DOUBLE:  # DBR_TIME_DOUBLE
            sec, nsec = epics_time(timestamp)
            return _TIME_DOUBLE.pack(status, severity, sec, nsec, value)
        if dbr_type == DOUBLE and src == DOUBLE:
            return _DOUBLE.pack(value)
        if dbr_type == 19 and src == LONG:  # DBR_TIME_LONG
            sec, nsec = epics_time(timestamp)
            return _TIME_LONG.pack(status, severity, sec, nsec, value)
    if dbr_type >= PUT_ACKT:
        if dbr_type == CLASS_NAME:
            return _cstring(meta.record_type, MAX_STRING)
        if dbr_type == STSACK_STRING:
            return _STSACK.pack(status, severity, *ack) + _cstring(_text(src, value, meta), MAX_STRING)
        raise ValueError(f"DBR type {dbr_type} cannot be read")
    if dbr_type < 0:
        raise ValueError(f"DBR type {dbr_type} cannot be read")
    fam, target = divmod(dbr_type, 7)
    body = value_bytes(src, target, value, count, meta)
    if fam:
        body = _metadata(fam, target, severity, status, timestamp, meta) + body
    if len(body) & 7:
        body += bytes(8 - (len(body) & 7))
    return body


# ------------------------------------------------------------------------------------------ puts

class BadPut(Exception):
    """A put whose payload does not hold what its header says (``status``: the ECA code to answer)."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


_ONE_NUMBER = {SHORT: struct.Struct(">h"), FLOAT: struct.Struct(">f"), ENUM: struct.Struct(">H"),
               LONG: struct.Struct(">i"), DOUBLE: struct.Struct(">d")}


def decode_number(dbr_type: int, payload: bytes) -> float | int:
    """The one number of a scalar put of a numeric type (the hot path: no array in between)."""
    unpack = _ONE_NUMBER[dbr_type]
    if len(payload) < unpack.size:
        raise BadPut(ECA_BADCOUNT, f"1 element of DBR type {dbr_type} in {len(payload)} bytes")
    return unpack.unpack_from(payload)[0]


def decode(dbr_type: int, count: int, payload: bytes) -> list[str] | np.ndarray:
    """The elements of a WRITE / WRITE_NOTIFY payload: a list of str for DBR_STRING, else a numpy array
    (big-endian, read-only view of the payload: copy it before keeping it)."""
    if dbr_type in (PUT_ACKT, PUT_ACKS):
        dbr_type = ENUM
    if not 0 <= dbr_type <= DOUBLE:
        raise BadPut(ECA_BADTYPE, f"cannot write DBR type {dbr_type}")
    if dbr_type == STRING and count == 1 and payload:  # libca sends one string cut after its NUL
        return [payload_text(payload[:MAX_STRING])]
    if count < 1 or count * ELEMENT_SIZE[dbr_type] > len(payload):
        raise BadPut(ECA_BADCOUNT, f"{count} elements of DBR type {dbr_type} in {len(payload)} bytes")
    if dbr_type == STRING:
        return [payload_text(payload[i * MAX_STRING:(i + 1) * MAX_STRING]) for i in range(count)]
    return np.frombuffer(payload, dtype=NUMPY_TYPES[dbr_type], count=count)
