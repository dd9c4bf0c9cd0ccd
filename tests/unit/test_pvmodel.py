"""The PV model: alarm evaluation as an EPICS ai record does it, deadbands, coercion, the write path."""

from __future__ import annotations

import logging
import math

import pytest

from ioc.core.pvmodel import (
    AccessDenied,
    AlarmLimits,
    ClientInfo,
    Event,
    Kind,
    PutRejected,
    PVDatabase,
    PVSpec,
    Severity,
    Status,
)

ALICE = ClientInfo("alice", "ctrl1", "ca", "10.0.0.1:5000")


def test_alarm_limits_follow_epics_order_and_severities():
    lim = AlarmLimits(lolo=-4, low=-3, high=3, hihi=4)
    assert lim.evaluate(0)[:2] == (Severity.NO_ALARM, Status.NO_ALARM)
    assert lim.evaluate(3)[:2] == (Severity.MINOR, Status.HIGH)  # >= like aiRecord
    assert lim.evaluate(4.5)[:2] == (Severity.MAJOR, Status.HIHI)
    assert lim.evaluate(-3)[:2] == (Severity.MINOR, Status.LOW)
    assert lim.evaluate(-10)[:2] == (Severity.MAJOR, Status.LOLO)


def test_unset_lower_limit_never_alarms_at_or_below_zero():
    # caproto's trap: a lower limit defaulting to 0 makes every value <= 0 alarm.
    lim = AlarmLimits(high=3, hihi=4)
    for v in (0.0, -1.0, -1e9):
        assert lim.evaluate(v)[0] == Severity.NO_ALARM


def test_hysteresis_keeps_alarm_until_value_is_hyst_inside():
    lim = AlarmLimits(high=3, hyst=0.5)
    sev, _, last = lim.evaluate(3.1)
    assert sev == Severity.MINOR
    sev, _, last = lim.evaluate(2.8, last)
    assert sev == Severity.MINOR  # inside the limit but not by HYST yet
    assert lim.evaluate(2.4, last)[0] == Severity.NO_ALARM


def _db(**spec_kw):
    db = PVDatabase()
    spec = PVSpec(name="X", kind=spec_kw.pop("kind", Kind.AI), **spec_kw)
    return db, db.add(spec)


def test_post_computes_severity_from_limits_and_marks_events():
    db, pv = _db(alarm=AlarmLimits(high=3, hihi=4))
    seen = []
    pv.subscribe(lambda p, r, e: seen.append((r, e)))
    assert pv.post(1.0, 100.0) == Event.VALUE | Event.LOG | Event.ALARM  # leaves UDF/INVALID
    assert pv.reading.severity == Severity.NO_ALARM
    assert pv.post(3.5, 101.0) == Event.VALUE | Event.LOG | Event.ALARM
    assert (pv.reading.severity, pv.reading.status) == (Severity.MINOR, Status.HIGH)
    assert pv.post(3.5, 102.0) == Event.NONE  # nothing changed: no monitor, like an EPICS record
    assert pv.reading.timestamp == 102.0  # but a get sees the new time
    assert len(seen) == 3 and seen[-1][1] == Event.NONE


def test_mdel_adel_deadbands():
    db, pv = _db(mdel=0.5, adel=2.0)
    pv.post(0.0, 1.0)
    assert pv.post(0.3, 2.0) == Event.NONE
    assert pv.post(0.6, 3.0) == Event.VALUE
    assert pv.post(2.5, 4.0) == Event.VALUE | Event.LOG
    db2, pv2 = _db(mdel=-1)
    pv2.post(1.0, 1.0)
    assert pv2.post(1.0, 2.0) & Event.VALUE  # negative MDEL posts every time


def test_caller_severity_only_makes_it_worse():
    db, pv = _db(alarm=AlarmLimits(hihi=4))
    pv.post(5.0, 1.0, Severity.MINOR, Status.LINK)
    assert (pv.reading.severity, pv.reading.status) == (Severity.MAJOR, Status.HIHI)
    pv.post(1.0, 2.0, Severity.INVALID, Status.DISABLE, "disabled")
    assert (pv.reading.severity, pv.reading.status, pv.reading.message) == (Severity.INVALID, Status.DISABLE,
                                                                             "disabled")


def test_non_finite_analog_value_is_invalid():
    db, pv = _db()
    pv.post(math.inf, 1.0)
    assert (pv.reading.severity, pv.reading.status) == (Severity.INVALID, Status.UDF)


def test_enum_state_severity():
    db, pv = _db(kind=Kind.MBBI, choices=("OK", "BAD"), choice_severities=(Severity.NO_ALARM, Severity.MAJOR))
    pv.post(1, 1.0)
    assert (pv.reading.severity, pv.reading.status) == (Severity.MAJOR, Status.STATE)
    pv.post(0, 2.0)
    assert pv.reading.severity == Severity.NO_ALARM


@pytest.mark.parametrize(("kind", "raw", "expected"), [
    (Kind.AI, "2.5", 2.5), (Kind.AI, 3, 3.0), (Kind.AI, b" 1e3 ", 1000.0), (Kind.AI, "nan", None),
    (Kind.LONGIN, 7.0, 7), (Kind.BO, "On", 1), (Kind.BO, 0, 0), (Kind.BO, "1", 1), (Kind.STRINGIN, 12, "12"),
])
def test_coerce(kind, raw, expected):
    spec = PVSpec(name="X", kind=kind, choices=("Off", "On") if kind.is_enum else ())
    got = spec.coerce(raw)
    if expected is None:
        assert math.isnan(got)
    else:
        assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("kind", "raw"), [(Kind.AI, "abc"), (Kind.AI, [1, 2]), (Kind.LONGIN, 1.5),
                                           (Kind.BO, 2), (Kind.BO, "Maybe"), (Kind.STRINGIN, "x" * 40)])
def test_coerce_refuses(kind, raw):
    spec = PVSpec(name="X", kind=kind, choices=("Off", "On") if kind.is_enum else ())
    with pytest.raises(PutRejected):
        spec.coerce(raw)


def test_put_path_read_only_handler_control_limits_and_audit(caplog):
    db = PVDatabase()
    ro = db.add(PVSpec(name="RO", kind=Kind.AI))
    got = []
    ctl = db.add(PVSpec(name="CTL", kind=Kind.BO, choices=("Off", "On"), writable=True, audit=True),
                 put_handler=lambda pv, v, c: got.append((v, c)))
    lim = db.add(PVSpec(name="LIM", kind=Kind.AO, writable=True, control=(0.0, 10.0)),
                 put_handler=lambda pv, v, c: None)
    with caplog.at_level(logging.INFO, logger="mlioc.audit"):
        with pytest.raises(PutRejected, match="read-only"):
            db.put(ro.name, 1.0, ALICE)
        with pytest.raises(PutRejected, match="outside control limits"):
            db.put(lim.name, 11.0, ALICE)
        db.put(ctl.name, "On", ALICE)
    refused = [r for r in caplog.records if r.name == "mlioc.audit" and not r.accepted]
    assert [r.reason for r in refused] == ["RO is read-only", "11.0 outside control limits [0.0, 10.0]"]
    assert got == [(1, ALICE)]
    (record,) = [r for r in caplog.records if r.name == "mlioc.audit" and r.accepted]
    assert "CTL" in record.message and "alice@ctrl1" in record.message and "accepted" in record.message
    assert record.user == "alice" and record.host == "ctrl1" and record.protocol == "ca" and record.accepted


async def test_a_write_refused_when_its_action_completes_is_audited_as_refused(caplog):
    """ROLLBACK and friends return an awaitable that may refuse later: the audit says so, with the reason."""
    db = PVDatabase()

    async def refuse():
        raise PutRejected("rollback refused: no earlier champion")

    async def act():
        return None

    db.add(PVSpec(name="NO", kind=Kind.BO, choices=("Idle", "Go"), writable=True, audit=True),
           put_handler=lambda pv, v, c: refuse())
    db.add(PVSpec(name="YES", kind=Kind.BO, choices=("Idle", "Go"), writable=True, audit=True),
           put_handler=lambda pv, v, c: act())
    with caplog.at_level(logging.INFO, logger="mlioc.audit"):
        pending = db.put("NO", 1, ALICE)
        assert not [r for r in caplog.records if r.name == "mlioc.audit"]  # nothing is decided yet
        with pytest.raises(PutRejected):
            await pending
        await db.put("YES", 1, ALICE)
    records = [r for r in caplog.records if r.name == "mlioc.audit"]
    assert [(r.pv, r.accepted) for r in records] == [("NO", False), ("YES", True)]
    assert records[0].reason == "rollback refused: no earlier champion" and "refused" in records[0].message


def test_access_policy_is_consulted_and_denials_audited(caplog):
    class OnlyBob:
        def can_write(self, asg, user, host):
            return user == "bob"

        def can_read(self, asg, user, host):
            return True

    db = PVDatabase(access=OnlyBob())
    pv = db.add(PVSpec(name="E", kind=Kind.BO, choices=("Off", "On"), writable=True, audit=True),
                put_handler=lambda *a: None)
    with caplog.at_level(logging.INFO, logger="mlioc.audit"), pytest.raises(AccessDenied):
        db.put("E", 1, ALICE)
    assert not db.can_write(pv, "alice", "h") and db.can_write(pv, "bob", "h")
    assert any("refused" in r.message and r.accepted is False for r in caplog.records)


def test_update_spec_reevaluates_alarm_and_notifies():
    db, pv = _db(alarm=AlarmLimits(hihi=10))
    specs = []
    pv.subscribe(lambda *a: None, lambda p, s: specs.append(s))
    pv.post(5.0, 1.0)
    assert pv.reading.severity == Severity.NO_ALARM
    pv.update_spec(alarm=AlarmLimits(hihi=4))
    assert specs[-1].alarm.hihi == 4
    assert pv.reading.severity == Severity.MAJOR


def test_a_clipped_message_keeps_the_useful_end_of_a_path():
    from ioc.core.pvmodel import MESSAGE_LEN, clip_message

    assert clip_message("no model: /opt/site/ioc/models/beam: no champion") == "no model: .../models/beam: no champion"
    assert clip_message("rejected v12: /srv/mlioc/stores/beam/versions/12/model.onnx: checksum") == \
        "rejected v12: .../model.onnx: checksum"
    long = clip_message("inference failed: a reason far longer than any string PV can hold")
    assert len(long) == MESSAGE_LEN and long.endswith("~")
    assert clip_message("q1: stale (no update for > 2 s)") == "q1: stale (no update for > 2 s)"
