"""The data recorder: every cycle of a model, with its measured ground truth, to rolling Parquet files.

This is what the nightly training job learns from (``training/dataset.py`` reads these files), so it
records what the model saw and did, not only what it predicted: per cycle the snapshot timestamp,
each input's value, severity and timestamp (so training can keep only rows that are one moment),
each output (NaN when the cycle produced none), the latest value, timestamp and severity of each
configured *target* PV (the measured truth of an output), the cycle's status, the served version,
the inference latency and the message; and, for a model with ``drift:``, the DRIFT (and ANOMALY)
score and severity being served at that cycle with the input that drifted most, so the stretches
where they alarmed can be found again later (``mlioc episodes``, training/episodes.py).

Why it is built this way:

* **Never block the loop.** :meth:`Recorder.listener` runs on the event loop for every cycle; it only
  appends a tuple to a list under an uncontended lock (~1 us). A writer thread swaps the list out
  every ``flush_s`` (or sooner when it grows) and writes it as one Parquet row group.
* **Parquet via pyarrow, imported lazily** and only when a model has a ``record:`` section, so an IOC
  that does not record never loads it (``pip install mlioc[record]``; the training extra has it too).
  Parquet is what pandas, the training sidecar and every data tool read directly, column-typed and
  compressed (zstd), with the column layout described in the file's own metadata.
* **Rolling files.** ``roll: daily`` / ``hourly`` starts a new file when the UTC day / hour of the
  rows changes, ``size`` when the file in progress reaches ``max_mb`` (which also caps daily/hourly
  files).
* **No acknowledged row is lost, whatever the disk does** (issue 12.3). The file in progress,
  ``.<name>.inprogress``, is an Arrow IPC *stream*: each flush appends one self-delimited record batch,
  so everything up to the last complete batch stays readable at any moment, unlike a Parquet file,
  whose footer is written only at close. A write that fails (disk full, file too large) is cut back
  to the last complete batch and its rows are kept in memory and retried (the oldest dropped beyond
  ``MAX_BACKLOG``, counted, alarmed and logged). When a file rolls or the IOC stops, its batches are
  converted to ``<name>.parquet`` (written aside, then renamed: readers only see complete files) and
  the stream is removed; a conversion that fails is retried, and a stream left by a crash or a full
  disk is converted when the recorder next starts. Training reads the finished Parquet files *and*
  the rows already flushed to the file in progress (:func:`read_stream`), so a nightly job can run
  while the IOC records.
* **Arrays** (a waveform or an image input/output, an array target) are one column each, a
  fixed-size list of the signal's ``dtype`` (float32 or float64) holding its row-major elements:
  what pandas, pyarrow and ``training/dataset.py`` read back as one array per row. The loop side keeps
  a reference to the cycle's flat vectors (never copied, never converted to Python numbers: a
  64 x 64 image is 4096 of them); the writer thread cuts them into columns. Because a row of an image
  model weighs tens of kB, the buffer, the retry backlog and the Parquet row groups are bounded in
  bytes as well as rows (:data:`FLUSH_BYTES`, :data:`MAX_BACKLOG_BYTES`, :data:`ROW_GROUP_BYTES`).
* **Nothing lost on a clean shutdown** either: :meth:`Recorder.close` (called by ``Ioc.stop`` on
  SIGTERM / SIGINT) writes every buffered row and converts the file. A hard kill loses only the rows
  not yet flushed (at most ``flush_s`` worth).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ioc.core.arrays import TensorLayout, size_of
from ioc.core.config import ModelConfig, RecordConfig
from ioc.core.layout import ModelNames, mirrors_inputs
from ioc.core.pvmodel import PV, Severity

if TYPE_CHECKING:
    from ioc.runtime.runner import CycleRecord

log = logging.getLogger("mlioc.recorder")

FORMAT = 1
FLUSH_ROWS = 50_000  # write early when this many rows are buffered ...
FLUSH_BYTES = 64 << 20  # ... or this many bytes (an image model's rows are tens of kB each)
MAX_BACKLOG = 500_000  # rows kept for retry while the disk fails (~a day at 5 Hz); older ones are dropped
MAX_BACKLOG_BYTES = 512 << 20  # ... and at most this many bytes of them
ROW_GROUP_ROWS = 100_000  # Parquet row group size when a stream is converted (bounds its memory too) ...
ROW_GROUP_BYTES = 128 << 20  # ... and its bytes
ROW_OVERHEAD = 200  # bytes of a row besides its numbers (tuples, strings): for the byte bounds
SUFFIX = ".parquet"
INPROGRESS = ".inprogress"  # the file in progress: ``.<name>.inprogress``, an Arrow IPC stream
_EOS = 8  # an IPC stream's end-of-stream marker (0xFFFFFFFF 0x00000000)


class RecorderError(Exception):
    """Recording cannot start (missing pyarrow, unwritable directory)."""


def final_name(stream: Path) -> Path:
    """``dir/.NAME.inprogress`` -> ``dir/NAME.parquet``."""
    return stream.with_name(stream.name[1:-len(INPROGRESS)] + SUFFIX)


def in_progress_files(directory: Path) -> list[Path]:
    """Streams still being written (or left by a crash), oldest name first."""
    return sorted(p for p in directory.glob(f".*{INPROGRESS}") if not p.name.endswith(f"{SUFFIX}{INPROGRESS}"))


def read_stream(source, max_batches: int | None = None) -> Iterator[Any]:
    """The complete record batches of a file in progress (a path or a binary file object), in order.

    Stops quietly at the end or at a batch that is still being written (or was cut short by a failed
    write); ``max_batches`` stops after that many (the recorder knows how many it completed). The
    stream's schema is ``read_stream(...)`` 's first item's ``.schema``.
    """
    import pyarrow as pa

    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(source, "rb")) if isinstance(source, (str, os.PathLike)) else source
        try:
            reader = pa.ipc.open_stream(f)
        except (OSError, pa.ArrowInvalid):
            return  # not even a complete schema yet
        n = 0
        while max_batches is None or n < max_batches:
            try:
                yield reader.read_next_batch()
            except StopIteration:
                return
            except (OSError, pa.ArrowInvalid):
                return  # an incomplete batch at the end: the writer is in the middle of it
            n += 1


def read_stream_table(path: Path):
    """A file in progress as one pyarrow Table (the rows flushed so far); None if it has none yet."""
    import pyarrow as pa

    with open(path, "rb") as f:
        try:
            schema = pa.ipc.open_stream(f).schema
        except (OSError, pa.ArrowInvalid):
            return None
        f.seek(0)
        batches = list(read_stream(f))
    return pa.Table.from_batches(batches, schema=schema) if batches else None


@dataclass
class _Stream:
    """The file in progress: an Arrow IPC stream, appended one record batch per flush.

    ``size``/``batches``/``rows`` count only what was completely written: a failed write is cut back
    to ``size``. The descriptor is kept open so the rows can be converted even if someone moves the file.
    """

    path: Path
    final: Path
    fd: int
    key: str
    size: int = 0
    batches: int = 0
    rows: int = 0

    def in_place(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except OSError:
            return False


def recorded_scores(model: ModelConfig) -> list[tuple[str, str]]:
    """(column name, PV name) of the monitoring scores recorded with every cycle: ``score.drift`` and
    ``score_sev.drift`` (and ``anomaly``); what ``training/episodes.py`` finds the alarmed stretches in."""
    if model.drift is None:
        return []
    n = ModelNames(model.prefix)
    return [("drift", n.drift)] + ([("anomaly", n.anomaly)] if mirrors_inputs(model) else [])


def column_names(model: ModelConfig) -> list[str]:
    """The recorded columns, in order (``training/dataset.py`` reads them by these names). An array
    signal's ``in.``/``out.``/``target.`` column is a fixed-size list of its elements."""
    cols = ["time"]
    cols += [f"in.{i.name}" for i in model.inputs]
    cols += [f"in_sev.{i.name}" for i in model.inputs]
    cols += [f"in_time.{i.name}" for i in model.inputs]
    cols += [f"out.{o.name}" for o in model.outputs]
    targets = [name for name, _ in model.record.targets] if model.record else []
    for name in targets:
        cols += [f"target.{name}", f"target_time.{name}", f"target_sev.{name}"]
    cols += ["status", "version", "latency_s", "message"]
    for name, _pv in recorded_scores(model):
        cols += [f"score.{name}", f"score_sev.{name}"]
    if model.drift is not None:
        cols.append("drift_worst")
    return cols


