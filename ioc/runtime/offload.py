"""Where a model's inference runs: inline on the event loop, or on a worker thread.

A thread hand-off and back costs ~70 us on this class of machine, while a small MLP runs in ~10 us:
for such a model the hand-off would be the largest cost of a cycle. So with ``offload: auto`` a model
runs inline when its measured warm-up median is below ``inline_budget_ms``, and on its own worker thread
otherwise, so a slow model never stalls the CA/PVA servers. The decision uses the warm-up median
(a p99 of a few hundred runs on a busy 2-core machine is mostly scheduler noise). A model that turns
out slower live than at warm-up (three inline runs in a row over 4x the budget) is moved to the thread for good.
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

    def __init__(self, loop: asyncio.AbstractEventLoop, mode: str, budget_ms: float, name: str):
        if mode not in ("auto", "always", "never"):
            raise ValueError(f"offload mode {mode!r}")
        self.loop = loop
        self.mode = mode
        self.budget_s = budget_ms / 1e3
        self.name = name
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._strikes = 0
        self._demoted: set[int] = set()

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

    def submit(self, fn: Callable[[], Any], done: Done) -> None:
        """Run ``fn`` on the worker thread; ``done(result, error, seconds)`` is called on the loop."""
        if self._thread is None:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._work, name=f"infer-{self.name}", daemon=True)
            self._thread.start()
        assert self._queue is not None
        self._queue.put((fn, done))

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
                self.loop.call_soon_threadsafe(done, result, error, elapsed)
            except RuntimeError:  # loop closed during shutdown
                return

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
