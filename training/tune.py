"""``mlioc tune``: hyperparameter search over ``training.search`` with Optuna, logged as nested MLflow runs.

One **study** (Optuna) per search, in an SQL **storage**: sqlite next to MLflow's database by default
(``optuna.db``), or any SQLAlchemy URL (``postgresql://user:pw@host/db``) that several ``mlioc tune``
processes, on any number of hosts, share. Optuna hands each worker its own trial numbers from the
storage, so no trial runs twice; a worker counts the study's complete, pruned and running trials and
asks for a new one under a lock (PostgreSQL advisory lock, sqlite file lock), so N workers together
run exactly ``--trials`` (failed trials do not count: they are run again).

Each trial trains with the same code as ``mlioc train`` (:func:`training.trainer.train`, seeded with
``training.seed``, from scratch, on the same time-ordered split and normalisation) for at most
``search.epochs`` epochs; the per-epoch hook reports the validation loss to the pruner and stops a
trial the pruner gives up on. The objective is the final validation loss (MSE on standardised
outputs, what ``mlioc train`` logs as ``val_loss``).

MLflow: each study has **one parent run** (in the model's experiment, ``mlioc-<model>``), created by
whichever worker creates the study, and its id is a user attribute of the study — set under a lock
(a PostgreSQL advisory lock, a file lock for sqlite) together with the study's creation, so workers
that start at the same instant find the same parent. Every trial is a run nested under it (params,
per-epoch ``train_loss`` / ``val_loss`` / ``lr``, ``mlioc.tune.state`` COMPLETE / PRUNED / FAIL). Each
worker, when it stops, logs the search so far onto the parent (best trial, ``search/trials.csv`` and
``.md``, ``search/history.png``) and ends the parent when no trial is still running.

The study carries ``mlioc.model`` (a study of another model is refused), a digest of the objective
(space, epochs cap, kind, seed, split: resuming with a changed search is refused) and the dataset's
digest (every worker must train on the same data). SIGINT / SIGTERM stop cleanly: the running trial is
marked FAIL (its MLflow run KILLED), the parent run is ended, and running ``mlioc tune`` again with the
same study resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.trial import TrialState

from ioc.core.config import Config
from training import registry
from training.dataset import Normalisation, build_dataset, time_split
from training.layout import Layout
from training.models import build_model as build_net
from training.pipeline import normalise_split
from training.spec import Param, SearchSpec, TrainSpec
from training.trainer import EpochStats, seed_everything, train

log = logging.getLogger("mlioc.training.tune")

ATTR_MODEL = "mlioc.model"
ATTR_PARENT = "mlioc.mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlioc.mlflow_experiment_id"
ATTR_TRACKING = "mlioc.tracking_uri"
ATTR_OBJECTIVE = "mlioc.objective_digest"
ATTR_DATASET = "mlioc.dataset_digest"
ATTR_SPACE = "mlioc.space"
TRIAL_OVERRIDES = "mlioc.overrides"
TRIAL_RUN = "mlioc.run_id"
TRIAL_WORKER = "mlioc.worker"
TRIAL_EPOCHS = "mlioc.epochs_run"

METRIC_FLUSH_EVERY = 10  # epochs per MLflow log_batch
CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable host fails after this, not after the OS's minutes
HEARTBEAT_S = 10  # a trial whose worker died is failed by the next worker after GRACE_S without heartbeat
GRACE_S = 60
_LOCK_KEY = 0x6D6C696F63  # "mlioc": the PostgreSQL advisory lock around study/parent creation


class TuneError(Exception):
    """The search cannot start or go on (bad storage, a study of another model, changed search ...)."""


# ----------------------------------------------------------------------------- storage URLs


def mask_url(url: str) -> str:
    """``scheme://user:***@host/db``: a URL fit for logs, tags and error messages."""
    m = re.match(r"^([^:/]+://)([^/@]*)@", url)
    if not m or ":" not in m.group(2):
        return url
    user = m.group(2).split(":", 1)[0]
    return f"{m.group(1)}{user}:***@{url[m.end():]}"


