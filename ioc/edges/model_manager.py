"""Keeps a runner serving its store's champion and shadowing its challenger, and carries out
PROMOTE / ROLLBACK / RELOAD from the control room.

The store is polled (``ioc.store_poll_s``, 0.5 s by default: it works on NFS, where inotify does
not) or rescanned at once on a write to ``$(P)RELOAD``. A new version is loaded, validated and
warmed up on a worker thread (:func:`ioc.core.engine.load_version`) and swapped in on the loop between
two cycles (:meth:`ModelRunner.set_model`), so no cycle is missed and none mixes two models.
A version that fails any check is rejected — the reason goes to ``$(P)MESSAGE``, the log,
``events.jsonl`` and a metric — and the model in memory keeps serving. A rejected version is not
tried again until its files or the pointer change, or an operator writes RELOAD.

At start-up, if the champion pointer names a version that fails, the newest valid earlier champion
(``champion.history``) is served instead and MESSAGE says so; the pointer is left for a human.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ioc.core.config import InferenceConfig
from ioc.core.engine import EngineError, LoadedModel, load_version
from ioc.core.pvmodel import PV, ClientInfo, PutRejected
from ioc.core.store import ModelStore, StoreConflict, StoreError
from ioc.runtime.runner import ModelRunner

log = logging.getLogger("mlioc.models")


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a loaded version was made from: the number and its files' identities on disk."""

    version: int
    files: tuple[tuple[int, int, int], ...]  # (inode, size, mtime_ns) of model.onnx and manifest.json


def stamp(store: ModelStore, version: int) -> Stamp | None:
    try:
        stats = [os.stat(store.onnx_path(version)), os.stat(store.manifest_path(version))]
    except OSError:
        return None
    return Stamp(version, tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats))


