"""``mlioc serve``: wire config, PV model, runners, sources, triggers and servers into one process.

Start-up order is chosen for a fast first prediction: PVs exist and both servers listen first
(clients connect and see NO_MODEL / "loading model"), models load and warm up on a worker thread
meanwhile, then sources and triggers start feeding the runners. Shutdown (SIGTERM/SIGINT) stops
triggers and sources, lets an in-flight cycle finish, then closes the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ioc.core.access import build_access
from ioc.core.config import Config, ModelConfig
from ioc.core.layout import ModelNames
from ioc.core.pvmodel import PVDatabase
from ioc.core.store import ModelStore, model_store
from ioc.edges import audit_trail
from ioc.edges.actions.controller import ActionController, start_actions
from ioc.edges.autosave import Autosave
from ioc.edges.clients import close_clients
from ioc.edges.dirlock import DirLock
from ioc.edges.duplicates import DuplicatePVs, find_servers
from ioc.edges.host import local_addresses
from ioc.edges.metrics import Metrics
from ioc.edges.model_manager import ModelManager
from ioc.edges.promotion import PromotionEdge
from ioc.edges.recorder import Recorder, RecorderError
from ioc.edges.registry_mirror import RegistryMirror
from ioc.edges.retrain import RetrainEdge
from ioc.edges.sources import BUDGET, make_source
from ioc.protocols.ca_server import CaServer
from ioc.protocols.pva_server import PvaServer
from ioc.runtime.challenger import ChallengerMonitor
from ioc.runtime.monitor import ModelMonitor
from ioc.runtime.runner import ModelRunner
from ioc.runtime.triggers import Trigger, make_trigger

log = logging.getLogger("mlioc")


@dataclass
class ServeOptions:
    """Command-line overrides of the config's ``ioc`` section (None: keep the config's value)."""

    ca_port: int | None = None
    pva_port: int | None = None
    pva_broadcast_port: int | None = None
    interfaces: list[str] | None = None
    metrics_port: int | None = None
    allow_duplicates: bool = False  # serve even if another server answers for this IOC's PV names


@dataclass
class Ioc:
    config: Config
    options: ServeOptions = field(default_factory=ServeOptions)
    db: PVDatabase = field(default_factory=PVDatabase)
    runners: list[ModelRunner] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    ca: CaServer | None = None
    pva: PvaServer | None = None
    metrics_port: int | None = None
    started_at: float = field(default_factory=time.time)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _sources: list = field(default_factory=list)
    recorders: list[Recorder] = field(default_factory=list)
    managers: list[ModelManager] = field(default_factory=list)
    monitors: list[ModelMonitor] = field(default_factory=list)
    actions: list[ActionController] = field(default_factory=list)
    triggers: list[Trigger] = field(default_factory=list)
    challengers: list[ChallengerMonitor] = field(default_factory=list)
    retrain_edges: list[RetrainEdge] = field(default_factory=list)
    locks: list[DirLock] = field(default_factory=list)
    audit_healths: list[audit_trail.AuditHealth] = field(default_factory=list)
    _audit_file: audit_trail.AuditFile | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        opts = self.options
        # DirectoryLocked: another IOC uses this state directory (autosave, registry mirrors).
        self.locks.append(DirLock(cfg.ioc.state_dir, "state directory").acquire())
        # Is another server answering for these PV names? Asked now, answered before our servers listen;
        # meanwhile everything else is built and the models load.
        search = None if opts.allow_duplicates else loop.run_in_executor(
            None, find_servers, [ModelNames(m.prefix).status for m in cfg.models])
        # AccessError: refuse to start, like a bad config. "localhost" is every address of this host.
        self.db.access = build_access(cfg.access, local_addresses())
        log.info("access security from %s", self.db.access.source)
        for line in self.db.access.describe():
            log.info("  access group %s", line)
        self.autosave = Autosave(Path(cfg.ioc.state_dir) / "autosave.json")
        saved = self.autosave.load()
        for model in cfg.models:
            runner = ModelRunner(model, self.db, cfg.ioc.inference, loop)
            # mlioc_model_info follows every change of the served model (hot reload, rollback).
            runner.model_listeners.append(functools.partial(self.metrics.set_model, model.name))
            key = f"{model.name}.enable"
            runner.on_enable = functools.partial(self._save, runner, key)
            runner.start(enabled=bool(saved.get(key, True)))
            self.runners.append(runner)
            self.audit_healths.append(self._audit_health(runner))
            if model.record is not None:
                self._start_recorder(runner)
            if model.monitored:
                self._start_monitor(runner)
        self._audit_file = audit_trail.install(Path(cfg.ioc.state_dir) / "audit.jsonl", self.audit_healths)
        # Models load (validated, warmed up, off the loop) while the servers come up.
        self.managers = [self._manager(r) for r in self.runners]
        for runner, manager, health in zip(self.runners, self.managers, self.audit_healths, strict=True):
            runner.on_fault_streak = manager.fault_streak  # automatic rollback (rollback_after_faults)
            manager.audit_health = functools.partial(health.report, "events.jsonl")
        for runner, manager in zip(self.runners, self.managers, strict=True):
            self._start_loop(runner, manager)
        loads = [loop.create_task(m.start(), name=f"load-{m.name}") for m in self.managers]
        self._make_actions()
        if search is not None and (answers := await search):
            raise DuplicatePVs(answers)

        interfaces = opts.interfaces or (list(cfg.ioc.interfaces) if cfg.ioc.interfaces else None)
        if "ca" in cfg.ioc.protocols:
            self.ca = CaServer(self.db, port=opts.ca_port or cfg.ioc.ca_port, interfaces=interfaces)
            await self.ca.start()
        if "pva" in cfg.ioc.protocols:
            self.pva = PvaServer(self.db, port=opts.pva_port or cfg.ioc.pva_port,
                                 broadcast_port=opts.pva_broadcast_port or cfg.ioc.pva_broadcast_port,
                                 interfaces=interfaces)
            await self.pva.start()
        port = cfg.ioc.metrics_port if opts.metrics_port is None else opts.metrics_port
        if port:
            try:
                self.metrics_port = self.metrics.serve(port)
            except OSError as exc:
                log.error("cannot serve Prometheus metrics on port %d: %s (continuing without)", port, exc)

        for runner, load in zip(self.runners, loads, strict=True):
            try:
                await load
            except Exception as exc:  # an unexpected failure of one model must not stop the others
                log.exception("%s: loading the champion failed", runner.config.name)
                runner.set_no_model(f"load failed: {exc}")
            self._start_feeds(runner)
        for controller in self.actions:
            controller.start()
        self._tasks.append(loop.create_task(self._stats_loop(), name="stats"))
        ports = []
        if self.ca:
            ports.append(f"CA port {self.ca.port}")
        if self.pva:
            ports.append(f"PVA port {self.pva.port}")
        if self.metrics_port:
            ports.append(f"metrics port {self.metrics_port}")
        log.info("mlioc ready: %d PVs for %d model(s) (%s) in %.2f s", len(self.db), len(self.runners),
                 ", ".join(ports), time.time() - self.started_at)

    def _save(self, runner: ModelRunner, key: str, value: object) -> None:
        if not self.autosave.set(key, value):
            runner.note("autosave failed: see log")

    def _manager(self, runner: ModelRunner) -> ModelManager:
        """The store (or registry mirror) that feeds one runner its champion and challenger."""
        cfg = self.config
        model = runner.config
        refresh = None
        if model.store_is_registry:
            store = ModelStore(Path(cfg.ioc.state_dir) / "registry" / model.name)
            refresh = RegistryMirror(model.store, store, interval_s=cfg.ioc.registry_poll_s).refresh
        else:
            store = model_store(model)
        return ModelManager(runner, store, cfg.ioc.inference, asyncio.get_running_loop(),
                            poll_s=cfg.ioc.store_poll_s, on_result=self.metrics.reload_result, refresh=refresh)

    def _make_actions(self) -> None:
        """Closed-loop actions (docs/how-to/actions.md): created before the servers listen, so ACTIONS reads 0
        from the first client connection on; their monitors start with the sources."""
        loop = asyncio.get_running_loop()
        for runner, manager, health in zip(self.runners, self.managers, self.audit_healths, strict=True):
            controller = start_actions(runner, loop, manager.store, self.config.ioc.state_dir)
            if controller is not None:
                runner.cycle_listeners.append(controller.on_cycle)
                runner.model_listeners.append(controller.on_model)
                controller.audit.on_health = functools.partial(health.report, f"actions/{runner.config.name}.jsonl")
                self.actions.append(controller)

    def _audit_health(self, runner: ModelRunner) -> audit_trail.AuditHealth:
        """$(P)AUDIT: FAULT (MAJOR) while any part of the model's audit trail cannot be written."""
        pv = runner.db[runner.names.audit]
        pv.post(0, runner.clock())
        loop = asyncio.get_running_loop()

        def show(reason: str | None) -> None:  # on the loop
            pv.post(0 if reason is None else 1, runner.clock(), message=reason or "")
            runner.note(f"audit: {reason}" if reason else "audit: writing again")

        def changed(reason: str | None) -> None:  # any thread (the actions audit writes on its own)
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(show, reason)

        return audit_trail.AuditHealth(changed)

    def _start_recorder(self, runner: ModelRunner) -> None:
        """Record the model's cycles (and its target PVs) to Parquet; a failure here only logs, but a
        directory another process records into refuses the start (DirectoryLocked)."""
        model = runner.config
        record = model.record
        assert record is not None
        self.locks.append(DirLock(record.dir, "recording directory").acquire())
        try:
            recorder = Recorder(model, record, lambda states=runner.inputs: [(s.severity, s.timestamp) for s in states])
        except RecorderError as exc:
            log.error("%s", exc)
            return
        for index, (_name, ref) in enumerate(record.targets):
            # The sink stores one tuple into a list slot: safe straight from the client thread.
            source = make_source(ref, recorder.target_sink(index))
            source.start()
            self._sources.append(source)
        runner.cycle_listeners.append(recorder.listener)
        pv = runner.db[runner.names.recorder]
        pv.post(0, runner.clock())
        loop = asyncio.get_running_loop()

        def health(error: str | None) -> None:  # writer thread -> loop
            def show() -> None:
                pv.post(0 if error is None else 1, runner.clock(), message=error or "")
                runner.note(f"recorder: {error}" if error else "recorder: writing again")

            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(show)

        recorder.on_health = health
        recorder.start()
        self.recorders.append(recorder)

    def _start_monitor(self, runner: ModelRunner) -> None:
        """Drift / anomaly / ground-truth error PVs of a model (ioc/runtime/monitor.py, docs/how-to/drift.md)."""
        monitor = ModelMonitor(runner, self.db)
        runner.cycle_listeners.append(monitor.on_cycle)
        runner.model_listeners.append(monitor.on_model)
        monitor.score_listeners.append(self.metrics.set_drift)  # mlioc_drift_score, mlioc_input_drift_score
        monitor.start()
        for index, j in enumerate(monitor.truth_index):
            source = make_source(runner.config.outputs[j].truth, monitor.truth_sink(index))
            source.start()
            self._sources.append(source)
        self.monitors.append(monitor)

    def _start_loop(self, runner: ModelRunner, manager: ModelManager) -> None:
        """The continual-learning loop's IOC side (docs/how-to/retraining-loop.md): the challenger's live
        error (outputs with a truth), the RETRAIN request/status PVs and the promotion policy (retrain:)."""
        model = runner.config
        if any(o.truth is not None for o in model.outputs):
            challenger = ChallengerMonitor(runner, self.db)
            runner.cycle_listeners.append(challenger.on_cycle)
            runner.challenger_listeners.append(challenger.on_challenger)
            runner.model_listeners.append(challenger.on_model)
            for index, j in enumerate(challenger.truth_index):
                source = make_source(model.outputs[j].truth, challenger.truth_sink(index))
                source.start()
                self._sources.append(source)
            challenger.start()
            self.challengers.append(challenger)
            if model.retrain is not None:
                promotion = PromotionEdge(runner, manager, model.retrain)
                challenger.listeners.append(promotion.on_comparison)
                promotion.start()
        if model.retrain is not None:
            recorder = next((r for r in self.recorders if r.model is model), None)
            edge = RetrainEdge(runner, manager.store, model.retrain, recorder)
            edge.start()
            self.retrain_edges.append(edge)

    def _start_feeds(self, runner: ModelRunner) -> None:
        model: ModelConfig = runner.config
        for index, inp in enumerate(model.inputs):
            if inp.source is not None:
                source = make_source(inp.source, functools.partial(runner.feed.push, index))
                source.start()
                self._sources.append(source)
            for element, ref in enumerate(inp.gather):  # a vector gathered from scalar PVs, in order
                deliver = functools.partial(_push_element, runner.feed.push, index, element)
                source = make_source(ref, deliver)
                source.start()
                self._sources.append(source)
        trigger = make_trigger(runner, model.trigger, make_source)
        runner.run_on_input_change = trigger.on_input_change
        trigger.start()
        self.triggers.append(trigger)

    async def _stats_loop(self) -> None:
        period = 1.0 / self.config.ioc.stats_hz
        while True:
            await asyncio.sleep(period)
            for runner in self.runners:
                stats = runner.take_stats()
                runner.publish_stats(stats)
                self.metrics.collect(runner, stats)
            for controller in self.actions:
                self.metrics.collect_actions(controller)
            self.metrics.collect_sources(BUDGET.held_back_s)

    async def stop(self) -> None:
        for manager in self.managers:
            await manager.stop()
        for edge in self.retrain_edges:
            await edge.stop()
        for challenger in self.challengers:
            await challenger.stop()
        for trigger in self.triggers:
            await trigger.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        for controller in self.actions:
            controller.stop()
        for source in self._sources:
            source.stop()
        for runner in self.runners:
            runner.close()
        loop = asyncio.get_running_loop()
        for recorder in self.recorders:  # after the last cycle: flush every buffered row
            await loop.run_in_executor(None, recorder.close)
        if self.ca is not None:
            await self.ca.stop()
        if self.pva is not None:
            await self.pva.stop()
        self.metrics.close()
        if self._audit_file is not None:
            audit_trail.uninstall(self._audit_file)
        close_clients()
        for lock in self.locks:
            lock.release()


def _push_element(push, index: int, element: int, value, severity, timestamp: float, connected: bool) -> None:
    """A source's delivery for one element of a gathered input (any thread)."""
    push(index, value, severity, timestamp, connected, element)


async def serve(config: Config, options: ServeOptions | None = None, stop: asyncio.Event | None = None) -> None:
    ioc = Ioc(config, options or ServeOptions())
    try:
        await ioc.start()
        await (stop.wait() if stop is not None else asyncio.Future())
    finally:
        await ioc.stop()