def _scrub(text: str, url: str) -> str:
    """An error message with the URL's password removed, wherever a driver may have echoed it."""
    m = re.match(r"^[^:/]+://[^/@:]*:([^/@]*)@", url)
    return text.replace(m.group(1), "***") if m and m.group(1) else text


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def default_storage(tracking_uri: str) -> str:
    """sqlite ``optuna.db`` beside MLflow's sqlite database, else in the current directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def _engine_kwargs(url: str) -> dict[str, Any]:
    if _scheme(url) == "postgresql":
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}
    return {}


def _storage_error(url: str, exc: BaseException) -> TuneError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^\([^)]*\)\s*", "", first)  # sqlalchemy's "(psycopg2.OperationalError) " prefix
    return TuneError(f"cannot use the study storage {mask_url(url)}: {_scrub(first, url)[:300]}")


def open_storage(url: str, *, create: bool = True,
                 on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
                 ) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url`` (tables created when ``create``), with heartbeats so that a trial of
    a worker that died is failed by the others; :class:`TuneError` naming the (masked) URL otherwise."""
    db = _sqlite_path(url)
    if db is not None and not create and not db.exists():
        raise TuneError(f"no study storage at {url} (run `mlioc tune` first, or pass --storage)")
    if db is not None and not db.parent.is_dir():
        raise TuneError(f"cannot use the study storage {url}: directory {db.parent} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), skip_table_creation=not create,
                                              heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              heartbeat_stale_trial_callback=on_stale)
    except Exception as exc:  # SQLAlchemy (unreachable, refused login), a missing driver, a bad URL, optuna's own
        raise _storage_error(url, exc) from exc


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Serialise first-time set-up across workers: table creation, and finding-or-creating the study and its
    MLflow parent. PostgreSQL: a session advisory lock; sqlite: an flock beside the file; else nothing
    (then a worker that loses the creation race waits for the winner's attributes)."""
    scheme = _scheme(url)
    if scheme == "postgresql":
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        try:
            engine = sqlalchemy.create_engine(url, poolclass=NullPool, **{k: v for k, v in _engine_kwargs(url).items()
                                                                          if k != "pool_pre_ping"})
            conn = engine.connect()
        except Exception as exc:
            raise _storage_error(url, exc) from exc
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
            yield
        finally:
            with contextlib.suppress(Exception):
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()
            conn.close()
            engine.dispose()
    elif scheme == "sqlite" and (path := _sqlite_path(url)) is not None:
        import fcntl

        if not path.parent.is_dir():
            raise TuneError(f"cannot use the study storage {url}: directory {path.parent} does not exist")
        with open(str(path) + ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


# ----------------------------------------------------------------------------- search space -> TrainSpec


def suggest(trial: optuna.Trial, search: SearchSpec) -> dict[str, Any]:
    """Ask the trial for a value of every searched key; fixed keys keep their value."""
    values: dict[str, Any] = {}
    for key, p in search.space.items():
        if p.kind == "fixed":
            values[key] = p.value
        elif p.kind == "float":
            assert p.low is not None and p.high is not None
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            assert p.low is not None and p.high is not None
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            labels = [",".join(map(str, c)) if isinstance(c, tuple) else c for c in p.choices]
            label = trial.suggest_categorical(key, labels)
            values[key] = p.choices[labels.index(label)]
    return values


def overrides(values: dict[str, Any], spec: TrainSpec, search: SearchSpec) -> dict[str, Any]:
    """The ``training:`` keys a trial sets (JSON-able; stored with the trial, applied by ``--params best``).

    ``width`` / ``depth``: every hidden layer has the same width; an unsearched one comes from
    ``training.hidden`` (its first width, its number of layers).
    """
    out: dict[str, Any] = {"epochs": search.epochs}
    for key in ("lr", "weight_decay", "activation", "batch_size", "bottleneck"):
        if key in values:
            out[key] = values[key]
    if "conv_channels" in values:
        out["channels"] = list(values["conv_channels"])
    if "width" in values or "depth" in values:
        width = int(values.get("width", spec.hidden[0]))
        depth = int(values.get("depth", len(spec.hidden)))
        out["hidden"] = [width] * depth
    return out


def apply_overrides(spec: TrainSpec, ov: dict[str, Any]) -> TrainSpec:
    known = {f.name for f in dataclasses.fields(TrainSpec)}
    unknown = sorted(set(ov) - known)
    if unknown:
        raise TuneError(f"the trial sets {unknown}, which this version of the trainer does not know")
    changes: dict[str, Any] = {k: (tuple(v) if k in ("hidden", "channels") else v) for k, v in ov.items()}
    return dataclasses.replace(spec, **changes)


def describe(p: Param) -> str:
    """``float [0.0003, 0.03] log`` / ``int [16, 128] step 16`` / ``choice silu|relu`` / ``fixed 64``."""
    if p.kind == "fixed":
        return f"fixed {p.value}"
    if p.kind == "choice":
        return "choice " + "|".join(",".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in p.choices)
    return f"{p.kind} [{p.low:g}, {p.high:g}]" + (" log" if p.log else "") + (f" step {p.step:g}" if p.step else "")


def search_settings(search: SearchSpec) -> dict[str, Any]:
    """The sampler and pruner settings that apply (for the parent run's params and the docs)."""
    out: dict[str, Any] = {"epochs": search.epochs, "sampler": search.sampler, "seed": search.seed}
    if search.sampler == "tpe":
        out["startup_trials"] = search.startup_trials
    out["pruner"] = search.pruner
    if search.pruner == "median":
        out |= {"pruner.startup_trials": search.pruner_startup_trials, "pruner.warmup_epochs": search.warmup_epochs}
    elif search.pruner == "successive_halving":
        out |= {"pruner.min_epochs": search.min_epochs, "pruner.reduction_factor": search.reduction_factor}
    return out


def objective_digest(spec: TrainSpec, search: SearchSpec) -> str:
    """What makes trials of one study comparable: the space, the epochs cap and the fixed training settings."""
    doc = {"space": {k: dataclasses.asdict(p) for k, p in sorted(search.space.items())}, "epochs": search.epochs,
           "spec": {k: getattr(spec, k) for k in ("kind", "hidden", "bottleneck", "activation", "batch_size", "lr",
                                                   "weight_decay", "seed")},
           "split": dataclasses.asdict(spec.split)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()[:16]


class _PerTrialSeed(optuna.samplers.BaseSampler):
    """A sampler re-created for every trial with a seed derived from (seed, trial number).

    One seeded sampler per process would make two workers propose the same parameters (the same random
    start-up draws); seeding per trial number keeps one worker's search reproducible and gives every
    worker's trials their own draws.
    """

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._factory = factory
        self._seed = seed
        self._inner = factory(seed)

    def _seed_for(self, number: int) -> int:
        return int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0])

    def before_trial(self, study, trial) -> None:
        self._inner = self._factory(self._seed_for(trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    def factory(seed: int) -> optuna.samplers.BaseSampler:
        if search.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # constant_liar: a worker does not propose what another worker's running trial is trying.
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.startup_trials, constant_liar=True)

    return _PerTrialSeed(factory, search.seed)


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=search.pruner_startup_trials,
                                           n_warmup_steps=search.warmup_epochs)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_epochs,
                                                      reduction_factor=search.reduction_factor)
    return optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------- Ctrl-C


