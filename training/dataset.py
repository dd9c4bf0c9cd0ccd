"""Datasets: from the IOC's recordings, a user's CSV/Parquet, the demo simulator or the Archiver Appliance.

Every source ends up as the same :class:`Dataset`: time-ordered rows of raw-unit inputs ``x`` and
targets ``y`` (for an autoencoder ``y`` is ``x``), with per-row worst severity, after the filters of
the spec (time range, severity, excluded windows, non-finite values, the config's valid input
ranges). An array signal (``shape: [n]`` or ``[h, w]`` in the config) takes its flattened, row-major
values as consecutive columns of ``x`` / ``y`` (:mod:`training.layout`); in a file it is one column
holding a fixed-size list per row (Parquet, the IOC's recordings) or an ``(n, *shape)`` array (``.npz``).
Its :attr:`Dataset.digest` is a SHA-256 over the signal names (and shapes) and the exact float64 bytes,
so the same content has the same digest whatever file format or source it came from — that is what
MLflow records and what ``mlioc reproduce`` checks before retraining.

Splits respect time (:func:`time_split`): the oldest rows train, then validation, then the newest rows
test, optionally with a gap at each boundary; nothing from the future leaks into training, which a
random split of autocorrelated machine data would do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ioc.core.config import ModelConfig
from ioc.core.pvmodel import Severity
from ioc.edges.recorder import INPROGRESS, SUFFIX, in_progress_files, read_stream_table
from training.layout import Layout, Shape, Signal, slices
from training.spec import SEVERITIES, DataSpec, FilterSpec, SplitSpec, TrainSpec

log = logging.getLogger("mlioc.training.dataset")


class DatasetError(Exception):
    """The data cannot be used: missing, unreadable, wrong columns, or empty after filtering."""


@dataclass
class Dataset:
    """Time-ordered rows ready for training."""

    time: np.ndarray  # (n,) unix seconds (simulator: sample index * 0.1)
    x: np.ndarray  # (n, n_in) raw units; an array input takes prod(shape) consecutive columns
    y: np.ndarray  # (n, n_out) raw units
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: dict[str, Any]  # how to get this data again (logged to MLflow)
    filtered: dict[str, int] = field(default_factory=dict)  # rows dropped, by reason
    shapes: dict[str, Shape] = field(default_factory=dict)  # the array signals' shapes (scalars absent)

    def __len__(self) -> int:
        return len(self.time)

    @property
    def input_signals(self) -> tuple[Signal, ...]:
        return tuple(Signal(n, self.shapes.get(n, ())) for n in self.input_names)

    @property
    def output_signals(self) -> tuple[Signal, ...]:
        return tuple(Signal(n, self.shapes.get(n, ())) for n in self.output_names)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        header: dict[str, Any] = {"inputs": list(self.input_names), "outputs": list(self.output_names),
                                  "n": len(self), "dtype": "float64-le"}
        if self.shapes:  # (absent for scalar data: their digests stay what they were)
            header["shapes"] = {k: list(v) for k, v in self.shapes.items()}
        h.update(json.dumps(header, sort_keys=True).encode())
        for a in (self.time, self.x, self.y):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        return h.hexdigest()

    def to_frame(self):
        """A pandas DataFrame (``time``, input names, ``target.<output>``) — the logged dataset artifact.
        An array signal is one column of flattened rows (a Parquet list column)."""
        import pandas as pd

        def columns(signals: tuple[Signal, ...], values: np.ndarray, prefix: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for s, (name, v) in zip(signals, Layout.unflatten(signals, values).items(), strict=True):
                out[prefix + name] = list(v.reshape(len(v), -1)) if s.shape else v
            return out

        cols: dict[str, Any] = {"time": self.time}
        cols |= columns(self.input_signals, self.x, "")
        cols |= columns(self.output_signals, self.y, "target.")
        return pd.DataFrame(cols)

    def subset(self, idx: np.ndarray | slice) -> Dataset:
        return Dataset(self.time[idx], self.x[idx], self.y[idx], self.input_names, self.output_names, self.source,
                       shapes=self.shapes)


@dataclass
class Split:
    train: Dataset
    val: Dataset
    test: Dataset


# ----------------------------------------------------------------------------- loading


def _names(model: ModelConfig, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ins = tuple(i.name for i in model.inputs)
    outs = ins if kind == "autoencoder" else tuple(o.name for o in model.outputs)
    return ins, outs


def _layout(model: ModelConfig, kind: str) -> Layout:
    return Layout.from_model(model, kind)


def _read_table(path: Path):
    """A pandas DataFrame (CSV, Parquet) or, for ``.npz``, a dict name -> array (n, ...)."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                table = {k: npz[k] for k in npz.files}
            lengths = {len(v) if v.ndim else -1 for v in table.values()}
            if len(lengths) > 1:
                raise DatasetError(f"{path}: arrays of different lengths {sorted(lengths)} (one row per sample)")
            return table
    except DatasetError:
        raise
    except Exception as exc:  # pandas/pyarrow/numpy raise many types for unreadable files
        raise DatasetError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from exc
    raise DatasetError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .parquet or .npz)")


