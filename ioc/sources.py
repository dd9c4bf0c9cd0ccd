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
# pyepics caches one channel per PV name: two sources on one PV (an input that is also an action's
# readback, or a trigger) share it, and clearing it twice frees it twice (a segfault at shutdown).
_ca_users: dict[str, int] = {}
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
    """A CA monitor on one PV (DBR_TIME: value, severity and timestamp)."""

    def __init__(self, ref: PVRef, deliver: Deliver):
        self.ref = ref
        self.deliver = deliver
        self.connected = False
        self._chid = None
        self._sub = None

    def start(self) -> None:
        ca = _ca()
        with _ca_lock:
            _ca_users[self.ref.name] = _ca_users.get(self.ref.name, 0) + 1
        self._chid = ca.create_channel(self.ref.name, connect=False, auto_cb=False, callback=self._on_connection)

    def _on_connection(self, pvname=None, chid=None, conn=False, **_):
        self.connected = bool(conn)
        if conn:
            log.info("source %s connected", self.ref)
            if self._sub is None:
                ca = _ca_module
                self._sub = ca.create_subscription(chid, use_time=True, callback=self._on_value)
        else:
            log.warning("source %s disconnected", self.ref)
            self.deliver(None, Severity.INVALID, time.time(), False)

    def _on_value(self, value=None, severity=0, timestamp=None, **_):
        if timestamp is None or timestamp <= 0:
            timestamp = time.time()
        try:
            sev = Severity(int(severity))
        except ValueError:
            sev = Severity.INVALID
        self.deliver(value, sev, float(timestamp), True)

    def stop(self) -> None:
        ca = _ca_module
        if ca is None or self._chid is None:
            return
        with _ca_lock:
            users = _ca_users.get(self.ref.name, 1) - 1
            if users > 0:
                _ca_users[self.ref.name] = users
            else:
                _ca_users.pop(self.ref.name, None)
        try:
            if self._sub is not None:
                ca.clear_subscription(self._sub[2])
            if users <= 0:  # the last source on this PV clears the shared channel
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
