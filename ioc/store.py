"""The model store on disk: the contract between training and the IOC (DESIGN.md, "Model store").

::

    <root>/versions/<N>/model.onnx      N = 1, 2, 3 ...
    <root>/versions/<N>/manifest.json
    <root>/champion                     text: the served version's N
    <root>/challenger                   text: the shadow version's N (absent or empty: none)
    <root>/events.jsonl                 promotions, rollbacks, rejections: who, when, why

Writers stage a version in a hidden directory and publish it with one ``rename`` (so a reader never
sees half a version); pointers are replaced atomically (write, fsync, rename). An advisory lock on
``<root>/.lock`` serialises writers, so two trainings pushing at once get distinct version numbers.
This module does file I/O only: validation of what a version contains lives in :mod:`ioc.validation`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ONNX_NAME = "model.onnx"
MANIFEST_NAME = "manifest.json"
POINTERS = ("champion", "challenger")


class StoreError(Exception):
    """The store is missing, malformed, or a write to it failed."""


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

    def write_pointer(self, name: str, version: int | None) -> None:
        if name not in POINTERS:
            raise ValueError(name)
        if version is not None and version not in self.versions():
            raise StoreError(f"version {version} does not exist in {self.root}")
        atomic_write_text(self.root / name, "" if version is None else f"{version}\n")

    # -------------------------------------------------------------------- locking

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock (advisory, across processes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

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
        line = (json.dumps(event, sort_keys=True, default=str) + "\n").encode()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
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
