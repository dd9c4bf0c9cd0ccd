"""Datasets: time-respecting splits, filters, the content digest, reading the recorder's own files."""

from __future__ import annotations

import numpy as np
import pytest

pd = pytest.importorskip("pandas", reason="needs the train extra (scripts/setup train)")
pytest.importorskip("pyarrow", reason="needs the train extra (scripts/setup train)")

from ioc.core.configfile import load_config  # noqa: E402
from ioc.core.layout import ModelStatus  # noqa: E402
from ioc.core.pvmodel import Severity  # noqa: E402
from ioc.edges.recorder import Recorder  # noqa: E402
from ioc.runtime.runner import CycleRecord  # noqa: E402
from tests.conftest import write_yaml  # noqa: E402
from training.dataset import DatasetError, build_dataset, time_split  # noqa: E402
from training.spec import load_spec  # noqa: E402

CONFIG = """\
ioc: {{protocols: [ca], metrics_port: 0}}
models:
  - name: m
    prefix: "D:"
    store: store
    inputs:
      - {{name: a, range: [0, 100]}}
      - {{name: b}}
    outputs:
      - {{name: y}}
    record: {{dir: rec, targets: {{y: "ca://X:Y"}}}}
    training:
{training}
"""


def _setup(tmp_path, training: str = "      seed: 0"):
    config = load_config(write_yaml(tmp_path / "c.yaml", CONFIG.format(training=training)))
    return config, config.model("m"), load_spec(config, "m")


def _frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, n), rng.normal(size=n)
    t = 1.8e9 + np.arange(n) * 0.5
    return pd.DataFrame({"time": t[::-1], "a": a[::-1], "b": b[::-1], "y": (2 * a + b)[::-1]})  # unsorted


def test_split_respects_time_and_the_gap(tmp_path):
    config, model, spec = _setup(tmp_path, "      split: {val: 0.1, test: 0.2, gap_s: 3}")
    _frame().to_csv(tmp_path / "d.csv", index=False)
    ds = build_dataset(model, spec, str(tmp_path / "d.csv"))
    assert np.all(np.diff(ds.time) > 0)  # sorted by time whatever the file order
    split = time_split(ds, spec.split)
    assert split.train.time.max() < split.val.time.min() - 3 + 1e-9
    assert split.val.time.max() < split.test.time.min() - 3 + 1e-9
    assert len(split.test) == 40 and len(split.train) + len(split.val) < 160  # the gap dropped rows


def test_digest_depends_on_content_not_on_format(tmp_path):
    config, model, spec = _setup(tmp_path)
    df = _frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    a = build_dataset(model, spec, str(tmp_path / "d.csv"))
    b = build_dataset(model, spec, str(tmp_path / "d.parquet"))
    assert a.digest == b.digest
    df.loc[5, "b"] += 1e-9
    df.to_parquet(tmp_path / "e.parquet", index=False)
    assert build_dataset(model, spec, str(tmp_path / "e.parquet")).digest != a.digest


def test_filters_drop_what_they_say(tmp_path):
    training = """\
      filters:
        start: 1800000010
        max_severity: MINOR
        exclude: [{start: 1800000050, end: 1800000060, reason: study}]"""
    config, model, spec = _setup(tmp_path, training)
    df = _frame().sort_values("time").reset_index(drop=True)
    df["sev.a"] = 0
    df.loc[150, "sev.a"] = int(Severity.MAJOR)
    df.loc[151, "a"] = 1000.0  # outside the configured range [0, 100]
    df.loc[152, "y"] = np.nan
    df.to_parquet(tmp_path / "d.parquet", index=False)
    ds = build_dataset(model, spec, str(tmp_path / "d.parquet"))
    assert ds.filtered == {"before filters.start": 20, "excluded: study": 20, "severity worse than MINOR": 1,
                           "non-finite value": 1, "a outside its valid range": 1}
    assert len(ds) == 200 - 43
    assert not ((ds.time >= 1800000050) & (ds.time < 1800000060)).any()


def test_recorded_files_keep_one_row_per_measurement_of_one_moment(tmp_path):
    config, model, spec = _setup(tmp_path)
    rec = Recorder(model, model.record, lambda: states)
    sink = rec.target_sink(0)
    t0 = 1.8e9
    for i in range(100):
        t = t0 + i
        states = [(0, t), (0, t if i % 10 else t - 1.0)]  # every 10th row mixes two moments
        sink(3.0 * i, Severity.NO_ALARM, t if i % 7 else t - 0.5, True)  # every 7th target is stale
        for _ in range(2):  # a scan faster than the source records each snapshot twice
            rec.listener(CycleRecord(t, np.array([float(i), 1.0]), None, ModelStatus.NO_MODEL, "", 0.0, ""))
    rec.close()
    ds = build_dataset(model, spec, "recorded")
    mixed = {i for i in range(100) if i % 10 == 0}
    stale = {i for i in range(100) if i % 7 == 0}
    assert len(ds) == 100 - len(mixed | stale)
    assert ds.filtered["repeated snapshot"] == 100 - len(mixed | stale)
    np.testing.assert_array_equal(ds.y[:, 0], 3.0 * ds.x[:, 0])  # targets matched to their own inputs


def test_empty_and_missing_data_are_clear_errors(tmp_path):
    config, model, spec = _setup(tmp_path)
    with pytest.raises(DatasetError, match=r"recorded data directory .* does not exist"):
        build_dataset(model, spec, "recorded")
    (tmp_path / "rec").mkdir()
    with pytest.raises(DatasetError, match=r"no recorded files \(\*.parquet, or a file in progress"):
        build_dataset(model, spec, "recorded")
    pd.DataFrame({"a": [1.0], "b": [2.0]}).to_csv(tmp_path / "noy.csv", index=False)
    with pytest.raises(DatasetError, match="no column for output y"):
        build_dataset(model, spec, str(tmp_path / "noy.csv"))


def test_training_reads_the_rows_flushed_to_the_file_the_ioc_is_still_writing(tmp_path):
    """Issue 19.7: the nightly job runs while the IOC records (a daily file is in progress all day)."""
    config, model, spec = _setup(tmp_path)
    now = [1.8e9]
    rec = Recorder(model, model.record, lambda: [(0, now[0]), (0, now[0])])
    sink = rec.target_sink(0)
    opened = tmp_path / "rec" / ".m-20270115T000000Z-1-001.inprogress"
    opened.touch()  # the IOC opened its file and has flushed nothing yet: say so, and what to do
    with pytest.raises(DatasetError, match=r"has not flushed a row to it yet .* try again shortly"):
        build_dataset(model, spec, "recorded")
    opened.unlink()
    for i in range(60):
        t = now[0] = 1.8e9 + i
        sink(3.0 * i, Severity.NO_ALARM, t, True)
        rec.listener(CycleRecord(t, np.array([float(i), 1.0]), None, ModelStatus.OK, "1", 0.0, ""))
    rec.write_pending()  # flushed, not closed: the IOC is still recording into this file
    assert not list((tmp_path / "rec").glob("*.parquet"))
    ds = build_dataset(model, spec, "recorded")
    assert sorted(ds.x[:, 0]) == [float(i) for i in range(60)]
    (entry,) = ds.source["files"]
    assert entry["in_progress"] and entry["rows"] == 60
