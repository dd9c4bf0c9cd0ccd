"""``mlioc get|put|monitor``: read, write and watch any EPICS PV over Channel Access or PV Access.

Why the IOC ships its own client tools: a control room has ``caget``/``caput``/``camonitor`` and
``pvget``/``pvput``, but a checkout of this repository has neither, and the Python tools that come
with its dependencies mislead a newcomer (``caproto-put`` exits 0 when the IOC refuses a write;
p4p's ``python -m p4p.client.cli put`` crashes; neither shows alarm severity by default). These
commands use the same client libraries the IOC itself uses (pyepics' libca for CA, the p4p/pvxs
client for PVA), follow the standard EPICS environment (``EPICS_CA_ADDR_LIST``, ``EPICS_PVA_ADDR_LIST``
...) and print what an operator needs on one line: value and units, alarm severity and status, and
the time stamp. Exit status: 0 done, 1 a PV did not connect within ``--timeout`` or a write was
refused (:class:`ClientError`, reported by ``ioc.cli.main``), 2 usage error.

``NAME`` may carry the protocol as in a config's ``source:`` (``ca://NAME``, ``pva://NAME``);
``--pva`` makes PVA the default. A put sends the value as text, like ``caput``, so a number and an
enum's choice (``Disabled``) or index (``0``) both work, and waits until the IOC has finished it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ioc.core.pvmodel import Severity, Status

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
PUT_COMPLETION_S = 10.0  # after connecting: how long a put may take in the IOC (a ROLLBACK loads a model)
MAX_ELEMENTS = 10  # an array prints its length and its first elements
PVA_STATUS = ("NO_ALARM", "DEVICE", "DRIVER", "RECORD", "DB", "CONF", "UNDEFINED", "CLIENT")


class ClientError(Exception):
    """A PV that does not connect, a refused write, a value the PV cannot take: the message says which."""


@dataclass(frozen=True)
class Target:
    protocol: str  # "ca" or "pva"
    name: str

    @staticmethod
    def parse(text: str, default: str) -> Target:
        for scheme in ("ca", "pva"):
            if text.startswith(f"{scheme}://"):
                return Target(scheme, text[len(scheme) + 3:])
        return Target(default, text)


@dataclass(frozen=True)
class Shown:
    """One reading of a PV, as printed."""

    name: str
    value: str
    units: str
    severity: str
    status: str
    timestamp: float

    def line(self, width: int = 0) -> str:
        value = f"{self.value} {self.units}" if self.units else self.value
        alarm = self.severity if self.status in ("", "NO_ALARM") else f"{self.severity} {self.status}"
        return f"{self.name.ljust(width)}  {value}  {alarm}  {format_time(self.timestamp)}"


def format_time(ts: float) -> str:
    if not ts or not math.isfinite(ts):
        return "<no time stamp>"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_value(value: Any, precision: int | None = None, choices: tuple[str, ...] = ()) -> str:
    """A value as text: an enum's choice, a float at the PV's precision, an array's first elements."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode(errors="replace")
    if isinstance(value, str):
        return value
    if hasattr(value, "__len__"):
        items = list(value)
        shown = " ".join(format_value(v, precision) for v in items[:MAX_ELEMENTS])
        return f"[{len(items)}] {shown}" + (" ..." if len(items) > MAX_ELEMENTS else "")
    if hasattr(value, "item"):
        value = value.item()
    if choices and isinstance(value, int):
        return choices[value] if 0 <= value < len(choices) else str(value)
    if isinstance(value, float):
        return f"{value:.{precision}f}" if precision and precision > 0 and math.isfinite(value) else f"{value:.6g}"
    return str(value)


def _name(enum: type, number: int) -> str:
    try:
        return enum(number).name
    except ValueError:
        return str(number)


# ----------------------------------------------------------------------------- Channel Access (libca)