class Recorder:
    """Records one model's cycles; one writer thread per recorder."""

    def __init__(self, model: ModelConfig, config: RecordConfig,
                 input_states: Callable[[], Sequence[tuple[int, float]]] | None = None,
                 scores: Sequence[PV] = (), worst: PV | None = None):
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
        # Cycles carry flat vectors (the tensor layout rule): an array takes its elements' columns.
        self._in_layout, self._out_layout = TensorLayout.of(model.inputs), TensorLayout.of(model.outputs)
        self._no_outputs = np.full(self._out_layout.total, math.nan)  # a cycle that produced none (shared)
        self._no_inputs = np.full(self._in_layout.total, math.nan)  # a snapshot of another size (a bad frame)
        self._no_inputs.flags.writeable = self._no_outputs.flags.writeable = False
        shapes = {o.name: o.shape for o in model.outputs}
        self.target_shapes = [shapes[name] for name in self.target_names]
        row_bytes = ROW_OVERHEAD + 8 * (self._in_layout.total + self._out_layout.total
                                        + sum(size_of(s) for s in self.target_shapes) + 3 * self.n_in)
        self.flush_rows = max(1, min(FLUSH_ROWS, FLUSH_BYTES // row_bytes))
        self.max_backlog = max(10, min(MAX_BACKLOG, MAX_BACKLOG_BYTES // row_bytes))
        self.row_group_rows = max(1, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // row_bytes))
        # (severity, timestamp) of each input when the cycle ends (the runner's InputState objects).
        self._input_states = input_states or (lambda: [(0, math.nan)] * self.n_in)
        # Latest (value, timestamp, severity) of each target, updated by target sinks (an array target's
        # value is an array of its output's shape, or None).
        self._targets: list[tuple[Any, float, int]] = [
            (None if shape else math.nan, 0.0, int(Severity.INVALID)) for shape in self.target_shapes]
        # The DRIFT / ANOMALY PVs (recorded_scores order) and DRIFT:WORST: their reading at each cycle.
        self.score_names = [name for name, _ in recorded_scores(model)]
        self._scores = list(scores)
        if self._scores and len(self._scores) != len(self.score_names):
            raise ValueError(f"{model.name}: {len(self._scores)} score PVs for columns {self.score_names}")
        self._worst = worst
        self._record_worst = model.drift is not None
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._stream: _Stream | None = None
        self._unconverted: list[_Stream] = []  # closed streams whose Parquet file is still to be written
        self._seq = 0
        self.rows_received = 0  # rows taken from cycles (acknowledged): each is written or counted dropped
        self.rows_written = 0  # ... of which completely written to a file (in progress or converted)
        self.rows_dropped = 0
        self.cpu_s = 0.0  # CPU time the writer thread spent encoding and writing (the cost of recording)
        self.error: str | None = None  # the current write failure, None while recording works
        # Told (from the writer thread) when recording starts failing (the error) and recovers (None).
        self.on_health: Callable[[str | None], None] | None = None
        self.files_closed: list[Path] = []
        self._roll_waiters: list[threading.Event] = []  # roll(): set once the file in progress is closed
        self.schema = self._schema()
        self._stream_head = self._encode(None)  # the schema message every stream starts with

    # ------------------------------------------------------------------ loop side

    def listener(self, record: CycleRecord) -> None:
        """A cycle listener (runs on the loop): buffer one row, never touch the disk.

        The row keeps the cycle's own input and output vectors (the runner never mutates them): no copy
        and no conversion here, whatever their size.
        """
        outputs = record.outputs
        inputs = record.inputs
        states = self._input_states()
        row = (
            record.timestamp,
            inputs if inputs.size == self._in_layout.total else self._no_inputs,  # a frame of another size
            tuple(int(s[0]) for s in states),
            tuple(float(s[1]) for s in states),
            outputs if outputs is not None else self._no_outputs,
            tuple(self._targets),
            record.status.name,
            record.version,
            record.latency_s,
            record.message,
            tuple((r.value, int(r.severity)) for r in (pv.reading for pv in self._scores))
            if self._scores else ((math.nan, int(Severity.INVALID)),) * len(self.score_names),
            self._worst.reading.value if self._worst is not None else "",
        )
        with self._lock:
            self._rows.append(row)
            self.rows_received += 1
            n = len(self._rows)
        if n >= self.flush_rows:
            self._wake.set()

    def target_sink(self, index: int):
        """A source sink (``sink(value, severity, timestamp, connected)``) for target ``index``.

        Safe to call from the CA/PVA client thread: it only replaces one tuple in a list. An array
        target (the measured value of an array output) is copied there, off the loop; one of another
        size than its output is recorded as missing (NaN).
        """
        shape = self.target_shapes[index]
        size = size_of(shape)

        def sink(value: Any, severity: Severity, timestamp: float, connected: bool) -> None:
            if not connected or value is None:
                self._targets[index] = (None if shape else math.nan, timestamp, int(Severity.INVALID))
                return
            v: Any
            try:
                if shape:
                    v = np.array(value, dtype=np.float64).reshape(-1)
                    v = v if v.size == size else None
                else:
                    v = float(value)
            except (TypeError, ValueError):
                v = None if shape else math.nan
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
            self._roll()
        waiting = list(self._unconverted)
        log.info("%s: recorder closed: %d rows received, %d written, %d dropped, %.2f s CPU%s", self.model.name,
                 self.rows_received, self.rows_written, self.rows_dropped, self.cpu_s,
                 "".join(f"; {s.rows} rows wait in {s.path} (converted at the next start)" for s in waiting))

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
        self._adopt_leftovers()
        while True:
            self._wake.wait(self.config.flush_s)
            self._wake.clear()
            closing = self._closing
            start = time.thread_time()
            try:
                self._flush()
            except Exception as exc:  # keep recording: a full or read-only disk must not kill the writer
                self._failed(exc)
            else:
                self._healthy()
            self._roll_if_asked()
            if closing:
                try:
                    self._roll()
                except Exception as exc:  # the rows stay in the stream; the next start converts it
                    log.error("%s: converting the file in progress failed (%s)", self.model.name, exc)
            self.cpu_s += time.thread_time() - start
            if closing:
                return

    def _roll_if_asked(self) -> None:
        with self._lock:
            waiters, self._roll_waiters = self._roll_waiters, []
        if not waiters:
            return
        try:
            self._roll()
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
        if self.rows_dropped:
            text = f"{text}; {self.rows_dropped} rows dropped"
        if self.error != text:
            log.error("%s: recording to %s fails (%s); rows are kept and retried (at most %d, then the oldest are "
                      "dropped and counted)", self.model.name, self.directory, text, MAX_BACKLOG)
            self.error = text
            if self.on_health is not None:
                self.on_health(text)

    def _healthy(self) -> None:
        if self.error is not None:
            (log.error if self.rows_dropped else log.warning)(
                "%s: recording works again (%d rows dropped while it did not)", self.model.name, self.rows_dropped)
            self.error = None
            if self.on_health is not None:
                self.on_health(None)

    def _flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        start = 0
        try:
            self._convert_unconverted()  # older rows first
            if not rows:
                return
            # Split the batch where the roll key (UTC day/hour) changes, so no file spans two periods.
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
                excess = len(rows) - self.max_backlog
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
        """Append rows to the file in progress as one batch: all written, or none (see _flush)."""
        if self._stream is not None and key != self._stream.key:
            self._roll()
        stream = self._stream or self._open_stream(rows[0][0], key)
        if not stream.in_place():  # moved or deleted under us: convert it from the descriptor later
            self._unconverted.append(stream)
            self._stream = None
            raise OSError(f"the file in progress {stream.path.name} was moved or deleted")
        data = self._encode(self._table(rows))
        try:
            _write_all(stream.fd, data)
        except BaseException:
            with contextlib.suppress(OSError):  # back to the last complete batch (truncating needs no space)
                os.ftruncate(stream.fd, stream.size)
                os.lseek(stream.fd, stream.size, os.SEEK_SET)
            raise
        stream.size += len(data)
        stream.batches += 1
        stream.rows += len(rows)
        self.rows_written += len(rows)
        if stream.size >= self.config.max_mb * 1e6:
            self._roll()

    def _open_stream(self, first_time: float, key: str) -> _Stream:
        t = dt.datetime.fromtimestamp(first_time if math.isfinite(first_time) else time.time(), dt.UTC)
        self._seq += 1
        name = f"{self.model.name}-{t.strftime('%Y%m%dT%H%M%S')}Z-{os.getpid()}-{self._seq:03d}"
        path = self.directory / f".{name}{INPROGRESS}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, self._stream_head)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self._stream = _Stream(path, final_name(path), fd, key, size=len(self._stream_head))
        return self._stream

    def _roll(self) -> None:
        """Close the file in progress: it joins the streams to convert, and conversion starts now."""
        if self._stream is not None:
            if self._stream.batches:
                self._unconverted.append(self._stream)
            else:  # nothing in it: no file
                self._discard(self._stream)
            self._stream = None
        self._convert_unconverted()

    def _convert_unconverted(self) -> None:
        while self._unconverted:
            self._to_parquet(self._unconverted[0])
            self._unconverted.pop(0)

    def _to_parquet(self, stream: _Stream) -> None:
        """Write the stream's complete batches as ``<name>.parquet`` (aside, then renamed), then remove it.

        Reads through the descriptor, so a stream moved away is still converted (into the recording
        directory). On failure the stream is untouched and the caller retries later.
        """
        pa, pq = self._pa, self._pq
        final = self.directory / stream.final.name
        tmp = final.with_name(f".{final.name}.tmp")
        read = 0
        with os.fdopen(os.dup(stream.fd), "rb") as f:
            f.seek(0)
            schema = pa.ipc.open_stream(f).schema
            f.seek(0)
            writer = pq.ParquetWriter(str(tmp), schema, compression="zstd")
            try:
                group: list = []
                for batch in read_stream(f, stream.batches):
                    group.append(batch)
                    read += batch.num_rows
                    if sum(b.num_rows for b in group) >= self.row_group_rows:
                        writer.write_table(pa.Table.from_batches(group, schema=schema))
                        group = []
                if group:
                    writer.write_table(pa.Table.from_batches(group, schema=schema))
                writer.close()
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(Exception):
                    writer.close()
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        if read != stream.rows:  # cannot happen unless someone wrote into our file: say so, count it
            lost = stream.rows - read
            self.rows_dropped += max(lost, 0)
            log.error("%s: %s held %d rows, %d were readable (%d lost)", self.model.name, stream.path.name,
                      stream.rows, read, lost)
        self._discard(stream)
        self.files_closed.append(final)
        log.info("%s: recorded file %s closed (%d rows)", self.model.name, final.name, read)

    def _discard(self, stream: _Stream) -> None:
        if stream.in_place():
            with contextlib.suppress(OSError):
                stream.path.unlink()
        os.close(stream.fd)

    def _adopt_leftovers(self) -> None:
        """Streams left by a crash or a full disk (another run's, or an earlier version of this one) are
        converted with the first flush. Only safe because the directory is locked by this process."""
        for path in in_progress_files(self.directory):
            if final_name(path).exists():  # converted already; only its removal failed
                log.warning("%s: %s was converted to %s already; removing it", self.model.name, path.name,
                            final_name(path).name)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                log.error("%s: cannot open the leftover file in progress %s: %s", self.model.name, path, exc)
                continue
            with os.fdopen(os.dup(fd), "rb") as f:
                batches = list(read_stream(f))
            if not batches:
                os.close(fd)
                log.warning("%s: %s holds no complete rows; left as it is", self.model.name, path.name)
                continue
            rows = sum(b.num_rows for b in batches)
            self._unconverted.append(_Stream(path, final_name(path), fd, "", batches=len(batches), rows=rows))
            log.info("%s: %d rows of a recording interrupted earlier (%s) will be converted", self.model.name,
                     rows, path.name)

    # ------------------------------------------------------------------ Arrow

    def _schema(self):
        pa = self._pa
        f64, i8, s = pa.float64(), pa.int8(), pa.string()
        dtypes = {o.name: o.dtype for o in self.model.outputs}
        fields = [pa.field("time", f64)]
        fields += [pa.field(f"in.{i.name}", self._value_type(i.shape, i.dtype)) for i in self.model.inputs]
        fields += [pa.field(f"in_sev.{i.name}", i8) for i in self.model.inputs]
        fields += [pa.field(f"in_time.{i.name}", f64) for i in self.model.inputs]
        fields += [pa.field(f"out.{o.name}", self._value_type(o.shape, o.dtype)) for o in self.model.outputs]
        for name, shape in zip(self.target_names, self.target_shapes, strict=True):
            fields += [pa.field(f"target.{name}", self._value_type(shape, dtypes[name])),
                       pa.field(f"target_time.{name}", f64), pa.field(f"target_sev.{name}", i8)]
        fields += [pa.field("status", s), pa.field("version", s), pa.field("latency_s", f64),
                   pa.field("message", s)]
        for name in self.score_names:
            fields += [pa.field(f"score.{name}", f64), pa.field(f"score_sev.{name}", i8)]
        if self._record_worst:
            fields.append(pa.field("drift_worst", s))
        meta = {
            "mlioc.format": str(FORMAT),
            "mlioc.model": self.model.name,
            "mlioc.inputs": ",".join(i.name for i in self.model.inputs),
            "mlioc.outputs": ",".join(o.name for o in self.model.outputs),
            "mlioc.targets": ",".join(self.target_names),
            "mlioc.units": ",".join(f"{x.name}={x.units}" for x in (*self.model.inputs, *self.model.outputs)),
            "mlioc.shapes": ",".join(f"{x.name}={'x'.join(map(str, x.shape))}"
                                     for x in (*self.model.inputs, *self.model.outputs) if x.shape),
        }
        return pa.schema(fields, metadata=meta)

    def _encode(self, table) -> bytes:
        """One table as an IPC record-batch message (zstd); ``None``: the stream's schema message."""
        pa = self._pa
        sink = pa.BufferOutputStream()
        writer = pa.ipc.new_stream(sink, self.schema, options=pa.ipc.IpcWriteOptions(compression="zstd"))
        if table is not None:
            writer.write_table(table, max_chunksize=max(1, table.num_rows))
        writer.close()
        data = sink.getvalue().to_pybytes()[:-_EOS]
        return data if table is None else data[len(self._stream_head):]

    def _value_type(self, shape: tuple[int, ...], dtype: str):
        """A scalar is a float64 column; an array a fixed-size list of its elements in its dtype."""
        pa = self._pa
        if not shape:
            return pa.float64()
        return pa.list_(pa.float32() if dtype == "float32" else pa.float64(), size_of(shape))

    def _signal_columns(self, layout: TensorLayout, flat: np.ndarray, fields: list) -> list:
        """Cut a block of flat vectors (n, total) into one column per signal (a scalar's values, an array's
        fixed-size list), of each field's type."""
        pa = self._pa
        out = []
        for shape, offset, f in zip(layout.shapes, layout.offsets, fields, strict=True):
            if not shape:
                out.append(self._column(flat[:, offset], f.type))
                continue
            size = size_of(shape)
            item = f.type.value_type
            values = flat[:, offset:offset + size].reshape(-1)
            out.append(pa.FixedSizeListArray.from_arrays(self._column(values, item), size))
        return out

    def _target_column(self, k: int, rows: list[tuple], f):
        pa = self._pa
        shape = self.target_shapes[k]
        if not shape:
            return self._column([r[5][k][0] for r in rows], f.type)
        size = size_of(shape)
        missing = np.full(size, math.nan)
        block = np.stack([missing if r[5][k][0] is None else r[5][k][0] for r in rows])
        return pa.FixedSizeListArray.from_arrays(self._column(block.reshape(-1), f.type.value_type), size)

    def _table(self, rows: list[tuple]):
        pa = self._pa
        schema = self.schema
        n_in, n_out = self.n_in, self.n_out
        fields = list(schema)
        cols: list = [self._column([r[0] for r in rows], pa.float64())]
        cols += self._signal_columns(self._in_layout, np.stack([r[1] for r in rows]), fields[1:1 + n_in])
        cols += [self._column([r[2][i] for r in rows], pa.int8()) for i in range(n_in)]
        cols += [self._column([r[3][i] for r in rows], pa.float64()) for i in range(n_in)]
        start = 1 + 3 * n_in
        cols += self._signal_columns(self._out_layout, np.stack([r[4] for r in rows]), fields[start:start + n_out])
        start += n_out
        for k in range(len(self.target_names)):
            cols += [self._target_column(k, rows, fields[start + 3 * k]),
                     self._column([r[5][k][1] for r in rows], pa.float64()),
                     self._column([r[5][k][2] for r in rows], pa.int8())]
        s = pa.string()
        cols += [self._column([r[6] for r in rows], s), self._column([r[7] for r in rows], s),
                 self._column([r[8] for r in rows], pa.float64()), self._column([r[9] for r in rows], s)]
        for k in range(len(self.score_names)):
            cols += [self._column([r[10][k][0] for r in rows], pa.float64()),
                     self._column([r[10][k][1] for r in rows], pa.int8())]
        if self._record_worst:
            cols.append(self._column([r[11] for r in rows], s))
        return pa.Table.from_arrays(cols, schema=schema)

    def _column(self, values: list | np.ndarray, typ):
        """One column as an Arrow array built from its buffers. Not ``pa.array``: its first call imports pandas
        when it is installed (~45 MB of the IOC's RSS, for a check the IOC never needs). No value is null."""
        pa = self._pa
        n = len(values)
        if typ == pa.string():
            raw = [v.encode("utf-8") for v in values]
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum([len(b) for b in raw], out=offsets[1:])
            return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(raw))])
        dtype = np.int8 if typ == pa.int8() else np.float32 if typ == pa.float32() else np.float64
        return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(np.ascontiguousarray(values, dtype=dtype))])


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
