"""Recording array models (issue 14.6): waveform/image inputs, array outputs and array targets are fixed-size
list columns of their dtype, in the file in progress and in the Parquet file; training reads them back as
the same numbers; a frame of another size or a cycle without outputs is a row of NaN, never a lost row."""

from __future__ import annotations

import math

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="needs the record extra (scripts/setup record)")
pytest.importorskip("pandas", reason="needs the train extra (scripts/setup train)")
import pyarrow.parquet as pq  # noqa: E402

from ioc.core.configfile import load_config  # noqa: E402
from ioc.core.layout import ModelStatus  # noqa: E402
from ioc.core.pvmodel import Severity  # noqa: E402
from ioc.edges import recorder as recorder_module  # noqa: E402
from ioc.edges.recorder import Recorder, column_names, read_stream_table  # noqa: E402
from ioc.runtime.runner import CycleRecord  # noqa: E402
from tests.support.configs import model, write_config  # noqa: E402
from training.dataset import build_dataset  # noqa: E402
from training.spec import load_spec  # noqa: E402

H, W, N = 4, 6, 8  # an image [4, 6] (float32), an orbit [8] (float64), a profile output [5] (float32)


def _config(tmp_path, **record):
    return load_config(write_config(tmp_path / "c.yaml", model(
        "R:", inputs=[{"name": "orbit", "shape": [N]}, {"name": "screen", "shape": [H, W], "dtype": "float32"}, "q"],
        outputs=[{"name": "p", "shape": [5], "dtype": "float32"}, "y"],
        record={"dir": "rec", "targets": {"p": "ca://T:P", "y": "ca://T:Y"}, **record},
        training={"kind": "regression", "hidden": [8], "epochs": 1, "seed": 0}))).model("m")


def _cycle(i: int, t: float, ok: bool = True) -> CycleRecord:
    orbit = np.arange(N) + 0.5 * i
    screen = (np.arange(H * W) * 0.25 + i).astype(np.float32)
    inputs = np.concatenate([orbit, screen.astype(np.float64), [float(i)]])
    outputs = np.concatenate([np.linspace(0, 1, 5) * i, [2.0 * i]]) if ok else None
    return CycleRecord(t, inputs, outputs, ModelStatus.OK if ok else ModelStatus.INPUT_INVALID, "1", 1e-3, "")


def test_arrays_are_fixed_size_list_columns_of_their_dtype_and_read_back_exactly(tmp_path):
    cfg = _config(tmp_path)
    rec = Recorder(cfg, cfg.record, lambda: [(0, t)] * 3)
    p_sink, y_sink = rec.target_sink(0), rec.target_sink(1)
    t0 = 1.8e9
    for i in range(50):
        t = t0 + 0.1 * i
        p_sink(np.linspace(0, 1, 5) * i + 0.01, Severity.NO_ALARM, t, True)
        y_sink(2.0 * i + 0.01, Severity.NO_ALARM, t, True)
        rec.listener(_cycle(i, t, ok=i != 7))
    # A frame of another size (31 orbit elements): the snapshot does not fit the layout; the row is kept.
    rec.listener(CycleRecord(t0 + 5.0, np.zeros(N - 1 + H * W + 1), None, ModelStatus.INPUT_INVALID, "1", 0.0,
                             "orbit: 7 elements, expected 8"))
    p_sink(np.zeros(4), Severity.NO_ALARM, t0 + 5.1, True)  # a measured profile of another size: missing
    rec.listener(_cycle(51, t0 + 5.1))
    rec.write_pending()
    stream = next((tmp_path / "rec").glob(".*inprogress"))
    in_progress = read_stream_table(stream)
    rec.close()
    (path,) = (tmp_path / "rec").glob("*.parquet")
    table = pq.read_table(path)
    assert table.schema == in_progress.schema and table.num_rows == in_progress.num_rows == 52
    assert table.column_names == column_names(cfg)
    types = {f.name: f.type for f in table.schema}
    assert types["in.orbit"] == pa.list_(pa.float64(), N)
    assert types["in.screen"] == pa.list_(pa.float32(), H * W)
    assert types["out.p"] == types["target.p"] == pa.list_(pa.float32(), 5)
    assert types["in.q"] == types["out.y"] == types["target.y"] == pa.float64()
    assert table.schema.metadata[b"mlioc.shapes"] == b"orbit=8,screen=4x6,p=5"
    rows = table.to_pydict()
    np.testing.assert_array_equal(rows["in.orbit"][3], np.arange(N) + 1.5)
    np.testing.assert_array_equal(rows["in.screen"][3], (np.arange(H * W) * 0.25 + 3).astype(np.float32))
    np.testing.assert_allclose(rows["out.p"][3], np.linspace(0, 1, 5) * 3, rtol=1e-6)
    assert all(math.isnan(v) for v in rows["out.p"][7]) and math.isnan(rows["out.y"][7])  # no outputs
    assert all(math.isnan(v) for v in rows["in.orbit"][50]) and rows["message"][50].startswith("orbit: 7")
    assert all(math.isnan(v) for v in rows["target.p"][51]) and rows["target.y"][51] == pytest.approx(0.01 + 98)
    assert (rec.rows_received, rec.rows_written, rec.rows_dropped) == (52, 52, 0)


def test_training_reads_the_recorded_arrays_and_targets_back(tmp_path):
    cfg = _config(tmp_path)
    config = load_config(tmp_path / "c.yaml")
    t0 = 1.8e9
    now = [t0]
    rec = Recorder(cfg, cfg.record, lambda: [(0, now[0])] * 3)
    p_sink, y_sink = rec.target_sink(0), rec.target_sink(1)
    for i in range(40):
        t = now[0] = t0 + 0.1 * i
        p_sink(np.linspace(0, 1, 5) * i + 0.01, Severity.NO_ALARM, t, True)
        y_sink(2.0 * i + 0.01, Severity.NO_ALARM, t, True)
        rec.listener(_cycle(i, t))
    rec.close()
    ds = build_dataset(cfg, load_spec(config, "m"), "recorded")
    assert len(ds) == 40 and ds.shapes == {"orbit": (N,), "screen": (H, W), "p": (5,)}
    assert ds.x.shape == (40, N + H * W + 1) and ds.y.shape == (40, 6)
    np.testing.assert_array_equal(ds.x[5, :N], np.arange(N) + 2.5)
    np.testing.assert_array_equal(ds.x[5, N:N + H * W], np.arange(H * W) * 0.25 + 5)
    np.testing.assert_allclose(ds.y[5], np.concatenate([np.linspace(0, 1, 5) * 5, [10.0]]) + 0.01, rtol=1e-6)


def test_the_buffers_of_an_image_model_are_bounded_in_bytes(tmp_path, monkeypatch):
    """A 512x512 image is 2 MB a row as float64: 500,000 rows of retry backlog would be a terabyte."""
    cfg = load_config(write_config(tmp_path / "c.yaml", model(
        "R:", inputs=[{"name": "cam", "shape": [512, 512], "dtype": "float32"}], record={"dir": "rec"}))).model("m")
    rec = Recorder(cfg, cfg.record)
    row = 512 * 512 * 8
    assert rec.flush_rows * row <= recorder_module.FLUSH_BYTES
    assert rec.row_group_rows * row <= recorder_module.ROW_GROUP_BYTES
    assert rec.max_backlog >= 10 and rec.max_backlog * row <= recorder_module.MAX_BACKLOG_BYTES
    small = _config(tmp_path)
    assert Recorder(small, small.record).max_backlog == recorder_module.MAX_BACKLOG
