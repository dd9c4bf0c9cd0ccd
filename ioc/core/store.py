"""The model store on disk: the contract between training and the IOC (docs/how-to/model-store.md).

::

    <root>/versions/<N>/model.onnx      N = 1, 2, 3 ...
    <root>/versions/<N>/manifest.json
    <root>/champion                     text: the served version's N
    <root>/challenger                   text: the shadow version's N (absent or empty: none)
    <root>/events.jsonl                 promotions, rollbacks, rejections: who, when, why
    <root>/champion.history             earlier champions, one N per line, newest last (for ROLLBACK)

Writers stage a version in a hidden directory and publish it with one ``rename`` (so a reader never
sees half a version); pointers are replaced atomically (write, fsync, rename). An advisory lock on
``<root>/.lock`` serialises writers, so two trainings pushing at once get distinct version numbers,
and a pointer change can be made conditional on its current value (compare-and-swap).
Every change of the champion pointer, by whoever makes it, pushes the previous champion onto
``champion.history``; a rollback pops it, so repeated rollbacks walk back through the champions.
This module does file I/O only: validation of what a version contains lives in :mod:`ioc.validation`.

A config may name a ``store_template``: the store is then created as a copy of it on first use
(:func:`model_store`), so the demo's shipped model stays as it was committed while its working copy
takes the pushes, promotions and events of a session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("mlioc.store")

ONNX_NAME = "model.onnx"
MANIFEST_NAME = "manifest.json"
POINTERS = ("champion", "challenger")
HISTORY_NAME = "champion.history"
_ANY = object()


def seed_store(root: str | os.PathLike, template: str | os.PathLike) -> bool:
    """Create the store ``root`` as a copy of ``template`` unless it exists; True if it was created.

    Copied aside, then renamed into place: a concurrent first use (the IOC and a training run) ends with
    one complete copy, never a half one.
    """
    root = Path(root)
    if root.exists():
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.seeding-", dir=root.parent))
    try:
        shutil.copytree(template, staging / "store", ignore=shutil.ignore_patterns(".lock"))
        try:
            os.rename(staging / "store", root)
        except OSError:
            if not root.exists():
                raise
            return False  # someone else created it meanwhile
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def model_store(model) -> ModelStore:
    """The store of a model's config (``ioc.core.config.ModelConfig``), created from its template if needed."""
    if model.store_template and seed_store(model.store_path, model.store_template):
        log.info("%s: created the model store %s as a copy of %s", model.name, model.store_path,
                 model.store_template)
    return ModelStore(model.store_path)


class StoreError(Exception):
    """The store is missing, malformed, or a write to it failed."""


