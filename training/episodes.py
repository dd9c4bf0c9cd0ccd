"""Episodes: the stretches of a model's recordings where DRIFT or ANOMALY alarmed, and a person's verdict on each.

An out-of-distribution stretch is either a *new normal* (the machine moved; the model should learn it)
or a *fault* (a bad reading, a broken magnet; the model must never learn it). The monitor cannot tell
which; the on-call engineer can. ``mlioc episodes list|show|label CONFIG --model NAME``
(docs/how-to/uncertainty-and-episodes.md):

* **Found from what the IOC recorded.** The recorder writes the DRIFT / ANOMALY reading served at every
  cycle (``score_sev.drift``, ``score_sev.anomaly``: ioc/edges/recorder.py). An episode is a run of
  rows whose severity is MINOR or MAJOR; alarmed rows less than one drift window (``drift.window_s``)
  apart belong to one episode: the score's window still holds the first stretch when the second
  starts, so it is the same event. Its rows — what training includes or excludes — run from one drift
  window before its first alarmed row (the data the score had seen when it first alarmed) to its last
  alarmed row.
* **A stable id**: ``<model>-<UTC time of the first alarmed row>``, e.g. ``beam-20261130T071502Z``. It
  does not change as the IOC records more (an episode still going on only grows at its end).
* **Labels** live beside the recordings, in ``labels.jsonl``: one JSON line per verdict (``accept`` or
  ``reject``), with who, why, when, from which account and host, and the episode's extent when it was
  labelled. The file is only ever appended to; the latest line for an episode is its label, the
  earlier ones its history. Two people disagreeing is refused unless the second gives ``--force``
  (the overruled verdict stays in the history, and ``list`` marks the episode ``!``).
* **Training honours them** (:func:`vet`): rows of a rejected episode are never trained on, rows of an
  accepted one are, and unlabelled ones follow ``training.filters.episodes.unlabelled`` (``exclude`` by
  default: nobody has said they are normal). The labels in effect are part of the dataset's digest
  and of the run's MLflow lineage (training/dataset.py, training/pipeline.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import getpass
import json
import math
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ioc.core.config import ModelConfig
from ioc.core.pvmodel import Severity

MERGE_S = 60.0  # alarmed rows closer than this belong to one episode, for a model without a drift window
LABELS = "labels.jsonl"
VERDICTS = ("accept", "reject")
SIGNALS = {"drift": "DRIFT", "anomaly": "ANOMALY"}
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class EpisodeError(Exception):
    """A command cannot do what it was asked (unknown episode, recordings gone, a conflicting label)."""


@dataclass
class Episode:
    """One alarmed stretch of a model's recordings."""

    id: str
    start: float  # first alarmed row (unix s)
    end: float  # last alarmed row
    rows_from: float  # first row that belongs to it (start - one drift window)
    severity: str  # the worst: MINOR or MAJOR
    signals: tuple[str, ...]  # DRIFT and/or ANOMALY
    rows: int  # rows from rows_from to end
    alarmed_rows: int
    peak: dict[str, float] = field(default_factory=dict)  # highest score of each signal
    worst_inputs: list[tuple[str, float]] = field(default_factory=list)  # (input, shift in baseline std devs)
    drift_worst: list[tuple[str, float]] = field(default_factory=list)  # DRIFT:WORST as recorded: (input, share)
    versions: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def contains(self, t: np.ndarray) -> np.ndarray:
        return (t >= self.rows_from) & (t <= self.end)


def episode_id(model: str, start: float) -> str:
    return f"{model}-{dt.datetime.fromtimestamp(math.floor(start), dt.UTC).strftime('%Y%m%dT%H%M%SZ')}"


def utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# ----------------------------------------------------------------------------- finding episodes


def score_columns(df) -> list[str]:
    """The recorded scores present (``drift``, ``anomaly``): recordings made before they were recorded have none."""
    return [name for name in SIGNALS if f"score_sev.{name}" in df.columns]