def _n_rows(table) -> int:
    return len(table) if hasattr(table, "columns") else max((len(v) for v in table.values()), default=0)


def _column_names(table) -> list[str]:
    return [str(c) for c in (table.columns if hasattr(table, "columns") else table)]


def _raw(table, name: str) -> np.ndarray:
    col = table[name]
    return col.to_numpy() if hasattr(col, "to_numpy") else np.asarray(col)


def _column(df, names: list[str], what: str, where: str) -> np.ndarray:
    for n in names:
        if n in df:
            return _raw(df, n).astype(np.float64)
    raise DatasetError(f"{where}: no column for {what} (looked for {' or '.join(names)}; "
                       f"have {', '.join(_column_names(df)[:20])})")


def _signal_column(table, names: list[str], shape: Shape, what: str, where: str) -> np.ndarray:
    """One signal as (n, prod(shape)) float64: a numeric column for a scalar; for an array a column of
    fixed-size (or nested [h][w]) lists, or an (n, *shape) array in an .npz. A missing row is all NaN."""
    if not shape:
        return _column(table, names, what, where)[:, None]
    size = math.prod(shape)
    for n in names:
        if n not in table:
            continue
        raw = _raw(table, n)
        if raw.dtype != object:
            arr = raw.astype(np.float64)
            if arr.ndim == 1 or arr[0].size != size:
                raise DatasetError(f"{where}: column {n} has {arr[0].size if arr.ndim > 1 else 1} value(s) a row, "
                                   f"{what} has shape {list(shape)} ({size} values)")
            return arr.reshape(len(arr), size)
        rows = np.full((len(raw), size), np.nan)
        for i, cell in enumerate(raw):
            if cell is None or (np.ndim(cell) == 0 and cell != cell):
                continue  # no value recorded in this row: NaN, dropped by the filters
            a = np.asarray(cell, dtype=object)
            a = np.stack([np.asarray(r, dtype=np.float64) for r in a]) if a.dtype == object and a.ndim == 1 and \
                len(a) and np.ndim(a[0]) else np.asarray(cell, dtype=np.float64)
            if a.size != size:
                raise DatasetError(f"{where}: column {n} row {i} has {a.size} values, {what} has shape "
                                   f"{list(shape)} ({size} values)")
            rows[i] = a.reshape(-1)
        return rows
    raise DatasetError(f"{where}: no column for {what} (looked for {' or '.join(names)}; "
                       f"have {', '.join(_column_names(table)[:20])})")


def _signals_matrix(table, signals: tuple[Signal, ...], candidates, what: str, where: str) -> np.ndarray:
    """The flattened, concatenated columns of ``signals`` (``candidates(name)``: the column names to try)."""
    return np.concatenate([_signal_column(table, candidates(s.name), s.shape, f"{what} {s.name}", where)
                           for s in signals], axis=1)


def _sev_columns(df, names: list[str]) -> np.ndarray:
    import pandas as pd

    sev = np.zeros(_n_rows(df), dtype=np.int64)
    for n in names:
        if n in df:
            sev = np.maximum(sev, pd.Series(_raw(df, n)).fillna(int(Severity.INVALID)).to_numpy(dtype=np.int64))
    return sev