class _Interrupts:
    """SIGINT / SIGTERM: raise KeyboardInterrupt at once only while a trial trains; anywhere else (asking
    for a trial, telling its result, writing to MLflow) the signal is remembered and acted on at the next
    safe point, so no trial is left RUNNING in the storage and no run half-written."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._allow = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handler(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if first and self._allow:
            self._allow = False
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        self.check()
        self._allow = True
        try:
            yield
        finally:
            self._allow = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        was, self._allow = self._allow, False
        try:
            yield
        finally:
            self._allow = was
        if was:
            self.check()


# ----------------------------------------------------------------------------- the search


@dataclass
class TuneOptions:
    trials: int | None = None  # default: training.search.trials
    storage: str | None = None  # default: sqlite optuna.db beside MLflow's database
    study: str | None = None  # default: training.search.study or mlioc-<model>
    timeout: float | None = None  # no new trial starts after this many seconds
    tracking_uri: str | None = None
    data: str | None = None


@dataclass
class TrialRecord:
    number: int
    state: str
    value: float | None
    epochs: int
    seconds: float
    params: dict[str, Any]
    worker: str
    run_id: str


@dataclass
class TuneOutcome:
    study: str
    storage: str  # masked
    tracking_uri: str  # masked
    parent_run_id: str
    trials: list[TrialRecord] = field(default_factory=list)  # the whole study
    mine: list[int] = field(default_factory=list)  # trial numbers this worker ran
    best: TrialRecord | None = None
    target: int = 0
    interrupted: int | None = None  # the signal that stopped the search
    parent_status: str = "RUNNING"
    epochs_saved: int = 0  # epochs that pruned trials did not train (cap - epochs run)
    seconds: float = 0.0

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)


class TuneProgress(Protocol):
    """What :func:`tune` tells about its progress (the CLI's terminal lines implement it)."""

    def stage(self, text: str) -> None: ...

    def trial_started(self, number: int, params: dict[str, Any], worker: str) -> None: ...

    def trial_finished(self, record: TrialRecord, done: int, target: int, pruned: int,
                       best: TrialRecord | None) -> None: ...


class TuneReporter:
    """Progress hooks; the CLI prints them, the default logs them."""

    def stage(self, text: str) -> None:
        log.info("%s", text)

    def trial_started(self, number: int, params: dict[str, Any], worker: str) -> None:
        log.info("trial %d started: %s", number, params)

    def trial_finished(self, record: TrialRecord, done: int, target: int, pruned: int,
                       best: TrialRecord | None) -> None:
        log.info("trial %d %s", record.number, record.state)


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    out = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
            t.datetime_start else 0.0
        out.append(TrialRecord(t.number, t.state.name, value, int(t.user_attrs.get(TRIAL_EPOCHS, 0)), seconds,
                               dict(t.params), str(t.user_attrs.get(TRIAL_WORKER, "")),
                               str(t.user_attrs.get(TRIAL_RUN, ""))))
    return out


def best_record(records: list[TrialRecord]) -> TrialRecord | None:
    done = [r for r in records if r.state == "COMPLETE" and r.value is not None and math.isfinite(r.value)]
    return min(done, key=lambda r: (r.value, r.number)) if done else None


def _check_study(study: optuna.Study, name: str, model: str, digest: str, url: str) -> dict[str, Any]:
    attrs = study.user_attrs
    where = f"study {name!r} in {mask_url(url)}"
    if ATTR_MODEL not in attrs:
        raise TuneError(f"{where} was not created by `mlioc tune` (it has no {ATTR_MODEL} attribute): "
                        "pass another --study")
    if attrs[ATTR_MODEL] != model:
        raise TuneError(f"{where} belongs to model {attrs[ATTR_MODEL]!r}, not {model!r}: pass another --study")
    if attrs.get(ATTR_OBJECTIVE) != digest:
        raise TuneError(f"{where} was created for a different search (training.search space or epochs, or the "
                        f"fixed training settings changed: digest {attrs.get(ATTR_OBJECTIVE)} != {digest}); "
                        "resume it with the config it was made with, or pass --study NEW")
    return attrs


def _wait_for_attrs(study: optuna.Study, deadline_s: float = 30.0) -> None:
    """Storages without a lock: another worker created the study an instant ago and is setting its
    attributes. Poll the storage (not a fixed sleep) until they are there or the deadline passes."""
    t_end = time.monotonic() + deadline_s
    delay = 0.05
    while ATTR_PARENT not in study.user_attrs and time.monotonic() < t_end:
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def tune(config: Config, model_name: str, spec: TrainSpec, search: SearchSpec, options: TuneOptions,
         reporter: TuneProgress | None = None, *, handle_signals: bool = True) -> TuneOutcome:
    """Run (or join, or resume) the study; raises :class:`TuneError`, ``DatasetError`` or ``TrackingError``.

    With ``handle_signals`` (the CLI), SIGINT / SIGTERM stop the search cleanly: the outcome's
    ``interrupted`` is the signal number.
    """
    interrupts = _Interrupts()
    if handle_signals:
        interrupts.install()
    try:
        return _tune(config, model_name, spec, search, options, reporter or TuneReporter(), interrupts)
    finally:
        interrupts.restore()


def _tune(config: Config, model_name: str, spec: TrainSpec, search: SearchSpec, options: TuneOptions,
          reporter: TuneProgress, interrupts: _Interrupts) -> TuneOutcome:
    from mlflow.entities import Metric
    from mlflow.entities import Param as MlflowParam

    t_start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model = config.model(model_name)
    target = options.trials if options.trials is not None else search.trials
    if target <= 0:
        raise TuneError(f"--trials must be > 0, got {target}")
    uri = registry.resolve_tracking_uri(options.tracking_uri)
    url = options.storage or default_storage(uri)
    name = options.study or search.study_name(model.name)
    digest = objective_digest(spec, search)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    holder: dict[str, Any] = {}

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose worker died (no heartbeat): its MLflow run is FAILED too."""
        run_id = trial.user_attrs.get(TRIAL_RUN)
        client = holder.get("client")
        if run_id and client is not None:
            with contextlib.suppress(Exception):
                client.set_tag(run_id, "mlioc.tune.state", "FAIL")
                client.set_tag(run_id, "mlioc.tune.reason", "worker died (no heartbeat)")
                client.set_terminated(run_id, "FAILED")

    # 1. The storage and, if the study exists, whether this search may join it: before anything is written.
    reporter.stage(f"study {name!r} in {mask_url(url)}")
    sampler, pruner = make_sampler(search), make_pruner(search)
    with storage_lock(url):
        storage = open_storage(url, on_stale=on_stale)
        try:
            existing = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            existing = None
        if existing is not None:
            if not _has_lock(url) and ATTR_PARENT not in existing.user_attrs:
                _wait_for_attrs(existing)  # another worker may be creating it right now
            _check_study(existing, name, model.name, digest, url)

    # 2. The data, once per worker; every worker of a study must see the same rows.
    try:
        with interrupts.allowed():
            reporter.stage("loading data")
            dataset = build_dataset(model, spec, options.data)
            split = time_split(dataset, spec.split)
    except KeyboardInterrupt:
        return TuneOutcome(name, mask_url(url), mask_url(uri), "", target=target, interrupted=interrupts.signum,
                           parent_status="")
    if existing is not None and existing.user_attrs.get(ATTR_DATASET) not in (None, dataset.digest):
        raise TuneError(f"study {name!r} was searched on dataset {existing.user_attrs[ATTR_DATASET][:16]}, this "
                        f"worker loaded {dataset.digest[:16]}: every worker (and a resumed search) must train on "
                        "the same data; pass --study NEW for new data")
    norm = Normalisation.fit(split.train, per_element=spec.normalise == "element")
    layout = Layout.from_model(model, spec.kind)
    arrays = normalise_split(split, norm, layout)

    # 3. MLflow and the study with its parent run, found or created under the storage lock.
    with storage_lock(url):
        client = registry.setup(uri, spec.experiment_name)
        holder["client"] = client
        experiment_id = client.get_experiment_by_name(spec.experiment_name).experiment_id
        study, parent_id = _find_or_create(storage, name, sampler, pruner, client, experiment_id, model.name,
                                           digest, dataset.digest, spec, search, url, uri, config)
    _check_study(study, name, model.name, digest, url)
    if study.user_attrs.get(ATTR_DATASET) != dataset.digest:
        raise TuneError(f"study {name!r} was searched on dataset {study.user_attrs.get(ATTR_DATASET, '?')[:16]}, "
                        f"this worker loaded {dataset.digest[:16]}: every worker must train on the same data")
    try:
        parent = client.get_run(parent_id)
    except Exception as exc:
        raise TuneError(f"the study's MLflow parent run {parent_id} is not at {mask_url(uri)} (the study was "
                        f"tracked at {study.user_attrs.get(ATTR_TRACKING)}: every worker needs the same "
                        f"MLFLOW_TRACKING_URI; or the run was deleted: pass --study NEW)") from exc
    if parent.info.lifecycle_stage != "active":
        raise TuneError(f"the study's MLflow parent run {parent_id} was deleted: pass --study NEW")
    client.update_run(parent_id, status="RUNNING")
    client.set_tag(parent_id, "mlioc.tune.trials_target", str(target))

    study_id = storage.get_study_id_from_name(name)
    outcome = TuneOutcome(name, mask_url(url), mask_url(uri), parent_id, target=target)
    flush: list = []

    def objective(trial: optuna.Trial) -> float:
        with interrupts.deferred():
            interrupts.check()  # a signal while Optuna was asking for this trial: fail it, start nothing
            outcome.mine.append(trial.number)
            values = suggest(trial, search)
            ov = overrides(values, spec, search)
            tspec = apply_overrides(spec, ov)
            trial.set_user_attr(TRIAL_OVERRIDES, ov)
            trial.set_user_attr(TRIAL_WORKER, worker)
            run = client.create_run(experiment_id, run_name=f"{name}-trial-{trial.number:03d}", tags={
                "mlflow.parentRunId": parent_id, "mlioc.model": model.name, "mlioc.tune": "trial",
                "mlioc.tune.study": name, "mlioc.tune.trial": str(trial.number), "mlioc.tune.worker": worker,
                "mlioc.dataset.digest": dataset.digest})
            run_id = run.info.run_id
            trial.set_user_attr(TRIAL_RUN, run_id)
            params = {**{k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in values.items()},
                      "hidden": json.dumps(list(tspec.hidden)), "epochs": tspec.epochs, "seed": tspec.seed,
                      "trial": trial.number}
            client.log_batch(run_id, params=[MlflowParam(k, str(v)) for k, v in params.items()])
            reporter.trial_started(trial.number, values, worker)
        state, status, reason, epochs_run = "FAIL", "FAILED", "", 0
        t0 = time.perf_counter()

        def hook(stats: EpochStats) -> None:
            nonlocal epochs_run
            with interrupts.deferred():
                epochs_run = stats.epoch
                now = int(time.time() * 1000)
                flush.extend([Metric("train_loss", stats.train_loss, now, stats.epoch),
                              Metric("val_loss", stats.val_loss, now, stats.epoch),
                              Metric("lr", stats.lr, now, stats.epoch)])
                if stats.epoch % METRIC_FLUSH_EVERY == 0:
                    client.log_batch(run_id, metrics=flush)
                    flush.clear()
                trial.report(stats.val_loss, stats.epoch)
                prune = trial.should_prune()
            if prune:
                raise optuna.TrialPruned(f"epoch {stats.epoch}: val loss {stats.val_loss:.4g}")

        try:
            seed_everything(tspec.seed)
            net = build_net(tspec, layout)
            with interrupts.allowed():
                result = train(tspec, net, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                               on_epoch=hook)
            value = result.history[-1].val_loss
            if math.isfinite(value):
                state, status = "COMPLETE", "FINISHED"
            else:
                reason = f"final val loss {value}"
            return value
        except optuna.TrialPruned as exc:
            state, status, reason = "PRUNED", "FINISHED", str(exc)
            raise
        except KeyboardInterrupt:
            reason, status = f"interrupted (signal {interrupts.signum})", "KILLED"
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            with interrupts.deferred():
                trial.set_user_attr(TRIAL_EPOCHS, epochs_run)
                if flush:
                    client.log_batch(run_id, metrics=flush)
                    flush.clear()
                client.log_batch(run_id, metrics=[Metric("epochs_run", epochs_run, int(time.time() * 1000), 0),
                                                  Metric("trial_seconds", time.perf_counter() - t0,
                                                         int(time.time() * 1000), 0)])
                client.set_tag(run_id, "mlioc.tune.state", state)
                if reason:
                    client.set_tag(run_id, "mlioc.tune.reason", reason[:5000])
                client.set_terminated(run_id, status)

    def report_finished(number: int) -> None:
        records = trial_records(study)
        mine = next((r for r in records if r.number == number), None)
        done = sum(1 for r in records if r.state in ("COMPLETE", "PRUNED"))
        if mine is not None:
            reporter.trial_finished(mine, done, target, sum(1 for r in records if r.state == "PRUNED"),
                                    best_record(records))

    status = "FAILED"
    t_loop = time.monotonic()
    try:
        with interrupts.deferred():
            busy = _busy(study)
            if busy >= target:
                reporter.stage(f"the study already has {busy} trial(s) (target {target}): nothing to run")
            else:
                reporter.stage(f"searching: {target - busy} more trial(s) towards {target} "
                               f"({busy} in the study; worker {worker}; MLflow parent run {parent_id})")
        while interrupts.signum is None:
            if options.timeout is not None and time.monotonic() - t_loop >= options.timeout:
                reporter.stage(f"--timeout {options.timeout:g} s reached: no new trial")
                break
            with interrupts.deferred(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental; "heartbeat is meant for optimize()"
                optuna.storages.fail_stale_trials(study)
                # Counting and asking under the lock: N workers never start more than --trials trials.
                with storage_lock(url):
                    trial = study.ask() if _busy(study) < target else None
            if trial is None:
                break
            state, value, error = TrialState.FAIL, None, None
            try:
                with _heartbeat(storage, storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)):
                    value = objective(trial)
                if math.isfinite(value):
                    state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except KeyboardInterrupt:
                pass  # FAIL; the loop ends on interrupts.signum
            except Exception as exc:  # a bug or a resource problem: the trial fails, the search stops
                error = exc
            with interrupts.deferred():
                if state == TrialState.COMPLETE:
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=state)
                report_finished(trial.number)
            if error is not None:
                raise TuneError(f"trial {trial.number} failed: {type(error).__name__}: {error}"[:1000]) from error
        status = "KILLED" if interrupts.signum is not None else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
    finally:
        # Whatever stopped the search, the parent gets the search so far and is ended (unless another
        # worker still has a trial running: that worker ends it).
        with interrupts.deferred():
            outcome.interrupted = interrupts.signum
            try:
                outcome.trials = trial_records(study)
                outcome.best = best_record(outcome.trials)
                outcome.epochs_saved = sum(max(search.epochs - r.epochs, 0) for r in outcome.trials
                                           if r.state == "PRUNED")
                _summarise(client, parent_id, outcome, search, name)
            except Exception as exc:  # never hide why the search stopped; the parent is still ended below
                log.warning("could not log the search summary on parent run %s: %s", parent_id, exc)
            if not any(r.state == "RUNNING" for r in outcome.trials):
                with contextlib.suppress(Exception):
                    client.set_terminated(parent_id, status)
                    outcome.parent_status = status
    outcome.seconds = time.perf_counter() - t_start
    return outcome


def _has_lock(url: str) -> bool:
    """Whether :func:`storage_lock` really serialises workers on this storage."""
    return _scheme(url) == "postgresql" or (_scheme(url) == "sqlite" and _sqlite_path(url) is not None)


def _busy(study: optuna.Study) -> int:
    """Trials that count towards --trials: complete, pruned and running (failed ones are run again)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


@contextlib.contextmanager
def _heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """Record the running trial's heartbeat every HEARTBEAT_S in a thread (what ``Study.optimize`` does),
    so that if this worker dies, another one fails the trial after GRACE_S."""
    import threading

    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _find_or_create(storage, name: str, sampler, pruner, client, experiment_id: str, model: str, digest: str,
                    data_digest: str, spec: TrainSpec, search: SearchSpec, url: str, uri: str,
                    config: Config) -> tuple[optuna.Study, str]:
    """The study and its MLflow parent run id; the creator makes both (call under :func:`storage_lock`)."""
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = None
    if study is not None:
        if ATTR_PARENT not in study.user_attrs and not _has_lock(url):
            _wait_for_attrs(study)
        if ATTR_PARENT not in study.user_attrs:
            _check_study(study, name, model, digest, url)  # names what is wrong if it is not ours
            raise TuneError(f"study {name!r} in {mask_url(url)} has no MLflow parent run (its creator stopped "
                            "while creating it): pass another --study")
        return study, study.user_attrs[ATTR_PARENT]
    parent = client.create_run(experiment_id, run_name=f"tune-{name}", tags={
        "mlioc.model": model, "mlioc.tune": "parent", "mlioc.tune.study": name, "mlioc.tune.storage": mask_url(url),
        "mlioc.config": str(config.path), "mlioc.dataset.digest": data_digest, "mlioc.user": registry.user()})
    parent_id = parent.info.run_id
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="minimize", load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        # Lost a creation race (a storage without a lock): the winner's parent is the one.
        client.set_terminated(parent_id, "KILLED")
        client.delete_run(parent_id)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        _wait_for_attrs(study)
        if ATTR_PARENT not in study.user_attrs:
            raise TuneError(f"study {name!r} in {mask_url(url)} has no MLflow parent run: pass another --study") \
                from None
        return study, study.user_attrs[ATTR_PARENT]
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        client.delete_run(parent_id)
        raise
    try:
        attrs = {ATTR_MODEL: model, ATTR_OBJECTIVE: digest, ATTR_DATASET: data_digest, ATTR_TRACKING: mask_url(uri),
                 ATTR_EXPERIMENT: experiment_id, ATTR_SPACE: json.dumps(search.to_dict()["space"], default=list)}
        for k, v in attrs.items():
            study.set_user_attr(k, v)
        study.set_user_attr(ATTR_PARENT, parent_id)  # last: its presence means the study is complete
        params = {f"search.{k}": v for k, v in search_settings(search).items()}
        params |= {f"search.space.{k}": describe(p) for k, p in search.space.items()}
        params |= {"study": name, "storage": mask_url(url), "objective_digest": digest,
                   "dataset.digest": data_digest}
        from mlflow.entities import Param as MlflowParam

        client.log_batch(parent_id, params=[MlflowParam(k, str(v)[:6000]) for k, v in params.items()])
    except BaseException:
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=name, storage=storage)
        with contextlib.suppress(Exception):
            client.set_terminated(parent_id, "FAILED")
            client.delete_run(parent_id)
        raise
    return study, parent_id


