"""Cron expressions for ``retrain.schedule``: when the nightly retraining runs.

The five standard fields ``minute hour day-of-month month day-of-week`` (local time, like cron and
an Airflow DAG's ``schedule``), each ``*``, a number, a range ``a-b``, a step ``*/s`` or ``a-b/s``, or a
comma-separated list of those; day of week 0-7 with 0 and 7 both Sunday. As in cron, when both
day fields are restricted a day matching either one matches. ``@daily``, ``@hourly``, ``@weekly``
are shorthands. Chosen over a home-made "daily 02:00" because every operator and every workflow
engine already reads cron, and the same string can go into the shipped Airflow DAG.

Pure: :func:`parse_cron` validates, :meth:`Cron.next_after` computes the next firing time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

ALIASES = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *"}
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


class CronError(ValueError):
    """Not a valid five-field cron expression; the message names the field."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression: the allowed values of each field."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday (7 folded into 0)
    any_day: bool  # day-of-month field is "*"
    any_weekday: bool  # day-of-week field is "*"

    def matches_day(self, day: dt.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow  # cron: both restricted -> either

    def matches(self, t: dt.datetime) -> bool:
        return t.minute in self.minutes and t.hour in self.hours and self.matches_day(t.date())

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first matching minute strictly after ``after`` (naive local time, or aware: kept)."""
        start = (after + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        day = start.date()
        for _ in range(366 * 8 + 1):  # every expression matches within 8 years (Feb 29 on a given weekday)
            if self.matches_day(day):
                first = day == start.date()
                for h in hours:
                    if first and h < start.hour:
                        continue
                    for m in minutes:
                        if first and h == start.hour and m < start.minute:
                            continue
                        return start.replace(year=day.year, month=day.month, day=day.day, hour=h, minute=m)
            day += dt.timedelta(days=1)
        raise CronError(f"{self.text!r} never matches")  # e.g. "0 0 31 2 *"

    def next_timestamp(self, after: float) -> float:
        """:meth:`next_after` for unix seconds, in this host's local time zone."""
        return self.next_after(dt.datetime.fromtimestamp(after)).timestamp()


def _field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
        except ValueError:
            raise CronError(f"{name}: step {step_text!r} is not a number") from None
        if step < 1:
            raise CronError(f"{name}: step must be >= 1, got {step}")
        if rng == "*":
            a, b = lo, hi
        else:
            first, dash, last = rng.partition("-")
            try:
                a = int(first)
                b = int(last) if dash else (hi if step_text else a)
            except ValueError:
                raise CronError(f"{name}: {part!r} is not a number, range or step") from None
            if not lo <= a <= hi or not lo <= b <= hi:
                raise CronError(f"{name}: {part!r} outside {lo}-{hi}")
            if a > b:
                raise CronError(f"{name}: range {part!r} runs backwards")
        values.update(range(a, b + 1, step))
    return frozenset(values)


def parse_cron(text: str) -> Cron:
    """Parse and validate; :class:`CronError` says which field is wrong."""
    expr = ALIASES.get(text.strip(), text.strip())
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}: "
                        f"{text!r}")
    parsed = [_field(f, name, lo, hi) for f, (name, lo, hi) in zip(fields, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in parsed[4])
    cron = Cron(text.strip(), parsed[0], parsed[1], parsed[2], parsed[3], weekdays,
                any_day=fields[2] == "*", any_weekday=fields[4] == "*")
    cron.next_after(dt.datetime(2000, 1, 1))  # refuse an expression that never fires
    return cron