def find_episodes(df, model: ModelConfig) -> list[Episode]:
    """Every alarmed stretch in recorded rows (a DataFrame of ioc/edges/recorder.py's columns), oldest first."""
    window = model.drift.window_s if model.drift is not None else MERGE_S
    names = score_columns(df)
    if not names or not len(df):
        return []
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    t = df["time"].to_numpy(np.float64)
    sev = {n: df[f"score_sev.{n}"].fillna(int(Severity.INVALID)).to_numpy(np.int64) for n in names}
    alarm = {n: (s >= Severity.MINOR) & (s <= Severity.MAJOR) for n, s in sev.items()}
    alarmed = np.zeros(len(df), dtype=bool)
    for a in alarm.values():
        alarmed |= a
    idx = np.nonzero(alarmed)[0]
    if not len(idx):
        return []
    breaks = np.nonzero(np.diff(t[idx]) > window)[0]
    groups = np.split(idx, breaks + 1)
    spans = [(t[g[0]] - window, t[g[-1]]) for g in groups]
    inside_any = np.zeros(len(df), dtype=bool)
    for a, b in spans:
        inside_any |= (t >= a) & (t <= b)
    baseline = df[~inside_any]
    episodes = []
    for g, (a, b) in zip(groups, spans, strict=True):
        rows = (t >= a) & (t <= b)
        part = df[rows]
        signals = tuple(SIGNALS[n] for n in names if alarm[n][g].any())
        worst = max(int(sev[n][g][alarm[n][g]].max()) for n in names if alarm[n][g].any())
        peak = {SIGNALS[n]: float(np.nanmax(df[f"score.{n}"].to_numpy(np.float64)[g]))
                for n in names if alarm[n][g].any()}
        versions = tuple(sorted({str(v) for v in part["version"] if v})) if "version" in part else ()
        episodes.append(Episode(
            id=episode_id(model.name, t[g[0]]), start=float(t[g[0]]), end=float(t[g[-1]]), rows_from=float(a),
            severity=Severity(worst).name, signals=signals, rows=int(rows.sum()), alarmed_rows=len(g), peak=peak,
            worst_inputs=_shifted_inputs(part, baseline, model), drift_worst=_recorded_worst(df.iloc[g]),
            versions=versions))
    return episodes


def _shifted_inputs(part, baseline, model: ModelConfig, top: int = 3) -> list[tuple[str, float]]:
    """The inputs whose mean moved most in the episode, in standard deviations of the rest of the recording."""
    out = []
    for inp in model.inputs:
        col = f"in.{inp.name}"
        if col not in part.columns:
            continue
        ref = baseline[col].to_numpy(np.float64) if len(baseline) > 1 else part[col].to_numpy(np.float64)
        ref = ref[np.isfinite(ref)]
        now = part[col].to_numpy(np.float64)
        now = now[np.isfinite(now)]
        if not len(ref) or not len(now):
            continue
        std = float(ref.std()) or 1.0
        out.append((inp.name, abs(float(now.mean()) - float(ref.mean())) / std))
    return sorted(out, key=lambda item: -item[1])[:top]


def _recorded_worst(alarmed) -> list[tuple[str, float]]:
    """Which input DRIFT:WORST named while the episode alarmed, and how often."""
    if "drift_worst" not in alarmed.columns:
        return []
    counts = Counter(str(v) for v in alarmed["drift_worst"] if v)
    total = sum(counts.values())
    return [(name, n / total) for name, n in counts.most_common(3)] if total else []


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    """One line of ``labels.jsonl``."""

    episode: str
    verdict: str
    by: str
    why: str
    time: float
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def labels_path(directory: Path) -> Path:
    return Path(directory) / LABELS


def read_labels(directory: Path) -> list[Label]:
    """Every label line, oldest first. A line that is not a label is reported and skipped, never dropped
    from the file (nothing is ever rewritten)."""
    path = labels_path(directory)
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(Label(str(d["episode"]), str(d["verdict"]), str(d.get("by", "")), str(d.get("why", "")),
                             float(d.get("time", 0.0)), d))
        except (ValueError, KeyError, TypeError) as exc:
            print(f"warning: {path}:{number}: not a label, ignored ({exc})", file=sys.stderr)
    return [label for label in out if label.verdict in VERDICTS]


