"""Retrain requests and their progress, as files in the model store (``<store>/requests/``).

The IOC (which serves ``$(P)RETRAIN``) and the watcher (``mlioc watch``, which trains) may run on
different hosts that share only the store, so they talk through files, each with one writer:

``requests/request-<ns>-<id>.json``  one per request, written by whoever asks (the IOC for an
                                     operator's ``RETRAIN``): who, from where, when, why, and for a
                                     drift run the data window. The watcher deletes it once taken.
``requests/status.json``             written only by the watcher: state (IDLE, REQUESTED, RUNNING,
                                     FAILED, DONE), message, trigger, who asked, run id, times, host
                                     and pid of the run, a heartbeat (``updated``) while it runs.
``requests/flush.json``              the watcher asks the IOC to close its recording file (so the
``requests/flushed.json``            newest cycles are readable), the IOC answers with the same token.

Every write is atomic (write, fsync, rename: :func:`ioc.core.store.atomic_write_text`), and every
reader tolerates a missing, partial or corrupt file (it is skipped and reported, never fatal): a
file on a shared disk can be half-copied or damaged by hand, and neither process may stop for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from pathlib import Path
from typing import Any

from ioc.core.pvmodel import Severity
from ioc.core.store import atomic_write_text

REQUESTS_DIR = "requests"
STATUS_NAME = "status.json"
FLUSH_NAME = "flush.json"
FLUSHED_NAME = "flushed.json"
TRIGGERS = ("operator", "drift", "schedule")


class RetrainState(IntEnum):
    """``$(P)RETRAIN:STATUS`` (mbbi ZRST..)."""

    IDLE = 0
    REQUESTED = 1
    RUNNING = 2
    FAILED = 3
    DONE = 4


STATE_CHOICES = tuple(s.name for s in RetrainState)
# A failed retrain needs a look (MINOR); the model keeps serving, so nothing here is MAJOR.
STATE_SEVERITIES = (Severity.NO_ALARM, Severity.NO_ALARM, Severity.NO_ALARM, Severity.MINOR, Severity.NO_ALARM)


@dataclass(frozen=True, slots=True)
class RetrainRequest:
    """One request to retrain a model."""

    id: str
    time: float
    trigger: str  # operator | drift | schedule
    user: str = ""
    host: str = ""
    protocol: str = ""
    reason: str = ""
    start: float | None = None  # data window (unix s); None: the watcher's default for the trigger
    end: float | None = None
    reference_since: float | None = None  # drift runs: the drift reference from this time on

    @property
    def who(self) -> str:
        return f"{self.user}@{self.host}" if self.user or self.host else "?"

    @classmethod
    def new(cls, trigger: str, **kw: Any) -> RetrainRequest:
        return cls(id=secrets.token_hex(4), time=kw.pop("time", None) or time.time(), trigger=trigger, **kw)


@dataclass(frozen=True, slots=True)
class RetrainStatus:
    """What the watcher last said about a model's retraining."""

    state: str  # a RetrainState name
    message: str = ""
    updated: float = 0.0  # written at every change, and as a heartbeat while RUNNING
    request_id: str = ""
    trigger: str = ""
    requested_by: str = ""
    run_id: str = ""  # MLflow run id, or the Airflow dag_run_id
    started: float | None = None
    finished: float | None = None
    host: str = ""  # where the run (or the watcher that hands runs to Airflow) lives
    pid: int | None = None  # the watcher's pid on that host
    run_pid: int | None = None  # the local run's pid (its process group) on that host
    version: int | None = None  # the store version the run published, if any
    log: str = ""  # path of the run's log file on the watcher's host

    @property
    def retrain_state(self) -> RetrainState:
        try:
            return RetrainState[self.state]
        except KeyError:
            return RetrainState.IDLE


def _known(cls: type, doc: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None if missing; ValueError if unreadable or not an object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: unreadable: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path.name}: expected a JSON object")
    return doc


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, sort_keys=True) + "\n")