def recorded_files(directory: Path) -> list[Path]:
    """Every recording in ``directory``: the finished ``*.parquet`` files, then the files the IOC is
    still writing (``.*.inprogress``, Arrow IPC streams whose flushed rows are readable at any time)."""
    if not directory.is_dir():
        raise DatasetError(f"recorded data directory {directory} does not exist (has the IOC recorded yet? "
                           "a model records with a record: section in its config)")
    complete = sorted(p for p in directory.glob(f"*{SUFFIX}") if not p.name.endswith(INPROGRESS))
    return complete + in_progress_files(directory)


def _read_recorded(files: list[Path], directory: Path):
    """The recorded rows as one DataFrame, and what was read from each file (for the run's provenance)."""
    import pandas as pd

    frames, read = [], []
    for f in files:
        if f.name.endswith(INPROGRESS):
            table = read_stream_table(f)
            if table is None:
                continue  # opened, nothing flushed yet
            df = table.to_pandas()
            read.append({"name": f.name, "bytes": f.stat().st_size, "rows": len(df), "in_progress": True})
        else:
            df = _read_table(f)
            read.append({"name": f.name, "bytes": f.stat().st_size, "rows": len(df)})
        frames.append(df)
    if not frames:
        waiting = [f.name for f in files]
        raise DatasetError(
            f"no recorded rows in {directory} yet: " + (
                f"the IOC is recording into {', '.join(waiting)} but has not flushed a row to it yet (it writes "
                "every record.flush_s seconds): try again shortly" if waiting else
                "no recorded files (*.parquet, or a file in progress .*.inprogress): is the IOC running with "
                "this model's record: section?"))
    return pd.concat(frames, ignore_index=True), read


def load_recorded(directory: Path, model: ModelConfig, spec: TrainSpec) -> tuple[Dataset, np.ndarray, Counter]:
    """The IOC's own recordings (``ioc/edges/recorder.py`` columns), including the rows already flushed to
    the file it is writing now; rows with no fresh target are dropped."""
    import pandas as pd

    df, read = _read_recorded(recorded_files(directory), directory)
    ins, outs = _names(model, spec.kind)
    layout = _layout(model, spec.kind)
    where = str(directory)
    dropped: Counter = Counter()
    x = _signals_matrix(df, layout.inputs, lambda n: [f"in.{n}"], "input", where)
    t = _column(df, ["time"], "time", where)
    sev = _sev_columns(df, [f"in_sev.{n}" for n in ins])
    keep = np.ones(len(df), dtype=bool)
    if all(f"in_time.{n}" in df.columns for n in ins):  # every input from the same moment as the snapshot
        skew = np.max([np.abs(df[f"in_time.{n}"].to_numpy(np.float64) - t) for n in ins], axis=0)
        mixed = ~(skew <= spec.filters.max_skew_s)
        dropped["inputs not from one moment"] += int(mixed.sum())
        keep &= ~mixed
    if spec.kind != "autoencoder":
        y = _signals_matrix(df, layout.outputs, lambda n: [f"target.{n}"], "target (record.targets in the config)",
                            where)
        sev = np.maximum(sev, _sev_columns(df, [f"target_sev.{n}" for n in outs]))
        skew = np.zeros(len(df))
        for n in outs:
            skew = np.maximum(skew, np.abs(_column(df, [f"target_time.{n}"], f"target time {n}", where) - t))
        stale = skew > spec.filters.max_skew_s
        dropped["target not measured with the inputs"] += int((stale & keep).sum())
        keep &= ~stale
    else:
        y = x
    if spec.filters.status and "status" in df.columns:
        bad = ~df["status"].isin(spec.filters.status).to_numpy()
        dropped[f"cycle status not in {list(spec.filters.status)}"] += int((bad & keep).sum())
        keep &= ~bad
    # A scan faster than the source repeats the same snapshot: keep each measurement once.
    key = df["time"].to_numpy()
    if spec.kind != "autoencoder":
        key = np.stack([key] + [df[f"target_time.{n}"].to_numpy() for n in outs], axis=1)
        dup = pd.DataFrame(key).duplicated().to_numpy()
    else:
        dup = pd.Series(key).duplicated().to_numpy()
    dropped["repeated snapshot"] += int((dup & keep).sum())
    keep &= ~dup
    source = {"kind": "recorded", "directory": str(directory), "files": read}
    ds = Dataset(t[keep], x[keep], y[keep], ins, outs, source, shapes=layout.shapes)
    return ds, sev[keep], dropped


