"""The operator audit trail on disk, and the alarm when any part of the trail cannot be written.

Every control write (accepted or refused) is a record on the ``mlioc.audit`` logger
(:meth:`ioc.core.pvmodel.PVDatabase.put`). Besides going wherever the log goes, :class:`AuditFile`
appends each as one JSON line to ``<state_dir>/audit.jsonl`` (one ``O_APPEND`` write per line, the
file opened per line so log rotation needs no signal). The store's ``events.jsonl`` and the actions'
audit files are the other parts of the trail.

An audit line that cannot be written must not go unnoticed (an operator acting while the disk is full
would leave no trace): each sink reports every write's outcome to the :class:`AuditHealth` of the
models it serves, which raises ``$(P)AUDIT`` to FAULT (MAJOR) with the reason in ``$(P)MESSAGE``
while any sink fails, and clears it once every failing sink has written again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ioc.core.store import append_line

log = logging.getLogger("mlioc")

AUDIT_LOGGER = "mlioc.audit"
_FIELDS = ("pv", "old", "new", "user", "host", "protocol", "address", "accepted", "reason")


class AuditHealth:
    """Which audit sinks of one model fail right now; ``on_change(reason | None)`` when that changes.

    ``report`` may be called from any thread; ``on_change`` is called on the caller's thread.
    """

    def __init__(self, on_change: Callable[[str | None], None]):
        self.on_change = on_change
        self._failing: dict[str, str] = {}
        self._lock = threading.Lock()

    def report(self, sink: str, error: str | None) -> None:
        with self._lock:
            before = self.reason
            if error is None:
                self._failing.pop(sink, None)
            else:
                self._failing[sink] = error
            after = self.reason
        if after != before:
            self.on_change(after)

    @property
    def reason(self) -> str | None:
        """The first failing sink and why ("events.jsonl: No space left on device"), or None."""
        for sink, error in self._failing.items():
            return f"{sink}: {error}"
        return None


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class AuditFile(logging.Handler):
    """Appends ``mlioc.audit`` records to a JSON-lines file and reports each write to ``healths``."""

    def __init__(self, path: Path, healths: list[AuditHealth]):
        super().__init__(logging.INFO)
        self.path = Path(path)
        self.healths = healths
        self._failed = False

    def emit(self, record: logging.LogRecord) -> None:
        doc = {"time": record.created, "message": record.getMessage()}
        doc.update({k: getattr(record, k) for k in _FIELDS if hasattr(record, k)})
        line = (json.dumps(doc, sort_keys=True, default=str) + "\n").encode()
        try:
            append_line(self.path, line)
        except OSError as exc:
            if not self._failed:
                log.error("cannot write the audit trail %s: %s (audit lines go to the log only)", self.path, exc)
            self._failed = True
            self._tell(os_reason(exc))
            return
        if self._failed:
            log.warning("audit trail %s written again", self.path)
        self._failed = False
        self._tell(None)

    def _tell(self, error: str | None) -> None:
        for health in self.healths:
            health.report(self.path.name, error)


def install(path: Path, healths: list[AuditHealth]) -> AuditFile:
    """Attach an :class:`AuditFile` to ``mlioc.audit`` (and make sure INFO records reach it whatever the
    log level: accepted writes are audited at INFO). Undo with :func:`uninstall`."""
    handler = AuditFile(path, healths)
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def uninstall(handler: AuditFile) -> None:
    logging.getLogger(AUDIT_LOGGER).removeHandler(handler)