class RequestBox:
    """The ``requests/`` folder of one model store."""

    def __init__(self, store_root: str | os.PathLike):
        self.dir = Path(store_root) / REQUESTS_DIR
        self.problems: list[str] = []  # what the last read skipped (corrupt files), for the log

    # ------------------------------------------------------------------ requests

    def submit(self, request: RetrainRequest) -> Path:
        path = self.dir / f"request-{time.time_ns():020d}-{request.id}.json"
        _write_json(path, asdict(request))
        return path

    def pending(self) -> list[tuple[Path, RetrainRequest]]:
        """Requests not yet taken, oldest first; unreadable ones are skipped and listed in ``problems``."""
        self.problems = []
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.startswith("request-") and n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = self.dir / name
            try:
                doc = _read_json(path)
                if doc is None:
                    continue  # taken meanwhile
                request = RetrainRequest(**_known(RetrainRequest, doc))
                if not isinstance(request.time, (int, float)) or request.trigger not in TRIGGERS:
                    raise ValueError(f"{name}: bad time or trigger")
            except (ValueError, TypeError) as exc:
                text = str(exc)
                self.problems.append(text if text.startswith(name) else f"{name}: {text}")
                continue
            out.append((path, request))
        return out

    def take(self, path: Path) -> None:
        """Remove a request once it has been acted on (gone already: fine)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def discard_corrupt(self) -> list[str]:
        """Move request files that cannot be read aside (``*.bad``), so they are reported once."""
        moved = []
        for problem in self.problems:
            name = problem.split(":", 1)[0]
            with contextlib.suppress(OSError):
                os.replace(self.dir / name, self.dir / f"{name}.bad")
                moved.append(name)
        return moved

    # ------------------------------------------------------------------ status

    @property
    def status_path(self) -> Path:
        return self.dir / STATUS_NAME

    def read_status(self) -> RetrainStatus | None:
        """The watcher's status; None when there is none yet or it cannot be read (``problems`` says)."""
        self.problems = []
        try:
            doc = _read_json(self.status_path)
            return None if doc is None else RetrainStatus(**_known(RetrainStatus, doc))
        except (ValueError, TypeError) as exc:
            self.problems.append(str(exc))
            return None

    def write_status(self, status: RetrainStatus) -> None:
        _write_json(self.status_path, asdict(status))

    # ------------------------------------------------------------------ recording flush handshake

    def ask_flush(self) -> str:
        token = secrets.token_hex(4)
        _write_json(self.dir / FLUSH_NAME, {"token": token, "time": time.time()})
        return token

    def flush_asked(self) -> str | None:
        """The token of an unanswered flush request, if any."""
        try:
            asked = _read_json(self.dir / FLUSH_NAME)
            answered = _read_json(self.dir / FLUSHED_NAME)
        except ValueError:
            return None
        if asked is None or not isinstance(asked.get("token"), str):
            return None
        if answered is not None and answered.get("token") == asked["token"]:
            return None
        return asked["token"]

    def ack_flush(self, token: str, files: list[str]) -> None:
        _write_json(self.dir / FLUSHED_NAME, {"token": token, "time": time.time(), "files": files})

    def flushed(self, token: str) -> bool:
        try:
            doc = _read_json(self.dir / FLUSHED_NAME)
        except ValueError:
            return False
        return doc is not None and doc.get("token") == token


def shown_state(status: RetrainStatus | None, pending: list[RetrainRequest]) -> tuple[RetrainState, str]:
    """What ``$(P)RETRAIN:STATUS`` / ``:MESSAGE`` show: the watcher's state, or REQUESTED while a
    request waits and nothing runs (the watcher may be down: the request is still on record)."""
    if status is not None and status.retrain_state is RetrainState.RUNNING:
        extra = f" (+{len(pending)} waiting)" if pending else ""
        return RetrainState.RUNNING, (status.message or f"{status.trigger} run") + extra
    if pending:
        first = pending[0]
        return RetrainState.REQUESTED, f"{first.trigger} by {first.who}"
    if status is None:
        return RetrainState.IDLE, ""
    return status.retrain_state, status.message
