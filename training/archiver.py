"""Datasets from an EPICS Archiver Appliance (``epicsarchiver-retrieval-client``).

The appliance stores each PV as its own change-driven event stream, so a training row has to be
assembled: the events of one signal (``align_to``; by default the first target, i.e. each new
measurement) define the sample times, and every other signal contributes its last archived value at or
before that time (an as-of join) if it is at most ``max_age_s`` old; otherwise the row is dropped as
"no recent value". A row's severity is the worst severity of the events it is built from, so the
usual severity filter applies. Retrieval uses the appliance's PB/HTTP format (``getData.raw``), which
the client parses.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from urllib.parse import urlparse

import numpy as np

from ioc.core.config import ModelConfig
from ioc.core.pvmodel import Severity
from training.dataset import Dataset, DatasetError, _names
from training.spec import ArchiverSpec, TrainSpec, parse_time

log = logging.getLogger("mlioc.training.archiver")

DEFAULT_PORT = 17668


def _client(url: str):
    from epicsarchiver.retrieval.client.archiver_retrieval import ArchiverRetrieval

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise DatasetError(f"archiver url {url!r} has no host")
    return ArchiverRetrieval(parsed.hostname, parsed.port or DEFAULT_PORT)


def fetch_signal(client, pv: str, start: dt.datetime, end: dt.datetime) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times [s], values, severities) of one PV's archived events, time-ordered."""
    from epicsarchiver.common.errors import ArchiverError

    try:
        _meta, events = client.get_events(pv, start, end)
    except ArchiverError as exc:
        raise DatasetError(f"archiver: retrieving {pv} failed: {exc}") from exc
    times, values, sevs = [], [], []
    for e in events:
        try:
            v = float(e.val)
        except (TypeError, ValueError):
            v = np.nan  # a waveform or string PV cannot be a scalar model input
        times.append(e.timestamp_ns / 1e9)
        values.append(v)
        sevs.append(int(e.severity))
    order = np.argsort(times, kind="stable")
    return np.asarray(times)[order], np.asarray(values, dtype=np.float64)[order], np.asarray(sevs)[order]


def load_archiver(url: str, arch: ArchiverSpec, model: ModelConfig, spec: TrainSpec,
                  session=None) -> tuple[Dataset, np.ndarray, Counter]:
    ins, outs = _names(model, spec.kind)
    arrays = [(i.name, i.shape) for i in model.inputs if i.shape] + [(o.name, o.shape) for o in model.outputs
                                                                     if o.shape]
    if arrays:
        raise DatasetError(f"archiver data holds scalars only here; {arrays[0][0]} has shape {list(arrays[0][1])} "
                           "(use recorded data or a file)")
    start = parse_time(arch.start) if arch.start is not None else spec.filters.start
    end = parse_time(arch.end) if arch.end is not None else spec.filters.end
    if start is None or end is None or end <= start:
        raise DatasetError("archiver data needs a time range: data.archiver.start/end, filters.start/end, "
                           "or --start/--end")
    client = session or _client(url)
    t0, t1 = dt.datetime.fromtimestamp(start, dt.UTC), dt.datetime.fromtimestamp(end, dt.UTC)
    signals = list(dict.fromkeys((*ins, *outs)))
    series = {name: fetch_signal(client, arch.pvs[name], t0, t1) for name in signals}
    align = arch.align_to or (outs[0] if spec.kind != "autoencoder" else ins[0])
    if align not in series:
        raise DatasetError(f"archiver.align_to {align!r} is not one of {signals}")
    grid_t, _, _ = series[align]
    grid_t = grid_t[(grid_t >= start) & (grid_t < end)]
    if len(grid_t) == 0:
        raise DatasetError(f"archiver returned no events of {arch.pvs[align]} between {t0} and {t1}")
    values, worst = {}, np.zeros(len(grid_t), dtype=np.int64)
    stale = np.zeros(len(grid_t), dtype=bool)
    for name, (t, v, s) in series.items():
        idx = np.searchsorted(t, grid_t, side="right") - 1
        ok = idx >= 0
        j = np.where(ok, idx, 0)
        age = np.where(ok, grid_t - t[j] if len(t) else np.inf, np.inf)
        fresh = ok & (age <= arch.max_age_s)
        stale |= ~fresh
        values[name] = np.where(fresh, v[j] if len(v) else np.nan, np.nan)
        worst = np.maximum(worst, np.where(fresh, s[j] if len(s) else int(Severity.INVALID), 0))
    dropped = Counter({"no recent archived value": int(stale.sum())})
    keep = ~stale
    x = np.stack([values[n] for n in ins], axis=1)
    y = x if spec.kind == "autoencoder" else np.stack([values[n] for n in outs], axis=1)
    source = {"kind": "archiver", "url": url, "pvs": dict(arch.pvs), "start": start, "end": end,
              "align_to": align, "max_age_s": arch.max_age_s}
    log.info("archiver %s: %d sample times from %s, %d usable", url, len(grid_t), arch.pvs[align], int(keep.sum()))
    return Dataset(grid_t[keep], x[keep], y[keep], ins, outs, source), worst[keep], dropped