def current(labels: list[Label]) -> dict[str, Label]:
    """The label in effect per episode: its latest line."""
    latest: dict[str, Label] = {}
    for label in labels:
        latest[label.episode] = label
    return latest


def disputed(labels: list[Label]) -> set[str]:
    """Episodes whose history holds both verdicts (someone was overruled)."""
    seen: dict[str, set[str]] = {}
    for label in labels:
        seen.setdefault(label.episode, set()).add(label.verdict)
    return {e for e, verdicts in seen.items() if len(verdicts) > 1}


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise label writers (read, check, append) across processes."""
    path = Path(directory) / f".{LABELS}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def who_am_i() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def add_label(directory: Path, episode: Episode, verdict: str, by: str, why: str, force: bool = False) -> Label:
    """Append a verdict for ``episode``; refuse to overrule someone else's different verdict without ``force``."""
    if verdict not in VERDICTS:
        raise EpisodeError(f"verdict must be accept or reject, got {verdict!r}")
    if not why.strip():
        raise EpisodeError("say why (--why TEXT): the next engineer has only this line to go on")
    if not by.strip():
        raise EpisodeError("say who (--by NAME)")
    with _locked(directory):
        previous = current(read_labels(directory)).get(episode.id)
        if previous is not None and previous.verdict != verdict and previous.by != by and not force:
            raise EpisodeError(
                f"{episode.id} is labelled {previous.verdict} by {previous.by} ({utc(previous.time)}: "
                f"{previous.why!r}); to overrule a colleague's verdict give --force (their label stays in the "
                f"history)")
        now = time.time()
        doc = {"episode": episode.id, "verdict": verdict, "by": by, "why": why, "time": now, "at": utc(now),
               "account": who_am_i(), "start": episode.start, "end": episode.end, "rows_from": episode.rows_from,
               "rows": episode.rows, "severity": episode.severity, "signals": list(episode.signals),
               "previous": None if previous is None else {"verdict": previous.verdict, "by": previous.by,
                                                          "time": previous.time},
               "forced": bool(force and previous is not None and previous.verdict != verdict)}
        from ioc.core.store import append_line

        append_line(labels_path(directory), (json.dumps(doc, sort_keys=True) + "\n").encode())
    return Label(episode.id, verdict, by, why, now, doc)


# ----------------------------------------------------------------------------- training


@dataclass
class Vetting:
    """What the labels do to a dataset: rows to drop per reason, and the labels in effect (in its digest)."""

    masks: dict[str, np.ndarray]  # reason -> bool per row
    in_effect: list[dict[str, Any]]  # one per episode found: id, verdict (or unlabelled), who, when, rows
    unlabelled: str

    def lineage(self) -> dict[str, Any]:
        return {"unlabelled": self.unlabelled, "episodes": self.in_effect}


def vet(df, model: ModelConfig, directory: Path, unlabelled: str) -> Vetting:
    """Rows of ``df`` (recorded rows) to exclude: rejected episodes, and unlabelled ones unless ``include``."""
    t = df["time"].to_numpy(np.float64)
    masks: dict[str, np.ndarray] = {}
    episodes = find_episodes(df, model)
    labels = current(read_labels(directory)) if episodes else {}
    in_effect = []
    for ep in episodes:
        label = labels.get(ep.id)
        rows = ep.contains(t)
        if label is not None and label.verdict == "reject":
            reason = "rejected episode"
        elif label is None and unlabelled == "exclude":
            reason = "unlabelled episode (filters.episodes.unlabelled: exclude)"
        else:
            reason = None
        if reason is not None:
            masks[reason] = masks[reason] | rows if reason in masks else rows
        in_effect.append({"episode": ep.id, "verdict": label.verdict if label else "unlabelled",
                          "by": label.by if label else None, "labelled_at": label.time if label else None,
                          "rows": int(rows.sum())})
    return Vetting(masks, in_effect, unlabelled)


