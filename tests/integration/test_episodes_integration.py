"""Episodes end to end: a running IOC records while the simulator drifts twice; ``mlioc episodes`` finds both
stretches in what it recorded; a person rejects one and accepts the other; the next training dataset leaves the
rejected rows out and keeps the accepted ones.

Short windows (8 s, scores every 0.25 s) keep the drifts to seconds; the limits are the ones the IOC
calibrates from the shipped model's reference.
"""

from __future__ import annotations

import pytest
import yaml

from ioc.cli import main as mlioc
from ioc.core.configfile import load_config
from tests.conftest import write_yaml
from tests.support.demo import demo_inputs, demo_store_copy

pytest.importorskip("pandas", reason="needs the train extra (scripts/setup train)")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 8.0


def _drift(ca, drift, sim: str, knob: str) -> tuple[float, float]:
    """Drift one knob by 5 reference std devs until DRIFT is MAJOR, then back until it clears; (first alarm,
    cleared)."""
    mark = drift.mark()
    ca.put(f"{sim}{knob}_DRIFT", 5.0)
    drift.wait_for(lambda u: u.severity == 2, timeout=40, since=mark)
    raised = drift.wait_for(lambda u: u.severity >= 1, since=mark).timestamp  # MINOR on the way, or MAJOR
    mark = drift.mark()
    ca.put(f"{sim}{knob}_DRIFT", 0.0)
    cleared = drift.wait_for(lambda u: u.severity == 0, timeout=60, since=mark).timestamp
    # Quiet for more than a drift window: the next alarm is another episode.
    drift.wait_for(lambda u: u.severity == 0 and u.timestamp > cleared + WINDOW_S + 1, timeout=30, since=mark)
    return raised, cleared


def test_a_rejected_episode_is_left_out_of_training_and_an_accepted_one_is_kept(tmp_path, launch, ca, prefix,
                                                                                    capsys):
    from training.dataset import build_dataset, read_recordings
    from training.episodes import find_episodes
    from training.spec import load_spec

    s, p = f"{prefix}SIM:", f"{prefix}BEAM:"
    path = write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca], stats_hz: 2, metrics_port: 0}}
        simulator: {{prefix: "{s}", rate_hz: 10, seed: 5}}
        models:
          - name: beam
            prefix: "{p}"
            store: {demo_store_copy(tmp_path)}
            trigger: {{scan_hz: 10}}
            inputs: {demo_inputs(s, 2)}
            outputs:
              - {{name: sigma_x, units: mm}}
              - {{name: sigma_y, units: mm}}
              - {{name: loss, units: "%"}}
            drift: {{window_s: {WINDOW_S:g}, update_s: 0.25, raise_s: 0.5, clear_s: 1.5, correlation_s: 1.0}}
            record:
              dir: rec
              flush_s: 1
              targets: {{sigma_x: "ca://{s}SIGMA:X", sigma_y: "ca://{s}SIGMA:Y", loss: "ca://{s}LOSS"}}
            training:
              data: {{source: recorded}}
        """)
    sim = launch.sim(path)
    ioc = launch.ioc(path, sources=[sim])
    drift = ca.monitor(f"{p}DRIFT")
    drift.wait_for(lambda u: u.severity == 0, timeout=40)  # calibrated, in distribution
    first = _drift(ca, drift, s, "Q2:I")
    second = _drift(ca, drift, s, "RF:PHASE")
    assert ioc.stop() == 0  # SIGTERM: the recorder writes every buffered row and closes its file

    config = load_config(path)
    model = config.model("beam")
    rows = read_recordings(tmp_path / "rec")
    episodes = find_episodes(rows, model)
    assert len(episodes) == 2, [(e.id, e.start, e.end) for e in episodes]
    fault, normal = episodes
    # Found where the IOC served the alarm (the recorded severity follows the PV within a cycle or two).
    assert abs(fault.start - first[0]) < 0.5 and abs(normal.start - second[0]) < 0.5
    assert fault.worst_inputs[0][0] == "q2" and normal.worst_inputs[0][0] == "rf_phase"
    assert fault.drift_worst[0][0] == "q2" and fault.severity == "MAJOR"

    assert mlioc(["episodes", "list", str(path), "--model", "beam"]) == 0
    listed = capsys.readouterr().out
    assert fault.id in listed and normal.id in listed
    assert mlioc(["episodes", "label", str(path), fault.id, "reject", "--model", "beam", "--by", "op",
                  "--why", "Q2 readback stuck"]) == 0
    assert mlioc(["episodes", "label", str(path), normal.id, "accept", "--model", "beam", "--by", "op",
                  "--why", "new RF working point"]) == 0

    def rows_in(ds, ep) -> int:
        return int(((ds.time >= ep.rows_from) & (ds.time <= ep.end)).sum())

    labelled = build_dataset(model, load_spec(config, "beam"), "recorded")
    doc = yaml.safe_load(path.read_text())
    doc["models"][0]["training"]["filters"] = {"episodes": {"unlabelled": "include"}}
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "rec" / "labels.jsonl").rename(tmp_path / "labels.aside")  # the same rows, nobody's verdict
    everything = build_dataset(model, load_spec(load_config(path), "beam"), "recorded")
    assert rows_in(everything, fault) > 50 and rows_in(everything, normal) > 50
    assert rows_in(labelled, fault) == 0
    assert rows_in(labelled, normal) == rows_in(everything, normal)
    assert labelled.filtered["rejected episode"] == rows_in(everything, fault)
    assert [e["verdict"] for e in labelled.episodes["episodes"]] == ["reject", "accept"]
