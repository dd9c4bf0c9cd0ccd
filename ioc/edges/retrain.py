"""The IOC's side of retraining: ``$(P)RETRAIN`` asks, ``$(P)RETRAIN:STATUS`` / ``:MESSAGE`` tell.

The training itself runs elsewhere (``mlioc watch``, maybe on another host); the two share only the
model store, so an operator's ``caput $(P)RETRAIN 1`` writes a request file into ``requests/``
(:mod:`ioc.core.retrain_requests`) and the IOC shows the watcher's ``status.json``, polled every
``retrain.poll_s``. RETRAIN is in the CONTROL access group and audited like ROLLBACK: the PV
database logs every write with who and from where, accepted or refused, and ``events.jsonl`` gets a
``retrain-request`` (or ``retrain-refused``) line. While a request waits, another is refused (it
would be the same run): at most one request from the IOC is ever pending.

The watcher may ask the IOC to close its recording file before a run (``flush.json``), so the run
can read the newest cycles; the IOC rolls its recorder and answers (``flushed.json``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ioc.core.config import RetrainConfig
from ioc.core.pvmodel import PV, ClientInfo, PutRejected, clip_message
from ioc.core.retrain_requests import RequestBox, RetrainRequest, RetrainState, shown_state
from ioc.core.store import ModelStore
from ioc.edges.recorder import Recorder
from ioc.runtime.runner import ModelRunner
from ioc.runtime.tasks import cancel_and_wait

log = logging.getLogger("mlioc.retrain")

FLUSH_TIMEOUT_S = 30.0


class RetrainEdge:
    """One model's RETRAIN / RETRAIN:STATUS / RETRAIN:MESSAGE."""

    def __init__(self, runner: ModelRunner, store: ModelStore, settings: RetrainConfig,
                 recorder: Recorder | None = None):
        self.runner = runner
        self.store = store
        self.settings = settings
        self.recorder = recorder
        self.loop = runner.loop
        self.name = runner.config.name
        self.box = RequestBox(store.root)
        names = runner.names
        self.retrain_pv: PV = runner.db[names.retrain]
        self.status_pv: PV = runner.db[names.retrain_status]
        self.message_pv: PV = runner.db[names.retrain_message]
        self.retrain_pv.put_handler = self.put_retrain
        self._shown: tuple[RetrainState, str] | None = None
        self._problems: list[str] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        now = self.runner.clock()
        self.retrain_pv.post(0, now)
        self.status_pv.post(int(RetrainState.IDLE), now)
        self.message_pv.post("", now)
        self._task = self.loop.create_task(self._poll(), name=f"retrain-{self.name}")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # ------------------------------------------------------------------ RETRAIN

    def put_retrain(self, pv: PV, value: int, client: ClientInfo) -> Awaitable[None] | None:
        if not value:
            return None
        return self._act(pv, lambda: self._request(client))

    async def _act(self, pv: PV, action: Callable[[], Awaitable[None]]) -> None:
        pv.post(1, self.runner.clock())
        try:
            await action()
        finally:
            pv.post(0, self.runner.clock())

    async def _request(self, client: ClientInfo) -> None:
        request = RetrainRequest.new("operator", user=client.user, host=client.host, protocol=client.protocol,
                                     reason="RETRAIN written")

        def submit() -> str | None:
            pending = self.box.pending()
            if pending:
                return f"already requested by {pending[0][1].who}"
            self.box.submit(request)
            return None

        try:
            refused = await self.loop.run_in_executor(None, submit)
        except OSError as exc:
            refused = f"cannot write the request: {exc.strerror or exc}"
        if refused is not None:
            log.warning("%s: RETRAIN by %s refused: %s", self.name, client, refused)
            self._event("retrain-refused", client, reason=refused)
            self.runner.note(f"retrain refused: {refused}")
            raise PutRejected(f"retrain refused: {refused}")
        log.warning("%s: RETRAIN requested by %s (request %s)", self.name, client, request.id)
        self._event("retrain-request", client, request_id=request.id, trigger="operator", reason=request.reason)
        self._show(RetrainState.REQUESTED, f"operator by {request.who}")

    def _event(self, action: str, client: ClientInfo, **fields) -> None:
        try:
            self.store.append_event(action, model=self.name, user=client.user, host=client.host,
                                    protocol=client.protocol, **fields)
        except OSError as exc:  # a full disk must not stop serving
            log.error("%s: cannot write %s: %s", self.name, self.store.events_path, exc)

    # ------------------------------------------------------------------ status

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a damaged file or a flaky share must not stop the IOC's polling
                log.exception("%s: reading %s failed", self.name, self.box.dir)
            await asyncio.sleep(self.settings.poll_s)

    async def refresh(self) -> None:
        def read():
            status = self.box.read_status()
            problems = list(self.box.problems)
            pending = [r for _, r in self.box.pending()]
            return status, pending, problems + self.box.problems, self.box.flush_asked()

        status, pending, problems, flush = await self.loop.run_in_executor(None, read)
        if problems != self._problems:
            for p in problems:
                log.error("%s: %s/%s (skipped)", self.name, self.box.dir, p)
            self._problems = problems
        self._show(*shown_state(status, pending))
        if flush is not None:
            await self._flush(flush)

    def _show(self, state: RetrainState, message: str) -> None:
        if self._shown == (state, message):
            return
        self._shown = (state, message)
        now = self.runner.clock()
        self.status_pv.post(int(state), now)
        self.message_pv.post(clip_message(message), now)
        log.info("%s: retrain %s: %s", self.name, state.name, message)

    async def _flush(self, token: str) -> None:
        """Close the recording file in progress, then answer the watcher (it waits for this)."""
        files: list[str] = []
        if self.recorder is not None:
            done = self.recorder.roll()
            await self.loop.run_in_executor(None, done.wait, FLUSH_TIMEOUT_S)
            files = [Path(f).name for f in self.recorder.files_closed[-3:]]
        await self.loop.run_in_executor(None, self.box.ack_flush, token, files)
        log.info("%s: recording flushed for a retrain run", self.name)
