"""``mlioc watch CONFIG``: the continual-learning loop's daemon (docs/how-to/retraining-loop.md).

For each model with a ``retrain:`` section it starts a run of ``mlioc train`` (as a subprocess, or as
an Airflow DAG run: :mod:`training.retrain_runs`) when

* the cron ``retrain.schedule`` comes (the last ``window_s`` of recordings),
* ``$(P)DRIFT`` has been MAJOR for ``retrain.on_drift_s`` (watched with a real CA/PVA client monitor:
  :func:`ioc.edges.sources.make_source`); the run trains on the drift window plus ``history_s`` and
  takes its drift reference from the new regime,
* an operator's request appears in the store's ``requests/`` (``caput $(P)RETRAIN 1``).

Decisions (:mod:`training.watch_policy`): one run at a time per model, one trigger remembered while a
run (or the cool-down) is in the way, a run killed after ``timeout_s``. Progress goes to
``requests/status.json`` (the IOC serves it as ``$(P)RETRAIN:STATUS``/``:MESSAGE``) with a heartbeat,
every decision to ``events.jsonl``; each run's output to a log file. A watcher that starts and finds a
RUNNING status left by a watcher that died turns it into FAILED ("watcher restarted") and kills the
orphaned run, so nothing stays RUNNING forever.

The IOC's own decisions about a version (promotion, retirement, READY) are mirrored into MLflow: the
run that made the version is tagged, and a promotion moves the registry's ``champion`` alias.

The watcher never imports torch: runs are separate processes. It imports MLflow only to tag.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ioc.core.config import Config, ConfigError, ModelConfig, RetrainConfig
from ioc.core.configfile import load_config
from ioc.core.cron import parse_cron
from ioc.core.layout import ModelNames
from ioc.core.retrain_requests import RequestBox, RetrainState, RetrainStatus
from ioc.core.store import ModelStore, model_store
from ioc.core.yamlcheck import PVRef
from training.retrain_runs import (
    AirflowClient,
    AirflowError,
    AirflowRun,
    LocalRun,
    RunResult,
    airflow_conf,
    train_args,
)
from training.watch_policy import INVALID, DriftEpisode, RunGate, Trigger

log = logging.getLogger("mlioc.watch")

TICK_S = 0.2
HEARTBEAT_S = 5.0
FLUSH_WAIT_S = 15.0  # how long a run waits for the IOC to close its recording file
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
HOST = socket.gethostname()


@dataclass
class WatchOptions:
    tracking_uri: str | None = None
    log_dir: Path | None = None
    env: dict[str, str] | None = None  # environment of local runs (None: the watcher's)
    flush_wait_s: float = FLUSH_WAIT_S  # 0: do not ask the IOC to close its recording file


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelWatch:
    """One model's triggers, its run and its status file."""

    def __init__(self, config: Config, model: ModelConfig, options: WatchOptions, *, clock=time.time):
        assert model.retrain is not None
        self.config = config
        self.model = model
        self.settings: RetrainConfig = model.retrain
        self.options = options
        self.clock = clock
        self.name = model.name
        self.store = model_store(model)  # the demo's working store is created from its template on first use
        self.box = RequestBox(self.store.root)
        self.gate = RunGate(self.settings.cooldown_s)
        on_drift = self.settings.on_drift_s
        self.drift = (DriftEpisode(on_drift, raise_s=model.drift.raise_s)
                      if on_drift is not None and model.drift is not None else None)
        self.cron = parse_cron(self.settings.schedule) if self.settings.schedule else None
        self.next_schedule: float | None = None
        self.run: LocalRun | AirflowRun | None = None
        self.status: RetrainStatus | None = None
        self.phase = ""
        self.flush_token: str | None = None
        self.flush_deadline = 0.0
        self.started_at = 0.0
        self.last_heartbeat = 0.0
        self.next_requests = 0.0
        self.offered: set[str] = set()  # request ids handed to the gate
        self.request_paths: dict[str, Path] = {}
        self._severities: deque[tuple[int, float]] = deque(maxlen=1000)  # from the client thread
        self._source: Any = None
        self._reported: set[str] = set()
        self.log_dir = options.log_dir or Path(config.ioc.state_dir) / "retrain-logs"
        self.airflow = AirflowClient(self.settings.airflow) if self.settings.runner == "airflow" and \
            self.settings.airflow is not None else None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        now = self.clock()
        self.box.dir.mkdir(parents=True, exist_ok=True)
        self._recover(now)
        if self.cron is not None:
            self.next_schedule = self.cron.next_timestamp(now)
            log.info("%s: next scheduled retrain %s", self.name, time.strftime("%Y-%m-%d %H:%M", time.localtime(
                self.next_schedule)))
        if self.drift is not None:
            from ioc.edges.sources import make_source

            protocol = "ca" if "ca" in self.config.ioc.protocols else "pva"
            ref = PVRef(protocol, ModelNames(self.model.prefix).drift)
            self._source = make_source(ref, self._on_drift)
            self._source.start()
            log.info("%s: watching %s (retrain after MAJOR for %g s)", self.name, ref, self.drift.on_drift_s)

    def stop(self, why: str = "watcher stopped during the run") -> None:
        if self._source is not None:
            self._source.stop()
        if self.run is not None or self.phase == "flushing":
            run_id = self.run.run_id if self.run is not None else ""
            if self.run is not None:
                self.run.kill()
            self._finish(self.clock(), RunResult(False, why, run_id))

    def _recover(self, now: float) -> None:
        """A RUNNING status whose watcher is gone becomes FAILED; its orphaned run is killed."""
        status = self.box.read_status()
        if status is None:
            self._write_status(RetrainStatus(RetrainState.IDLE.name, "watcher started", now, host=HOST,
                                             pid=os.getpid()))
            return
        self.status = status
        if status.retrain_state is not RetrainState.RUNNING:
            return
        if status.host == HOST:
            if status.pid != os.getpid() and _alive(status.pid):
                raise RuntimeError(f"{self.name}: another watcher (pid {status.pid}) is running this model")
            if status.run_pid and _alive(status.run_pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(status.run_pid, signal.SIGKILL)
                log.warning("%s: killed the orphaned run (pid %d) of the previous watcher", self.name, status.run_pid)
        elif now - status.updated < self.settings.timeout_s + 60:
            log.warning("%s: status RUNNING on %s (pid %s): left alone until its heartbeat is older than the "
                        "timeout", self.name, status.host, status.pid)
            return
        message = "watcher restarted during the run"
        self._write_status(replace(status, state=RetrainState.FAILED.name, message=message, updated=now,
                                   finished=now, host=HOST, pid=os.getpid(), run_pid=None))
        self._event("retrain-end", ok=False, message=message, run_id=status.run_id, trigger=status.trigger)

    # ------------------------------------------------------------------ triggers

    def _on_drift(self, value: Any, severity: int, timestamp: float, connected: bool) -> None:
        """The DRIFT monitor's callback (client thread): hand the severity to the tick."""
        self._severities.append((int(severity) if connected and value is not None else INVALID, self.clock()))

    def offer(self, trigger: Trigger) -> str:
        outcome = self.gate.offer(trigger)
        log.warning("%s: %s trigger by %s (%s): %s", self.name, trigger.kind, trigger.who, trigger.reason, outcome)
        self._event("retrain-trigger", trigger=trigger.kind, who=trigger.who, reason=trigger.reason, outcome=outcome,
                    request_id=trigger.request_id, start=trigger.start, end=trigger.end)
        for dropped in self.gate.dropped:
            self._event("retrain-dropped", trigger=dropped.kind, who=dropped.who, request_id=dropped.request_id,
                        reason="a trigger already waits for the run in progress")
            if dropped.request_id in self.request_paths:
                self.box.take(self.request_paths.pop(dropped.request_id))
        self.gate.dropped.clear()
        return outcome

    def _check_triggers(self, now: float) -> None:
        while self._severities and self.drift is not None:
            severity, at = self._severities.popleft()
            self.drift.update(severity, at)
        if self.drift is not None and self.drift.due(now):
            self.offer(self.drift.fire(now, self.settings.history_s))
        if self.cron is not None and self.next_schedule is not None and now >= self.next_schedule:
            self.next_schedule = self.cron.next_timestamp(now)
            self.offer(Trigger("schedule", now, reason=f"schedule {self.settings.schedule}",
                               start=now - self.settings.window_s))
        if now >= self.next_requests:
            self.next_requests = now + self.settings.poll_s
            self._check_requests(now)

    def _check_requests(self, now: float) -> None:
        pending = self.box.pending()
        for problem in self.box.problems:
            if problem not in self._reported:
                self._reported.add(problem)
                log.error("%s: %s/%s: moved aside as .bad", self.name, self.box.dir, problem)
                self._event("retrain-request-bad", reason=problem)
        self.box.discard_corrupt()
        for path, request in pending:
            if request.id in self.offered:
                continue
            self.offered.add(request.id)
            self.request_paths[request.id] = path
            self.offer(Trigger("operator", now, who=request.who, reason=request.reason or "RETRAIN",
                               start=request.start if request.start is not None else now - self.settings.window_s,
                               end=request.end, reference_since=request.reference_since, request_id=request.id))

    # ------------------------------------------------------------------ the run

    def tick(self) -> None:
        now = self.clock()
        self._check_triggers(now)
        if self.run is None and self.phase != "flushing":
            trigger = self.gate.start_next(now)
            if trigger is not None:
                self._begin(trigger, now)
        if self.phase == "flushing":
            if (self.flush_token is not None and self.box.flushed(self.flush_token)) or now >= self.flush_deadline:
                if now >= self.flush_deadline and self.flush_token is not None:
                    log.warning("%s: the IOC did not close its recording file within %g s (is it running?): "
                                "training on the files already closed", self.name, self.options.flush_wait_s)
                self._launch(now)
            return
        if self.run is None:
            return
        try:
            result = self.run.poll()
        except Exception as exc:  # a run that cannot even be polled has failed; the watcher goes on
            result = RunResult(False, f"{type(exc).__name__}: {exc}", self.run.run_id)
        if result is not None:
            self._finish(now, result)
        elif now - self.started_at > self.settings.timeout_s:
            self.run.kill()
            self._event("retrain-timeout", timeout_s=self.settings.timeout_s, run_id=self.run.run_id)
            self._finish(now, RunResult(False, f"timed out after {self.settings.timeout_s:g} s: killed",
                                        self.run.run_id))
        elif now - self.last_heartbeat >= HEARTBEAT_S:
            self._heartbeat(now)

    def _begin(self, trigger: Trigger, now: float) -> None:
        """Take the request files, ask the IOC to close its recording, say RUNNING."""
        for rid in [trigger.request_id] if trigger.request_id else []:
            if rid in self.request_paths:
                self.box.take(self.request_paths.pop(rid))
        self.started_at = now
        self.phase = "flushing"
        wait = self.options.flush_wait_s
        self.flush_token = self.box.ask_flush() if wait > 0 and self.model.record is not None else None
        self.flush_deadline = now + wait
        self._write_status(RetrainStatus(RetrainState.RUNNING.name, f"{trigger.kind}: preparing data", now,
                                         request_id=trigger.request_id, trigger=trigger.kind,
                                         requested_by=trigger.who, started=now, host=HOST, pid=os.getpid()))

    def _launch(self, now: float) -> None:
        trigger = self.gate.running
        assert trigger is not None
        self.phase = "training"
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
        result = self.box.dir / f"result-{stamp}-{trigger.kind}.json"
        config_path = str(self.config.path.resolve())
        try:
            if self.airflow is not None:
                assert self.settings.airflow is not None
                conf = airflow_conf(self.settings.airflow.config_path or config_path, self.name, trigger, result,
                                    self.options.tracking_uri)
                self.run = AirflowRun(self.airflow, conf, result)
                where = f"Airflow DAG run {self.run.run_id}"
            else:
                log_path = self.log_dir / f"{self.name}-{stamp}-{trigger.kind}.log"
                args = train_args(config_path, self.name, trigger, result, self.options.tracking_uri)
                self.run = LocalRun(args, log_path, result, self.options.env)
                where = f"pid {self.run.pid}, log {log_path}"
        except (AirflowError, OSError) as exc:
            log.error("%s: cannot start the run: %s", self.name, exc)
            self._finish(now, RunResult(False, f"cannot start: {exc}"))
            return
        window = f"{trigger.start:.0f}..{trigger.end or now:.0f}" if trigger.start is not None else "default"
        log.warning("%s: retrain run started (%s; %s; data %s)", self.name, trigger.kind, where, window)
        self._event("retrain-start", trigger=trigger.kind, who=trigger.who, run=where, start=trigger.start,
                    end=trigger.end, reference_since=trigger.reference_since, runner=self.settings.runner)
        assert self.status is not None
        self._write_status(replace(self.status, message=f"{trigger.kind}: training", updated=now,
                                   run_id=self.run.run_id, run_pid=getattr(self.run, "pid", None),
                                   log=str(getattr(self.run, "log_path", ""))))

    def _heartbeat(self, now: float) -> None:
        self.last_heartbeat = now
        if self.status is not None:
            elapsed = now - self.started_at
            trigger = self.gate.running.kind if self.gate.running else "run"
            self._write_status(replace(self.status, message=f"{trigger}: training {elapsed:.0f} s", updated=now))

    def _finish(self, now: float, result: RunResult) -> None:
        trigger = self.gate.running
        self.run = None
        self.phase = ""
        self.gate.finished(now)
        state = RetrainState.DONE if result.ok else RetrainState.FAILED
        seconds = now - self.started_at
        (log.warning if result.ok else log.error)("%s: retrain run %s after %.0f s: %s", self.name, state.name,
                                                  seconds, result.message)
        self._event("retrain-end", ok=result.ok, message=result.message, run_id=result.run_id,
                    version=result.version, seconds=round(seconds, 1), trigger=trigger.kind if trigger else "")
        base = self.status or RetrainStatus(state.name)
        self._write_status(replace(base, state=state.name, message=result.message, updated=now, finished=now,
                                   run_id=result.run_id or base.run_id, version=result.version, run_pid=None))

    # ------------------------------------------------------------------ files

    def _write_status(self, status: RetrainStatus) -> None:
        self.status = status
        try:
            self.box.write_status(status)
        except OSError as exc:  # a flaky share: say so, keep going (the next write may work)
            log.error("%s: cannot write %s: %s", self.name, self.box.status_path, exc)

    def _event(self, action: str, **fields: Any) -> None:
        try:
            self.store.append_event(action, model=self.name, user="mlioc-watch", host=HOST, **fields)
        except OSError as exc:
            log.error("%s: cannot write %s: %s", self.name, self.store.events_path, exc)

    @property
    def busy(self) -> bool:
        return self.run is not None or self.phase == "flushing" or self.gate.waiting is not None


class MlflowMirror:
    """Tags the MLflow run of each version with what the IOC decided about it (promote, retire,
    READY), and moves the registry's ``champion`` alias on a promotion. Best effort: MLflow being
    down must not stop the loop; a line that failed is retried on the next pass."""

    ACTIONS = ("promote", "retire", "challenger-ready", "challenger-not-ready")

    def __init__(self, stores: dict[str, ModelStore], tracking_uri: str | None):
        self.stores = stores
        self.tracking_uri = tracking_uri
        self.offsets = dict.fromkeys(stores, 0)
        self.client: Any = None

    def sync(self) -> None:
        for name, store in self.stores.items():
            try:
                with open(store.events_path, "rb") as f:
                    f.seek(self.offsets[name])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                try:
                    self._apply(name, store, line)
                except Exception as exc:  # MLflow down: retry these lines later
                    log.warning("%s: MLflow tagging failed (will retry): %s", name, exc)
                    return
                self.offsets[name] += len(line) + 1

    def _apply(self, name: str, store: ModelStore, line: bytes) -> None:
        import json

        try:
            event = json.loads(line)
        except ValueError:
            return
        action = event.get("action")
        if action not in self.ACTIONS:
            return
        version = event.get("to_version") if action == "promote" else (event.get("from_version")
                                                                        or event.get("version"))
        try:
            manifest = json.loads(store.manifest_path(int(version)).read_text())
            run_id = manifest["provenance"]["mlflow"]["run_id"]
        except (TypeError, ValueError, OSError, KeyError):
            return
        client = self._client()
        who = f"{event.get('user', '?')}@{event.get('host', '?')}"
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(event.get("time", 0)))
        client.set_tag(run_id, f"mlioc.ioc.{action}", f"{when} by {who}: {event.get('reason', '')}"[:4000])
        if action == "promote":
            for mv in client.search_model_versions(f"name='{name}'"):
                if mv.tags.get("store_version") == str(version):
                    client.set_registered_model_alias(name, "champion", mv.version)
                    with contextlib.suppress(Exception):
                        client.delete_registered_model_alias(name, "challenger")

    def _client(self):
        if self.client is None:
            import mlflow

            from training.registry import resolve_tracking_uri

            uri = resolve_tracking_uri(self.tracking_uri)
            self.client = mlflow.MlflowClient(uri)
        return self.client


