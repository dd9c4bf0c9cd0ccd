"""Hand updates from client-library threads (libca, pvxs) to the event loop, one wake-up per burst.

``loop.call_soon_threadsafe`` per update costs a self-pipe write and a loop iteration each; a
source IOC publishing several inputs at once would also trigger one cycle per input. A feed keeps
updates from any thread and schedules a single drain on the loop; the drain applies them and then
calls ``after`` once (e.g. run one on-change cycle for the whole burst).

Bounded: a feed keeps only the **newest** update per key (``key(update)``: a model input's index, or
index and element of a gathered vector; without a key function the whole feed is one slot, e.g. one
source's monitor), so however fast a source publishes — faster than the IOC can post — the loop never
holds more than one pending update per key, and a drain is a bounded amount of work that returns to the
loop (its servers, the scan) before the next. Updates replaced before they were applied are counted
(:attr:`Feed.coalesced`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from typing import Any


class Feed:
    def __init__(self, loop: asyncio.AbstractEventLoop, apply: Callable[..., None],
                 after: Callable[[], None] | None = None, key: Callable[[tuple], Hashable] | None = None):
        self.loop = loop
        self.apply = apply
        self.after = after
        self.key = key
        self._pending: dict[Any, tuple] = {}
        self._lock = threading.Lock()
        self._scheduled = False
        self.received = 0  # updates pushed, since start
        self.coalesced = 0  # of those, replaced by a newer one of the same key before they were applied

    def push(self, *update: Any) -> None:
        """Queue one update (any thread); ``apply(*update)`` runs on the loop unless a newer update with
        the same key replaces it first."""
        key = self.key(update) if self.key is not None else None
        with self._lock:
            self.received += 1
            if key in self._pending:
                self.coalesced += 1
            self._pending[key] = update
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._scheduled = False
        for update in pending.values():
            self.apply(*update)
        if pending and self.after is not None:
            self.after()
