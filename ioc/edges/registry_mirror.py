"""``store: models:/NAME@ALIAS``: mirror an MLflow registry alias into a local model store.

The IOC keeps serving from a local store in every mode; in registry mode that store lives under
``ioc.state_dir`` and this mirror fills it: on each scan it asks the registry which version the
alias (and the ``challenger`` alias) points to, downloads a version it has not seen (the training
pipeline registers the store's ``model.onnx`` + ``manifest.json`` as the version's artifacts),
publishes it into the local store and moves the local pointer. Everything after that — validation,
warm-up, the swap — is the ordinary store path.

The mirror follows the alias's *moves*, not its state: it moves a local pointer only when the alias
names a registry version other than the one that pointer last followed (remembered in
``registry.json`` beside the pointers, so across restarts too). An operator's ROLLBACK / PROMOTE
(or the automatic rollback) on the IOC therefore sticks until someone in the registry makes a new
decision by moving the alias; the IOC needs no write access to the registry and its operators can act
while the registry is down.

A registry version that cannot be mirrored (no ``model.onnx`` + ``manifest.json``, a manifest that is
not JSON, a checksum that does not match) is rejected: one line in the local store's
``events.jsonl``, the log, and a problem text :meth:`RegistryMirror.refresh` returns for
``$(P)MESSAGE``; it is not downloaded again until the alias moves or an operator writes RELOAD. When
the registry cannot be reached the mirror logs once and the IOC keeps serving its local champion.

mlflow is imported here lazily, on the first scan, and only by IOCs configured in registry mode.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ioc.core.store import ModelStore, StoreError, atomic_write_text, sha256_file

log = logging.getLogger("mlioc.registry")

URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.\-]+)@(?P<alias>[A-Za-z0-9_\-]+)$")
STATE_NAME = "registry.json"  # pointer -> the registry version it last followed


class BadVersion(StoreError):
    """A registry version whose artifacts are not a publishable store version."""


class RegistryMirror:
    def __init__(self, uri: str, store: ModelStore, tracking_uri: str | None = None, interval_s: float = 5.0):
        m = URI.match(uri)
        if m is None:
            raise ValueError(f"not a registry model URI: {uri!r} (expected models:/NAME@ALIAS)")
        self.name = m["name"]
        self.aliases = {"champion": m["alias"], "challenger": "challenger"}
        self.store = store
        self.tracking_uri = tracking_uri
        self._client: Any = None  # an MlflowClient, created on first use (mlflow is imported lazily)
        self._unreachable = False
        self._mirrored: dict[str, int] = {}  # registry version -> local store version
        self._bad: dict[str, str] = {}  # registry version -> why it cannot be mirrored
        self._kept: dict[str, int | None] = {}  # pointer -> local version kept against the alias (logged once)
        self.interval_s = interval_s  # many IOCs share one registry: do not ask it at store-poll rate
        self._last = -1e9

    def _mlflow(self):
        # An IOC must not sit in MLflow's HTTP retry back-off (minutes by default) while a registry is
        # down: fail fast and try again at the next scan. Explicit settings in the environment win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        mlflow = importlib.import_module("mlflow")  # lazily: only registry-mode IOCs load it
        if self._client is None:
            tracking = importlib.import_module("mlflow.tracking")
            self._client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        return mlflow

    def refresh(self, force: bool = False) -> list[str]:
        """Mirror both aliases into the local store (blocking; call off the event loop).

        At most every ``interval_s`` unless ``force`` (an operator's RELOAD, which also retries
        rejected registry versions). Returns the problems an operator should see (each once).
        """
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return []
        self._last = now
        if force:
            self._bad.clear()
        problems: list[str] = []
        try:
            mlflow = self._mlflow()
            for pointer, alias in self.aliases.items():
                problem = self._mirror_alias(mlflow, pointer, alias)
                if problem:
                    problems.append(problem)
        except Exception as exc:  # network, server, auth ... : keep serving what is local
            if not self._unreachable:
                log.warning("registry %s unreachable or failing (%s: %s); serving the local store %s",
                            self.name, type(exc).__name__, exc, self.store.root)
            self._unreachable = True
            return problems
        if self._unreachable:
            log.info("registry %s reachable again", self.name)
        self._unreachable = False
        return problems

    # ------------------------------------------------------------------ one alias

    def _alias_version(self, alias: str) -> str | None:
        try:
            return str(self._client.get_model_version_by_alias(self.name, alias).version)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return None  # no such alias (yet)
            raise

    def _mirror_alias(self, mlflow, pointer: str, alias: str) -> str | None:
        version = self._alias_version(alias)
        state = self._state()
        followed = state.get(pointer, {}).get("registry_version")
        if version == followed:
            self._note_kept(pointer, alias, state.get(pointer, {}).get("local"))
            return None  # the alias has not moved: what the local pointer says now (an operator's action) stands
        if version is None:  # the alias was removed
            if pointer == "challenger" and self.store.exists() and self.store.challenger() is not None:
                self.store.write_pointer("challenger", None)
            self._save_state(pointer, None, None)
            return None
        if version in self._bad:
            return None  # rejected already; reported once
        try:
            local = self._local_version(mlflow, version)
        except BadVersion as exc:
            self._bad[version] = str(exc)
            log.error("registry %s version %s (%s@%s) rejected: %s", self.name, version, self.name, alias, exc)
            with contextlib.suppress(OSError):
                self.store.append_event("rejected", model=self.name, pointer=pointer, alias=alias,
                                        registry_version=version, reason=str(exc))
            return f"registry v{version} rejected: {exc}"
        if self.store.read_pointer(pointer) != local:
            self.store.write_pointer(pointer, local)
            self.store.append_event("registry", model=self.name, pointer=pointer, to_version=local,
                                    registry_version=version, alias=alias)
            log.info("registry %s@%s = version %s -> local v%d", self.name, alias, version, local)
        self._save_state(pointer, version, local)
        return None

    def _note_kept(self, pointer: str, alias: str, followed_local: int | None) -> None:
        """Log once when a local pointer differs from the alias it followed: an operator's action."""
        try:
            local = self.store.read_pointer(pointer)
        except StoreError:
            return
        kept = local if local != followed_local else None
        if kept is not None and self._kept.get(pointer) != kept:
            log.warning("registry %s: local %s is v%s, not v%s that the alias %s names (an action on the IOC): "
                        "kept until the alias moves", self.name, pointer, local, followed_local, alias)
        self._kept[pointer] = kept

    # ------------------------------------------------------------------ what was followed (persisted)

    @property
    def state_path(self) -> Path:
        return self.store.root / STATE_NAME

    def _state(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_state(self, pointer: str, version: str | None, local: int | None) -> None:
        state = self._state()
        state[pointer] = {"registry_version": version, "local": local}
        self.store.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.state_path, json.dumps(state, indent=1, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ versions

    def _local_version(self, mlflow, version: str) -> int:
        """The local store version mirroring registry ``version``: found by its provenance (also one
        mirrored before a restart), else downloaded and published."""
        local = self._mirrored.get(version)
        if local is None:
            local = self._find(version)
        if local is None:
            local = self._download(mlflow, version)
        self._mirrored[version] = local
        return local

    def _find(self, version: str) -> int | None:
        wanted = {"name": self.name, "version": version}
        for n in self.store.versions():
            try:
                doc = json.loads(self.store.manifest_path(n).read_text())
            except (OSError, ValueError):
                continue
            provenance = doc.get("provenance") if isinstance(doc, dict) else None
            if isinstance(provenance, dict) and provenance.get("registry") == wanted:
                return n
        return None

    def _download(self, mlflow, version: str) -> int:
        with tempfile.TemporaryDirectory(prefix="mlioc-registry-") as tmp:
            path = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}", dst_path=tmp, tracking_uri=self.tracking_uri))
            onnx = next(path.rglob("model.onnx"), None)
            manifest = next(path.rglob("manifest.json"), None)
            if onnx is None or manifest is None:
                raise BadVersion("no model.onnx + manifest.json in its artifacts")
            try:
                doc = json.loads(manifest.read_text())
            except ValueError as exc:
                raise BadVersion(f"manifest.json is not JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise BadVersion("manifest.json is not a JSON object")
            if doc.get("sha256") != sha256_file(onnx):  # a truncated or mixed-up download is never published
                raise BadVersion("model.onnx does not match its manifest's sha256")
            if not isinstance(doc.get("provenance"), dict):
                doc["provenance"] = {}
            doc["provenance"]["registry"] = {"name": self.name, "version": version}
            return self.store.add_version(onnx, doc)
