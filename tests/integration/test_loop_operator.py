"""An operator's RETRAIN and a manual promotion, through the running simulator, IOC and watcher.

`caput $(P)RETRAIN 1` (pyepics) writes a request into the store; while it waits a second one is
refused (p4p sees the reason); the watcher trains on the recording and the new version is served as
the challenger; PROMOTE:READY says it has earned it, and in manual mode nothing happens until the
operator writes PROMOTE.
"""

from __future__ import annotations

import getpass
import math

import pytest

from tests.support.configs import write_config
from tests.support.loop import (
    events,
    loop_model,
    show_logs,  # noqa: F401 - the fixture
    start_watcher,
    status,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("show_logs"),
              pytest.mark.timeout(400)]



def test_operator_retrain_then_manual_promotion(tmp_path, launch, ca, pva, prefix):
    sim, p = f"{prefix}SIM:", f"{prefix}BEAM:"
    retrain = {"on_drift_s": None, "cooldown_s": 600, "timeout_s": 240, "window_s": 600, "promote": "manual",
               "margin": -0.99, "min_samples": 30, "max_hours": 1, "poll_s": 0.2}
    config = write_config(tmp_path / "loop.yaml", loop_model(tmp_path, p, sim, retrain),
                          ioc={"metrics_port": 0, "stats_hz": 2, "store_poll_s": 0.2},
                          simulator={"prefix": sim, "rate_hz": 10, "seed": 5})
    store = tmp_path / "beam-store"
    sim_proc = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim_proc])
    state, message = ca.monitor(f"{p}RETRAIN:STATUS"), ca.monitor(f"{p}RETRAIN:MESSAGE")
    ready, champion, challenger = (ca.monitor(f"{p}{n}") for n in ("PROMOTE:READY", "CHAMPION", "CHALLENGER"))
    state.wait_for(lambda u: u.value == 0, timeout=10)
    ca.monitor(f"{p}COUNT").wait_for(lambda u: u.value >= 150, timeout=40)  # something is recorded

    # the operator asks; the IOC records who and shows REQUESTED (no watcher is running yet)
    assert ca.put(f"{p}RETRAIN", 1) == 1
    state.wait_for(lambda u: u.value == 1, timeout=10)
    me = getpass.getuser()
    assert message.wait_for(lambda u: u.value == f"operator by {me}@127.0.0.1", timeout=10)
    request = events(store, "retrain-request")[-1]
    assert (request["user"], request["host"], request["protocol"]) == (me, "127.0.0.1", "ca")
    with pytest.raises(Exception, match="retrain refused: already requested"):
        pva(ioc).put(f"{p}RETRAIN", 1)
    assert events(store, "retrain-refused")[-1]["protocol"] == "pva"
    assert "put" in ioc.output() and f"{p}RETRAIN" in ioc.output()  # the audit log has both writes

    watcher = start_watcher(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    launch.started.append(watcher)
    state.wait_for(lambda u: u.value == 2, timeout=30)  # RUNNING
    challenger.wait_for(lambda u: str(u.value) == "2", timeout=240)
    state.wait_for(lambda u: u.value == 4, timeout=60)  # DONE
    assert status(store)["trigger"] == "operator" and status(store)["requested_by"] == f"{me}@127.0.0.1"

    # the challenger's live error is served; after min_samples it is READY (margin -0.99: almost any challenger)
    mae = ca.monitor(f"{p}CHALLENGER:MAE:loss").wait_for(lambda u: u.severity < 3, timeout=30)
    assert math.isfinite(mae.value) and mae.value >= 0
    mark = champion.mark()
    ready.wait_for(lambda u: u.value == 1, timeout=60)
    assert any(e["action"] == "challenger-ready" and e["mode"] == "manual" for e in events(store))
    # manual: READY is advice; the champion stays until an operator promotes
    ca.monitor(f"{p}CHALLENGER:MAE:loss").wait_count(5, timeout=20)
    assert champion.updates[mark:] == [] and ca.get(f"{p}CHAMPION") == "1"
    assert not events(store, "promote")
    ca.put(f"{p}PROMOTE", 1)
    champion.wait_for(lambda u: str(u.value) == "2", timeout=20)
    promote = events(store, "promote")[-1]
    assert (promote["user"], promote["reason"]) == (me, "PROMOTE written")
    ready.wait_for(lambda u: u.value == 0, timeout=20)  # no challenger any more
