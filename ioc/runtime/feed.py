"""Hand updates from client-library threads (libca, pvxs) to the event loop, one wake-up per burst.

``loop.call_soon_threadsafe`` per update costs a self-pipe write and a loop iteration each; a
source IOC publishing several inputs at once would also trigger one cycle per input. A feed queues
updates from any thread and schedules a single drain on the loop; the drain applies them all and
then calls ``after`` once (e.g. run one on-change cycle for the whole burst).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Feed:
    def __init__(self, loop: asyncio.AbstractEventLoop, apply: Callable[..., None],
                 after: Callable[[], None] | None = None):
        self.loop = loop
        self.apply = apply
        self.after = after
        self._pending: deque[tuple] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def push(self, *update: Any) -> None:
        """Queue one update (any thread); ``apply(*update)`` runs on the loop."""
        self._pending.append(update)
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _drain(self) -> None:
        with self._lock:
            self._scheduled = False
        pending = self._pending
        applied = False
        while pending:
            self.apply(*pending.popleft())
            applied = True
        if applied and self.after is not None:
            self.after()
