"""Episodes from recorder-written files: found where DRIFT/ANOMALY alarmed, labelled (append-only, the latest
wins, a colleague's verdict is not overruled silently), honoured by training, and part of the digest.

The rows are written by the IOC's own :class:`ioc.edges.recorder.Recorder` from real DRIFT / DRIFT:WORST PVs
of the PV model, exactly as a running IOC records them.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("pyarrow", reason="needs the train extra (scripts/setup train)")

from ioc.cli import main as mlioc  # noqa: E402
from ioc.core.configfile import load_config  # noqa: E402
from ioc.core.layout import ModelNames, ModelStatus, model_pv_specs  # noqa: E402
from ioc.core.pvmodel import PVDatabase, Severity  # noqa: E402
from ioc.edges.recorder import Recorder, column_names, recorded_scores  # noqa: E402
from ioc.runtime.runner import CycleRecord  # noqa: E402
from tests.support.configs import model, write_config  # noqa: E402
from training.dataset import build_dataset, read_recordings  # noqa: E402
from training.episodes import EpisodeError, add_label, find_episodes, read_labels  # noqa: E402
from training.spec import load_spec  # noqa: E402

T0 = 1.8e9  # 2027-01-15T08:00:00Z
WINDOW_S = 20.0


def _config(tmp_path, unlabelled: str = "exclude"):
    path = write_config(tmp_path / "c.yaml", model(
        "E:", name="m", inputs=["a", "b"], outputs=["y"], trigger={"scan_hz": 1},
        drift={"window_s": WINDOW_S, "rate_hz": 1},
        record={"dir": "rec", "targets": {"y": "ca://X:Y"}},
        training={"filters": {"episodes": {"unlabelled": unlabelled}}}))
    config = load_config(path)
    return path, config, config.model("m")


def _record(tmp_path, m, alarms: dict[int, tuple[int, str]], n: int = 600) -> None:
    """n rows at 1 Hz; ``alarms`` maps a row to (DRIFT severity, worst input) from that row on (until the next)."""
    db = PVDatabase()
    for spec in model_pv_specs(m):
        db.add(spec)
    names = ModelNames(m.prefix)
    drift, worst = db[names.drift], db[names.drift_worst]
    rec = Recorder(m, m.record, lambda: [(0, now), (0, now)], [drift], worst)
    sink = rec.target_sink(0)
    severity, name = 0, ""
    rng = np.random.default_rng(0)
    for i in range(n):
        now = T0 + i
        severity, name = alarms.get(i, (severity, name))
        drift.post(0.5 + severity, now, severity=severity)
        worst.post(name, now)
        a = rng.normal() + (4.0 if severity else 0.0)  # input a really moved while it alarmed
        b = rng.normal()
        sink(2 * a + b, Severity.NO_ALARM, now, True)
        rec.listener(CycleRecord(now, np.array([a, b]), np.array([2 * a + b]), ModelStatus.OK, "1", 0.0, ""))
    rec.close()


def test_the_recorder_writes_the_drift_reading_of_every_cycle(tmp_path):
    _, _, m = _config(tmp_path)
    assert recorded_scores(m) == [("drift", "E:DRIFT")]
    _record(tmp_path, m, {100: (2, "a"), 150: (0, "")}, n=200)
    df = read_recordings(tmp_path / "rec")
    assert list(df.columns) == column_names(m)
    assert df["score_sev.drift"].tolist()[99:101] == [0, 2] and df["drift_worst"][120] == "a"


def test_alarmed_stretches_become_episodes_with_a_stable_id(tmp_path):
    _, _, m = _config(tmp_path)
    # MAJOR at 100..199 with a 15 s dip at 130 (merged: shorter than the drift window); MINOR again at 400..419
    # (apart: more than a window later).
    _record(tmp_path, m, {100: (2, "a"), 130: (0, ""), 145: (2, "a"), 200: (0, ""), 400: (1, "b"), 420: (0, "")})
    episodes = find_episodes(read_recordings(tmp_path / "rec"), m)
    assert [e.id for e in episodes] == ["m-20270115T080140Z", "m-20270115T080640Z"]
    first, second = episodes
    assert (first.start, first.end, first.severity, first.signals) == (T0 + 100, T0 + 199, "MAJOR", ("DRIFT",))
    assert first.rows_from == T0 + 100 - WINDOW_S and first.rows == 100 + int(WINDOW_S)
    assert first.worst_inputs[0][0] == "a" and first.worst_inputs[0][1] > 2  # it moved ~4 std devs
    assert first.drift_worst == [("a", 1.0)]
    assert (second.severity, second.alarmed_rows) == ("MINOR", 20)
    # More recorded later does not change the ids.
    assert find_episodes(read_recordings(tmp_path / "rec").iloc[:450], m)[1].id == second.id


def test_labels_are_appended_the_latest_wins_and_a_colleague_is_not_overruled_silently(tmp_path):
    _, _, m = _config(tmp_path)
    _record(tmp_path, m, {100: (2, "a"), 200: (0, "")}, n=300)
    rec = tmp_path / "rec"
    (ep,) = find_episodes(read_recordings(rec), m)
    add_label(rec, ep, "reject", "alice", "magnet trip")
    with pytest.raises(EpisodeError, match=r"labelled reject by alice .* give --force"):
        add_label(rec, ep, "accept", "bob", "new optics")
    add_label(rec, ep, "accept", "alice", "changed my mind")  # one's own verdict may change
    add_label(rec, ep, "reject", "bob", "still a trip", force=True)
    add_label(rec, ep, "reject", "carol", "agree")  # the same verdict as the one in effect: no conflict
    with pytest.raises(EpisodeError, match=r"say why"):
        add_label(rec, ep, "accept", "carol", " ")
    history = read_labels(rec)
    assert [(x.verdict, x.by) for x in history] == [("reject", "alice"), ("accept", "alice"), ("reject", "bob"),
                                                    ("reject", "carol")]
    last = json.loads((rec / "labels.jsonl").read_text().splitlines()[-2])
    assert last["forced"] and last["previous"]["by"] == "alice" and last["rows"] == ep.rows


def test_training_drops_rejected_keeps_accepted_and_the_labels_change_the_digest(tmp_path):
    path, config, m = _config(tmp_path)
    spec = load_spec(config, "m")
    _record(tmp_path, m, {100: (2, "a"), 200: (0, ""), 400: (1, "b"), 420: (0, "")})
    rec = tmp_path / "rec"
    first, second = find_episodes(read_recordings(rec), m)

    def rows_of(ds, ep):
        return int(((ds.time >= ep.rows_from) & (ds.time <= ep.end)).sum())

    unlabelled = build_dataset(m, spec, "recorded")
    assert rows_of(unlabelled, first) == rows_of(unlabelled, second) == 0  # default: unlabelled excluded
    assert unlabelled.filtered["unlabelled episode (filters.episodes.unlabelled: exclude)"] == first.rows + second.rows
    add_label(rec, first, "reject", "alice", "magnet trip")
    add_label(rec, second, "accept", "alice", "new working point")
    labelled = build_dataset(m, spec, "recorded")
    assert rows_of(labelled, first) == 0 and rows_of(labelled, second) == second.rows
    assert labelled.filtered == {"rejected episode": first.rows}
    assert labelled.digest != unlabelled.digest
    assert [e["verdict"] for e in labelled.episodes["episodes"]] == ["reject", "accept"]
    # Same rows, another verdict history: another digest (the labels are part of the dataset).
    add_label(rec, second, "accept", "alice", "new working point, confirmed")
    assert build_dataset(m, spec, "recorded").digest != labelled.digest
    # include: unlabelled episodes are trained on (rejected ones still never).
    (tmp_path / "inc").mkdir()
    _, config2, _ = _config(tmp_path / "inc", "include")
    add_label(rec, second, "reject", "alice", "on second thoughts, a fault")
    (rec / "labels.jsonl").write_text((rec / "labels.jsonl").read_text().splitlines()[0] + "\n")  # only first's
    included = build_dataset(m, load_spec(config2, "m"), str(rec))
    assert rows_of(included, second) == second.rows and rows_of(included, first) == 0


def test_the_cli_lists_shows_with_a_plot_and_refuses_bad_input(tmp_path, capsys):
    path, _, m = _config(tmp_path)
    _record(tmp_path, m, {100: (2, "a"), 200: (0, "")}, n=300)
    base = ["episodes"]
    assert mlioc([*base, "list", str(path), "--model", "m"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"m-20270115T080140Z .* 1m39s MAJOR +DRIFT +a \d\.\d sd, b 0\.\d sd +-$", out, re.M), out
    png = tmp_path / "ep.png"
    assert mlioc([*base, "show", str(path), "m-20270115T080140Z", "--model", "m", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert mlioc([*base, "label", str(path), "m-20270115T080140Z", "reject", "--model", "m", "--by", "alice",
                  "--why", "trip"]) == 0
    assert mlioc([*base, "label", str(path), "m-20270115T080140Z", "accept", "--model", "m", "--by", "bob",
                  "--why", "x"]) == 1
    assert "give --force" in capsys.readouterr().err
    assert mlioc([*base, "label", str(path), "m-20990101T000000Z", "accept", "--model", "m", "--why", "x"]) == 1
    assert "no episode 'm-20990101T000000Z'" in capsys.readouterr().err
    # The recordings are gone: the label is kept, and labelling it again says why not.
    for f in (tmp_path / "rec").glob("*.parquet"):
        f.unlink()
    _record(tmp_path, m, {}, n=10)
    assert mlioc([*base, "label", str(path), "m-20270115T080140Z", "accept", "--model", "m", "--why", "x"]) == 1
    assert "its recordings are gone" in capsys.readouterr().err
    assert mlioc([*base, "list", str(path), "--model", "m"]) == 0
    assert "labelled reject by alice, but its recordings are gone" in capsys.readouterr().out
    assert len(read_labels(tmp_path / "rec")) == 1  # nothing lost


def test_a_run_on_labelled_recordings_logs_the_labels_and_reproduce_restores_them(tmp_path):
    pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")
    import mlflow

    from training.pipeline import Options, run
    from training.reproduce import reproduce

    _, config, m = _config(tmp_path)
    _record(tmp_path, m, {100: (2, "a"), 200: (0, ""), 400: (1, "b"), 420: (0, "")})
    first, second = find_episodes(read_recordings(tmp_path / "rec"), m)
    add_label(tmp_path / "rec", first, "reject", "alice", "trip")
    add_label(tmp_path / "rec", second, "accept", "alice", "new point")
    spec = load_spec(config, "m")
    import dataclasses

    spec = dataclasses.replace(spec, epochs=3, hidden=(8,))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run(config, "m", spec, Options(data="recorded", tracking_uri=uri))
    tags = mlflow.MlflowClient(uri).get_run(outcome.run_id).data.tags
    assert (tags["mlioc.episodes.reject"], tags["mlioc.episodes.accept"], tags["mlioc.episodes.unlabelled"]) == \
        ("1", "1", "0")
    assert tags["mlioc.dataset.digest"] == outcome.dataset.digest
    report = reproduce(outcome.run_id, tracking_uri=uri)  # the digest includes the labels: restored from the run
    assert report.passed and report.digest == outcome.dataset.digest


def test_a_drift_run_trains_on_the_unlabelled_drift_episode_but_never_on_a_rejected_one(tmp_path):
    """The retraining loop's drift run (``--reference-since``) exists to learn the new regime, which is the
    DRIFT episode nobody has labelled yet; a person's reject still wins."""
    pytest.importorskip("torch", reason="needs the train extra (scripts/setup train)")
    import dataclasses

    import mlflow

    from training.pipeline import Options, run

    _, config, m = _config(tmp_path)
    _record(tmp_path, m, {100: (2, "a"), 200: (0, ""), 400: (1, "b"), 420: (0, "")})
    first, second = find_episodes(read_recordings(tmp_path / "rec"), m)
    add_label(tmp_path / "rec", first, "reject", "alice", "trip")
    spec = dataclasses.replace(load_spec(config, "m"), epochs=2, hidden=(8,))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    drift = run(config, "m", spec, Options(data="recorded", tracking_uri=uri, reference_since=second.start))
    times = drift.dataset.time
    assert ((times >= second.rows_from) & (times <= second.end)).sum() == second.rows  # the new regime: kept
    assert ((times >= first.rows_from) & (times <= first.end)).sum() == 0  # rejected: never
    assert mlflow.MlflowClient(uri).get_run(drift.run_id).data.tags["mlioc.episodes.unlabelled_policy"] == "include"
    # The flag still decides when given; a run that is not a drift run keeps the configured policy.
    for options in (Options(data="recorded", tracking_uri=uri, reference_since=second.start,
                            unlabelled_episodes="exclude"), Options(data="recorded", tracking_uri=uri)):
        other = run(config, "m", spec, options).dataset
        assert ((other.time >= second.rows_from) & (other.time <= second.end)).sum() == 0
