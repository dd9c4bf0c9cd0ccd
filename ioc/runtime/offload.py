"""Where a model's inference runs: inline on the event loop, or on a worker thread.

A thread hand-off and back costs ~70 us on this class of machine, while a small MLP runs in ~10 us:
for such a model the hand-off would be the largest cost of a cycle. So with ``offload: auto`` a model
runs inline when its measured warm-up median is below ``inline_budget_ms``, and on its own worker thread
otherwise, so a slow model never stalls the CA/PVA servers. The decision uses the warm-up median
(a p99 of a few hundred runs on a busy 2-core machine is mostly scheduler noise). A model that turns
out slower live than at warm-up (three inline runs in a row over 4x the budget) is moved to the thread for good.
A model on one ONNX Runtime thread runs in the caller's thread, so its inline runs are judged by that thread's
CPU time (``cpu_clock``): a run that waited for the GIL (another thread busy in numpy, e.g. calibrating drift
limits at start-up) is not a slow model, and used to move fast models off the loop for good, doubling the
cost of every cycle after.

Bounded: an offloader holds at most one call, queued or running; :meth:`Offloader.submit` refuses
another while it is busy (the caller decides: the champion's cycle waits, a shadow cycle is skipped
and counted). :meth:`Offloader.close` waits for the call in flight, however long the model takes: a
thread left inside ONNX Runtime when the interpreter exits aborts the process ("terminate called
without an active exception").
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mlioc.offload")

SLOW_STRIKES = 3

Done = Callable[[Any, BaseException | None, float], None]


class Offloader:
    """Runs inference calls for one model, inline or on a dedicated worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mode: str, budget_ms: float, name: str,
                 cpu_clock: bool = False):
        if mode not in ("auto", "always", "never"):
            raise ValueError(f"offload mode {mode!r}")
        self.loop = loop
        self.cpu_clock = cpu_clock  # judge inline runs by the calling thread's CPU time, not the wall clock
        self.mode = mode
        self.budget_s = budget_ms / 1e3
        self.name = name
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._strikes = 0
        self._demoted: set[int] = set()
        self._busy = False
        self._closed = False

    def use_inline(self, model: Any) -> bool:
        """Whether ``model`` (a LoadedModel) should run on the loop."""
        if self.mode == "never":
            return True
        if self.mode == "always" or id(model) in self._demoted:
            return False
        return model.warm_median_ms / 1e3 <= self.budget_s

    def note_inline_time(self, model: Any, seconds: float) -> None:
        """Demote a model after SLOW_STRIKES *consecutive* slow inline runs: a lone slow run is the
        scheduler or the GIL (another thread warming up a new version), not the model."""
        if self.mode != "auto":
            return
        if seconds <= 4 * self.budget_s:
            self._strikes = 0
            return
        self._strikes += 1
        if self._strikes >= SLOW_STRIKES:
            self._demoted.add(id(model))
            self._strikes = 0
            log.warning("%s: inference took %.2f ms inline (budget %.2f ms): moving it off the event loop",
                        self.name, seconds * 1e3, self.budget_s * 1e3)

    def forget(self, model: Any) -> None:
        self._demoted.discard(id(model))

    @property
    def busy(self) -> bool:
        """A call is queued or running (set and cleared on the loop)."""
        return self._busy

    def submit(self, fn: Callable[[], Any], done: Done) -> bool:
        """Run ``fn`` on the worker thread; ``done(result, error, seconds)`` is called on the loop.

        Returns False, and runs nothing, while a call is already in flight or after :meth:`close`.
        """
        if self._busy or self._closed:
            return False
        if self._thread is None:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._work, name=f"infer-{self.name}", daemon=True)
            self._thread.start()
        assert self._queue is not None
        self._busy = True
        self._queue.put((fn, done))
        return True

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, done = item
            t0 = time.perf_counter()
            try:
                result, error = fn(), None
            except BaseException as exc:  # reported to the loop, never kills the worker
                result, error = None, exc
            elapsed = time.perf_counter() - t0
            try:
                self.loop.call_soon_threadsafe(self._done, done, result, error, elapsed)
            except RuntimeError:  # loop closed during shutdown
                return

    def _done(self, done: Done, result: Any, error: BaseException | None, elapsed: float) -> None:
        self._busy = False
        done(result, error, elapsed)

    def close(self) -> None:
        """Stop the worker once the call in flight (if any) has returned."""
        self._closed = True
        if self._queue is not None:
            self._queue.put(None)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=1.0)
            if thread.is_alive():
                log.warning("%s: waiting for the inference in flight to finish", self.name)
                thread.join()
