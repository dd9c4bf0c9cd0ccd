"""The actions audit trail: ``<state_dir>/actions/<model>.jsonl``, appended in batches off the loop.
"""


from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ioc.core.store import append_line

log = logging.getLogger("mlioc.actions")



# ----------------------------------------------------------------------------- audit


class AuditLog:
    """``<state_dir>/actions/<model>.jsonl``: one JSON line per write, proposal, hold episode, trip.

    Lines are collected on the loop and appended in batches, in order, on a thread of their own every
    ``FLUSH_S`` (a slow disk must not stall a cycle, and one thread wake-up per batch keeps the GIL
    with the loop).
    """

    FLUSH_S = 0.2

    def __init__(self, path: Path | None, loop: asyncio.AbstractEventLoop | None = None):
        self.path = path
        self.loop = loop
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="actions-audit")
        self._lines: list[bytes] = []
        self._handle: asyncio.TimerHandle | None = None
        self._warned = False
        self._closed = False
        # Each append's outcome (error text or None), from the writer thread: the app raises $(P)AUDIT.
        self.on_health: Callable[[str | None], None] = lambda error: None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None or self._closed:
            return
        self._lines.append((json.dumps(record, sort_keys=True, default=str) + "\n").encode())
        if self.loop is None:
            self.flush()
        elif self._handle is None:
            self._handle = self.loop.call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        self._handle = None
        lines, self._lines = self._lines, []
        if lines:
            with contextlib.suppress(RuntimeError):  # shut down
                self._pool.submit(self._append, b"".join(lines))

    def _append(self, data: bytes) -> None:
        if self.path is None:
            return
        try:
            append_line(self.path, data)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.error("cannot write the actions audit log %s: %s", self.path, exc)
            self.on_health(exc.strerror or str(exc))
            return
        if self._warned:
            self._warned = False
            log.warning("actions audit log %s written again", self.path)
        self.on_health(None)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
        self._closed = True
        self._pool.shutdown(wait=True)