# ----------------------------------------------------------------------------- commands


def _recordings(args: argparse.Namespace):
    """(model config, recording directory, recorded rows) for a command; EpisodeError when there are none."""
    from ioc.core.configfile import load_config
    from training.dataset import DatasetError, read_recordings

    config = load_config(args.config)
    try:
        model = config.model(args.model)
    except KeyError as exc:
        raise EpisodeError(exc.args[0]) from None
    directory = Path(args.data) if args.data else (Path(model.record.dir) if model.record is not None else None)
    if directory is None:
        raise EpisodeError(f"model {model.name} records nothing (no record: section): give --data DIR")
    try:
        df = read_recordings(directory)
    except DatasetError as exc:
        raise EpisodeError(str(exc)) from None
    if not score_columns(df):
        raise EpisodeError(f"{directory}: these recordings have no DRIFT/ANOMALY columns (recorded before this "
                           f"version of mlioc, or model {model.name} has no drift: section): no episodes to find")
    return model, directory, df


def _find(episodes: list[Episode], wanted: str, directory: Path) -> Episode:
    for ep in episodes:
        if ep.id == wanted:
            return ep
    labelled = current(read_labels(directory)).get(wanted)
    if labelled is not None:
        raise EpisodeError(f"{wanted}: its recordings are gone from {directory} (labelled {labelled.verdict} by "
                           f"{labelled.by} on {utc(labelled.time)}); the label is kept, nothing to do")
    known = ", ".join(ep.id for ep in episodes[-5:]) or "none"
    raise EpisodeError(f"no episode {wanted!r} in {directory} (latest: {known}; `mlioc episodes list` shows all)")


def _label_text(ep: Episode, labels: dict[str, Label], contested: set[str]) -> str:
    label = labels.get(ep.id)
    if label is None:
        return "-"
    return f"{label.verdict} by {label.by}" + (" !" if ep.id in contested else "")


def list_command(args: argparse.Namespace) -> int:
    model, directory, df = _recordings(args)
    episodes = find_episodes(df, model)
    history = read_labels(directory)
    labels, contested = current(history), disputed(history)
    print(f"{model.name}: {len(episodes)} episode(s) in {directory} ({len(df)} recorded rows)")
    if episodes:
        header = f"{'id':<28} {'start (UTC)':<21} {'end':<21} {'duration':>9} {'severity':<8} {'signals':<14} " \
                 f"{'worst inputs':<30} label"
        print(header)
        for ep in episodes:
            worst = ", ".join(f"{n} {z:.1f} sd" for n, z in ep.worst_inputs[:2]) or "-"
            print(f"{ep.id:<28} {utc(ep.start):<21} {utc(ep.end):<21} {_duration(ep.duration_s):>9} "
                  f"{ep.severity:<8} {'+'.join(ep.signals):<14} {worst:<30} {_label_text(ep, labels, contested)}")
    found = {ep.id for ep in episodes}
    orphans = [label for e, label in labels.items() if e not in found]
    for label in orphans:
        print(f"note: {label.episode} is labelled {label.verdict} by {label.by}, but its recordings are gone")
    if contested & found:
        print("!: the episode's labels disagree; the latest wins (`mlioc episodes show` gives the history)")
    return EXIT_OK


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def show_command(args: argparse.Namespace) -> int:
    model, directory, df = _recordings(args)
    ep = _find(find_episodes(df, model), args.id, directory)
    history = [label for label in read_labels(directory) if label.episode == ep.id]
    print(f"episode {ep.id} of model {model.name}")
    print(f"  alarmed      {utc(ep.start)} .. {utc(ep.end)} ({_duration(ep.duration_s)}), {ep.severity}, "
          f"{' and '.join(ep.signals)}; {ep.alarmed_rows} alarmed rows")
    print(f"  rows         {ep.rows} from {utc(ep.rows_from)} (one drift window before the first alarm): what a "
          f"label includes in or excludes from training")
    print("  peak         " + ", ".join(f"{k} {v:.3g}" for k, v in ep.peak.items()))
    print("  inputs       " + (", ".join(f"{n} moved {z:.2f} std devs" for n, z in ep.worst_inputs) or "-"))
    if ep.drift_worst:
        print("  DRIFT:WORST  " + ", ".join(f"{n} ({share:.0%})" for n, share in ep.drift_worst))
    print("  versions     " + (", ".join(f"v{v}" for v in ep.versions) or "-"))
    if not history:
        print("  label        none yet: mlioc episodes label CONFIG " + ep.id + " accept|reject --model "
              f"{model.name} --by NAME --why TEXT")
    for label in history:
        print(f"  label        {label.verdict} by {label.by} at {utc(label.time)}: {label.why}"
              + (" (overruled the previous verdict)" if label.raw.get("forced") else ""))
    out = Path(args.out) if args.out else Path(f"{ep.id}.png")
    plot(df, ep, model, out)
    print(f"  plot         {out}")
    return EXIT_OK


