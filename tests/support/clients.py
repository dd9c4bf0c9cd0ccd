"""Real CA (pyepics / libca) and PVA (p4p / pvxs) clients with monitors a test can wait on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Update:
    value: Any
    severity: int
    status: Any
    timestamp: float
    message: str = ""
    version: str = ""  # the model version field of an output's PVA structure
    received: float = field(default_factory=time.monotonic)  # when the client got it (update gaps)


class Monitor:
    """Collects updates from a client callback; tests wait for one matching a predicate."""

    def __init__(self, name: str):
        self.name = name
        self.updates: list[Update] = []
        self._cond = threading.Condition()

    def add(self, update: Update) -> None:
        with self._cond:
            self.updates.append(update)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.updates)

    def wait_for(self, predicate: Callable[[Update], bool], timeout: float = 10.0, since: int = 0) -> Update:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for u in self.updates[since:]:
                    if predicate(u):
                        return u
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = self.updates[-5:]
                    raise TimeoutError(f"{self.name}: no matching update in {timeout} s; last: {tail}")
                self._cond.wait(remaining)

    def wait_count(self, n: int, timeout: float = 10.0) -> list[Update]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.updates) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: {len(self.updates)} of {n} updates in {timeout} s")
                self._cond.wait(remaining)
            return list(self.updates)

    @property
    def last(self) -> Update | None:
        with self._cond:
            return self.updates[-1] if self.updates else None


class CaClient:
    """pyepics (the C libca) as a test client."""

    def __init__(self):
        import epics

        self.epics = epics
        self._pvs: list = []

    def pv(self, name: str, **kw):
        pv = self.epics.PV(name, **kw)
        if not pv.wait_for_connection(timeout=10):
            raise TimeoutError(f"CA: cannot connect to {name}")
        self._pvs.append(pv)
        return pv

    def get(self, name: str, as_string: bool = False, **kw):
        return self.pv(name, auto_monitor=False, **kw).get(as_string=as_string, use_monitor=False, timeout=5)

    def get_full(self, name: str):
        """Value plus severity, status and timestamp (DBR_TIME)."""
        pv = self.pv(name, form="time", auto_monitor=False)
        value = pv.get(use_monitor=False, timeout=5)
        return Update(value, pv.severity, pv.status, pv.timestamp)

    def ctrl(self, name: str) -> dict:
        pv = self.pv(name, form="ctrl", auto_monitor=False)
        return pv.get_ctrlvars(timeout=5)

    def put(self, name: str, value, wait: bool = True):
        return self.pv(name, auto_monitor=False).put(value, wait=wait, timeout=5)

    def monitor(self, name: str) -> Monitor:
        mon = Monitor(name)

        def cb(value=None, severity=0, status=0, timestamp=0.0, **_):
            mon.add(Update(value, severity, status, timestamp))

        pv = self.epics.PV(name, form="time", auto_monitor=True, callback=cb)
        if not pv.wait_for_connection(timeout=10):
            raise TimeoutError(f"CA: cannot connect to {name}")
        self._pvs.append(pv)
        mon.pv = pv
        return mon


class PvaClient:
    """The p4p client, pointed at one server's UDP search port."""

    def __init__(self, broadcast_port: int):
        from p4p.client.thread import Context

        self.ctx = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{broadcast_port}",
                                        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
                                        "EPICS_PVA_BROADCAST_PORT": str(broadcast_port)},
                           useenv=False, nt=False)
        self._subs: list = []

    def get(self, name: str, timeout: float = 10.0):
        return self.ctx.get(name, timeout=timeout)

    def put(self, name: str, value, timeout: float = 10.0):
        return self.ctx.put(name, value, timeout=timeout, wait=True)

    def monitor(self, name: str) -> Monitor:
        mon = Monitor(name)

        def cb(v):
            if isinstance(v, Exception):
                return
            value = v["value"]
            if hasattr(value, "keys") or not isinstance(value, (int, float, str, bool)):
                try:
                    value = v["value.index"]
                except (KeyError, TypeError):
                    pass
            ts = v["timeStamp.secondsPastEpoch"] + v["timeStamp.nanoseconds"] * 1e-9
            try:
                version = v["version"]
            except (KeyError, TypeError):
                version = ""
            mon.add(Update(value, v["alarm.severity"], v["alarm.status"], ts, v["alarm.message"], version))

        self._subs.append(self.ctx.monitor(name, cb))
        return mon

    def monitor_raw(self, name: str) -> Monitor:
        """Updates whose ``value`` is the whole structure (an NTNDArray's dimension, uniqueId, attributes ...)."""
        mon = Monitor(name)

        def cb(v):
            if not isinstance(v, Exception):
                mon.add(Update(v, v["alarm.severity"], v["alarm.status"],
                               v["timeStamp.secondsPastEpoch"] + v["timeStamp.nanoseconds"] * 1e-9))

        self._subs.append(self.ctx.monitor(name, cb))
        return mon

    def close(self) -> None:
        for s in self._subs:
            s.close()
        self.ctx.close()
