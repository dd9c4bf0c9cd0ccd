"""The IOC's data recorder (ioc/edges/recorder.py): rows, rolling, flushing, the `record:` config key."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from ioc.core.layout import ModelStatus
from ioc.core.pvmodel import Severity
from ioc.edges.recorder import Recorder, column_names
from ioc.runtime.runner import CycleRecord
from tests.conftest import write_yaml

CONFIG = """\
ioc: {{protocols: [ca]}}
models:
  - name: m
    prefix: "R:"
    store: store
    inputs:
      - {{name: a, units: A}}
      - {{name: b}}
    outputs:
      - {{name: y, units: mm}}
    record:
{record}
"""


def _config(tmp_path: Path, record: str):
    return load_config(write_yaml(tmp_path / "c.yaml", CONFIG.format(record=record)))


def _record(t: float, a: float, y: float | None, status=ModelStatus.OK) -> CycleRecord:
    return CycleRecord(t, np.array([a, 2 * a]), None if y is None else np.array([y]), status, "3", 1e-5, "")


def _read(directory: Path):
    files = sorted(directory.glob("*.parquet"))
    return files, [pq.read_table(f).to_pydict() for f in files]


def test_every_row_is_written_with_its_values_on_close(tmp_path):
    cfg = _config(tmp_path, "      {dir: rec, targets: {y: 'ca://X:Y'}}").model("m")
    assert cfg.record.dir == str((tmp_path / "rec").resolve())
    rec = Recorder(cfg, cfg.record, lambda: [(Severity.NO_ALARM, 5.0), (Severity.MINOR, 6.0)])
    rec.start()
    sink = rec.target_sink(0)
    t0 = 1_800_000_000.0
    for i in range(1000):
        sink(10.0 + i, Severity.NO_ALARM, t0 + i * 0.1, True)
        rec.listener(_record(t0 + i * 0.1, float(i), None if i % 10 == 0 else 0.5 * i,
                             ModelStatus.INPUT_INVALID if i % 10 == 0 else ModelStatus.OK))
    assert not list((tmp_path / "rec").glob("*.parquet")), "a file is visible before it is complete"
    rec.close()
    files, tables = _read(tmp_path / "rec")
    assert len(files) == 1 and not list((tmp_path / "rec").glob(".*inprogress"))
    t = tables[0]
    assert list(t) == column_names(cfg)
    assert len(t["time"]) == 1000
    assert t["in.a"][7] == 7.0 and t["in.b"][7] == 14.0
    assert t["in_sev.b"][7] == int(Severity.MINOR) and t["in_time.b"][7] == 6.0
    assert math.isnan(t["out.y"][10]) and t["status"][10] == "INPUT_INVALID"
    assert t["out.y"][11] == 5.5 and t["status"][11] == "OK" and t["version"][11] == "3"
    assert t["target.y"][11] == 21.0 and t["target_time.y"][11] == pytest.approx(t0 + 1.1)
    assert pq.read_schema(files[0]).metadata[b"mlioc.targets"] == b"y"


def test_hourly_roll_splits_at_the_hour_even_inside_one_batch(tmp_path):
    cfg = _config(tmp_path, "      {dir: rec, roll: hourly}").model("m")
    rec = Recorder(cfg, cfg.record)
    hour = 1_800_000_000.0 - (1_800_000_000.0 % 3600)
    times = [hour - 2.0, hour - 1.0, hour, hour + 1.0, hour + 3600.0]
    for t in times:
        rec.listener(_record(t, 1.0, 1.0))
    rec.close()  # never started: one synchronous flush
    files, tables = _read(tmp_path / "rec")
    assert [len(t["time"]) for t in tables] == [2, 2, 1]
    assert sorted(x for t in tables for x in t["time"]) == times


def test_size_roll_starts_a_new_file_when_max_mb_is_reached(tmp_path):
    cfg = _config(tmp_path, "      {dir: rec, roll: size, max_mb: 0.001, flush_s: 0.05}").model("m")
    rec = Recorder(cfg, cfg.record)
    rng = np.random.default_rng(0)
    for batch in range(3):
        for i in range(200):
            rec.listener(_record(1e9 + batch * 1000 + i, float(rng.normal()), float(rng.normal())))
        rec.write_pending()  # one row group of ~5 kB: over 1 kB, so the file is closed
    rec.close()
    files, tables = _read(tmp_path / "rec")
    assert len(files) == 3
    assert sum(len(t["time"]) for t in tables) == 600


def test_record_config_errors_name_the_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "      {dir: rec, rol: daily, targets: {z: 'ca://X'}}")
    text = "\n".join(err.value.problems)
    assert "c.yaml:12: models[0].record.rol: unknown key (did you mean 'roll'?)" in text
    assert "models[0].record.targets.z: not an output of this model" in text
    with pytest.raises(ConfigError, match="roll: expected one of daily, hourly, size"):
        _config(tmp_path, "      {dir: rec, roll: weekly}")


# ----------------------------------------------------------------------------- the file in progress


def _stream_of(directory: Path) -> Path:
    (path,) = directory.glob(".*.inprogress")
    return path


def test_rows_already_flushed_are_readable_while_the_file_is_in_progress(tmp_path):
    from ioc.edges.recorder import read_stream_table

    cfg = _config(tmp_path, "      {dir: rec}").model("m")
    rec = Recorder(cfg, cfg.record)
    for i in range(30):
        rec.listener(_record(1e9 + i, float(i), 1.0))
    rec.write_pending()
    for i in range(30, 50):
        rec.listener(_record(1e9 + i, float(i), 1.0))
    rec.write_pending()
    path = _stream_of(tmp_path / "rec")
    with open(path, "ab") as f:  # a batch the writer is in the middle of: readers stop before it
        f.write(b"\xff\xff\xff\xff\x80\x01\x00\x00partial")
    table = read_stream_table(path)
    assert table.num_rows == 50 and table.column("in.a").to_pylist() == [float(i) for i in range(50)]
    assert not list((tmp_path / "rec").glob("*.parquet"))


def test_a_file_left_in_progress_is_converted_by_the_next_recorder(tmp_path):
    cfg = _config(tmp_path, "      {dir: rec}").model("m")
    crashed = Recorder(cfg, cfg.record)
    for i in range(40):
        crashed.listener(_record(1e9 + i, float(i), 1.0))
    crashed.write_pending()  # ... and the process dies before closing the file
    for i in range(40, 45):
        crashed.listener(_record(1e9 + i, float(i), 1.0))  # never flushed: gone with the process
    with open(_stream_of(tmp_path / "rec"), "ab") as f:
        f.write(b"\xff\xff\xff\xff\x80")  # cut off in the middle of a write
    restarted = Recorder(cfg, cfg.record)
    restarted.start()
    for i in range(100, 110):
        restarted.listener(_record(1e9 + i, float(i), 1.0))
    restarted.close()
    files, tables = _read(tmp_path / "rec")
    assert not list((tmp_path / "rec").glob(".*inprogress"))
    assert sorted(x for t in tables for x in t["in.a"]) == [*map(float, range(40)), *map(float, range(100, 110))]
    assert pq.read_schema(files[0]).metadata[b"mlioc.model"] == b"m"


def test_roll_on_request_closes_the_file_in_progress_and_recording_goes_on(tmp_path, caplog):
    """What a retrain asks before it reads the recordings (ioc/edges/retrain.py): every row so far in a
    finished Parquet file, and the next rows in a new one."""
    cfg = _config(tmp_path, "      {dir: rec, flush_s: 60}").model("m")
    rec = Recorder(cfg, cfg.record)
    rec.start()
    t0 = 1_800_000_000.0
    for i in range(50):
        rec.listener(_record(t0 + i * 0.1, float(i), 0.5 * i))
    assert rec.roll().wait(timeout=10)
    files, tables = _read(tmp_path / "rec")
    assert "roll failed" not in caplog.text
    assert len(files) == 1 and len(tables[0]["time"]) == 50
    rec.listener(_record(t0 + 50 * 0.1, 50.0, 25.0))
    rec.close()
    files, tables = _read(tmp_path / "rec")
    assert sorted(len(t["time"]) for t in tables) == [1, 50]


def test_recording_does_not_import_pandas(tmp_path):
    """Issue 15: pyarrow's ``pa.array`` imports pandas on its first call when pandas is installed (the training
    extra brings it): ~45 MB of the demo IOC's RSS at its first flush. The recorder builds its columns from
    buffers instead; checked in a fresh interpreter (this one may have pandas from other tests)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tests.unit.test_recorder import _config, _record, _read
        tmp = Path({str(tmp_path)!r})
        cfg = _config(tmp, "      {{dir: rec}}").model("m")
        from ioc.edges.recorder import Recorder
        rec = Recorder(cfg, cfg.record)
        rec.start()
        for i in range(100):
            rec.listener(_record(1_800_000_000.0 + i, float(i), 0.5 * i))
        rec.close()
        assert "pandas" not in sys.modules, "the recorder imported pandas"
        files, tables = _read(tmp / "rec")
        assert tables[0]["out.y"][3] == 1.5 and tables[0]["status"][3] == "OK" and len(tables[0]["time"]) == 100
        print("ok")
    """)
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

