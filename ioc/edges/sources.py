"""Monitors of PVs on other IOCs (model inputs, trigger PVs), over CA or PVA.

CA uses pyepics' bundled libca (the C client, preemptive callbacks): it is the same client code a
control room's ``camonitor`` uses, and its callback path is far cheaper than a pure-Python client.
PVA uses the p4p (pvxs) client. Both call ``deliver(value, severity, timestamp, connected)`` on
their own threads; the caller hands that to the event loop (see :mod:`ioc.runtime.feed`), so model state is
only ever touched on the loop. A disconnect is delivered as ``connected=False``; pvxs reconnects by
itself, CA channels are renewed until they do (see :class:`_CaChannel`).

Arrays: a CA waveform arrives as a numpy array of its current length (``.NORD`` elements: the
subscription asks for count 0, EPICS' dynamic array size, so a source that changes its size is seen
as such); a PVA NTScalarArray as its value array; an NTNDArray as a ``[height, width]`` frame decoded
by :func:`ioc.core.arrays.frame_from_ntndarray`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ioc.core.arrays import frame_from_ntndarray, is_ntndarray
from ioc.core.config import PVRef
from ioc.core.pvmodel import Severity
from ioc.edges.clients import CA_LOCK, ca_client, ca_module, pva_client

log = logging.getLogger("mlioc.sources")

Deliver = Callable[[Any, Severity, float, bool], None]  # called on the client library's thread

MAX_UPDATES_PER_S = 20_000  # source updates the whole process takes per second, over every source


class UpdateBudget:
    """At most ``rate`` source updates per second reach Python, in all: the bound on an input storm.

    Every monitor update costs ~17 us of Python (and of the GIL) on the client library's thread before
    the feed can coalesce it; a source publishing as fast as its server can (tens of thousands a second)
    would starve the event loop. Past the budget of a 10 ms window the callback sleeps until the window
    ends, the GIL released: the client stops reading, TCP pushes back, and the source's server keeps only
    the newest value of each subscription once its queue for the slow client is full (CA and PVA servers
    squash). What is already in the socket buffers between them (up to megabytes) still arrives, in
    order: in a storm an input's value can lag by seconds; its source timestamp says so (``max_age_s``
    then makes the outputs INVALID). The time spent holding back is counted (a metric).
    """

    WINDOW_S = 0.01

    def __init__(self, rate: float = MAX_UPDATES_PER_S):
        self.per_window = max(1, int(rate * self.WINDOW_S))
        self.held_back_s = 0.0
        self._end = 0.0
        self._used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        """Account for one update (any client thread); sleeps while the budget is spent."""
        with self._lock:
            now = time.monotonic()
            if now >= self._end:
                self._end, self._used = now + self.WINDOW_S, 0
            self._used += 1
            wait = self._end - now if self._used > self.per_window else 0.0
            if wait:
                self.held_back_s += wait
        if wait:
            time.sleep(wait)


BUDGET = UpdateBudget()

class _CaChannel:
    """One libca channel per PV name, shared by every source on that PV.

    pyepics caches channels by name, so two sources on one PV (an input that is also an action's
    readback, or a trigger) get the same channel: clearing it once per source frees it twice (a
    segfault). The channel is therefore owned here, once per name, and cleared by the last user.

    After a disconnect libca searches again on a backed-off schedule: a source IOC that restarts
    after a second is found only ~10 s after it went away unless a CA repeater relays its beacons.
    To recover within ~1 s regardless, a lost channel is renewed (cleared and created again, which
    restarts its search at the fastest rate) every RENEW_S until it reconnects.
    """

    RENEW_S = 1.0
    channels: dict[str, _CaChannel] = {}

    def __init__(self, name: str):
        self.name = name
        self.users: list[CaSource] = []
        self.chid = None
        self.connected = False
        self.generation = 0
        self.timer: threading.Timer | None = None

    @classmethod
    def attach(cls, source: CaSource) -> _CaChannel:
        with CA_LOCK:
            existing = cls.channels.get(source.ref.name)
            new = existing is None
            channel = cls.channels[source.ref.name] = cls(source.ref.name) if existing is None else existing
            channel.users.append(source)
            connected = channel.connected
        if new:
            channel.create()
        elif connected:
            source.on_connected(channel.chid)
        return channel

    def detach(self, source: CaSource) -> None:
        with CA_LOCK:
            if source in self.users:
                self.users.remove(source)
            last = not self.users
            if last:
                self.channels.pop(self.name, None)
                timer, self.timer = self.timer, None
        if last:
            if timer is not None:
                timer.cancel()
            self.generation += 1  # late callbacks of this channel are ignored
            self._clear()

    def create(self) -> None:
        ca = ca_client()
        self.generation += 1
        generation = self.generation
        self.chid = ca.create_channel(self.name, connect=False, auto_cb=False,
                                      callback=lambda **kw: self._on_connection(generation, **kw))

    def _clear(self) -> None:
        ca = ca_module()
        if ca is None or self.chid is None:
            return
        try:
            ca.clear_channel(self.chid)
        except Exception:  # libca may already be finalised at exit
            pass
        self.chid = None

    def _on_connection(self, generation, pvname=None, chid=None, conn=False, **_):
        if generation != self.generation:
            return  # a channel we have already replaced
        with CA_LOCK:
            was, self.connected = self.connected, bool(conn)
            users = list(self.users)
            if conn and self.timer is not None:
                self.timer.cancel()
                self.timer = None
        for source in users:
            if conn:
                source.on_connected(chid)
            elif was or not source.reported_down:
                source.on_disconnected()
        if not conn:
            self._schedule_renew()

    def _schedule_renew(self) -> None:
        with CA_LOCK:
            if self.timer is None and self.users:
                self.timer = threading.Timer(self.RENEW_S, self._renew)
                self.timer.daemon = True
                self.timer.start()

    def _renew(self) -> None:
        with CA_LOCK:
            self.timer = None
            if self.connected or not self.users:
                return
            users = list(self.users)
        for source in users:
            source.drop_subscription()
        self._clear()
        self.create()
        self._schedule_renew()  # until it connects (the connection callback cancels it)


def ca_channel_is_current(name: str, chid) -> bool:
    """Whether ``chid`` is still the live channel for ``name`` (renewal clears channels, and with
    them every subscription on them: a subscription on a replaced channel must not be cleared again)."""
    with CA_LOCK:
        channel = _CaChannel.channels.get(name)
        current = channel.chid if channel is not None else None
    return current is not None and chid is not None and getattr(current, "value", current) == getattr(
        chid, "value", chid)


class CaSource:
    """A CA monitor on one PV (DBR_TIME: value, severity and timestamp).

    If a connected channel delivers no first value within FIRST_VALUE_S (seen rarely right after a
    source IOC starts), the subscription is made again: a PV that never changes would otherwise
    never be seen.
    """

    FIRST_VALUE_S = 2.0

    def __init__(self, ref: PVRef, deliver: Deliver):
        self.ref = ref
        self.deliver = deliver
        self.connected = False
        self.reported_down = False
        self._channel: _CaChannel | None = None
        self._sub = None
        self._got_value = False
        self._check: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        ca_client()
        self._channel = _CaChannel.attach(self)

    def on_connected(self, chid) -> None:
        log.info("source %s connected", self.ref)
        self.connected = True
        self.reported_down = False
        self._subscribe(chid)

    def _subscribe(self, chid) -> None:
        with self._lock:
            if self._sub is not None:
                return
            self._got_value = False
            self._sub = ca_module().create_subscription(chid, use_time=True, callback=self._on_value)
            self._check = threading.Timer(self.FIRST_VALUE_S, self._check_first_value, args=(chid,))
            self._check.daemon = True
            self._check.start()

    def _check_first_value(self, chid) -> None:
        if self._got_value or not self.connected:
            return
        log.warning("source %s: no value %.0f s after connecting; subscribing again", self.ref, self.FIRST_VALUE_S)
        self.drop_subscription()
        ca_client()
        self._subscribe(chid)

    def drop_subscription(self) -> None:
        with self._lock:
            sub, self._sub = self._sub, None
            check, self._check = self._check, None
        if check is not None:
            check.cancel()
        if sub is not None:
            try:
                ca_module().clear_subscription(sub[2])
            except Exception:
                pass

    def on_disconnected(self) -> None:
        if self.connected:
            log.warning("source %s disconnected", self.ref)
        self.connected = False
        self.reported_down = True
        self.deliver(None, Severity.INVALID, time.time(), False)

    def _on_value(self, value=None, severity=0, timestamp=None, **_):
        BUDGET.take()
        self._got_value = True
        if timestamp is None or timestamp <= 0:
            timestamp = time.time()
        try:
            sev = Severity(int(severity))
        except ValueError:
            sev = Severity.INVALID
        self.deliver(value, sev, float(timestamp), True)

    def stop(self) -> None:
        self.drop_subscription()
        if self._channel is not None:
            self._channel.detach(self)
            self._channel = None


class PvaSource:
    """A PVA monitor on one PV: NTScalar or NTEnum, NTScalarArray (its value array) or NTNDArray (the
    frame as a ``[height, width]`` array, or a :class:`~ioc.core.arrays.BadArray` saying why not)."""

    def __init__(self, ref: PVRef, deliver: Deliver):
        self.ref = ref
        self.deliver = deliver
        self.connected = False
        self._sub = None

    def start(self) -> None:
        self._sub = pva_client().monitor(self.ref.name, self._on_update, notify_disconnect=True)

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
        BUDGET.take()
        try:
            raw: Any
            if is_ntndarray(value):  # a camera frame: pixels, dimension, codec, ColorMode
                raw = frame_from_ntndarray(value)
            else:
                raw = value["value"]
                if hasattr(raw, "get") or not isinstance(raw, (int, float, bool, str, np.ndarray)):
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
