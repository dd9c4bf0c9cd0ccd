"""Setpoint writers of closed-loop actions: CA (libca put with completion callback) and PVA (p4p client).

A CA write is queued from the loop and its server status comes back on libca's thread; a PVA write
blocks, so it runs on the action's own writer thread.
"""


from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ioc.core.config import PVRef
from ioc.edges.clients import ca_client, pva_client

log = logging.getLogger("mlioc.actions")



PROBE_TIMEOUT_S = 3.0
FIRST_CHECK_S = PROBE_TIMEOUT_S + 0.5  # a target not checked by then is REFUSED (e.g. not connected)
PUT_TIMEOUT_S = 5.0  # the p4p client's own limit; the action's settle_s timer trips earlier


class TargetError(Exception):
    """A target cannot be used or a write to it failed; the message says why."""



# ----------------------------------------------------------------------------- targets (blocking; worker thread)


@dataclass(frozen=True, slots=True)
class Probe:
    """What a target says about itself."""

    writable: bool | None  # None: the protocol cannot tell without writing (PVA)
    low: float | None
    high: float | None
    value: float | None


class _CaPut:
    """One put-with-callback in flight: libca calls back with the server's status."""

    pending: set[_CaPut] = set()  # keep the Python object alive while libca holds a pointer to it

    def __init__(self, on_complete: Callable[[int], None]):
        self.on_complete = on_complete

    def complete(self, status: int) -> None:
        _CaPut.pending.discard(self)
        self.on_complete(status)


_ca_put_callback = None


def _ca_put_callback_fn():
    """libca's put-completion callback; pyepics' own ignores the server's status, so a refused put
    would look like a success. This one hands the status to the waiting writer."""
    global _ca_put_callback
    if _ca_put_callback is None:
        from epics import dbr

        def on_put(args):
            args.usr.complete(int(args.status))

        _ca_put_callback = dbr.make_callback(on_put, dbr.event_handler_args)
    return _ca_put_callback


class CaTarget:
    """A setpoint over Channel Access (pyepics' libca)."""

    def __init__(self, ref: PVRef):
        self.ref = ref
        self._probe_sub = None
        self._probe_chid = None

    def start_probe(self, done: Callable[[Probe | str], None]) -> None:
        """Ask the target about itself without blocking (called on the loop): access rights and the
        native type are local to libca; the control limits come with the first event of a DBR_CTRL
        subscription, on libca's thread. (Blocking pyepics gets from a worker thread could hang
        against the connection callbacks of the same channel.)"""
        from epics import dbr

        ca = ca_client()
        chid = ca.create_channel(self.ref.name, connect=False, auto_cb=False)  # the monitor's cached channel
        if ca.state(chid) != dbr.CS_CONN:
            done(f"{self.ref.name} not connected")
            return
        ftype = ca.field_type(chid)
        if ftype not in (dbr.DOUBLE, dbr.FLOAT, dbr.LONG, dbr.INT, dbr.SHORT):
            done(f"{self.ref.name} is not numeric (DBR type {ftype})")
            return
        writable = bool(ca.write_access(chid))
        answered = threading.Event()

        def on_event(value=None, lower_ctrl_limit=None, upper_ctrl_limit=None, **_):  # libca's thread
            if not answered.is_set():
                answered.set()
                done(Probe(writable, as_float(lower_ctrl_limit), as_float(upper_ctrl_limit), as_float(value)))

        self._probe_sub = ca.create_subscription(chid, use_ctrl=True, callback=on_event)
        self._probe_chid = chid

    def end_probe(self) -> None:
        """Drop the DBR_CTRL subscription of the last probe (on the loop)."""
        sub, self._probe_sub = self._probe_sub, None
        if sub is not None:
            from ioc.edges.sources import ca_channel_is_current

            # A channel renewed meanwhile took its subscriptions with it: clearing one again would
            # free it twice.
            if ca_channel_is_current(self.ref.name, self._probe_chid):
                with contextlib.suppress(Exception):
                    ca_client().clear_subscription(sub[2])

    def start_put(self, value: float, done: Callable[[str | None], None], generation_ok: Callable[[], bool],
                  pool: concurrent.futures.Executor) -> None:
        """Send a put with completion callback and return at once (called on the loop: libca only
        queues the request). ``done(error or None)`` is called later on libca's thread."""
        from epics import dbr

        ca = ca_client()
        chid = ca.create_channel(self.ref.name, connect=False, auto_cb=False)  # the monitor's cached channel
        if ca.state(chid) != dbr.CS_CONN:
            raise TargetError(f"{self.ref.name} not connected")
        ftype = ca.field_type(chid)
        data = (1 * dbr.Map[ftype])()
        data[0] = value if ftype in (dbr.DOUBLE, dbr.FLOAT) else round(value)
        name = self.ref.name

        def complete(status: int) -> None:
            done(None if status == dbr.ECA_NORMAL else f"put to {name} refused: {ca.message(status)}")

        op = _CaPut(complete)
        _CaPut.pending.add(op)
        ret = ca.libca.ca_array_put_callback(ftype, 1, chid, data, _ca_put_callback_fn(), ctypes.py_object(op))
        if ret != dbr.ECA_NORMAL:
            _CaPut.pending.discard(op)
            raise TargetError(f"put to {name} not sent: {ca.message(ret)}")
        ca.flush_io()


class PvaTarget:
    """A setpoint over PV Access (p4p client). PVA tells a client nothing about its write rights
    before it writes, so writability shows at the first write (a refused put trips)."""

    def __init__(self, ref: PVRef):
        self.ref = ref

    def probe(self, timeout: float = PROBE_TIMEOUT_S) -> Probe:

        try:
            v = pva_client().get(self.ref.name, timeout=timeout)
        except Exception as exc:
            raise TargetError(f"{self.ref.name} not connected ({type(exc).__name__})") from exc
        try:
            low, high = as_float(v["control.limitLow"]), as_float(v["control.limitHigh"])
        except (KeyError, TypeError):
            low = high = None
        try:
            value = as_float(v["value"])
        except (KeyError, TypeError, ValueError):
            raise TargetError(f"{self.ref.name} has no numeric value") from None
        if value is None:
            raise TargetError(f"{self.ref.name} has no numeric value")
        return Probe(None, low, high, value)

    def start_put(self, value: float, done: Callable[[str | None], None], generation_ok: Callable[[], bool],
                  pool: concurrent.futures.Executor) -> None:
        """The p4p client's put blocks: it runs on the action's writer thread."""

        name = self.ref.name

        def job() -> None:
            if not generation_ok():  # a swap, trip or disarm since the decision: drop it
                done("superseded")
                return
            try:
                pva_client().put(name, value, timeout=PUT_TIMEOUT_S, wait=True)
            except TimeoutError:
                done(f"put to {name} not confirmed within {PUT_TIMEOUT_S:g} s")
            except Exception as exc:
                done(f"put to {name} refused: {exc}")
            else:
                done(None)

        try:
            pool.submit(job)
        except RuntimeError as exc:
            raise TargetError("shutting down") from exc


def as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def make_target(ref: PVRef) -> CaTarget | PvaTarget:
    return CaTarget(ref) if ref.protocol == "ca" else PvaTarget(ref)