class ModelManager:
    """One model's link between its store and its runner."""

    def __init__(self, runner: ModelRunner, store: ModelStore, inference: InferenceConfig,
                 loop: asyncio.AbstractEventLoop, *, poll_s: float = 0.5,
                 on_result: Callable[[str, str], None] | None = None,
                 refresh: Callable[[bool], list[str] | None] | None = None):
        self.runner = runner
        self.store = store
        self.inference = inference
        self.loop = loop
        self.poll_s = poll_s
        self.on_result = on_result or (lambda model, result: None)
        self.refresh = refresh  # e.g. mirror an MLflow registry alias into the store (blocking; run off-loop)
        self.name = runner.config.name
        # Whether the store's events.jsonl could be written (error text or None): the app raises $(P)AUDIT.
        self.audit_health: Callable[[str | None], None] = lambda error: None
        self.champion: Stamp | None = None
        self.challenger: Stamp | None = None
        self._rejected: dict[int, Stamp | None] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._store_error: str | None = None
        self._task: asyncio.Task | None = None
        names = runner.names
        self._action_pvs: dict[str, PV] = {}
        for attr, handler in (("rollback", self.put_rollback), ("promote", self.put_promote),
                              ("reload", self.put_reload)):
            pv = runner.db[getattr(names, attr)]
            pv.put_handler = handler
            self._action_pvs[attr] = pv

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """First load (with history fallback), then watch the store in the background."""
        for pv in self._action_pvs.values():
            pv.post(0, self.runner.clock())
        await self.sync(initial=True)
        self._task = self.loop.create_task(self._watch(), name=f"store-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                await self.sync()
            except Exception:  # the watcher must survive anything the file system throws at it
                log.exception("%s: store scan failed", self.name)

    # ------------------------------------------------------------------ scanning

    async def sync(self, *, initial: bool = False, force: bool = False, client: ClientInfo | None = None) -> None:
        """Bring the runner in line with the store's pointers."""
        if self.refresh is not None and not (initial and await self._has_local_champion()):
            # Outside the lock: a slow registry must not hold up PROMOTE / ROLLBACK.
            for problem in await self.loop.run_in_executor(None, self.refresh, force) or ():
                self.runner.note(problem)  # e.g. a registry version that cannot be mirrored
                self.on_result(self.name, "rejected")
        async with self._lock:
            try:
                champion, challenger = await self.loop.run_in_executor(None, self._read_pointers)
            except StoreError as exc:
                if self._store_error != str(exc):
                    self._store_error = str(exc)
                    log.error("%s: %s (still serving what is loaded)", self.name, exc)
                    self.runner.note(f"store error: {exc}")
                if initial and self.runner.model is None:
                    self.runner.set_no_model(str(exc))
                return
            self._store_error = None
            if force:
                self._rejected.clear()
            await self._sync_champion(champion, initial=initial, force=force, client=client)
            await self._sync_challenger(challenger, force=force)

    async def _has_local_champion(self) -> bool:
        """At start-up, serve what is already mirrored before asking a registry (which may be down)."""
        try:
            return await self.loop.run_in_executor(None, self.store.champion) is not None
        except StoreError:
            return False

    def _read_pointers(self) -> tuple[int | None, int | None]:
        if not self.store.exists():
            raise StoreError(f"{self.store.root}: no such store")
        return self.store.champion(), self.store.challenger()

    def _changed(self, current: Stamp | None, version: int) -> tuple[bool, Stamp | None]:
        new = stamp(self.store, version)
        return (current is None or new != current), new

    async def _sync_champion(self, version: int | None, *, initial: bool, force: bool,
                             client: ClientInfo | None) -> None:
        if version is None:
            if self.runner.model is None:
                self.runner.set_no_model(f"{self.store.root}: no champion")
            return
        changed, new_stamp = self._changed(self.champion, version)
        if not (changed or force) or self._skip_rejected(version, new_stamp, force):
            return
        previous = self.champion.version if self.champion else None
        model, reason = await self._load(version)
        if model is None:
            self._reject(version, new_stamp, reason, client)
            if self.runner.model is None:
                await self._fall_back(version, reason)
            return
        self._serve(model, new_stamp, f"loaded v{version}" if previous is None else None)
        action = "load" if initial else "reload"
        self._event(action, from_version=previous, to_version=version,
                    reason="start-up" if initial else ("RELOAD" if force else "champion pointer changed"),
                    client=client)

    async def _sync_challenger(self, version: int | None, *, force: bool) -> None:
        if version is None:
            if self.runner.challenger is not None:
                self.runner.set_challenger(None)
                self.challenger = None
            return
        if self.champion is not None and version == self.champion.version:
            return  # it is the champion now
        changed, new_stamp = self._changed(self.challenger, version)
        if not (changed or force) or self._skip_rejected(version, new_stamp, force):
            return
        model, reason = await self._load(version)
        if model is None:
            self._reject(version, new_stamp, reason, None, pointer="challenger")
            return
        self.runner.set_challenger(model)
        self.challenger = new_stamp
        self.on_result(self.name, "challenger")
        self._event("challenger", to_version=version, reason="challenger pointer changed")

    def _skip_rejected(self, version: int, new_stamp: Stamp | None, force: bool) -> bool:
        return not force and version in self._rejected and self._rejected[version] == new_stamp

    async def _load(self, version: int) -> tuple[LoadedModel | None, str]:
        try:
            model = await self.loop.run_in_executor(
                None, load_version, self.store, version, self.runner.config, self.inference)
        except EngineError as exc:
            return None, str(exc)
        except Exception as exc:  # anything else a broken file can make a library raise
            log.exception("%s: loading v%d failed", self.name, version)
            return None, f"v{version}: {type(exc).__name__}: {exc}"
        return model, ""

    def _serve(self, model: LoadedModel, new_stamp: Stamp | None, message: str | None, *,
               why: bool = False) -> None:
        """``why``: the message explains why this (older) version is served; MESSAGE keeps it (see set_model)."""
        self.runner.set_model(model, message, why=why)
        self.champion = new_stamp or Stamp(int(model.version), ())
        self.on_result(self.name, "loaded")

    def _reject(self, version: int, new_stamp: Stamp | None, reason: str, client: ClientInfo | None,
                pointer: str = "champion") -> None:
        self._rejected[version] = new_stamp
        log.error("%s: rejected v%d (%s): %s", self.name, version, pointer, reason)
        short = reason.split(": ", 1)[-1] if reason.startswith(f"{self.name} v{version}") else reason
        self.runner.note(f"rejected v{version}: {short}")
        self.on_result(self.name, "rejected")
        self._event("rejected", to_version=version, reason=reason, pointer=pointer, client=client)

    async def _fall_back(self, bad: int, reason: str) -> None:
        """Nothing is served and the champion is bad: serve the newest valid earlier champion."""
        for version in reversed(await self.loop.run_in_executor(None, self.store.champion_history)):
            if version == bad or version in self._rejected:
                continue
            model, why = await self._load(version)
            if model is None:
                self._reject(version, stamp(self.store, version), why, None, pointer="history")
                continue
            self._serve(model, stamp(self.store, version), f"v{bad} rejected; serving v{version}", why=True)
            self._event("fallback", from_version=bad, to_version=version,
                        reason=f"champion v{bad} rejected: {reason}")
            return
        self.runner.set_no_model(f"v{bad} rejected and no valid earlier champion")

    def _event(self, action: str, *, client: ClientInfo | None = None, **fields: Any) -> None:
        if client is not None:
            fields.update(user=client.user, host=client.host, protocol=client.protocol)
        try:
            self.store.append_event(action, model=self.name, **fields)
        except OSError as exc:  # a full or read-only disk must not stop serving, but must be seen
            log.error("%s: cannot write %s: %s", self.name, self.store.events_path, exc)
            self.audit_health(exc.strerror or str(exc))
        else:
            self.audit_health(None)

    # ------------------------------------------------------------------ control PVs

    def put_reload(self, pv: PV, value: int, client: ClientInfo) -> Awaitable[None] | None:
        if not value:
            return None
        return self._act(pv, self._reload(client))

    def put_promote(self, pv: PV, value: int, client: ClientInfo) -> Awaitable[None] | None:
        if not value:
            return None
        return self._act(pv, self._promote(client))

    def put_rollback(self, pv: PV, value: int, client: ClientInfo) -> Awaitable[None] | None:
        if not value:
            return None
        return self._act(pv, self._rollback(client))

    async def _act(self, pv: PV, action: Awaitable[None]) -> None:
        pv.post(1, self.runner.clock())
        try:
            await action
        finally:
            pv.post(0, self.runner.clock())

    async def _reload(self, client: ClientInfo) -> None:
        log.warning("%s: RELOAD by %s", self.name, client)
        self._event("reload-request", client=client, reason="RELOAD written")
        await self.sync(force=True, client=client)

    async def promote(self, client: ClientInfo, reason: str) -> None:
        """PROMOTE on behalf of a policy (``retrain.promote: auto``): the operator's code path, audited
        the same way (the log, ``events.jsonl`` with ``client`` and ``reason``); PutRejected if refused."""
        await self._promote(client, reason)

    async def retire(self, client: ClientInfo, reason: str) -> None:
        """Stop shadowing the challenger and clear its pointer (the promotion policy gave up on it)."""
        async with self._lock:
            version = self.challenger.version if self.challenger else None
            if version is None:
                self._refuse("retire", "no challenger to retire", client)
            try:
                await self.loop.run_in_executor(
                    None, lambda: self.store.write_pointer("challenger", None, expect=version))
            except (StoreError, OSError) as exc:
                self._refuse("retire", str(exc), client)
            self.runner.set_challenger(None)
            self.challenger = None
            log.warning("%s: challenger v%s retired by %s: %s", self.name, version, client, reason)
            self.runner.note(f"challenger v{version} retired")
            self._event("retire", from_version=version, client=client, reason=reason)

    async def _promote(self, client: ClientInfo, reason: str = "PROMOTE written") -> None:
        async with self._lock:
            challenger = self.runner.challenger
            if challenger is None or self.challenger is None:
                self._refuse("promote", "no challenger to promote", client)
            old = self.champion.version if self.champion else None
            try:
                await self.loop.run_in_executor(
                    None, lambda: self.store.promote(expect_challenger=int(challenger.version)))
            except (StoreError, OSError) as exc:
                self._refuse("promote", str(exc), client)
            promoted = self.challenger
            self.runner.set_challenger(None)
            self.challenger = None
            self._serve(challenger, promoted, f"promoted v{challenger.version} by {client.user}@{client.host}")
            log.warning("%s: PROMOTE v%s -> champion (was v%s) by %s", self.name, challenger.version, old, client)
            self._event("promote", from_version=old, to_version=int(challenger.version), client=client,
                        reason=reason)

    async def _rollback(self, client: ClientInfo, reason: str = "ROLLBACK written") -> None:
        """Back from what is *served* (not what the pointer names: after a rejected push the pointer
        names the rejected version), and leave the pointer naming what is then served."""
        async with self._lock:
            served = self.champion.version if self.champion else None

            def plan() -> tuple[int | None, int | None]:
                return self.store.champion(), self.store.rollback_target(current=served)

            pointer, target = await self.loop.run_in_executor(None, plan)
            if target is None:
                self._refuse("rollback", "no earlier champion to roll back to", client)
            model, why = await self._load(target)
            if model is None:
                self._reject(target, stamp(self.store, target), why, client, pointer="rollback")
                self._refuse("rollback", f"v{target} fails validation", client)
            try:
                _, new = await self.loop.run_in_executor(
                    None, lambda: self.store.rollback(expect_champion=pointer, current=served))
            except StoreConflict as exc:  # someone moved the pointer while the target was validated
                self._refuse("rollback", f"store changed meanwhile ({exc}); try again", client)
            except (StoreError, OSError) as exc:
                self._refuse("rollback", str(exc), client)
            if new != target:  # the history moved under us; load what the store now says
                model, why = await self._load(new)
                if model is None:
                    self._refuse("rollback", f"v{new}: {why}", client)
            self._serve(model, stamp(self.store, new), f"rolled back to v{new} by {client.user}@{client.host}",
                        why=True)
            log.warning("%s: ROLLBACK v%s -> v%s by %s", self.name, served, new, client)
            fields = {"pointer_was": pointer} if pointer != served else {}
            self._event("rollback", from_version=served, to_version=new, client=client, reason=reason, **fields)

    def fault_streak(self, faults: int, error: str) -> None:
        """``rollback_after_faults`` consecutive failures: roll back without waiting for an operator."""
        self.loop.create_task(self._auto_rollback(faults, error), name=f"auto-rollback-{self.name}")

    async def _auto_rollback(self, faults: int, error: str) -> None:
        who = ClientInfo(user="mlioc", host="auto-rollback", protocol="internal")
        log.error("%s: %d consecutive inference failures (%s): rolling back automatically", self.name, faults,
                  error)
        try:
            await self._rollback(who, reason=f"{faults} consecutive inference failures: {error}")
        except PutRejected as exc:
            log.error("%s: automatic rollback impossible: %s", self.name, exc)

    def _refuse(self, action: str, reason: str, client: ClientInfo) -> None:
        log.warning("%s: %s by %s refused: %s", self.name, action.upper(), client, reason)
        self.runner.note(f"{action} refused: {reason}")
        self._event(f"{action}-refused", reason=reason, client=client)
        raise PutRejected(f"{action} refused: {reason}")
