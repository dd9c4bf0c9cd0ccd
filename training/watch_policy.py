"""When the watcher starts a run: the per-model decisions of ``mlioc watch``, without any I/O.

* :class:`DriftEpisode` follows the severity of ``$(P)DRIFT`` as the watcher's CA monitor sees it and
  fires once per episode, when MAJOR has been held for ``retrain.on_drift_s``. It also estimates when
  the episode began (the first MINOR/MAJOR, less the IOC's ``drift.raise_s`` debounce): the start of
  the drift window a drift run trains on, and of its new drift reference.
* :class:`RunGate` admits triggers: one run at a time; a trigger during a run (or the cool-down) is
  remembered once — the first one waits, later ones are dropped and reported, so nothing queues
  without bound; ``cooldown_s`` after every run before a drift or scheduled trigger may start (an
  operator's request is a human decision and only waits for the run in flight to end).

Both take the time as an argument; the daemon (:mod:`training.watch`) owns the clock and the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NO_ALARM, MINOR, MAJOR, INVALID = 0, 1, 2, 3


@dataclass(frozen=True)
class Trigger:
    """Why a run should happen, with the data window it should use."""

    kind: str  # schedule | drift | operator
    at: float
    who: str = "mlioc-watch"
    reason: str = ""
    start: float | None = None
    end: float | None = None
    reference_since: float | None = None
    request_id: str = ""


@dataclass
class DriftEpisode:
    """Severity of DRIFT over time -> one drift trigger per episode."""

    on_drift_s: float
    raise_s: float = 0.0  # the IOC's debounce: the score crossed its limit this long before the alarm
    alarm_since: float | None = None  # first MINOR/MAJOR of the current episode
    major_since: float | None = None
    fired: bool = False

    def update(self, severity: int, at: float) -> None:
        """A new DRIFT severity (INVALID or a disconnect: no evidence either way, the episode ends)."""
        if severity == NO_ALARM or severity >= INVALID:
            self.alarm_since = self.major_since = None
            self.fired = False
            return
        if self.alarm_since is None:
            self.alarm_since = at
        if severity == MAJOR:
            if self.major_since is None:
                self.major_since = at
        else:
            self.major_since = None
            self.fired = False  # back to MINOR: a new MAJOR is a new episode for the trigger

    def due(self, now: float) -> bool:
        return not self.fired and self.major_since is not None and now - self.major_since >= self.on_drift_s

    def fire(self, now: float, history_s: float) -> Trigger:
        """Mark this episode handled and describe its data window."""
        self.fired = True
        onset = (self.alarm_since if self.alarm_since is not None else now) - self.raise_s
        held = now - (self.major_since if self.major_since is not None else now)
        return Trigger("drift", now, reason=f"DRIFT MAJOR for {held:.0f} s", start=onset - history_s, end=None,
                       reference_since=onset)


@dataclass
class RunGate:
    """One run at a time, one remembered trigger, a cool-down after each run."""

    cooldown_s: float
    running: Trigger | None = None
    waiting: Trigger | None = None
    cooldown_until: float = 0.0
    dropped: list[Trigger] = field(default_factory=list)  # drained by the daemon (it reports them)

    def offer(self, trigger: Trigger) -> str:
        """``remembered`` (it will run later), ``dropped`` (one already waits); ``start_next`` says when."""
        if self.waiting is None:
            self.waiting = trigger
            return "remembered"
        if trigger.kind == "operator" and self.waiting.kind != "operator":
            self.dropped.append(self.waiting)  # a human's request outranks an automatic one
            self.waiting = trigger
            return "remembered"
        self.dropped.append(trigger)
        return "dropped"

    def start_next(self, now: float) -> Trigger | None:
        """The waiting trigger, if it may start now (nothing runs, and the cool-down is over or a human
        asked); it becomes the running one."""
        t = self.waiting
        if t is None or self.running is not None:
            return None
        if now < self.cooldown_until and t.kind != "operator":
            return None
        self.waiting = None
        self.running = t
        return t

    def finished(self, now: float) -> None:
        self.running = None
        self.cooldown_until = now + self.cooldown_s
