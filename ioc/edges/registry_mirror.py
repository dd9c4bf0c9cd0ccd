"""``store: models:/NAME@ALIAS``: mirror an MLflow registry alias into a local model store.

The IOC keeps serving from a local store in every mode; in registry mode that store lives under
``ioc.state_dir`` and this mirror fills it: on each scan it asks the registry which version the
alias (and the ``challenger`` alias) points to, downloads a version it has not seen (the training
pipeline registers the store's ``model.onnx`` + ``manifest.json`` as the version's artifacts),
publishes it into the local store and moves the local pointer. Everything after that — validation,
warm-up, the swap — is the ordinary store path. When the registry cannot be reached the mirror
logs once and the IOC keeps serving its local champion.

mlflow is imported here lazily, on the first scan, and only by IOCs configured in registry mode.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from ioc.core.store import ModelStore, StoreError, sha256_file

log = logging.getLogger("mlioc.registry")

URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.\-]+)@(?P<alias>[A-Za-z0-9_\-]+)$")


class RegistryMirror:
    def __init__(self, uri: str, store: ModelStore, tracking_uri: str | None = None, interval_s: float = 5.0):
        m = URI.match(uri)
        if m is None:
            raise ValueError(f"not a registry model URI: {uri!r} (expected models:/NAME@ALIAS)")
        self.name = m["name"]
        self.aliases = {"champion": m["alias"], "challenger": "challenger"}
        self.store = store
        self.tracking_uri = tracking_uri
        self._client = None
        self._unreachable = False
        self._mirrored: dict[str, int] = {}  # registry version -> local store version
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

    def refresh(self, force: bool = False) -> None:
        """Mirror both aliases into the local store (blocking; call off the event loop).

        At most every ``interval_s`` unless ``force`` (an operator's RELOAD).
        """
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        try:
            mlflow = self._mlflow()
            for pointer, alias in self.aliases.items():
                self._mirror_alias(mlflow, pointer, alias)
        except Exception as exc:  # network, server, auth ... : keep serving what is local
            if not self._unreachable:
                log.warning("registry %s unreachable or failing (%s: %s); serving the local store %s",
                            self.name, type(exc).__name__, exc, self.store.root)
            self._unreachable = True
            return
        if self._unreachable:
            log.info("registry %s reachable again", self.name)
        self._unreachable = False

    def _mirror_alias(self, mlflow, pointer: str, alias: str) -> None:
        try:
            mv = self._client.get_model_version_by_alias(self.name, alias)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                if pointer == "challenger" and self.store.exists() and self.store.challenger() is not None:
                    self.store.write_pointer("challenger", None)
                return  # no such alias (yet)
            raise
        local = self._mirrored.get(str(mv.version))
        if local is None:
            local = self._download(mlflow, mv.version)
            self._mirrored[str(mv.version)] = local
        if self.store.read_pointer(pointer) != local:
            self.store.write_pointer(pointer, local)
            self.store.append_event("registry", model=self.name, pointer=pointer, to_version=local,
                                    registry_version=str(mv.version), alias=alias)
            log.info("registry %s@%s = version %s -> local v%d", self.name, alias, mv.version, local)

    def _download(self, mlflow, version: str) -> int:
        with tempfile.TemporaryDirectory(prefix="mlioc-registry-") as tmp:
            path = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}", dst_path=tmp, tracking_uri=self.tracking_uri))
            onnx = next(path.rglob("model.onnx"), None)
            manifest = next(path.rglob("manifest.json"), None)
            if onnx is None or manifest is None:
                raise StoreError(f"registry {self.name} version {version} has no model.onnx + manifest.json")
            digest = sha256_file(onnx)
            for n in self.store.versions():  # already mirrored before a restart?
                try:
                    if sha256_file(self.store.onnx_path(n)) == digest:
                        return n
                except OSError:
                    continue
            doc = json.loads(manifest.read_text())
            if doc.get("sha256") != digest:  # a truncated or mixed-up download is never published
                raise StoreError(f"registry {self.name} version {version}: model.onnx does not match "
                                 f"its manifest's sha256")
            doc.setdefault("provenance", {})["registry"] = {"name": self.name, "version": str(version)}
            return self.store.add_version(onnx, doc)
