"""The watcher under trouble: a failing run, a hanging run (timeout), triggers during a run, a watcher
killed in the middle of a run. Real `mlioc watch` subprocesses and real `mlioc train` runs on a real
recording (the IOC's own recorder writing Parquet); requests are written into the store exactly as
the IOC writes them for `caput $(P)RETRAIN 1` (the IOC side is covered by test_loop_operator.py)."""

from __future__ import annotations

import os
import signal

import pytest

from ioc.core.configfile import load_config
from ioc.core.retrain_requests import RequestBox, RetrainRequest
from tests.support.loop import (
    events,
    offline_loop,
    record_synthetic,
    show_logs,  # noqa: F401 - the fixture
    start_watcher,
    status,
)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("show_logs"),
              pytest.mark.timeout(300)]



def _setup(tmp_path, *, epochs: int, timeout_s: float = 240, record: bool = True):
    retrain = {"cooldown_s": 0, "timeout_s": timeout_s, "window_s": 36000, "poll_s": 0.2}
    config = offline_loop(tmp_path, epochs=epochs, retrain=retrain, record=record)
    return config, tmp_path / "beam-store", RequestBox(tmp_path / "beam-store")


def _request(box: RequestBox, who: str) -> RetrainRequest:
    request = RetrainRequest.new("operator", user=who, host="console", protocol="ca", reason="RETRAIN written")
    box.submit(request)
    return request


def _watch(tmp_path, config, processes, name="watch"):
    proc = start_watcher(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", name=name,
                         extra=("--flush-wait-s", "0"))
    processes.append(proc)
    return proc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_failing_run_is_reported_and_the_next_trigger_still_works(tmp_path, processes):
    config, store, box = _setup(tmp_path, epochs=3, record=False)  # nothing recorded yet: the run fails
    _watch(tmp_path, config, processes)
    _request(box, "alice")
    st = wait_until(lambda: status(store).get("state") == "FAILED" and status(store), timeout=120,
                    what="FAILED", describe=lambda: status(store))
    assert "recorded data directory" in st["message"] and st["requested_by"] == "alice@console"
    end = events(store, "retrain-end")[-1]
    assert end["ok"] is False and end["message"] == st["message"]
    assert box.pending() == []  # taken

    record_synthetic(load_config(config).models[0], rows=600)
    _request(box, "bob")
    st = wait_until(lambda: status(store).get("state") == "DONE" and status(store), timeout=180,
                    what="DONE", describe=lambda: status(store))
    assert st["version"] == 2 and st["requested_by"] == "bob@console" and st["run_id"]
    assert (store / "challenger").read_text().strip() == "2"  # entered as the challenger, never champion
    assert (store / "champion").read_text().strip() == "1"
    assert events(store, "push")[-1]["pointer"] == "challenger"


def test_a_hanging_run_is_killed_a_trigger_during_it_is_remembered_once(tmp_path, processes):
    config, store, box = _setup(tmp_path, epochs=1_000_000, timeout_s=25)
    watcher = _watch(tmp_path, config, processes)
    first = _request(box, "alice")
    st = wait_until(lambda: status(store).get("run_pid") and status(store), timeout=60, what="the run started")
    run_pid = st["run_pid"]
    second, third = _request(box, "bob"), _request(box, "carol")
    wait_until(lambda: events(store, "retrain-dropped"), timeout=10, what="the third request dropped")
    dropped = events(store, "retrain-dropped")
    assert [e["request_id"] for e in dropped] == [third.id]
    assert [r.id for _, r in box.pending()] == [second.id]  # remembered (still shown as waiting by the IOC)
    assert status(store)["request_id"] == first.id

    st = wait_until(lambda: status(store).get("request_id") == second.id and status(store), timeout=90,
                    what="the remembered request runs after the timeout", describe=lambda: status(store))
    timeouts = events(store, "retrain-timeout")
    ends = events(store, "retrain-end")
    assert len(timeouts) == 1 and ends[0]["ok"] is False and "timed out after 25 s: killed" in ends[0]["message"]
    assert not _alive(run_pid)  # the whole process group was killed
    assert st["state"] == "RUNNING"
    # a watcher stopped (SIGTERM, e.g. systemctl stop) ends its run and says so: nothing stays RUNNING
    wait_until(lambda: status(store).get("run_pid"), timeout=60, what="the second run started")
    second_pid = status(store)["run_pid"]
    watcher.stop()
    assert status(store)["state"] == "FAILED" and status(store)["message"] == "watcher stopped during the run"
    assert not _alive(second_pid)
    assert box.pending() == []


def test_a_watcher_killed_mid_run_leaves_no_stuck_running(tmp_path, processes):
    config, store, box = _setup(tmp_path, epochs=1_000_000, timeout_s=600)
    watcher = _watch(tmp_path, config, processes)
    _request(box, "alice")
    st = wait_until(lambda: status(store).get("run_pid") and status(store), timeout=60, what="the run started")
    watcher.proc.send_signal(signal.SIGKILL)
    watcher.proc.wait(10)
    assert status(store)["state"] == "RUNNING"  # what a crash leaves behind
    assert _alive(st["run_pid"])  # ... and the orphaned run

    _watch(tmp_path, config, processes, name="watch-2")
    st2 = status(store)
    assert st2["state"] == "FAILED" and st2["message"] == "watcher restarted during the run"
    wait_until(lambda: not _alive(st["run_pid"]), timeout=10, what="the orphaned run killed")
    assert events(store, "retrain-end")[-1]["message"] == "watcher restarted during the run"
    _request(box, "bob")  # the new watcher takes new requests
    wait_until(lambda: status(store).get("requested_by") == "bob@console" and status(store)["state"] == "RUNNING",
               timeout=30, what="the next request runs")
