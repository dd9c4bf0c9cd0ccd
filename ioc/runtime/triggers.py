"""When a model runs: every trigger of ``trigger:`` in the config lives here.

- ``scan_hz``: a periodic scan on a drift-free schedule (:class:`ScanTrigger`);
- ``on_change``: every input update runs a cycle (:class:`OnChangeTrigger`; the runner asks
  :attr:`Trigger.on_input_change` after each burst of updates);
- ``pv``: every monitor update of another IOC's PV runs a cycle (:class:`PvTrigger`; the PV's client
  monitor comes from the edges, passed in as a factory so this layer does no network I/O itself).

Whatever the trigger, a cycle that is not triggered (a lost source, a stale input, ENABLE, a model
swap) still runs: those come from the runner itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ioc.core.config import PVRef, TriggerConfig
from ioc.runtime.feed import Feed
from ioc.runtime.runner import ModelRunner

MAX_BURST = 16  # cycles run back to back when late, before the loop is given back for I/O
MAX_LAG_S = 1.0  # further behind than this, ticks are dropped (and counted as missed)

Deliver = Callable[[Any, int, float, bool], None]
SourceFactory = Callable[[PVRef, Deliver], Any]  # returns an object with start() and stop()


class Trigger(Protocol):
    on_input_change: bool  # the runner runs a cycle after every burst of input updates

    def start(self) -> None: ...

    async def stop(self) -> None: ...


class OnChangeTrigger:
    """A cycle per input update (a burst of updates handed over together runs one cycle)."""

    on_input_change = True

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class ScanTrigger:
    """Periodic cycles at ``hz`` on the loop, on a schedule that does not drift."""

    on_input_change = False

    def __init__(self, runner: ModelRunner, hz: float):
        self.runner = runner
        self.hz = hz
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(scan(self.runner, self.hz),
                                                            name=f"scan-{self.runner.config.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None


class PvTrigger:
    """A cycle per monitor update of another IOC's PV (updates arriving together run one cycle)."""

    on_input_change = False

    def __init__(self, runner: ModelRunner, pv: PVRef, make_source: SourceFactory):
        self.runner = runner
        self._feed = Feed(runner.loop, lambda: None, runner.run_cycle)

        def on_update(value: Any, severity: int, timestamp: float, connected: bool) -> None:
            if connected:
                self._feed.push()

        self._source = make_source(pv, on_update)

    def start(self) -> None:
        self._source.start()

    async def stop(self) -> None:
        self._source.stop()


def make_trigger(runner: ModelRunner, trigger: TriggerConfig, make_source: SourceFactory) -> Trigger:
    if trigger.kind == "scan":
        return ScanTrigger(runner, trigger.scan_hz)
    if trigger.kind == "pv":
        return PvTrigger(runner, trigger.pv, make_source)
    return OnChangeTrigger()


async def scan(runner: ModelRunner, hz: float) -> None:
    """Periodic trigger on a drift-free schedule.

    The loop timer has ~1 ms resolution, so at high rates several ticks fall due per wake-up: they
    run back to back (their monitor updates then leave in one send). Each cycle is handed its tick's
    time: the runner records how late it started and counts it as missed when that is more than one
    period. A scheduler that has fallen more than MAX_LAG_S behind drops the ticks it missed (counted
    as missed too). An exception in a cycle never ends the scan (the runner turns it into FAULT).
    """
    loop = asyncio.get_running_loop()
    period = 1.0 / hz
    runner.scan_period = period
    next_t = loop.time()
    while True:
        now = loop.time()
        if now - next_t > MAX_LAG_S:
            missed = int((now - next_t) / period)
            runner.overruns += missed
            next_t += missed * period
        burst = 0
        while next_t <= now and burst < MAX_BURST:
            runner.run_cycle(due=next_t)
            next_t += period
            burst += 1
        await asyncio.sleep(max(next_t - loop.time(), 0.0))