class Watcher:
    """Every watched model, ticked on one thread."""

    def __init__(self, config: Config, models: list[str] | None, options: WatchOptions):
        chosen = [m for m in config.models if m.retrain is not None and (not models or m.name in models)]
        self.models = [ModelWatch(config, m, options) for m in chosen]
        self.mirror = MlflowMirror({w.name: w.store for w in self.models}, options.tracking_uri)
        self._stop = threading.Event()
        self.next_mirror = 0.0

    def run(self, once: bool = False) -> None:
        for w in self.models:
            w.start()
        log.info("mlioc watch ready: %d model(s): %s", len(self.models), ", ".join(w.name for w in self.models))
        try:
            while not self._stop.is_set():
                for w in self.models:
                    try:
                        w.tick()
                    except Exception:  # one model's trouble must not stop the others' loop
                        log.exception("%s: watcher tick failed", w.name)
                now = time.monotonic()
                if now >= self.next_mirror:
                    self.next_mirror = now + HEARTBEAT_S
                    self.mirror.sync()
                if once and not any(w.busy for w in self.models):
                    break
                self._stop.wait(TICK_S)
        finally:
            for w in self.models:
                w.stop()
            self.mirror.sync()
            from ioc.edges.clients import close_clients

            close_clients()

    def stop(self) -> None:
        self._stop.set()


def watch_command(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: invalid configuration {exc.path}:")
        for p in exc.problems:
            print(f"  {p}")
        return EXIT_FAIL
    names = args.model or None
    unknown = [n for n in names or [] if n not in [m.name for m in config.models]]
    if unknown:
        print(f"error: no model {', '.join(unknown)} in {config.path}")
        return EXIT_USAGE
    options = WatchOptions(tracking_uri=args.tracking_uri, log_dir=Path(args.log_dir) if args.log_dir else None,
                           flush_wait_s=args.flush_wait_s)
    watcher = Watcher(config, names, options)
    if not watcher.models:
        print(f"error: no model with a retrain: section in {config.path}")
        return EXIT_USAGE
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: watcher.stop())
    try:
        watcher.run(once=args.once)
    except RuntimeError as exc:
        print(f"error: {exc}")
        return EXIT_FAIL
    return EXIT_OK

