"""The loop's pure parts: cron schedules, the promotion policy, the watcher's trigger decisions."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ioc.core.cron import CronError, parse_cron
from ioc.core.promotion import LiveComparison, PromotionPolicy, evaluate, improvement
from training.watch_policy import INVALID, MAJOR, MINOR, NO_ALARM, DriftEpisode, RunGate, Trigger

# ----------------------------------------------------------------------------- cron


def _field(lo: int, hi: int):
    value = st.integers(lo, hi)
    rng = st.tuples(value, value).map(sorted).map(lambda ab: f"{ab[0]}-{ab[1]}")
    step = st.tuples(st.sampled_from(["*", None]), st.integers(1, 7)).map(lambda t: f"*/{t[1]}")
    item = st.one_of(st.just("*"), value.map(str), rng, step)
    return st.lists(item, min_size=1, max_size=3).map(",".join)


EXPRS = st.tuples(_field(0, 59), _field(0, 23), _field(1, 28), _field(1, 12), _field(0, 7)).map(" ".join)
TIMES = st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2030, 1, 1))


def _brute_next(cron, after: dt.datetime, limit_days: int = 800) -> dt.datetime | None:
    t = (after + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)
    end = t + dt.timedelta(days=limit_days)
    while t < end:
        if cron.matches(t):
            return t
        # whole hours / days that cannot match are skipped, minute by minute otherwise
        if t.hour not in cron.hours or not cron.matches_day(t.date()):
            t = (t + dt.timedelta(hours=1)).replace(minute=0)
            continue
        t += dt.timedelta(minutes=1)
    return None


@settings(max_examples=150, deadline=None)
@given(EXPRS, TIMES)
def test_next_after_is_the_first_matching_minute(expr, after):
    cron = parse_cron(expr)
    expected = _brute_next(cron, after)
    assume(expected is not None)  # sparse day/weekday/month combinations may be years away
    got = cron.next_after(after)
    assert got == expected and got > after and cron.matches(got)


@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("0 2 * * *", "2026-11-30 01:59:30", "2026-11-30 02:00"),
    ("0 2 * * *", "2026-11-30 02:00:00", "2026-12-01 02:00"),
    ("*/15 * * * *", "2026-11-30 10:14:59", "2026-11-30 10:15"),
    ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),
    ("30 6 * * 1-5", "2026-11-28 12:00", "2026-11-30 06:30"),  # Saturday -> Monday
    ("0 0 13 * 5", "2026-11-30 00:00", "2026-12-04 00:00"),  # both day fields: either matches (a Friday)
    ("@daily", "2026-11-30 10:00", "2026-12-01 00:00"),
    ("0 3 * * 7", "2026-11-30 00:00", "2026-12-06 03:00"),  # 7 is Sunday
])
def test_known_schedules(expr, after, expected):
    assert parse_cron(expr).next_after(dt.datetime.fromisoformat(after)) == dt.datetime.fromisoformat(expected)


@pytest.mark.parametrize(("expr", "fragment"), [
    ("0 2 * *", "5 fields"), ("60 * * * *", "minute"), ("0 24 * * *", "hour"), ("0 0 0 * *", "day of month"),
    ("0 0 * 13 *", "month"), ("0 0 * * 8", "day of week"), ("5-1 * * * *", "backwards"), ("*/0 * * * *", "step"),
    ("a * * * *", "not a number"), ("0 0 31 2 *", "never matches"), ("daily 02:00", "5 fields"),
])
def test_bad_schedules_say_which_field(expr, fragment):
    with pytest.raises(CronError, match=fragment):
        parse_cron(expr)


# ----------------------------------------------------------------------------- promotion policy

POLICY = PromotionPolicy(mode="auto", margin=0.1, min_samples=100, max_hours=2.0)
MAE = st.floats(min_value=1e-3, max_value=10.0)


@settings(max_examples=300)
@given(st.integers(0, 500), st.lists(st.tuples(MAE, MAE), min_size=1, max_size=4), st.booleans(),
       st.sampled_from(["manual", "auto"]))
def test_ready_exactly_when_judged_better_by_the_margin_and_not_drifting(samples, maes, drifting, mode):
    policy = PromotionPolicy(mode=mode, margin=0.1, min_samples=100, max_hours=2.0)
    champ, chall = zip(*maes, strict=True)
    live = LiveComparison(samples, champ, chall, drifting)
    v = evaluate(policy, live, now=1000.0, losing_since=None)
    gain = 1 - sum(c / k for k, c in zip(champ, chall, strict=True)) / len(champ)
    assert v.ready == (samples >= 100 and gain >= 0.1 and not drifting)
    assert v.action == ("promote" if v.ready and mode == "auto" else "none")  # losing just started: no retire
    if samples < 100:
        assert v.improvement is None and v.losing_since is None
    else:
        assert v.improvement == pytest.approx(gain)
        assert v.losing_since == (None if v.ready else 1000.0)


@settings(max_examples=200)
@given(st.floats(0, 5 * 3600), st.floats(0, 3600))
def test_a_losing_challenger_is_retired_after_max_hours_and_not_before(since_ago, jitter):
    live = LiveComparison(200, (1.0,), (1.5,))  # 50 % worse
    now = 1e6
    v = evaluate(POLICY, live, now=now, losing_since=now - since_ago)
    assert v.action == ("retire" if since_ago >= 2 * 3600 else "none")
    assert v.losing_since == now - since_ago and not v.ready


def test_winning_resets_the_losing_clock_and_no_comparison_means_nothing():
    better = LiveComparison(200, (1.0, 2.0), (0.5, 1.0))
    v = evaluate(POLICY, better, now=10.0, losing_since=1.0)
    assert v.ready and v.action == "promote" and v.losing_since is None
    assert evaluate(POLICY, None, now=10.0, losing_since=5.0).action == "none"
    assert evaluate(POLICY, None, now=10.0, losing_since=5.0).losing_since is None


def test_improvement_edge_cases():
    assert improvement((0.0,), (0.0,)) == 0.0
    assert improvement((0.0,), (0.1,)) == float("-inf")
    assert improvement((1.0,), (float("nan"),)) == float("-inf")
    assert improvement((), ()) == float("-inf")
    assert improvement((2.0, 1.0), (1.0, 1.0)) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- the watcher's decisions


def test_drift_fires_once_per_episode_after_major_is_held():
    d = DriftEpisode(on_drift_s=30, raise_s=10)
    d.update(MINOR, 100.0)
    d.update(MAJOR, 120.0)
    assert not d.due(149.0) and d.due(150.0)
    t = d.fire(150.0, history_s=60)
    assert (t.kind, t.reference_since, t.start, t.end) == ("drift", 90.0, 30.0, None)  # onset = first alarm - raise_s
    assert not d.due(500.0)  # once per episode
    d.update(MAJOR, 510.0)
    assert not d.due(600.0)
    d.update(MINOR, 610.0)  # back to MINOR, then MAJOR again: a new trigger
    d.update(MAJOR, 620.0)
    assert d.due(650.0)


@pytest.mark.parametrize("interruption", [NO_ALARM, MINOR, INVALID])
def test_an_interrupted_major_restarts_the_hold(interruption):
    d = DriftEpisode(on_drift_s=30)
    d.update(MAJOR, 0.0)
    d.update(interruption, 20.0)
    d.update(MAJOR, 25.0)
    assert not d.due(50.0) and d.due(55.0)


def _t(kind: str, at: float = 0.0) -> Trigger:
    return Trigger(kind, at)


def test_one_run_at_a_time_one_trigger_remembered_the_rest_dropped():
    g = RunGate(cooldown_s=100)
    assert g.offer(_t("schedule")) == "remembered"
    first = g.start_next(0.0)
    assert first is not None and g.running is first and g.start_next(1.0) is None
    assert g.offer(_t("drift", 2)) == "remembered"
    assert g.offer(_t("schedule", 3)) == "dropped"
    assert g.offer(_t("drift", 4)) == "dropped"
    assert [t.at for t in g.dropped] == [3, 4]
    assert g.start_next(5.0) is None  # still running
    g.finished(10.0)
    assert g.start_next(50.0) is None  # cool-down
    assert g.start_next(110.0).at == 2  # the remembered one, once
    g.finished(120.0)
    assert g.start_next(500.0) is None


def test_an_operator_request_outranks_a_waiting_automatic_trigger_and_skips_the_cooldown():
    g = RunGate(cooldown_s=1000)
    g.offer(_t("schedule"))
    g.start_next(0.0)
    g.offer(_t("drift", 1))
    assert g.offer(_t("operator", 2)) == "remembered" and [t.kind for t in g.dropped] == ["drift"]
    assert g.offer(_t("operator", 3)) == "dropped"
    g.finished(5.0)
    assert g.start_next(6.0).kind == "operator"  # a human asked: no cool-down wait


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["offer", "start", "finish"]), st.sampled_from(["drift", "schedule",
                                                                                          "operator"])),
                max_size=40))
def test_the_gate_never_runs_two_and_never_holds_more_than_one(ops):
    g = RunGate(cooldown_s=0)
    offered = started = 0
    for step, (op, kind) in enumerate(ops):
        if op == "offer":
            offered += 1
            g.offer(_t(kind, step))
        elif op == "start":
            if g.start_next(float(step)) is not None:
                started += 1
        elif g.running is not None:
            g.finished(float(step))
        assert (g.running is None) or g.start_next(float(step)) is None
        assert offered == started + len(g.dropped) + (g.waiting is not None)