class CaChannels:
    """PVs over Channel Access through pyepics' libca, the C client ``caget`` uses."""

    def __init__(self) -> None:
        from ioc.edges.clients import ca_client

        self.ca = ca_client()
        from epics import dbr

        self.dbr = dbr
        self.chids: dict[str, Any] = {}
        self._callbacks: list[Any] = []  # libca calls into these: keep them alive

    def connect(self, names: list[str], timeout: float, on_connection: Callable | None = None) -> list[str]:
        """Search all names at once; return those that did not connect within ``timeout``."""
        import time

        for name in names:
            self.chids[name] = self.ca.create_channel(name, connect=False, auto_cb=False, callback=on_connection)
        deadline = time.monotonic() + timeout
        missing = []
        for name in names:
            if not self.ca.connect_channel(self.chids[name], timeout=max(0.001, deadline - time.monotonic())):
                missing.append(name)
        return missing

    def _meta(self, name: str) -> tuple[int | None, str, tuple[str, ...]]:
        chid = self.chids[name]
        ftype = self.ca.field_type(chid)
        if ftype == self.dbr.STRING:
            return None, "", ()
        ctrl = self.ca.get_ctrlvars(chid) or {}
        units = ctrl.get("units", "")
        units = units.decode(errors="replace") if isinstance(units, bytes) else units
        return ctrl.get("precision"), units or "", tuple(ctrl.get("enum_strs") or ())

    def shown(self, name: str, value: Any, severity: int, status: int, timestamp: float,
              meta: tuple[int | None, str, tuple[str, ...]]) -> Shown:
        precision, units, choices = meta
        return Shown(name, format_value(value, precision, choices), units, _name(Severity, severity),
                     _name(Status, status), timestamp)

    def read(self, name: str) -> Shown:
        chid = self.chids[name]
        meta = self._meta(name)
        got = self.ca.get_with_metadata(chid, ftype=self.ca.promote_type(chid, use_time=True), timeout=5)
        if got is None:
            raise ClientError(f"{name}: no answer to a read (CA)")
        return self.shown(name, got["value"], got.get("severity", 0), got.get("status", 0),
                          got.get("timestamp", 0.0), meta)

    def put(self, name: str, text: str) -> None:
        """Write ``text`` (DBR_STRING, as caput does) and wait for the IOC to finish; ClientError if refused."""
        ca, dbr = self.ca, self.dbr
        chid = self.chids[name]
        if not ca.write_access(chid):
            raise ClientError(f"{name}: write refused: the IOC's access list gives this client (user and host) "
                              "no write access to it, or it is read-only")
        done = threading.Event()
        outcome: dict[str, int] = {}

        def on_put(args) -> None:  # libca's thread; pyepics' own put callback drops the status
            outcome["status"] = args.status
            done.set()

        callback = dbr.make_callback(on_put, dbr.event_handler_args)
        self._callbacks.append(callback)
        data = (1 * dbr.Map[dbr.STRING])()
        data[0].value = text.encode()[:39]
        status = ca.libca.ca_array_put_callback(dbr.STRING, 1, chid, data, callback, None)
        if status != dbr.ECA_NORMAL:
            raise ClientError(f"{name}: write refused: {ca.message(status)}")
        ca.flush_io()
        if not done.wait(PUT_COMPLETION_S):
            raise ClientError(f"{name}: the IOC did not confirm the write within {PUT_COMPLETION_S:g} s")
        if outcome["status"] != dbr.ECA_NORMAL:
            raise ClientError(f"{name}: write refused by the IOC ({ca.message(outcome['status'])}); the IOC's log "
                              "says why (a bad value, a read-only PV, its access list)")

    def subscribe(self, name: str, emit: Callable[[Shown], None]) -> None:
        meta = self._meta(name)

        def on_update(value=None, severity=0, status=0, timestamp=0.0, **_) -> None:
            emit(self.shown(name, value, severity, status, timestamp, meta))

        self._callbacks.append(self.ca.create_subscription(self.chids[name], use_time=True, callback=on_update))

    def close(self) -> None:
        for chid in self.chids.values():
            self.ca.clear_channel(chid)
        self.chids.clear()


# ----------------------------------------------------------------------------- PV Access (p4p / pvxs)


