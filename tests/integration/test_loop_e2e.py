"""The continual-learning loop end to end, on the demo model through the running simulator and IOC.

Real parts: `mlioc sim`, `mlioc serve` and `mlioc watch` as subprocesses on loopback, the watcher's CA
monitor of DRIFT, the recorder's Parquet files, `mlioc train` runs (real torch, few epochs) started
by the watcher, a sqlite MLflow store, pyepics as the operator's client. Timers are short (an 8 s
drift window, 15 s of MAJOR before a retrain) so each test takes about a minute or two.
"""

from __future__ import annotations

import math

import pytest

from tests.support.configs import write_config
from tests.support.demo import shipped_next_version
from tests.support.loop import (
    events,
    loop_model,
    show_logs,  # noqa: F401 - the fixture
    start_watcher,
    status,
)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("show_logs"),
              pytest.mark.timeout(420)]

NEW = shipped_next_version()  # the version a retrain pushes into a copy of the shipped store (models/beam)


def _loop(tmp_path, launch, prefix, retrain):
    sim, p = f"{prefix}SIM:", f"{prefix}BEAM:"
    config = write_config(tmp_path / "loop.yaml", loop_model(tmp_path, p, sim, retrain),
                          ioc={"metrics_port": 0, "stats_hz": 2, "store_poll_s": 0.2},
                          simulator={"prefix": sim, "rate_hz": 10, "seed": 4}, protocols=("ca",))
    sim_proc = launch.sim(config)
    ioc = launch.ioc(config, sources=[sim_proc])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    watcher = start_watcher(config, tracking_uri=uri)
    launch.started.append(watcher)
    return config, sim, p, tmp_path / "beam-store", uri, watcher, ioc


def test_drift_retrains_on_the_recorded_window_and_auto_promotes_then_drift_clears(tmp_path, launch, ca, prefix):
    retrain = {"on_drift_s": 15, "cooldown_s": 600, "timeout_s": 240, "window_s": 600, "history_s": 10,
               "promote": "auto", "margin": 0.2, "min_samples": 50, "max_hours": 1, "poll_s": 0.2}
    config, sim, p, store, uri, watcher, ioc = _loop(tmp_path, launch, prefix, retrain)
    drift = ca.monitor(f"{p}DRIFT")
    champion = ca.monitor(f"{p}CHAMPION")
    challenger = ca.monitor(f"{p}CHALLENGER")
    retrain_status = ca.monitor(f"{p}RETRAIN:STATUS")
    chall_mae, champ_mae = ca.monitor(f"{p}CHALLENGER:MAE:sigma_y"), ca.monitor(f"{p}MAE:sigma_y")
    drift.wait_for(lambda u: u.severity == 0 and math.isfinite(u.value), timeout=40)
    ca.monitor(f"{p}COUNT").wait_for(lambda u: u.value >= 150, timeout=40)  # clean history is recorded

    ca.put(f"{sim}Q2:I_DRIFT", 5.0)
    drift.wait_for(lambda u: u.severity == 2, timeout=40)
    # MAJOR held for on_drift_s: the watcher retrains (RUNNING), on the recorded window
    retrain_status.wait_for(lambda u: u.value == 2, timeout=60)
    challenger.wait_for(lambda u: str(u.value) == str(NEW), timeout=240)
    retrain_status.wait_for(lambda u: u.value == 4, timeout=60)  # DONE (the run ends after its push)
    st = status(store)
    assert st["state"] == "DONE" and st["trigger"] == "drift" and st["version"] == NEW, st
    start = next(e for e in events(store, "retrain-start"))
    assert start["trigger"] == "drift" and start["reference_since"] > start["start"]

    # its live error was served beside the champion's while it ran in shadow, far better on the drifted machine
    # (its first values rest on a handful of truth pairs: judge it once it is below the champion's, as the
    # promotion policy does over min_samples)
    def champion_then(t: float) -> float:
        return [u for u in champ_mae.updates if u.severity < 3 and u.timestamp <= t][-1].value

    mae = chall_mae.wait_for(lambda u: u.severity < 3 and 0 < u.value < champion_then(u.timestamp), timeout=60)
    assert mae.value < champion_then(mae.timestamp)
    # auto: promoted through the PROMOTE code path, audited as the policy
    champion.wait_for(lambda u: str(u.value) == str(NEW), timeout=60)
    promote = events(store, "promote")[-1]
    assert (promote["to_version"], promote["user"], promote["host"]) == (NEW, "mlioc", "auto-promote")
    assert promote["reason"].startswith("auto: ready: +")
    assert any(e["action"] == "challenger-ready" for e in events(store))
    # DRIFT clears on the new champion: its reference is the new regime
    mark = drift.mark()
    drift.wait_for(lambda u: u.severity == 0, timeout=60, since=mark)
    settled = drift.mark()
    drift.wait_count(settled + 60, timeout=40)  # 15 s of updates: the 8 s window has filled
    assert all(u.severity == 0 for u in drift.updates[settled:settled + 60])

    # MLflow: the run says why it happened and which data it came from; the IOC's decision is mirrored
    import mlflow

    client = mlflow.MlflowClient(uri)
    manifest_run = __import__("json").loads((store / "versions" / str(NEW) / "manifest.json").read_text())
    run_id = manifest_run["provenance"]["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.data.tags["mlioc.trigger"] == "drift"
    assert manifest_run["reference"]["source"].endswith("rows of the new regime")
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    lineage = next(d for d in inputs.values() if any(t.key == "mlioc.window" for t in d.tags))
    assert lineage.dataset.digest == manifest_run["provenance"]["dataset"]["digest"][:36]
    assert any(t.key == "mlioc.parent_digest" and t.value != "None" for t in lineage.tags)
    wait_until(lambda: "mlioc.ioc.promote" in client.get_run(run_id).data.tags, timeout=20,
               what="the promotion mirrored into MLflow")
    assert client.get_model_version_by_alias("beam", "champion").tags["store_version"] == str(NEW)