def plot(df, ep: Episode, model: ModelConfig, out: Path) -> None:
    """Inputs and scores around the episode (one episode length either side), the episode shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pad = max(ep.end - ep.rows_from, 60.0)
    t_all = df["time"].to_numpy(np.float64)
    near = df[(t_all >= ep.rows_from - pad) & (t_all <= ep.end + pad)].sort_values("time")
    t = (near["time"].to_numpy(np.float64) - ep.start) / 60.0
    names = [n for n in SIGNALS if f"score.{n}" in near.columns]
    inputs = [i.name for i in model.inputs if f"in.{i.name}" in near.columns]
    fig, axes = plt.subplots(len(inputs) + len(names), 1, sharex=True, figsize=(9, 1.6 * (len(inputs) + len(names))),
                             squeeze=False)
    rows = [ax for (ax,) in axes]
    colours = {0: "tab:green", 1: "gold", 2: "tab:red", 3: "lightgrey"}
    for ax, name in zip(rows, inputs, strict=False):
        ax.plot(t, near[f"in.{name}"].to_numpy(np.float64), lw=0.8, color="tab:blue")
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
    for ax, name in zip(rows[len(inputs):], names, strict=True):
        values = near[f"score.{name}"].to_numpy(np.float64)
        sev = near[f"score_sev.{name}"].fillna(3).to_numpy(np.int64)
        ax.plot(t, values, lw=0.8, color="black")
        ax.scatter(t, values, c=[colours.get(int(s), "grey") for s in sev], s=4)
        ax.set_ylabel(SIGNALS[name], rotation=0, ha="right", fontsize=8)
    for ax in rows:
        ax.axvspan((ep.rows_from - ep.start) / 60.0, (ep.end - ep.start) / 60.0, color="orange", alpha=0.15)
        ax.tick_params(labelsize=7)
    rows[-1].set_xlabel(f"minutes from the first alarm ({utc(ep.start)})")
    fig.suptitle(f"{ep.id}: {ep.severity} {' + '.join(ep.signals)} (shaded: the episode's rows)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def label_command(args: argparse.Namespace) -> int:
    model, directory, df = _recordings(args)
    ep = _find(find_episodes(df, model), args.id, directory)
    label = add_label(directory, ep, args.verdict, args.by or who_am_i(), args.why, force=args.force)
    what = "train on it (a new normal)" if label.verdict == "accept" else "never train on it (a fault)"
    print(f"{ep.id}: {label.verdict} by {label.by} ({ep.rows} rows): {what}; recorded in {labels_path(directory)}")
    return EXIT_OK


COMMANDS = {"list": list_command, "show": show_command, "label": label_command}


def episodes_command(args: argparse.Namespace) -> int:
    """``mlioc episodes``: 0 done; 1 unknown episode, recordings gone, a refused label, bad config; 2 usage."""
    try:
        return COMMANDS[args.action](args)
    except EpisodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL
