"""Issue 3 end to end: validated hot reload, rejection, champion/challenger, PROMOTE / ROLLBACK /
RELOAD from caput and pvput, persistence across a restart, and the audit trail.

Version k of the test model computes y0 = k * a + b and y1 = a - b, so every output says which
version made it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ioc.core.store import ModelStore, sha256_file
from tests.support.configs import model, write_config
from tests.support.metrics import parse, samples
from tests.support.models import manifest_for, slow_model, version_files
from tests.support.models import publish_version as publish
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def mlioc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ioc", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=os.environ)


@pytest.fixture
def setup(tmp_path, prefix):
    store = ModelStore(tmp_path / "store")
    publish(store, tmp_path, 1.0, "champion")

    def config(trigger: dict | None = None, mdel: float = 0.0, **ioc) -> Path:
        return write_config(tmp_path / "ioc.yaml",
                            model(prefix, name="lin", trigger=trigger,
                                  inputs=[{"name": "a", "initial": 1.0}, {"name": "b", "initial": 0.0}],
                                  outputs=[{"name": "y0", "mdel": mdel}, {"name": "y1", "mdel": mdel}]),
                            ioc={"store_poll_s": 0.2, "stats_hz": 5, **ioc})

    return store, config, prefix


def test_a_good_push_is_served_within_2s_stamped_with_its_version(setup, tmp_path, launch, ca, pva):
    store, config, p = setup
    ioc = launch.ioc(config())
    client = pva(ioc)
    champion = ca.monitor(f"{p}CHAMPION")
    champion.wait_for(lambda u: u.value == "1")
    y0 = client.monitor(f"{p}OUT:y0")
    first = y0.wait_for(lambda u: u.value == pytest.approx(1.0))
    assert client.get(f"{p}OUT:y0")["version"] == "1"
    onnx, manifest = version_files(tmp_path, 2.0)
    mark = champion.mark()
    r = mlioc("models", "push", str(store.root), str(onnx), str(manifest), "--as", "champion")
    pushed = time.monotonic()
    assert r.returncode == 0, r.stderr
    assert "pushed" in r.stdout and "version 2 as champion" in r.stdout
    champion.wait_for(lambda u: u.value == "2", timeout=2.0, since=mark)
    served_after = time.monotonic() - pushed
    update = y0.wait_for(lambda u: u.value == pytest.approx(2.0), timeout=2.0)
    assert served_after < 2.0
    assert client.get(f"{p}OUT:y0")["version"] == "2"
    assert ca.get(f"{p}VERSION") == "2"
    assert update.timestamp == first.timestamp  # same input snapshot, recomputed by the new model
    events = [e["action"] for e in store.events()]
    assert events[-2:] == ["push", "reload"]


CORRUPTIONS = {
    "sha mismatch (file changed after publishing)": "flip",
    "wrong signature (3 outputs for 2 configured)": "signature",
    "test vector does not reproduce": "vector",
    "not an ONNX file (checksum consistent)": "garbage",
    "manifest is not JSON": "manifest",
}


def _corrupt(store: ModelStore, tmp_path: Path, how: str) -> int:
    if how == "signature":
        return publish(store, tmp_path, 3.0, n_out=3)
    n = publish(store, tmp_path, 3.0)
    if how == "flip":
        data = bytearray(store.onnx_path(n).read_bytes())
        data[len(data) // 2] ^= 0xFF
        store.onnx_path(n).write_bytes(bytes(data))
    elif how == "vector":
        doc = json.loads(store.manifest_path(n).read_text())
        doc["test_vectors"]["outputs"][0][0] += 1.0
        store.manifest_path(n).write_text(json.dumps(doc))
    elif how == "garbage":
        store.onnx_path(n).write_bytes(b"\x08\x07garbage" * 50)
        doc = json.loads(store.manifest_path(n).read_text())
        doc["sha256"] = sha256_file(store.onnx_path(n))
        store.manifest_path(n).write_text(json.dumps(doc))
    elif how == "manifest":
        store.manifest_path(n).write_text("{ not json")
    return n


def test_bad_versions_are_rejected_while_the_champion_keeps_serving(setup, tmp_path, launch, ca, pva):
    store, config, p = setup
    ioc = launch.ioc(config())
    message = ca.monitor(f"{p}MESSAGE")
    out = ca.monitor(f"{p}OUT:y0")
    out.wait_for(lambda u: u.value == pytest.approx(1.0) and u.severity == 0)
    for label, how in CORRUPTIONS.items():
        mark = message.mark()
        n = _corrupt(store, tmp_path, how)
        store.write_pointer("champion", n)
        m = message.wait_for(lambda u, n=n: u.value.startswith(f"rejected v{n}"), since=mark, timeout=10)
        assert ca.get(f"{p}CHAMPION") == "1", label
        assert ca.get(f"{p}STATUS", as_string=True) == "OK", label
        assert ca.get_full(f"{p}OUT:y0").value == pytest.approx(1.0), label
        rejected = [e for e in store.events() if e["action"] == "rejected" and e.get("to_version") == n]
        assert rejected and rejected[-1]["reason"], label
        print(label, "->", m.value, "|", rejected[-1]["reason"][:100])
    assert pva(ioc).get(f"{p}OUT:y0")["version"] == "1"
    scrape = _metrics(ioc)
    assert 'mlioc_model_reloads_total{model="lin",result="rejected"} 5.0' in scrape
    # A rejected version is not retried on every scan...
    assert sum(1 for e in store.events() if e["action"] == "rejected") == len(CORRUPTIONS)
    # ... and a good version after them is served again.
    store.write_pointer("champion", publish(store, tmp_path, 4.0))
    out.wait_for(lambda u: u.value == pytest.approx(4.0), timeout=5)


def _metrics(ioc) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{ioc.ports.metrics}/metrics", timeout=5) as r:
        return r.read().decode()


def test_challenger_promote_rollback_from_ca_and_pva_survive_a_restart(setup, tmp_path, launch, ca, pva):
    store, config, p = setup
    n2 = publish(store, tmp_path, 2.0, "challenger")
    cfg = config()
    ioc = launch.ioc(cfg)
    client = pva(ioc)
    ca.monitor(f"{p}CHALLENGER").wait_for(lambda u: u.value == str(n2))
    shadow = ca.monitor(f"{p}CHALLENGER:OUT:y0")
    shadow.wait_for(lambda u: u.value == pytest.approx(2.0))
    assert client.get(f"{p}CHALLENGER:OUT:y0")["version"] == str(n2)
    mad = ca.monitor(f"{p}CHALLENGER:MAD:y0").wait_for(lambda u: u.value == pytest.approx(1.0), timeout=5)
    assert mad.severity == 0
    assert ca.get(f"{p}OUT:y0") == pytest.approx(1.0)  # the champion is still what the machine gets

    champion = ca.monitor(f"{p}CHAMPION")
    mark = champion.mark()
    ca.put(f"{p}PROMOTE", 1)  # put with completion: returns once the promotion is done
    champion.wait_for(lambda u: u.value == str(n2), since=mark)
    assert ca.get(f"{p}CHALLENGER") == ""
    assert ca.get(f"{p}OUT:y0") == pytest.approx(2.0)
    assert ca.get(f"{p}PROMOTE") == 0
    assert (store.champion(), store.challenger()) == (n2, None)

    mark = champion.mark()
    client.put(f"{p}ROLLBACK", 1)
    champion.wait_for(lambda u: u.value == "1", since=mark)
    assert ca.get(f"{p}OUT:y0") == pytest.approx(1.0)
    assert store.champion() == 1

    # Repeated rollbacks walk back: 1 -> 3 -> 4 by pushes, then ROLLBACK twice returns 3, then 1.
    n3, n4 = publish(store, tmp_path, 3.0, "champion"), None
    champion.wait_for(lambda u: u.value == str(n3))
    n4 = publish(store, tmp_path, 4.0, "champion")
    champion.wait_for(lambda u: u.value == str(n4))
    for expected in (n3, 1):
        mark = champion.mark()
        ca.put(f"{p}ROLLBACK", 1)
        champion.wait_for(lambda u, e=expected: u.value == str(e), since=mark)

    actions = [e for e in store.events() if e["action"] in ("promote", "rollback")]
    assert [(e["action"], e["from_version"], e["to_version"]) for e in actions] == [
        ("promote", 1, n2), ("rollback", n2, 1), ("rollback", n4, n3), ("rollback", n3, 1)]
    assert actions[0]["protocol"] == "ca" and actions[1]["protocol"] == "pva"
    assert all(e["user"] and e["host"] for e in actions)
    assert "ROLLBACK" in ioc.output() and "PROMOTE" in ioc.output()

    ioc.stop()
    again = launch.ioc(cfg)
    assert ca.monitor(f"{p}CHAMPION").wait_for(lambda u: u.value == "1")
    assert again.proc.poll() is None


def test_actions_that_cannot_be_done_are_refused_with_a_reason(setup, launch, ca, pva):
    store, config, p = setup
    ioc = launch.ioc(config())
    client = pva(ioc)
    ca.monitor(f"{p}CHAMPION").wait_for(lambda u: u.value == "1")
    with pytest.raises(Exception, match="rollback refused: no earlier champion"):
        client.put(f"{p}ROLLBACK", 1)
    assert ca.get(f"{p}MESSAGE").startswith("rollback refused: no earlier champion")
    with pytest.raises(Exception, match="promote refused: no challenger"):
        client.put(f"{p}PROMOTE", 1)
    assert ca.get(f"{p}CHAMPION") == "1" and ca.get(f"{p}ROLLBACK") == 0
    refused = [e["action"] for e in store.events() if e["action"].endswith("-refused")]
    assert refused == ["rollback-refused", "promote-refused"]
    assert ioc.proc.poll() is None


@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_a_refused_action_is_audited_as_refused_with_the_reason(setup, tmp_path, launch, ca, pva, protocol):
    store, config, p = setup
    ioc = launch.ioc(config())
    ca.monitor(f"{p}CHAMPION").wait_for(lambda u: u.value == "1")
    if protocol == "ca":
        ca.put(f"{p}ROLLBACK", 1)
    else:
        with pytest.raises(Exception, match="rollback refused"):
            pva(ioc).put(f"{p}ROLLBACK", 1)
    line = ioc.wait_for_line(f"put {p}ROLLBACK")
    assert f"({protocol} " in line and "refused: rollback refused: no earlier champion" in line
    ca.put(f"{p}RELOAD", 1)  # an action that succeeds: audited as accepted once it is done
    assert "accepted" in ioc.wait_for_line(f"put {p}RELOAD")
    audit = [json.loads(x) for x in (tmp_path / ".mlioc-state" / "audit.jsonl").read_text().splitlines()]
    assert [(a["pv"], a["accepted"]) for a in audit] == [(f"{p}ROLLBACK", False), (f"{p}RELOAD", True)]
    assert audit[0]["reason"] == "rollback refused: no earlier champion to roll back to"
    assert audit[0]["protocol"] == protocol and audit[0]["user"] and audit[0]["host"]


def test_audit_lines_that_cannot_be_written_raise_an_alarm(setup, tmp_path, launch, ca, pva):
    store, config, p = setup
    state = tmp_path / ".mlioc-state"
    (state / "audit.jsonl").mkdir(parents=True)  # a directory where the audit file goes: every append fails
    ioc = launch.ioc(config())
    audit = ca.monitor(f"{p}AUDIT")
    audit.wait_for(lambda u: u.value == 0)
    ca.put(f"{p}ENABLE", 0)
    fault = audit.wait_for(lambda u: u.value == 1)
    assert fault.severity == 2  # MAJOR
    assert ca.get(f"{p}MESSAGE").startswith("audit: audit.jsonl: ")
    (state / "audit.jsonl").rmdir()
    mark = audit.mark()
    ca.put(f"{p}ENABLE", 1)
    audit.wait_for(lambda u: u.value == 0 and u.severity == 0, since=mark)
    assert json.loads((state / "audit.jsonl").read_text())["new"] == 1
    # The store's events.jsonl is part of the trail too.
    store.events_path.unlink()
    store.events_path.mkdir()
    mark = audit.mark()
    ca.put(f"{p}RELOAD", 1)
    audit.wait_for(lambda u: u.value == 1, since=mark)
    assert pva(ioc).get(f"{p}AUDIT")["alarm.message"].endswith("events.jsonl: Is a directory")
    store.events_path.rmdir()
    mark = audit.mark()
    ca.put(f"{p}RELOAD", 1)
    audit.wait_for(lambda u: u.value == 0, since=mark)


def test_reload_pv_rescans_now_and_retries_a_rejected_version(setup, tmp_path, launch, ca):
    store, config, p = setup
    # A slow poll: only RELOAD can make the IOC look before a minute has passed.
    ioc = launch.ioc(config(store_poll_s=60))
    champion = ca.monitor(f"{p}CHAMPION")
    champion.wait_for(lambda u: u.value == "1")
    n = publish(store, tmp_path, 5.0, "champion")
    mark = champion.mark()
    ca.put(f"{p}RELOAD", 1)
    champion.wait_for(lambda u: u.value == str(n), since=mark, timeout=5)
    requested = [e for e in store.events() if e["action"] == "reload-request"]
    assert requested and requested[-1]["protocol"] == "ca"
    assert ioc.proc.poll() is None


def test_startup_with_a_broken_champion_falls_back_to_the_previous_one(setup, tmp_path, launch, ca):
    store, config, p = setup
    bad = _corrupt(store, tmp_path, "flip")
    store.write_pointer("champion", bad)  # history: [1]
    launch.ioc(config())
    assert ca.monitor(f"{p}CHAMPION").wait_for(lambda u: u.value == "1").value == "1"
    ca.monitor(f"{p}OUT:y0").wait_for(lambda u: u.value == pytest.approx(1.0) and u.severity == 0)
    assert ca.get(f"{p}STATUS", as_string=True) == "OK"
    # The first cycles (STATUS NO_MODEL -> OK) must not wipe out why an older version is served.
    assert ca.get(f"{p}MESSAGE") == f"v{bad} rejected; serving v1"
    assert store.champion() == bad  # the pointer is left for a human to fix
    assert [e["action"] for e in store.events()][-2:] == ["rejected", "fallback"]


@pytest.mark.parametrize("protocol", ["ca", "pva"])
def test_rollback_after_a_rejected_push_goes_back_from_what_is_served(setup, tmp_path, launch, ca, pva, protocol):
    """v2 served, a corrupt v3 pushed as champion and rejected: ROLLBACK goes from v2 (served) to v1, and
    the pointer ends up naming what is served."""
    store, config, p = setup
    ioc = launch.ioc(config())
    champion = ca.monitor(f"{p}CHAMPION")
    champion.wait_for(lambda u: u.value == "1")
    n2 = publish(store, tmp_path, 2.0, "champion")
    champion.wait_for(lambda u: u.value == str(n2))
    message = ca.monitor(f"{p}MESSAGE")
    mark = message.mark()
    bad = _corrupt(store, tmp_path, "flip")
    store.write_pointer("champion", bad)
    message.wait_for(lambda u: u.value.startswith(f"rejected v{bad}"), since=mark)
    assert ca.get(f"{p}CHAMPION") == str(n2) and store.champion() == bad
    mark = champion.mark()
    if protocol == "ca":
        ca.put(f"{p}ROLLBACK", 1)
    else:
        pva(ioc).put(f"{p}ROLLBACK", 1)  # raises if the IOC refuses
    champion.wait_for(lambda u: u.value == "1", since=mark, timeout=5)
    assert ca.get_full(f"{p}OUT:y0").value == pytest.approx(1.0)
    assert store.champion() == 1  # the pointer names what is served
    rollback = [e for e in store.events() if e["action"] == "rollback"][-1]
    assert (rollback["from_version"], rollback["to_version"]) == (n2, 1)
    assert not [e for e in store.events() if e["action"] == "rollback-refused"]
    assert ca.get(f"{p}MESSAGE").startswith("rolled back to v1")


@pytest.mark.slow
def test_100hz_across_50_reloads_misses_no_cycle_and_never_mixes_models(setup, tmp_path, launch, ca, pva):
    store, config, p = setup
    n2 = publish(store, tmp_path, 2.0)
    ioc = launch.ioc(config(trigger={"scan_hz": 100}, mdel=-1))
    client = pva(ioc)
    champion = ca.monitor(f"{p}CHAMPION")
    champion.wait_for(lambda u: u.value == "1")
    y0, y1 = client.monitor(f"{p}OUT:y0"), client.monitor(f"{p}OUT:y1")
    ca_y0 = ca.monitor(f"{p}OUT:y0")
    count = ca.pv(f"{p}COUNT", auto_monitor=False)
    time.sleep(0.5)  # let the first cycles flow before the measured window (not a synchronisation)
    c0, m0, t0 = count.get(use_monitor=False), ca_y0.mark(), time.monotonic()
    for i in range(50):
        target = n2 if i % 2 == 0 else 1
        mark = champion.mark()
        store.write_pointer("champion", target)
        champion.wait_for(lambda u, t=target: u.value == str(t), since=mark, timeout=5)
    reloads_done = time.monotonic()
    c1 = count.get(use_monitor=False)
    elapsed = time.monotonic() - t0
    got = ca_y0.mark() - m0
    families = parse(_metrics(ioc))
    missed = next(s.value for s in samples(families, "mlioc_missed_cycles_total") if s.labels["model"] == "lin")
    late = {s.labels["le"]: s.value for s in samples(families, "mlioc_cycle_lateness_seconds_bucket")}
    # "Missed" now means started more than one period (10 ms) after its tick, which a loaded 2-core machine
    # (other test runs beside this one) causes now and then, reloads or not. What a swap must never do:
    # stall the loop for many periods (every cycle started within 0.1 s of its tick), or make cycles late
    # systematically (at most 3 % late: a swap that blocked the loop each time would make 5-25 % late).
    assert late["+Inf"] - late["0.1"] == 0
    assert missed <= 0.03 * late["+Inf"]
    # COUNT is published at stats_hz (5 Hz): the window edges are uncertain by one stats period each.
    assert abs((c1 - c0) - 100 * elapsed) <= 2 * 100 / 5 + 2
    assert got >= (c1 - c0) - 2 * 100 / 5 - 2  # every cycle's update reached the CA client
    versions = {u.version for u in y0.updates}
    assert versions == {"1", str(n2)}
    for u in y0.updates:  # each value agrees with the version stamped on it: no cycle mixed two models
        assert u.value == pytest.approx({"1": 1.0, str(n2): 2.0}[u.version])
    for u in y1.updates:
        assert u.value == pytest.approx(1.0) and u.version in versions
    assert reloads_done - t0 < 60
    assert ioc.proc.poll() is None


def _metric(ioc, name: str, model: str = "lin") -> float:
    values = [s.value for s in samples(parse(_metrics(ioc)), name) if s.labels.get("model") == model]
    return values[0] if values else float("nan")


def test_a_slow_challenger_skips_shadow_cycles_and_the_ioc_still_stops_cleanly(setup, launch, ca):
    """A fast champion at 200 Hz with a challenger that takes tens of ms: shadow cycles are skipped (and
    counted) while one is in flight instead of queueing without bound, the champion keeps its rate, and
    SIGTERM exits 0 with no worker left inside ONNX Runtime."""
    import numpy as np

    store, config, p = setup
    xs = np.array([[1.0, 2.0], [3.0, -1.0]])
    slow = store.add_version(slow_model(2, 2, size=1024),
                             manifest_for(["a", "b"], ["y0", "y1"], test_inputs=xs, test_outputs=xs, model="lin"))
    store.write_pointer("challenger", slow)
    ioc = launch.ioc(config(trigger={"scan_hz": 200}))
    ca.monitor(f"{p}CHALLENGER:OUT:y0").wait_for(lambda u: u.value == pytest.approx(1.0) and u.severity == 0,
                                                 timeout=30)
    ca.monitor(f"{p}RATE").wait_for(lambda u: u.value > 150, timeout=10)  # the champion keeps its rate
    skipped = "mlioc_shadow_cycles_skipped_total"
    wait_until(lambda: _metric(ioc, skipped) > 100, 15, what="skipped shadow cycles counted",
               describe=lambda: str(_metric(ioc, skipped)))
    assert ca.get(f"{p}STATUS", as_string=True) == "OK"
    t0 = time.monotonic()
    assert ioc.stop() == 0
    assert time.monotonic() - t0 < 5
    assert "terminate called" not in ioc.output()
