"""Monitors of PVs on other IOCs (model inputs, trigger PVs), over CA or PVA.

CA uses pyepics' bundled libca (the C client, preemptive callbacks): it is the same client code a
control room's ``camonitor`` uses, and its callback path is far cheaper than a pure-Python client.
PVA uses the p4p (pvxs) client. Both call ``deliver(value, severity, timestamp, connected)`` on
their own threads; the caller hands that to the event loop (see :mod:`ioc.feed`), so model state is
only ever touched on the loop. A disconnect is delivered as ``connected=False``; libca and pvxs
reconnect by themselves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from ioc.config import PVRef
from ioc.pvmodel import Severity

log = logging.getLogger("mlioc.sources")

Deliver = Callable[[Any, Severity, float, bool], None]  # called on the client library's thread

_ca_lock = threading.Lock()
_ca_module = None
_pva_context = None


def _ca():
    """pyepics' ``epics.ca``, initialised once for the process."""
    global _ca_module
    with _ca_lock:
        if _ca_module is None:
            from epics import ca

            ca.PREEMPTIVE_CALLBACK = True
            ca.initialize_libca()
            _ca_module = ca
        else:
            _ca_module.use_initial_context()
    return _ca_module


def _pva():
    global _pva_context
    if _pva_context is None:
        from p4p.client.thread import Context

        _pva_context = Context("pva", nt=False)
    return _pva_context


class CaSource:
    """A CA monitor on one PV (DBR_TIME: value, severity and timestamp).

    After a disconnect, libca searches again on a backed-off schedule: a source IOC that restarts
    after a second is found only ~10 s after it went away unless a CA repeater relays its beacons.
    To recover within ~1 s regardless, a lost channel is renewed (cleared and created again, which
    restarts its search at the fastest rate) every RENEW_S until it reconnects.
    """

    RENEW_S = 1.0

    def __init__(self, ref: PVRef, deliver: Deliver):
        self.ref = ref
        self.deliver = deliver
        self.connected = False
        self._chid = None
        self._sub = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._stopped = False
        self._generation = 0

    def start(self) -> None:
        _ca()
        self._create()

    def _create(self) -> None:
        ca = _ca()
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._sub = None
            self._chid = ca.create_channel(
                self.ref.name, connect=False, auto_cb=False,
                callback=lambda **kw: self._on_connection(generation, **kw))

    def _on_connection(self, generation, pvname=None, chid=None, conn=False, **_):
        if generation != self._generation or self._stopped:
            return  # a channel we have already replaced
        was = self.connected
        self.connected = bool(conn)
        if conn:
            log.info("source %s connected", self.ref)
            self._cancel_timer()
            if self._sub is None:
                self._sub = _ca_module.create_subscription(chid, use_time=True, callback=self._on_value)
        else:
            if was:
                log.warning("source %s disconnected", self.ref)
            self.deliver(None, Severity.INVALID, time.time(), False)
            self._schedule_renew()

    def _schedule_renew(self) -> None:
        with self._lock:
            if self._timer is None and not self._stopped:
                self._timer = threading.Timer(self.RENEW_S, self._renew)
                self._timer.daemon = True
                self._timer.start()

    def _cancel_timer(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _renew(self) -> None:
        with self._lock:
            self._timer = None
            if self._stopped or self.connected:
                return
            old_chid, old_sub = self._chid, self._sub
        ca = _ca()
        try:
            if old_sub is not None:
                ca.clear_subscription(old_sub[2])
            if old_chid is not None:
                ca.clear_channel(old_chid)
        except Exception:  # the old channel may already be gone
            pass
        self._create()
        self._schedule_renew()  # until it connects (the connection callback cancels it)

    def _on_value(self, value=None, severity=0, timestamp=None, **_):
        if timestamp is None or timestamp <= 0:
            timestamp = time.time()
        try:
            sev = Severity(int(severity))
        except ValueError:
            sev = Severity.INVALID
        self.deliver(value, sev, float(timestamp), True)

    def stop(self) -> None:
        self._stopped = True
        self._cancel_timer()
        ca = _ca_module
        if ca is None or self._chid is None:
            return
        try:
            if self._sub is not None:
                ca.clear_subscription(self._sub[2])
            ca.clear_channel(self._chid)
        except Exception:  # libca may already be finalised at exit
            pass
        self._sub = None
        self._chid = None


class PvaSource:
    """A PVA monitor on one PV (NTScalar or NTEnum)."""

    def __init__(self, ref: PVRef, deliver: Deliver):
        self.ref = ref
        self.deliver = deliver
        self.connected = False
        self._sub = None

    def start(self) -> None:
        self._sub = _pva().monitor(self.ref.name, self._on_update, notify_disconnect=True)

    def _on_update(self, value) -> None:
        from p4p.client.thread import Disconnected

        if isinstance(value, Disconnected):
            if self.connected:
                log.warning("source %s disconnected", self.ref)
            self.connected = False
            self.deliver(None, Severity.INVALID, time.time(), False)
            return
        if isinstance(value, Exception):
            log.warning("source %s: %s", self.ref, value)
            return
        if not self.connected:
            log.info("source %s connected", self.ref)
        self.connected = True
        try:
            raw = value["value"]
            if hasattr(raw, "get") or not isinstance(raw, (int, float, bool, str)):
                raw = value["value.index"]
        except (KeyError, TypeError):
            raw = math.nan
        try:
            sev = Severity(int(value["alarm.severity"]))
        except (KeyError, ValueError, TypeError):
            sev = Severity.NO_ALARM
        try:
            ts = value["timeStamp.secondsPastEpoch"] + value["timeStamp.nanoseconds"] * 1e-9
        except (KeyError, TypeError):
            ts = 0.0
        if ts <= 0:
            ts = time.time()
        self.deliver(raw, sev, ts, True)

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None


def make_source(ref: PVRef, deliver: Deliver) -> CaSource | PvaSource:
    return CaSource(ref, deliver) if ref.protocol == "ca" else PvaSource(ref, deliver)


def close_clients() -> None:
    """Tear down the process-wide client contexts (at shutdown)."""
    global _pva_context
    if _pva_context is not None:
        _pva_context.close()
        _pva_context = None