def load_file(path: Path, model: ModelConfig, spec: TrainSpec) -> tuple[Dataset, np.ndarray, Counter]:
    """A user's CSV/Parquet/.npz: columns named after the inputs/outputs (or ``in.<name>`` /
    ``target.<name>``), an optional ``time`` column (unix seconds or ISO text; else row order) and optional
    severity columns ``sev.<name>``. An array signal: a fixed-size list column (Parquet) or an
    ``(n, *shape)`` array (.npz)."""
    import pandas as pd

    if not path.exists():
        raise DatasetError(f"data file {path} does not exist")
    if path.is_dir():
        return load_recorded(path, model, spec)
    df = _read_table(path)
    n_rows = _n_rows(df)
    if n_rows == 0:
        raise DatasetError(f"{path}: no rows")
    ins, outs = _names(model, spec.kind)
    layout = _layout(model, spec.kind)
    where = str(path)
    x = _signals_matrix(df, layout.inputs, lambda n: [n, f"in.{n}"], "input", where)
    y = x if spec.kind == "autoencoder" else _signals_matrix(
        df, layout.outputs, lambda n: [n, f"target.{n}", f"out.{n}"], "output", where)
    if "time" in df:
        col = pd.Series(_raw(df, "time"))
        t = (pd.to_datetime(col, utc=True).astype("int64").to_numpy() / 1e9 if col.dtype == object
             or col.dtype.kind in "USM" else col.to_numpy(dtype=np.float64))
    else:
        t = np.arange(n_rows, dtype=np.float64)
    sev = _sev_columns(df, [f"sev.{n}" for n in (*ins, *outs)])
    order = np.argsort(t, kind="stable")
    source = {"kind": "file", "path": str(path), "bytes": path.stat().st_size}
    return (Dataset(t[order], x[order], y[order], ins, outs, source, shapes=layout.shapes), sev[order],
            Counter())


def load_simulator(data: DataSpec, model: ModelConfig, spec: TrainSpec) -> tuple[Dataset, np.ndarray, Counter]:
    """The demo's documented generators (seeded: same seed, same data): ``ioc.sim.physics.generate_dataset``
    for the knobs and beam observables, ``ioc.sim.beamline.generate_array_dataset`` when any other signal
    (orbit, correctors, screen image, profile) is asked for."""
    from ioc.sim.physics import KNOBS, OBSERVABLES, generate_dataset

    ins, outs = _names(model, spec.kind)
    knob_names = [k.name for k in KNOBS]
    obs_names = [o.name for o in OBSERVABLES]
    missing = [n for n in ins if n not in knob_names] + [n for n in outs if n not in (*obs_names, *knob_names)]
    if missing:
        return _load_simulator_arrays(data, model, spec)
    x_all, y_all = generate_dataset(data.samples, seed=data.seed, shift=data.shift)
    x = x_all[:, [knob_names.index(n) for n in ins]]
    y = x if spec.kind == "autoencoder" else y_all[:, [obs_names.index(n) for n in outs]]
    t = np.arange(data.samples, dtype=np.float64) * 0.1
    source = {"kind": "simulator", "generator": "ioc.sim.physics.generate_dataset", "samples": data.samples,
              "seed": data.seed, "shift": data.shift}
    return Dataset(t, x, y, ins, outs, source), np.zeros(len(t), dtype=np.int64), Counter()


ARRAY_GENERATOR = "ioc.sim.beamline.generate_array_dataset"


def simulator_arrays(source: dict[str, Any], layout: Layout) -> Dataset:
    """The rows of :data:`ARRAY_GENERATOR` for ``layout``'s signals (also what ``mlioc reproduce`` regenerates)."""
    from ioc.sim.beamline import generate_array_dataset

    names = [s.name for s in layout.inputs] + [s.name for s in layout.outputs if s not in layout.inputs]
    values = generate_array_dataset(int(source["samples"]), int(source["seed"]), names, float(source["shift"]))
    x = Layout.flatten(layout.inputs, values)
    y = Layout.flatten(layout.outputs, values)
    t = np.arange(len(x), dtype=np.float64) * 0.1
    return Dataset(t, x, y, tuple(s.name for s in layout.inputs), tuple(s.name for s in layout.outputs), source,
                   shapes=layout.shapes)