# ----------------------------------------------------------------------------- what the parent run shows


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def trials_markdown(records: list[TrialRecord]) -> str:
    lines = ["| trial | state | val loss | epochs | seconds | params | worker | MLflow run |",
             "|---:|---|---:|---:|---:|---|---|---|"]
    for r in records:
        value = f"{r.value:.5g}" if r.value is not None else ""
        lines.append(f"| {r.number} | {r.state} | {value} | {r.epochs} | {r.seconds:.1f} | {format_params(r.params)} "
                     f"| {r.worker} | {r.run_id} |")
    return "\n".join(lines) + "\n"


def plot_history(records: list[TrialRecord], path: Path, title: str) -> None:
    """Optimisation history: each trial's validation loss (pruned: the last one reported) and the best so far."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.add_subplot()
    def points(state: str) -> list[tuple[int, float]]:
        return sorted((r.number, r.value) for r in records
                      if r.state == state and r.value is not None and math.isfinite(r.value))

    done, pruned = points("COMPLETE"), points("PRUNED")
    if done:
        ax.scatter([n for n, _ in done], [v for _, v in done], color="tab:blue", label="complete")
        best, xs, ys = math.inf, [], []
        for n, v in done:
            best = min(best, v)
            xs.append(n)
            ys.append(best)
        last = max(r.number for r in records)
        if last > xs[-1]:
            xs.append(last)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter([n for n, _ in pruned], [v for _, v in pruned], marker="x", color="grey",
                   label="pruned (last reported)")
    values = [v for _, v in done + pruned]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss (MSE, standardised outputs)")
    ax.set_title(title)
    if done or pruned:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _summarise(client, parent_id: str, outcome: TuneOutcome, search: SearchSpec, name: str) -> None:
    from mlflow.entities import Metric

    records = outcome.trials
    now = int(time.time() * 1000)
    counts = Counter(r.state for r in records)
    done = counts["COMPLETE"] + counts["PRUNED"]
    metrics = [Metric("trials_complete", counts["COMPLETE"], now, done),
               Metric("trials_pruned", counts["PRUNED"], now, done),
               Metric("trials_failed", counts["FAIL"], now, done),
               Metric("epochs_saved_by_pruning", outcome.epochs_saved, now, done)]
    tags = {"mlioc.tune.trials": str(len(records))}
    best = outcome.best
    if best is not None and best.value is not None:
        metrics.append(Metric("best_val_loss", best.value, now, done))
        tags |= {"mlioc.tune.best_trial": str(best.number), "mlioc.tune.best_value": f"{best.value:.6g}",
                 "mlioc.tune.best_run_id": best.run_id, "mlioc.tune.best_params": json.dumps(best.params)[:5000]}
    client.log_batch(parent_id, metrics=metrics)
    for k, v in tags.items():
        client.set_tag(parent_id, k, v)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "search"
        d.mkdir()
        rows = [{"trial": r.number, "state": r.state, "val_loss": r.value, "epochs": r.epochs,
                 "seconds": round(r.seconds, 3), **{f"param.{k}": v for k, v in r.params.items()},
                 "worker": r.worker, "run_id": r.run_id} for r in records]
        import pandas as pd

        pd.DataFrame(rows).to_csv(d / "trials.csv", index=False)
        (d / "trials.md").write_text(f"# Study {name}\n\n" + trials_markdown(records))
        plot_history(records, d / "history.png", f"{name}: {done} trials ({counts['PRUNED']} pruned)")
        (d / "best.json").write_text(json.dumps(dataclasses.asdict(best) if best else None, indent=2) + "\n")
        client.log_artifacts(parent_id, str(d), "search")


# ----------------------------------------------------------------------------- `mlioc train --params best`


@dataclass
class BestTrial:
    study: str
    storage: str  # masked
    number: int
    value: float
    overrides: dict[str, Any]
    run_id: str
    parent_run_id: str

    def provenance(self) -> dict[str, Any]:
        return {"study": self.study, "storage": self.storage, "trial": self.number, "value": self.value,
                "trial_run_id": self.run_id, "parent_run_id": self.parent_run_id, "params": self.overrides}


def best_trial(model: str, search: SearchSpec | None, *, study: str | None, storage: str | None,
               tracking_uri: str | None) -> BestTrial:
    """The best complete trial of the model's study (read only: nothing is created)."""
    uri = registry.resolve_tracking_uri(tracking_uri)
    url = storage or default_storage(uri)
    name = study or (search.study_name(model) if search is not None else f"mlioc-{model}")
    st = open_storage(url, create=False)
    try:
        s = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        raise TuneError(f"no study {name!r} in {mask_url(url)}: run `mlioc tune` first, or pass --study/--storage") \
            from None
    except Exception as exc:
        raise _storage_error(url, exc) from exc
    attrs = s.user_attrs
    if attrs.get(ATTR_MODEL) != model:
        owner = attrs.get(ATTR_MODEL)
        raise TuneError(f"study {name!r} in {mask_url(url)} " + (f"belongs to model {owner!r}, not {model!r}" if owner
                        else "was not created by `mlioc tune`") + ": pass another --study")
    records = trial_records(s)
    best = best_record(records)
    if best is None:
        raise TuneError(f"study {name!r} in {mask_url(url)} has no complete trial yet")
    frozen = next(t for t in s.get_trials(deepcopy=False) if t.number == best.number)
    ov = frozen.user_attrs.get(TRIAL_OVERRIDES)
    if not isinstance(ov, dict):
        raise TuneError(f"trial {best.number} of study {name!r} has no {TRIAL_OVERRIDES} attribute")
    assert best.value is not None
    return BestTrial(name, mask_url(url), best.number, float(best.value), ov, best.run_id,
                     str(attrs.get(ATTR_PARENT, "")))
