"""The actions of one model: the ``$(P)ACTIONS`` switch, trips, and the per-cycle fan-out to each action.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from ioc.core.arrays import TensorLayout
from ioc.core.engine import LoadedModel
from ioc.core.layout import ActionNames
from ioc.core.pvmodel import PV, ClientInfo, PutRejected, Severity, Status, clip_message
from ioc.core.store import ModelStore
from ioc.edges.actions.action import Action
from ioc.edges.actions.audit import AuditLog
from ioc.runtime.runner import CycleRecord, ModelRunner

log = logging.getLogger("mlioc.actions")


# ----------------------------------------------------------------------------- one model's actions


class ActionController:
    """The actions of one model: the ACTIONS switch, trips, and the per-cycle fan-out."""

    def __init__(self, runner: ModelRunner, loop: asyncio.AbstractEventLoop, *, store: ModelStore | None = None,
                 audit_path: Path | None = None):
        self.runner = runner
        self.loop = loop
        self.store = store
        self.names = ActionNames(runner.config.prefix)
        db = runner.db
        self.actions_pv: PV = db[self.names.actions]
        self.trip_pv: PV = db[self.names.trip]
        self.actions_pv.put_handler = self._put_actions
        self.audit = AuditLog(audit_path, loop)
        self.armed = False
        self.tripped = False
        self.trips = 0
        self.generation = 0  # bumped on every model swap, trip and disarm: queued writes of older ones drop
        self.served_version = ""
        self.drift_name = runner.names.drift
        # Each action reads its output at its place in the flat output vector (after any array output).
        offsets = TensorLayout.of(runner.config.outputs).offsets
        self.actions = [Action(self, offsets[i], o) for i, o in enumerate(runner.config.outputs)
                        if o.action is not None]
        now = time.time()
        self.actions_pv.post(0, now)  # never persisted: every start begins disarmed
        self.trip_pv.post("", now)
        for action in self.actions:
            action.post_initial(now)

    @property
    def model_name(self) -> str:
        return self.runner.config.name

    def start(self) -> None:
        for action in self.actions:
            action.start()
        modes = ", ".join(f"{a.name} -> {a.config.target} ({a.config.mode})" for a in self.actions)
        log.info("%s: actions %s; ACTIONS is off until an operator arms it", self.model_name, modes)

    def stop(self) -> None:
        self.generation += 1
        for action in self.actions:
            action.stop()
        self.audit.close()

    # ------------------------------------------------------------------ listeners (on the loop)

    def on_cycle(self, record: CycleRecord) -> None:
        """The runner's cycle listener: decide just after the cycle, so its predictions go out first
        (the decision needs the model served *then*: a swap in between is seen and held)."""
        self.loop.call_soon(self.decide, record)

    def decide(self, record: CycleRecord) -> None:
        db = self.runner.db
        drift = None
        if self.drift_name in db:  # the drift monitor's PV, where the model has one (docs/how-to/actions.md)
            drift = int(db[self.drift_name].reading.severity)
        model = self.runner.model
        served = model.version if model is not None else ""
        for action in self.actions:
            action.on_cycle(record, served, drift)

    def on_model(self, model: LoadedModel | None) -> None:
        """A new model (reload, rollback, promote) or none: queued writes drop; armed actions trip."""
        old = self.served_version
        self.served_version = model.version if model is not None else ""
        self.generation += 1
        if self.armed:
            new = f"v{self.served_version}" if model is not None else "no model"
            self.trip(f"model changed: v{old or '-'} -> {new}")

    # ------------------------------------------------------------------ arm / disarm / trip

    def _put_actions(self, pv: PV, value: int, client: ClientInfo) -> None:
        now = time.time()
        if value:
            refused = [f"{a.name}: {a.target_text}" for a in self.actions if not a.target_ok]
            if refused:
                raise PutRejected(f"cannot arm: {'; '.join(refused)}"[:200])
            was_tripped = self.tripped
            self.armed = True
            self.tripped = False
            self.generation += 1
            for action in self.actions:
                action.counter.reset()
                action.state = None  # the next cycle posts the state afresh
            pv.post(1, now)
            self.trip_pv.post("", now)
            text = f"actions armed by {client.user}@{client.host}"
            log.warning("%s: %s%s", self.model_name, text, " (re-armed after a trip)" if was_tripped else "")
            self._event("actions-arm", client=client, reason="ACTIONS=1 written")
            self.runner.note(text)
            self.runner.run_cycle(triggered=False)
        else:
            was_armed = self.armed
            self.armed = False
            self.generation += 1
            pv.post(0, now)
            for action in self.actions:
                action.disarmed()
            if was_armed:
                text = f"actions off by {client.user}@{client.host}"
                log.warning("%s: %s", self.model_name, text)
                self._event("actions-disarm", client=client, reason="ACTIONS=0 written")
                self.runner.note(text)

    def trip(self, reason: str) -> None:
        """Switch actions off (ACTIONS -> 0), latch the reason in ACTIONS:TRIP (MAJOR) until re-armed."""
        if not self.armed:
            return
        now = time.time()
        self.armed = False
        self.tripped = True
        self.trips += 1
        self.generation += 1
        self.actions_pv.post(0, now)
        self.trip_pv.post(clip_message(reason), now, Severity.MAJOR, Status.STATE, reason)
        for action in self.actions:
            action.disarmed()
        log.error("%s: actions TRIPPED: %s (ACTIONS -> 0; an operator must re-arm)", self.model_name, reason,
                  extra={"trip": reason})
        self._event("actions-trip", reason=reason, version=self.served_version)
        self.runner.note(f"actions tripped: {reason}")

    def _event(self, action: str, *, client: ClientInfo | None = None, **fields: Any) -> None:
        """Arm / disarm / trip beside reloads and rollbacks in the store's events.jsonl (rare events)."""
        if client is not None:
            fields.update(user=client.user, host=client.host, protocol=client.protocol)
        self.audit.write({"time": time.time(), "event": action, **fields})
        if self.store is None:
            return
        store = self.store

        def append():
            try:
                store.append_event(action, model=self.model_name, **fields)
            except OSError as exc:
                log.error("%s: cannot write %s: %s", self.model_name, store.events_path, exc)

        self.loop.run_in_executor(None, append)


def start_actions(runner: ModelRunner, loop: asyncio.AbstractEventLoop, store: ModelStore | None,
                  state_dir: str | os.PathLike) -> ActionController | None:
    """The action controller of a model with ``action:`` outputs (None for a model without)."""
    if not any(o.action is not None for o in runner.config.outputs):
        return None
    path = Path(state_dir) / "actions" / f"{runner.config.name}.jsonl"
    return ActionController(runner, loop, store=store, audit_path=path)