def _load_simulator_arrays(data: DataSpec, model: ModelConfig, spec: TrainSpec) -> tuple[Dataset, np.ndarray,
                                                                                           Counter]:
    from ioc.sim.beamline import signal_shapes

    layout = _layout(model, spec.kind)
    have = signal_shapes()
    for s in (*layout.inputs, *layout.outputs):
        if s.name not in have:
            raise DatasetError(f"the simulator has no signal {s.name!r}: it has {', '.join(sorted(have))}")
        if have[s.name] != s.shape:
            want = f"shape: {list(have[s.name])}" if have[s.name] else "no shape (a scalar)"
            raise DatasetError(f"{s.name} is {list(have[s.name]) or 'a scalar'} in the simulator but "
                               f"{list(s.shape) or 'a scalar'} in the config: give it {want}")
    source = {"kind": "simulator", "generator": ARRAY_GENERATOR, "samples": data.samples, "seed": data.seed,
              "shift": data.shift}
    ds = simulator_arrays(source, layout)
    return ds, np.zeros(len(ds), dtype=np.int64), Counter()


# ----------------------------------------------------------------------------- filtering


def apply_filters(ds: Dataset, sev: np.ndarray, model: ModelConfig, filters: FilterSpec,
                  dropped: Counter | None = None) -> Dataset:
    """Drop rows outside the time range or excluded windows, too severe, non-finite, or out of range."""
    dropped = Counter() if dropped is None else dropped
    keep = np.ones(len(ds), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        nonlocal keep
        dropped[reason] += int((mask & keep).sum())
        keep &= ~mask

    if filters.start is not None:
        drop(ds.time < filters.start, "before filters.start")
    if filters.end is not None:
        drop(ds.time >= filters.end, "after filters.end")
    for e in filters.exclude:
        drop((ds.time >= e.start) & (ds.time < e.end), f"excluded: {e.reason or 'window'}")
    drop(sev > SEVERITIES.index(filters.max_severity), f"severity worse than {filters.max_severity}")
    drop(~np.isfinite(ds.x).all(axis=1) | ~np.isfinite(ds.y).all(axis=1), "non-finite value")
    columns = slices(ds.input_signals)
    for inp in model.inputs:
        if inp.range is not None and inp.name in columns:
            col = ds.x[:, columns[inp.name]]  # an array is out of range when any element is
            outside = np.any((col < inp.range[0]) | (col > inp.range[1]), axis=1)
            drop(np.asarray(outside), f"{inp.name} outside its valid range")
    out = ds.subset(keep)
    out.filtered = {k: v for k, v in dropped.items() if v}
    return out


def time_split(ds: Dataset, split: SplitSpec) -> Split:
    """Oldest rows train, then validation, then the newest test; ``gap_s`` of rows dropped at each boundary."""
    n = len(ds)
    n_test = max(1, round(n * split.test))
    n_val = round(n * split.val)
    n_train = n - n_val - n_test
    if n_train < 2:
        raise DatasetError(f"only {n} rows after filtering: too few to split into train/val/test")
    b1, b2 = n_train, n_train + n_val
    idx = np.arange(n)
    train = idx[:b1]
    val = idx[b1:b2]
    test = idx[b2:]
    if split.gap_s > 0:
        # Embargo: drop the last gap_s of rows before each later split starts (autocorrelated data).
        train = train[ds.time[train] < ds.time[b1] - split.gap_s]
        val = val[ds.time[val] < ds.time[b2] - split.gap_s]
        if len(train) < 2:
            raise DatasetError(f"split.gap_s = {split.gap_s} leaves fewer than 2 training rows")
    return Split(ds.subset(train), ds.subset(val), ds.subset(test))


@dataclass(frozen=True)
class Normalisation:
    """x_norm = (x - mean) / std, per column (what the manifest tells the IOC to apply).

    The vectors are per flattened column; an array signal normalised per channel (``normalise:
    channel``, the default) has the same mean and std in all its columns, which the manifest writes as
    one number (:meth:`training.layout.Layout.manifest_entries`).
    """

    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: np.ndarray
    y_std: np.ndarray

    @classmethod
    def fit(cls, train: Dataset, per_element: bool = False) -> Normalisation:
        def stats(a: np.ndarray, signals: tuple[Signal, ...]) -> tuple[np.ndarray, np.ndarray]:
            mean, s = a.mean(axis=0), a.std(axis=0)
            start = 0
            for sig in signals:
                cols = slice(start, start + sig.size)
                start += sig.size
                if sig.shape and not per_element:
                    mean[cols], s[cols] = a[:, cols].mean(), a[:, cols].std()
            return mean, np.where(s > 1e-12 * np.maximum(1.0, np.abs(mean)), s, 1.0)

        x_mean, x_std = stats(train.x, train.input_signals)
        y_mean, y_std = stats(train.y, train.output_signals)
        return cls(x_mean, x_std, y_mean, y_std)

    @classmethod
    def from_manifest(cls, layout: Layout, manifest: dict[str, Any]) -> Normalisation:
        """The normalisation a manifest tells the IOC to apply (a warm start continues in that space)."""
        e = Layout.expand
        ins, outs = manifest["inputs"], manifest["outputs"]
        return cls(e(layout.inputs, ins, "mean"), e(layout.inputs, ins, "std"), e(layout.outputs, outs, "mean"),
                   e(layout.outputs, outs, "std"))

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in ("x_mean", "x_std", "y_mean", "y_std")}


