"""The data recorder: every cycle of a model, with its measured ground truth, to rolling Parquet files.

This is what the nightly training job learns from (``training/dataset.py`` reads these files), so it
records what the model saw and did, not only what it predicted: per cycle the snapshot timestamp,
each input's value, severity and timestamp (so training can keep only rows that are one moment),
each output (NaN when the cycle produced none), the latest value, timestamp and severity of each
configured *target* PV (the measured truth of an output), the cycle's status, the served version,
the inference latency and the message.

Why it is built this way:

* **Never block the loop.** :meth:`Recorder.listener` runs on the event loop for every cycle; it only
  appends a tuple to a list under an uncontended lock (~1 us). A writer thread swaps the list out
  every ``flush_s`` (or sooner when it grows) and writes it as one Parquet row group.
* **Parquet via pyarrow, imported lazily** and only when a model has a ``record:`` section, so an IOC
  that does not record never loads it (``pip install mlioc[record]``; the training extra has it too).
  Parquet is what pandas, the training sidecar and every data tool read directly, column-typed and
  compressed (zstd), with the column layout described in the file's own metadata.
* **Rolling files.** ``roll: daily`` / ``hourly`` starts a new file when the UTC day / hour of the
  rows changes, ``size`` when the file reaches ``max_mb`` (which also caps daily/hourly files).
  A file is written as ``.<name>.inprogress`` and renamed to ``<name>.parquet`` when it is closed:
  readers only ever see complete files (a Parquet footer is written at close).
* **Nothing lost on a clean shutdown.** :meth:`Recorder.close` (called by ``Ioc.stop`` on SIGTERM /
  SIGINT) writes every buffered row and closes the file. A hard kill loses the rows of the file in
  progress; choose ``hourly`` or a small ``max_mb`` to bound that.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ioc.core.config import ModelConfig, RecordConfig
from ioc.core.pvmodel import Severity

if TYPE_CHECKING:
    from ioc.runtime.runner import CycleRecord

log = logging.getLogger("mlioc.recorder")

FORMAT = 1
FLUSH_ROWS = 50_000  # write early when this many rows are buffered
MAX_BACKLOG = 500_000  # rows kept for retry while the disk fails (~a day at 5 Hz); older ones are dropped
SUFFIX = ".parquet"
INPROGRESS = ".inprogress"


class RecorderError(Exception):
    """Recording cannot start (missing pyarrow, unwritable directory)."""


def column_names(model: ModelConfig) -> list[str]:
    """The recorded columns, in order (``training/dataset.py`` reads them by these names)."""
    cols = ["time"]
    cols += [f"in.{i.name}" for i in model.inputs]
    cols += [f"in_sev.{i.name}" for i in model.inputs]
    cols += [f"in_time.{i.name}" for i in model.inputs]
    cols += [f"out.{o.name}" for o in model.outputs]
    targets = [name for name, _ in model.record.targets] if model.record else []
    for name in targets:
        cols += [f"target.{name}", f"target_time.{name}", f"target_sev.{name}"]
    cols += ["status", "version", "latency_s", "message"]
    return cols


class Recorder:
    """Records one model's cycles; one writer thread per recorder."""

    def __init__(self, model: ModelConfig, config: RecordConfig,
                 input_states: Callable[[], Sequence[tuple[int, float]]] | None = None):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise RecorderError(
                f"{model.name}: recording needs pyarrow (pip install 'mlioc[record]'); not recording"
            ) from exc
        self._pa, self._pq = pa, pq
        self.model = model
        self.config = config
        self.directory = Path(config.dir)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecorderError(f"{model.name}: cannot create {self.directory}: {exc.strerror or exc}") from exc
        if not os.access(self.directory, os.W_OK):
            raise RecorderError(f"{model.name}: {self.directory} is not writable")
        self.n_in, self.n_out = len(model.inputs), len(model.outputs)
        self.target_names = [name for name, _ in config.targets]
        # (severity, timestamp) of each input when the cycle ends (the runner's InputState objects).
        self._input_states = input_states or (lambda: [(0, math.nan)] * self.n_in)
        # Latest (value, timestamp, severity) of each target, updated on the loop by target sinks.
        self._targets: list[tuple[float, float, int]] = [(math.nan, 0.0, int(Severity.INVALID))] * len(
            self.target_names)
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._writer = None
        self._file_key: str | None = None
        self._file_path: Path | None = None
        self._file_final: Path | None = None
        self._seq = 0
        self.rows_written = 0
        self.rows_dropped = 0
        self.error: str | None = None  # the current write failure, None while recording works
        # Told (from the writer thread) when recording starts failing (the error) and recovers (None).
        self.on_health: Callable[[str | None], None] | None = None
        self.files_closed: list[Path] = []
        self._roll_waiters: list[threading.Event] = []  # roll(): set once the file in progress is closed
        self.schema = self._schema()

    # ------------------------------------------------------------------ loop side

    def listener(self, record: CycleRecord) -> None:
        """A cycle listener (runs on the loop): buffer one row, never touch the disk."""
        outputs = record.outputs
        states = self._input_states()
        row = (
            record.timestamp,
            tuple(record.inputs.tolist()),
            tuple(int(s[0]) for s in states),
            tuple(float(s[1]) for s in states),
            tuple(outputs.tolist()) if outputs is not None else (math.nan,) * self.n_out,
            tuple(self._targets),
            record.status.name,
            record.version,
            record.latency_s,
            record.message,
        )
        with self._lock:
            self._rows.append(row)
            n = len(self._rows)
        if n >= FLUSH_ROWS:
            self._wake.set()

    def target_sink(self, index: int):
        """A source sink (``sink(value, severity, timestamp, connected)``) for target ``index``.

        Safe to call from the CA/PVA client thread: it only replaces one tuple in a list.
        """

        def sink(value: Any, severity: Severity, timestamp: float, connected: bool) -> None:
            if not connected or value is None:
                self._targets[index] = (math.nan, timestamp, int(Severity.INVALID))
                return
            try:
                v = float(value)
            except (TypeError, ValueError):
                v = math.nan
            self._targets[index] = (v, float(timestamp), int(severity))

        return sink

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"recorder-{self.model.name}", daemon=True)
        self._thread.start()
        log.info("%s: recording to %s (roll %s, max %g MB, flush every %g s)", self.model.name,
                 self.directory, self.config.roll, self.config.max_mb, self.config.flush_s)

    def close(self) -> None:
        """Write every buffered row and close the current file (blocking; call once at shutdown)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:  # never started: flush synchronously
            self.write_pending()
            self._close_file()
        log.info("%s: recorder closed, %d rows written", self.model.name, self.rows_written)

    def flush(self) -> None:
        """Ask the writer thread to write what is buffered now (does not wait)."""
        self._wake.set()

    def roll(self) -> threading.Event:
        """Write what is buffered and close the file in progress now, so a reader (a retrain about to
        learn from the newest cycles) sees every row so far; the returned event is set when done."""
        done = threading.Event()
        with self._lock:
            self._roll_waiters.append(done)
        self._wake.set()
        return done

    def write_pending(self) -> None:
        """Write the buffered rows on the calling thread (a recorder that was never started)."""
        if self._thread is not None:
            raise RuntimeError("the writer thread owns the file; use flush()")
        self._flush()

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            self._wake.wait(self.config.flush_s)
            self._wake.clear()
            closing = self._closing
            try:
                self._flush()
            except Exception as exc:  # keep recording: a full or read-only disk must not kill the writer
                self._failed(exc)
            else:
                self._healthy()
            self._roll_if_asked()
            if closing:
                try:
                    self._close_file()
                except Exception:
                    log.exception("%s: closing the recording file failed", self.model.name)
                return

    def _roll_if_asked(self) -> None:
        with self._lock:
            waiters, self._roll_waiters = self._roll_waiters, []
        if not waiters:
            return
        try:
            self._close_file()
        except Exception:
            log.exception("%s: closing the recording file for a roll failed", self.model.name)
        for done in waiters:
            done.set()

    def _failed(self, exc: Exception) -> None:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
        # pyarrow says "Error writing bytes to file. Detail: [errno 27] File too large": keep the cause.
        m = re.search(r"\[errno \d+\] ([^\n]+)", str(exc))
        if m:
            text = m.group(1)
        self._abandon_file()
        if self.error != text:
            log.error("%s: recording to %s fails (%s); rows are kept and retried (at most %d)", self.model.name,
                      self.directory, text, MAX_BACKLOG)
            self.error = text
            if self.on_health is not None:
                self.on_health(text)

    def _healthy(self) -> None:
        if self.error is not None:
            log.warning("%s: recording works again (%d rows dropped while it did not)", self.model.name,
                        self.rows_dropped)
            self.error = None
            if self.on_health is not None:
                self.on_health(None)

    def _abandon_file(self) -> None:
        """After a failed write the file in progress cannot be trusted: drop the writer, start anew."""
        writer, self._writer, self._file_key = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the disk that failed the write may fail this too
                pass

    def _flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        try:
            # Split the batch where the roll key (UTC day/hour) changes, so no file spans two periods.
            start = 0
            key = self._key(rows[0][0])
            for i in range(1, len(rows)):
                k = self._key(rows[i][0])
                if k != key:
                    self._write(rows[start:i], key)
                    start, key = i, k
            self._write(rows[start:], key)
        except Exception:
            with self._lock:  # keep what was not written, oldest first, within the backlog bound
                rows = rows[start:] + self._rows
                excess = len(rows) - MAX_BACKLOG
                if excess > 0:
                    self.rows_dropped += excess
                    rows = rows[excess:]
                self._rows = rows
            raise

    def _key(self, timestamp: float) -> str:
        roll = self.config.roll
        if roll == "size":
            return ""
        t = dt.datetime.fromtimestamp(timestamp if math.isfinite(timestamp) else 0.0, dt.UTC)
        return t.strftime("%Y%m%d") if roll == "daily" else t.strftime("%Y%m%dT%H")

    def _write(self, rows: list[tuple], key: str) -> None:
        """Write rows to the current file (``rows`` must all be written, or none: see _flush)."""
        if self._writer is not None and key != self._file_key:
            self._close_file()
        if self._writer is None:
            self._open_file(rows[0][0], key)
        self._writer.write_table(self._table(rows))
        self.rows_written += len(rows)
        if self._file_path.stat().st_size >= self.config.max_mb * 1e6:
            self._close_file()

    def _open_file(self, first_time: float, key: str) -> None:
        t = dt.datetime.fromtimestamp(first_time if math.isfinite(first_time) else time.time(), dt.UTC)
        self._seq += 1
        name = f"{self.model.name}-{t.strftime('%Y%m%dT%H%M%S')}Z-{os.getpid()}-{self._seq:03d}"
        self._file_final = self.directory / f"{name}{SUFFIX}"
        self._file_path = self.directory / f".{name}{SUFFIX}{INPROGRESS}"
        self._writer = self._pq.ParquetWriter(str(self._file_path), self.schema, compression="zstd")
        self._file_key = key

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        os.replace(self._file_path, self._file_final)
        self.files_closed.append(self._file_final)
        log.info("%s: recorded file %s closed", self.model.name, self._file_final.name)
        self._writer = None
        self._file_key = None

    # ------------------------------------------------------------------ Arrow

    def _schema(self):
        pa = self._pa
        f64, i8, s = pa.float64(), pa.int8(), pa.string()
        fields = [pa.field("time", f64)]
        fields += [pa.field(f"in.{i.name}", f64) for i in self.model.inputs]
        fields += [pa.field(f"in_sev.{i.name}", i8) for i in self.model.inputs]
        fields += [pa.field(f"in_time.{i.name}", f64) for i in self.model.inputs]
        fields += [pa.field(f"out.{o.name}", f64) for o in self.model.outputs]
        for name in self.target_names:
            fields += [pa.field(f"target.{name}", f64), pa.field(f"target_time.{name}", f64),
                       pa.field(f"target_sev.{name}", i8)]
        fields += [pa.field("status", s), pa.field("version", s), pa.field("latency_s", f64),
                   pa.field("message", s)]
        meta = {
            "mlioc.format": str(FORMAT),
            "mlioc.model": self.model.name,
            "mlioc.inputs": ",".join(i.name for i in self.model.inputs),
            "mlioc.outputs": ",".join(o.name for o in self.model.outputs),
            "mlioc.targets": ",".join(self.target_names),
            "mlioc.units": ",".join(f"{x.name}={x.units}" for x in (*self.model.inputs, *self.model.outputs)),
        }
        return pa.schema(fields, metadata=meta)

    def _table(self, rows: list[tuple]):
        pa = self._pa
        cols: list[list] = [[r[0] for r in rows]]
        cols += [[r[1][i] for r in rows] for i in range(self.n_in)]
        cols += [[r[2][i] for r in rows] for i in range(self.n_in)]
        cols += [[r[3][i] for r in rows] for i in range(self.n_in)]
        cols += [[r[4][j] for r in rows] for j in range(self.n_out)]
        for k in range(len(self.target_names)):
            cols += [[r[5][k][0] for r in rows], [r[5][k][1] for r in rows], [r[5][k][2] for r in rows]]
        cols += [[r[6] for r in rows], [r[7] for r in rows], [r[8] for r in rows], [r[9] for r in rows]]
        arrays = [pa.array(c, type=f.type) for c, f in zip(cols, self.schema, strict=True)]
        return pa.Table.from_arrays(arrays, schema=self.schema)
