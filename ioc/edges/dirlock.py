"""One process per directory: the IOC's state directory and each recording directory are locked.

Two IOCs sharing a state directory overwrite each other's autosave and registry mirror; two recorders
in one directory both convert the other's file in progress. A second process must be told at once,
with who holds the directory, rather than corrupt it quietly. ``fcntl.flock`` locks belong to the
open file: the kernel releases them when the process ends, however it ends, so a crash never leaves a
stale lock behind (the ``.lock`` file stays, empty of meaning, and is reused). On a network file
system flock may only be local to each host: give each host its own directories.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class DirectoryLocked(Exception):
    """Another process holds the directory; the message names it."""


class DirLock:
    """An exclusive, non-blocking lock on ``directory`` (created if missing) for as long as it is held."""

    def __init__(self, directory: str | os.PathLike, what: str):
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DirectoryLocked(f"{self.what} {self.directory} is in use by {holder}: one IOC per {self.what}; "
                                  "stop that process, or give this one its own") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None