def reference_stats(values: np.ndarray) -> dict[str, Any]:
    """What the IOC's drift monitor compares live values with: moments, range and 101 quantiles."""
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": [float(q) for q in np.quantile(values, np.linspace(0, 1, 101))],
    }


# ----------------------------------------------------------------------------- entry point


def build_dataset(model: ModelConfig, spec: TrainSpec, data: str | None, *, archiver_session=None) -> Dataset:
    """Load (``data``: a path, ``recorded``, ``simulator``, an archiver URL, or None = the spec's source)
    and filter. Raise :class:`DatasetError` with a clear reason when nothing usable is left."""
    d = spec.data
    if data is None:
        data = d.source
    if data == "simulator":
        ds, sev, dropped = load_simulator(d, model, spec)
    elif data == "recorded":
        directory = d.path or (model.record.dir if model.record else None)
        if directory is None:
            raise DatasetError(f"model {model.name} records no data (no record: section) and no data.path "
                               "is set: give --data PATH")
        ds, sev, dropped = load_recorded(Path(directory), model, spec)
    elif data == "archiver" or data.startswith(("http://", "https://")):
        from training.archiver import load_archiver

        if d.archiver is None:
            raise DatasetError("no data.archiver section (url, pvs) in the config")
        url = d.archiver.url if data == "archiver" else data
        ds, sev, dropped = load_archiver(url, d.archiver, model, spec, session=archiver_session)
    elif data == "file":
        if not d.path:
            raise DatasetError("data.source is file but data.path is not set: give --data PATH")
        ds, sev, dropped = load_file(Path(d.path), model, spec)
    else:
        ds, sev, dropped = load_file(Path(data), model, spec)
    n_raw = len(ds) + sum(dropped.values())
    ds = apply_filters(ds, sev, model, spec.filters, dropped)
    if len(ds) == 0:
        raise DatasetError(f"no rows left after filtering ({n_raw} read; dropped: {ds.filtered or 'none'})")
    log.info("dataset: %d rows (%d read), digest %s, dropped %s", len(ds), n_raw, ds.digest[:12], ds.filtered)
    return ds


def dataset_from_frame(df, source: dict[str, Any], shapes: dict[str, Shape] | None = None) -> Dataset:
    """Inverse of :meth:`Dataset.to_frame` (the dataset artifact of a logged run); ``shapes`` of the array
    signals (logged in ``dataset/metadata.json``)."""
    shapes = {k: tuple(v) for k, v in (shapes or {}).items()}
    ins = tuple(c for c in df.columns if c != "time" and not c.startswith("target."))
    outs = tuple(c[len("target."):] for c in df.columns if c.startswith("target."))
    sig = lambda names: tuple(Signal(n, shapes.get(n, ())) for n in names)  # noqa: E731
    x = _signals_matrix(df, sig(ins), lambda n: [n], "input", "dataset artifact")
    y = _signals_matrix(df, sig(outs), lambda n: [f"target.{n}"], "output", "dataset artifact")
    return Dataset(df["time"].to_numpy(np.float64), x, y, ins, outs, source, shapes=shapes)