class StoreConflict(StoreError):
    """A conditional pointer change found the pointer already changed by someone else."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to ``path`` (created with its directory) in one ``O_APPEND`` write: concurrent
    writers' lines never interleave, and the file is opened per line so a rotated file is followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class ModelStore:
    """One model's store directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_file: IO[str] | None = None

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    def exists(self) -> bool:
        return self.versions_dir.is_dir()

    def version_dir(self, n: int) -> Path:
        return self.versions_dir / str(n)

    def onnx_path(self, n: int) -> Path:
        return self.version_dir(n) / ONNX_NAME

    def manifest_path(self, n: int) -> Path:
        return self.version_dir(n) / MANIFEST_NAME

    def versions(self) -> list[int]:
        """Published version numbers, ascending (staging directories are hidden and ignored)."""
        try:
            names = os.listdir(self.versions_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit() and not n.startswith("0"))

    # -------------------------------------------------------------------- pointers

    def read_pointer(self, name: str) -> int | None:
        """The version a pointer names, or None when the file is absent or empty."""
        if name not in POINTERS:
            raise ValueError(name)
        try:
            text = (self.root / name).read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.root / name}: {exc.strerror or exc}") from exc
        if not text:
            return None
        if not text.isdigit():
            raise StoreError(f"{self.root / name}: expected a version number, got {text[:40]!r}")
        return int(text)

    def champion(self) -> int | None:
        return self.read_pointer("champion")

    def challenger(self) -> int | None:
        return self.read_pointer("challenger")

    def write_pointer(self, name: str, version: int | None, *, expect: object = _ANY) -> int | None:
        """Point ``name`` at ``version`` (None clears it); returns the previous value.

        With ``expect``, the change happens only if the pointer still holds that value
        (:class:`StoreConflict` otherwise). Changing the champion records the previous one in
        ``champion.history``.
        """
        if name not in POINTERS:
            raise ValueError(name)
        with self.locked():
            current = self.read_pointer(name)
            if expect is not _ANY and current != expect:
                raise StoreConflict(f"{self.root / name} is {current}, expected {expect}")
            if version is not None and version not in self.versions():
                raise StoreError(f"version {version} does not exist in {self.root}")
            if name == "champion" and current is not None and current != version:
                self._write_history([*self.champion_history(), current])
            atomic_write_text(self.root / name, "" if version is None else f"{version}\n")
            return current

    def champion_history(self) -> list[int]:
        """Earlier champions, oldest first (what ROLLBACK walks back through)."""
        try:
            lines = (self.root / HISTORY_NAME).read_text().split()
        except FileNotFoundError:
            return []
        return [int(x) for x in lines if x.isdigit()]

    def _write_history(self, history: list[int]) -> None:
        atomic_write_text(self.root / HISTORY_NAME, "".join(f"{n}\n" for n in history[-1000:]))

    def promote(self, *, expect_challenger: object = _ANY) -> tuple[int | None, int]:
        """The challenger becomes champion (and the challenger pointer is cleared); (old, new)."""
        with self.locked():
            challenger = self.challenger()
            if expect_challenger is not _ANY and challenger != expect_challenger:
                raise StoreConflict(f"challenger is {challenger}, expected {expect_challenger}")
            if challenger is None:
                raise StoreError(f"no challenger in {self.root} to promote")
            old = self.write_pointer("champion", challenger)
            self.write_pointer("challenger", None)
            return old, challenger

    def rollback_target(self, current: object = _ANY) -> int | None:
        """The champion a rollback from ``current`` would return to (None: no earlier champion).

        ``current`` is the version rolled back *from*: by default the one the pointer names. An IOC
        passes the version it serves, which differs from the pointer after it rejected a pushed version.
        """
        pointer = self.champion()
        skip = {pointer, pointer if current is _ANY else current}
        existing = set(self.versions())
        for n in reversed(self.champion_history()):
            if n not in skip and n in existing:
                return n
        return None

    def rollback(self, *, expect_champion: object = _ANY, current: object = _ANY) -> tuple[int | None, int]:
        """Return to the champion before ``current`` (default: the pointer's), popping the history; the
        pointer then names it. Returns (what the pointer named, the new champion).

        History entries that are ``current``, the pointer's version or no longer exist are skipped.
        """
        with self.locked():
            pointer = self.champion()
            if expect_champion is not _ANY and pointer != expect_champion:
                raise StoreConflict(f"champion is {pointer}, expected {expect_champion}")
            skip = {pointer, pointer if current is _ANY else current}
            history = self.champion_history()
            existing = set(self.versions())
            while history and (history[-1] in skip or history[-1] not in existing):
                history.pop()
            if not history:
                raise StoreError(f"no earlier champion to roll back to in {self.root}")
            target = history.pop()
            self._write_history(history)
            atomic_write_text(self.root / "champion", f"{target}\n")
            return pointer, target

    # -------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock (advisory, across processes; re-entrant within one)."""
        with self._thread_lock:
            if self._depth == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                lock_file = open(self.root / ".lock", "a+")  # noqa: SIM115 - held across the block
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
                self._lock_file = lock_file
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_file is not None:
                    fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
                    self._lock_file.close()
                    self._lock_file = None

    # -------------------------------------------------------------------- writing versions

    def add_version(self, onnx: str | os.PathLike | bytes, manifest: dict[str, Any]) -> int:
        """Publish a new version: stage model + manifest, then rename into the next number.

        The manifest's ``sha256`` and ``version`` are filled in here from what was written, so the
        checksum always describes the bytes on disk. Returns the new version number.
        """
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.versions_dir))
        os.chmod(stage, 0o755)  # mkdtemp makes it private; a published version is world-readable
        try:
            target = stage / ONNX_NAME
            if isinstance(onnx, bytes):
                target.write_bytes(onnx)
            else:
                shutil.copyfile(onnx, target)
            doc = dict(manifest)
            doc["sha256"] = sha256_file(target)
            with self.locked():
                existing = self.versions()
                number = (existing[-1] + 1) if existing else 1
                doc["version"] = number
                (stage / MANIFEST_NAME).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
                for f in (target, stage / MANIFEST_NAME):
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                os.rename(stage, self.version_dir(number))
                _fsync_dir(self.versions_dir)
            return number
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    # -------------------------------------------------------------------- audit trail

    def append_event(self, action: str, **fields: Any) -> dict[str, Any]:
        """Append one line to ``events.jsonl`` (a single O_APPEND write, so lines never interleave)."""
        event = {"time": time.time(), "action": action, **fields}
        append_line(self.events_path, (json.dumps(event, sort_keys=True, default=str) + "\n").encode())
        return event

    def events(self) -> list[dict[str, Any]]:
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out
