"""The promotion policy applied: ``$(P)PROMOTE:READY``, automatic promotion, retirement.

Every update of the live comparison (:class:`ioc.runtime.challenger.ChallengerMonitor`) is judged by
:func:`ioc.core.promotion.evaluate`. READY is served with the reason as its alarm message (PVA
``alarm.message``); a change of verdict is also shown in ``$(P)MESSAGE`` and written to
``events.jsonl`` (``challenger-ready`` / ``challenger-not-ready``). With ``retrain.promote: auto`` a
READY challenger is promoted through :meth:`ModelManager.promote` — the same code path as an
operator's PROMOTE, audited the same way, with the policy as the client (``mlioc@auto-promote``).
A challenger judged and not ready for ``max_hours`` is retired: its pointer is cleared
(:meth:`ModelManager.retire`, audited).
"""

from __future__ import annotations

import logging

from ioc.core.config import RetrainConfig
from ioc.core.promotion import LiveComparison, PromotionPolicy, Verdict, evaluate
from ioc.core.pvmodel import PV, ClientInfo, PutRejected, clip_message
from ioc.edges.model_manager import ModelManager
from ioc.runtime.runner import ModelRunner

log = logging.getLogger("mlioc.promotion")

POLICY_CLIENT = {"promote": ClientInfo(user="mlioc", host="auto-promote", protocol="internal"),
                 "retire": ClientInfo(user="mlioc", host="auto-retire", protocol="internal")}


class PromotionEdge:
    """One model's promotion verdict and the actions it takes."""

    def __init__(self, runner: ModelRunner, manager: ModelManager, settings: RetrainConfig):
        self.runner = runner
        self.manager = manager
        self.policy = PromotionPolicy(mode=settings.promote, margin=settings.margin,
                                      min_samples=settings.min_samples, max_hours=settings.max_hours)
        self.name = runner.config.name
        self.ready_pv: PV = runner.db[runner.names.promote_ready]
        self.losing_since: float | None = None
        self.verdict: Verdict | None = None
        self._busy = False

    def start(self) -> None:
        self.ready_pv.post(0, self.runner.clock(), message="no challenger")

    def on_comparison(self, live: LiveComparison | None) -> None:
        """A comparison listener (on the loop)."""
        now = self.runner.clock()
        verdict = evaluate(self.policy, live, now=now, losing_since=self.losing_since)
        self.losing_since = verdict.losing_since
        before = self.verdict
        self.verdict = verdict
        self.ready_pv.post(int(verdict.ready), now, message=clip_message(verdict.reason))
        if live is not None and (before is None or before.ready != verdict.ready):
            version = self.runner.challenger.version if self.runner.challenger is not None else "?"
            text = f"challenger v{version} {'READY' if verdict.ready else 'not ready'}"
            log.warning("%s: %s: %s", self.name, text, verdict.reason)
            if verdict.ready or before is not None:
                self.runner.note(text)
                try:
                    self.manager.store.append_event(
                        "challenger-ready" if verdict.ready else "challenger-not-ready", model=self.name,
                        version=version, reason=verdict.reason, improvement=verdict.improvement,
                        samples=live.samples, mode=self.policy.mode)
                except OSError as exc:  # a full disk must not stop serving
                    log.error("%s: cannot write events.jsonl: %s", self.name, exc)
        if verdict.action != "none" and not self._busy:
            self._busy = True
            self.runner.loop.create_task(self._act(verdict), name=f"{verdict.action}-{self.name}")

    async def _act(self, verdict: Verdict) -> None:
        try:
            if verdict.action == "promote":
                await self.manager.promote(POLICY_CLIENT["promote"], f"auto: {verdict.reason}")
            else:
                await self.manager.retire(POLICY_CLIENT["retire"], verdict.reason)
            self.losing_since = None
        except PutRejected as exc:
            log.error("%s: automatic %s impossible: %s", self.name, verdict.action, exc)
        except OSError as exc:
            log.error("%s: automatic %s failed: %s", self.name, verdict.action, exc)
        finally:
            self._busy = False