class PvaChannels:
    """PVs over PV Access through the p4p client (pvxs), the library ``pvget`` is built on."""

    def __init__(self) -> None:
        from ioc.edges.clients import pva_client

        self.ctx = pva_client()
        self._subs: list[Any] = []

    def connect(self, names: list[str], timeout: float, on_connection: Callable | None = None) -> list[str]:
        results = self.ctx.get(names, timeout=timeout, throw=False)
        self.first = dict(zip(names, results, strict=True))
        return [n for n, r in self.first.items() if isinstance(r, Exception)]

    @staticmethod
    def shown(name: str, v) -> Shown:
        value = v["value"]
        choices: tuple[str, ...] = ()
        if hasattr(value, "keys"):  # NTEnum: {index, choices}
            choices, value = tuple(value["choices"]), value["index"]
        precision = v.get("display.precision") if "display" in v else None
        units = (v.get("display.units") or "") if "display" in v else ""
        if "alarm" in v:
            severity, message = _name(Severity, v["alarm.severity"]), v["alarm.message"]
            status = message or (PVA_STATUS[v["alarm.status"]] if v["alarm.status"] < len(PVA_STATUS) else "")
        else:
            severity, status = "", ""
        ts = v["timeStamp.secondsPastEpoch"] + v["timeStamp.nanoseconds"] * 1e-9 if "timeStamp" in v else 0.0
        return Shown(name, format_value(value, precision, choices), units, severity, status, ts)

    def read(self, name: str) -> Shown:
        v = self.first.pop(name, None) or self.ctx.get(name, timeout=5)
        return self.shown(name, v)

    def put(self, name: str, text: str) -> None:
        from p4p.client.thread import RemoteError

        try:
            self.ctx.put(name, text, timeout=PUT_COMPLETION_S, wait=True)
        except RemoteError as exc:
            raise ClientError(f"{name}: write refused by the IOC: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ClientError(f"{name}: cannot write {text!r}: {exc}") from None
        except TimeoutError:
            raise ClientError(f"{name}: the IOC did not confirm the write within {PUT_COMPLETION_S:g} s") from None

    def subscribe(self, name: str, emit: Callable[[Shown | str], None]) -> None:
        from p4p.client.thread import Disconnected

        seen = threading.Event()

        def on_update(v) -> None:
            if isinstance(v, Disconnected):
                if seen.is_set():  # a new subscription starts with one Disconnected before its first value
                    emit(f"{name}: disconnected")
            elif isinstance(v, Exception):
                emit(f"{name}: {v}")
            else:
                seen.set()
                emit(self.shown(name, v))

        self._subs.append(self.ctx.monitor(name, on_update, notify_disconnect=True))

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        from ioc.edges.clients import close_clients

        close_clients()


# ----------------------------------------------------------------------------- commands


def _targets(names: list[str], args: argparse.Namespace) -> list[Target]:
    return [Target.parse(text, "pva" if args.pva else "ca") for text in names]


def _groups(targets: list[Target]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"ca": [], "pva": []}
    for t in targets:
        out[t.protocol].append(t.name)
    return out


@contextmanager
def _channels(groups: dict[str, list[str]], timeout: float, on_connection=None) -> Iterator[dict[str, Any]]:
    """Connected channels per protocol; ClientError naming every PV that did not connect."""
    opened: dict[str, Any] = {}
    try:
        missing = []
        for protocol, names in groups.items():
            if names:
                opened[protocol] = (CaChannels if protocol == "ca" else PvaChannels)()
                missing += [f"{protocol}://{n}" for n in opened[protocol].connect(names, timeout, on_connection)]
        if missing:
            raise ClientError(f"not connected within {timeout:g} s: {', '.join(missing)} (is the IOC running, and "
                              "does the search reach it? EPICS_CA_ADDR_LIST / EPICS_PVA_ADDR_LIST)")
        yield opened
    finally:
        for channels in opened.values():
            channels.close()


def cmd_get(args: argparse.Namespace) -> int:
    targets = _targets(args.names, args)
    with _channels(_groups(targets), args.timeout) as channels:
        shown = [channels[t.protocol].read(t.name) for t in targets]
    width = max(len(s.name) for s in shown)
    for s in shown:
        print(s.line(width))
    return EXIT_OK


def cmd_put(args: argparse.Namespace) -> int:
    (target,) = _targets([args.name], args)
    with _channels(_groups([target]), args.timeout) as channels:
        pv = channels[target.protocol]
        before = pv.read(target.name)
        pv.put(target.name, args.value)
        after = pv.read(target.name)
    print(f"Old : {before.line()}")
    print(f"New : {after.line()}")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    updates: queue.Queue = queue.Queue(maxsize=10_000)  # bounded: a slow terminal drops, never grows

    def emit(item) -> None:
        try:
            updates.put_nowait(item)
        except queue.Full:
            pass

    def on_connection(pvname=None, conn=None, **_) -> None:  # CA: libca's connection events
        if conn is False:
            emit(f"{pvname}: disconnected")

    targets = _targets(args.names, args)
    width = max(len(t.name) for t in targets)
    with _channels(_groups(targets), args.timeout, on_connection) as channels:
        for t in targets:
            channels[t.protocol].subscribe(t.name, emit)
        printed = 0
        try:
            while args.count is None or printed < args.count:
                item = updates.get()
                print(item if isinstance(item, str) else item.line(width), flush=True)
                printed += 1
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def add_parser(sub) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--pva", action="store_true", help="PV Access for names without ca:// or pva://")
        p.add_argument("-w", "--timeout", type=float, default=2.0, metavar="SEC",
                       help="how long to wait for the PVs to connect (default 2)")

    p = sub.add_parser("get", help="read PVs: value, units, alarm severity and status, time stamp (CA or PVA)")
    p.add_argument("names", nargs="+", metavar="NAME", help="PV name (ca://NAME or pva://NAME to choose)")
    common(p)
    p.set_defaults(func=cmd_get)
    p = sub.add_parser("put", help="write a PV and wait for the IOC to finish; exit 1 if it refuses (CA or PVA)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("value", metavar="VALUE", help="a number, or an enum's choice or index (e.g. Disabled or 0)")
    common(p)
    p.set_defaults(func=cmd_put)
    p = sub.add_parser("monitor", help="print every update of PVs until Ctrl-C (CA or PVA)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-n", "--count", type=int, help="stop after this many updates")
    common(p)
    p.set_defaults(func=cmd_monitor)
