"""``mlioc train``: data -> training -> ONNX -> parity -> manifest -> gate -> MLflow -> store.

One run, in this order, every step logged to MLflow:

1. dataset (source, filters, time split, digest) and normalisation — from the training split, or the
   champion's own normalisation when warm-starting (its weights live in that space);
2. model: warm start from the champion's ONNX weights (``warm_start: auto|champion|scratch``), checked
   against ONNX Runtime before training; training with per-epoch metrics;
3. ONNX export and parity against torch on the test split (failure: not pushed);
4. manifest (reference distributions, test vectors, provenance), then the IOC's own validation of the
   exported version (:func:`ioc.core.engine.build_model`) — training can never push what the IOC would refuse;
5. challenger vs champion on the test split through the engine (:mod:`training.gate`);
6. with ``--push``: a winner is published into the store and pointed at by ``champion`` or
   ``challenger``, registered in MLflow with that alias; a loser or a failed check is not published,
   and the reason goes to the run's tags and to the store's ``events.jsonl``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ioc.core.config import Config, ModelConfig
from ioc.core.engine import EngineError, build_model
from ioc.core.manifest import ManifestError, parse_manifest, read_manifest
from ioc.core.store import ModelStore, StoreError, model_store, sha256_file
from training import registry
from training.dataset import Dataset, Normalisation, Split, build_dataset, time_split
from training.export import Parity, build_manifest, check_parity, export_onnx, manifest_kind, onnx_session
from training.gate import Decision, decide, load_champion
from training.layout import Layout
from training.models import WarmStartError, architecture, load_onnx_weights
from training.models import build_model as build_net
from training.spec import TrainSpec
from training.trainer import EpochStats, TrainResult, predict, seed_everything, train

log = logging.getLogger("mlioc.training")

MIN_REFERENCE_ROWS = 50  # a drift reference from fewer rows would alarm on its own sampling noise
METRIC_FLUSH_EVERY = 10  # epochs per MLflow log_batch (one DB round trip instead of one per metric)


class TrainError(Exception):
    """The run cannot proceed (bad data, store or config); the message says why."""


@dataclass
class Options:
    data: str | None = None
    push: bool = False
    tracking_uri: str | None = None
    epochs: int | None = None
    seed: int | None = None
    start: float | None = None
    end: float | None = None
    tuning: dict[str, Any] | None = None  # `--params best`: the study and trial the spec's values come from
    # The continual-learning loop (training/watch.py): where a winner goes, why the run happened, and
    # for a drift run the time the new regime began (the drift reference is taken from there on).
    promote_to: str | None = None  # None: training.gate.promote_to
    tags: dict[str, str] = field(default_factory=dict)  # e.g. mlioc.trigger, mlioc.requested_by
    reference_since: float | None = None


@dataclass
class Outcome:
    """What a run did, for the summary table and for tests."""

    run_id: str
    tracking_uri: str
    dataset: Dataset
    split: Split
    result: TrainResult
    parity: Parity
    decision: Decision
    warm_start: str
    store_version: int | None = None
    registry_version: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class Progress(Protocol):
    """What :func:`run` tells about its progress (the CLI's progress bar implements it)."""

    def stage(self, text: str) -> None: ...

    def training(self, epochs: int) -> Callable[[EpochStats], None]: ...


class Reporter:
    """Progress hooks (the CLI draws a progress bar; tests use this silent default)."""

    def stage(self, text: str) -> None:
        log.info("%s", text)

    def training(self, epochs: int) -> Callable[[EpochStats], None]:
        return lambda stats: None


def _warm_start(spec: TrainSpec, net: torch.nn.Sequential, store: ModelStore, layout: Layout,
                x_check: np.ndarray) -> tuple[str, Normalisation | None, int | None, str | None]:
    """(description, champion normalisation, parent version, parent sha) — or scratch with the reason."""
    if spec.warm_start == "scratch":
        return "scratch (warm_start: scratch)", None, None, None
    number = store.champion() if store.exists() else None
    why = None
    if number is None:
        why = "no champion"
    else:
        try:
            man = read_manifest(store.manifest_path(number)).raw
        except ManifestError as exc:
            why = f"champion v{number} manifest unreadable: {exc}"
        else:
            arch = man.get("provenance", {}).get("architecture")
            if arch != architecture(spec, layout):
                why = f"champion v{number} has architecture {arch}, this run {architecture(spec, layout)}"
            elif man.get("kind", "regression") != manifest_kind(spec.kind):
                why = f"champion v{number} is a {man.get('kind')} model"
    if why is None:
        try:
            load_onnx_weights(net, store.onnx_path(number))
            norm = Normalisation.from_manifest(layout, man)
            xn = layout.to_input_tensor((x_check - norm.x_mean) / norm.x_std)
            onnx = man.get("onnx", {})
            ref = onnx_session(str(store.onnx_path(number))).run([onnx.get("output", "y")],
                                                                  {onnx.get("input", "x"): xn})[0]
            diff = float(np.abs(predict(net, xn) - ref).max())
            if not diff <= spec.gate.parity_atol:
                raise WarmStartError(f"loaded weights differ from the champion's ONNX by {diff:.2e}")
        except (WarmStartError, OSError) as exc:
            why = f"champion v{number}: {exc}"
        else:
            return f"champion v{number}", norm, number, sha256_file(store.onnx_path(number))
    if spec.warm_start == "champion":
        raise TrainError(f"warm_start: champion, but {why}")
    return f"scratch ({why})", None, None, None


def normalise_split(split: Split, norm: Normalisation, layout: Layout | None = None) -> dict[str, np.ndarray]:
    """x/y of each part of the split in normalised units, float32 (what training and the gate use); the
    inputs in the graph's input tensor shape (``layout``; default: flat rows)."""
    out = {}
    for name in ("train", "val", "test"):
        part = getattr(split, name)
        x = (part.x - norm.x_mean) / norm.x_std
        out[f"x_{name}"] = layout.to_input_tensor(x) if layout is not None else x.astype(np.float32)
        out[f"y_{name}"] = ((part.y - norm.y_mean) / norm.y_std).astype(np.float32)
    return out


def run(config: Config, model_name: str, spec: TrainSpec, options: Options, reporter: Progress | None = None,
        *, archiver_session=None) -> Outcome:
    """One training run; raises :class:`TrainError` (or DatasetError/TrackingError) on unusable input."""
    import dataclasses

    import mlflow

    reporter = reporter or Reporter()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    model = config.model(model_name)
    if options.seed is not None:
        spec = dataclasses.replace(spec, seed=options.seed)
    if options.epochs is not None:
        spec = dataclasses.replace(spec, epochs=options.epochs)
    if options.promote_to is not None:
        spec = dataclasses.replace(spec, gate=dataclasses.replace(spec.gate, promote_to=options.promote_to))
    if options.start is not None or options.end is not None:
        spec = dataclasses.replace(spec, filters=dataclasses.replace(
            spec.filters, start=options.start if options.start is not None else spec.filters.start,
            end=options.end if options.end is not None else spec.filters.end))
    if model.store_is_registry:
        raise TrainError(f"model {model.name}: store is {model.store}; training pushes into a store directory")
    store = model_store(model)
    uri = registry.resolve_tracking_uri(options.tracking_uri)

    reporter.stage("loading data")
    t = time.perf_counter()
    dataset = build_dataset(model, spec, options.data, archiver_session=archiver_session)
    split = time_split(dataset, spec.split)
    timings["data_s"] = time.perf_counter() - t

    client = registry.setup(uri, spec.experiment_name)
    seed_everything(spec.seed)
    layout = Layout.from_model(model, spec.kind)
    net = build_net(spec, layout)
    warm, champ_norm, parent, parent_sha = _warm_start(spec, net, store, layout, split.test.x[:256])
    norm = champ_norm or Normalisation.fit(split.train, per_element=spec.normalise == "element")
    arrays = normalise_split(split, norm, layout)
    code = registry.code_version()
    env = registry.environment()

    with mlflow.start_run(run_name=f"{model.name}-{time.strftime('%Y%m%dT%H%M%S')}") as active:
        run_id = active.info.run_id
        artifact_uri = active.info.artifact_uri
        mlflow.set_tags({"mlioc.model": model.name, "mlioc.kind": spec.kind, "mlioc.config": str(config.path),
                         "mlioc.user": registry.user(), "mlioc.warm_start": warm,
                         "mlflow.source.git.commit": code["git_commit"], "mlioc.git.dirty": str(code["dirty"]),
                         "mlioc.git.branch": code["branch"], "mlioc.dataset.digest": dataset.digest}
                        | options.tags)
        if options.tuning is not None:
            t = options.tuning
            mlflow.set_tags({"mlioc.tune.study": t["study"], "mlioc.tune.storage": t["storage"],
                             "mlioc.tune.trial": str(t["trial"]), "mlioc.tune.trial_run_id": t["trial_run_id"],
                             "mlioc.tune.parent_run_id": t["parent_run_id"]})
            mlflow.log_dict(t, "tuning.json")
        params = registry.flatten({k: v for k, v in spec.to_dict().items() if k not in ("data",)})
        params |= registry.flatten({"dataset": {"digest": dataset.digest, "rows": len(dataset),
                                                "train_rows": len(split.train), "val_rows": len(split.val),
                                                "test_rows": len(split.test), "source": dataset.source["kind"]},
                                    "inputs": list(dataset.input_names), "outputs": list(dataset.output_names),
                                    "warm_start_from": parent, "versions": registry.key_versions(env)})
        mlflow.log_params({k: v[:6000] for k, v in params.items()})
        _log_dataset(mlflow, spec, dataset, split)
        log_lineage(mlflow, spec, dataset, store, options)
        mlflow.log_dict(spec.to_dict(), "spec.json")
        mlflow.log_dict(layout.to_dict(), "layout.json")
        mlflow.log_dict(norm.to_dict(), "normalisation.json")
        mlflow.log_dict(env, "environment.json")
        mlflow.log_dict(code, "code_version.json")
        hw = registry.hardware(str(torch.device("cuda") if torch.cuda.is_available() and spec.device != "cpu"
                                   else "cpu"))
        mlflow.log_dict(hw, "hardware.json")
        mlflow.set_tags({f"mlioc.hardware.{k}": str(v) for k, v in hw.items()})

        reporter.stage(f"training ({warm})")
        on_epoch = reporter.training(spec.epochs)
        pending: list = []

        def epoch_hook(stats: EpochStats) -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            pending.extend([Metric("train_loss", stats.train_loss, now, stats.epoch),
                            Metric("val_loss", stats.val_loss, now, stats.epoch),
                            Metric("lr", stats.lr, now, stats.epoch)])
            if stats.epoch % METRIC_FLUSH_EVERY == 0 or stats.epoch == spec.epochs:
                client.log_batch(run_id, metrics=pending)
                pending.clear()
            on_epoch(stats)

        result = train(spec, net, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                       on_epoch=epoch_hook)
        timings["train_s"] = result.seconds
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(result.net.state_dict(), Path(tmp) / "state_dict.pt")
            torch.save(result.init_state, Path(tmp) / "init_state_dict.pt")
            mlflow.log_artifact(str(Path(tmp) / "state_dict.pt"), "torch")
            mlflow.log_artifact(str(Path(tmp) / "init_state_dict.pt"), "torch")

        reporter.stage("exporting ONNX and checking parity")
        t = time.perf_counter()
        onnx_bytes = export_onnx(result.net, layout.input_tensor)
        torch_test = predict(result.net, arrays["x_test"])
        parity = check_parity(onnx_bytes, torch_test, arrays["x_test"], spec.gate.parity_atol)
        timings["export_s"] = time.perf_counter() - t
        mlflow.log_metrics({"onnx_parity_max_abs": parity.max_abs,
                            "samples_per_s": result.samples_per_s, "train_seconds": result.seconds})

        metrics = {"train_loss": result.history[-1].train_loss, "val_loss": result.history[-1].val_loss,
                   "onnx_parity_max_abs": parity.max_abs}
        provenance = {
            "mlflow": {"run_id": run_id, "tracking_uri": uri, "experiment": spec.experiment_name},
            "dataset": {"digest": dataset.digest, "rows": len(dataset), "source": dataset.source,
                        "filtered": dataset.filtered, "split": {"train": len(split.train), "val": len(split.val),
                                                                "test": len(split.test), "order": "time"}},
            "code_version": code,
            "environment": registry.key_versions(env),
            "hardware": {k: hw[k] for k in ("cpu", "device") if k in hw},
            "architecture": architecture(spec, layout),
            "seed": spec.seed,
            "warm_start": warm,
            "parent_version": parent,
            "parent_sha256": parent_sha,
            "metrics": metrics,
        }
        if options.tuning is not None:
            provenance["tuning"] = options.tuning
        reference = _reference_rows(dataset, options.reference_since)
        manifest = build_manifest(model, spec, layout, norm, split, onnx_bytes, provenance, reference=reference)

        reporter.stage("validating with the IOC engine and comparing with the champion")
        decision, loaded = _gate(config, model, spec, store, onnx_bytes, manifest, parity, split)
        if decision.challenger is not None:
            mlflow.log_metrics({f"test_rmse_{k}": v for k, v in decision.challenger.rmse.items()}
                               | {"test_mean_nrmse": decision.challenger.mean_nrmse})
            manifest["provenance"]["metrics"] |= {f"test_rmse_{k}": v for k, v in decision.challenger.rmse.items()}
        if decision.champion is not None:
            mlflow.log_metrics({f"champion_test_rmse_{k}": v for k, v in decision.champion.rmse.items()}
                               | {"champion_test_mean_nrmse": decision.champion.mean_nrmse})
        outcome = Outcome(run_id, uri, dataset, split, result, parity, decision, warm, seconds=timings)
        if options.push:
            _push(store, client, model, manifest, onnx_bytes, decision, outcome, artifact_uri, dataset)
        # The store/ artifacts are the version exactly as published (or as it would have been).
        with tempfile.TemporaryDirectory() as tmp:
            if outcome.store_version is not None:
                doc = json.loads(store.manifest_path(outcome.store_version).read_text())
            else:
                (Path(tmp) / "model.onnx").write_bytes(onnx_bytes)
                doc = dict(manifest, sha256=sha256_file(Path(tmp) / "model.onnx"))
            (Path(tmp) / "model.onnx").write_bytes(onnx_bytes)
            (Path(tmp) / "manifest.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            mlflow.log_artifacts(tmp, "store")
        if outcome.store_version is not None:
            outcome.registry_version = registry.register(
                client, model.name, run_id, artifact_uri, decision.pointer,
                {"store_version": str(outcome.store_version), "store": str(store.root),
                 "dataset_digest": dataset.digest})
            store.append_event("registered", model=model.name, version=outcome.store_version,
                               registry_version=outcome.registry_version, alias=decision.pointer, run_id=run_id,
                               user=registry.user())
        tags = {"mlioc.decision": ("promote:" + decision.pointer) if decision.promote else "rejected",
                "mlioc.reason": decision.reason[:5000], "mlioc.pushed": str(outcome.store_version is not None)}
        if outcome.store_version is not None:
            tags["mlioc.store_version"] = str(outcome.store_version)
            tags["mlioc.registry_version"] = str(outcome.registry_version)
        mlflow.set_tags(tags)
        del loaded
    timings["total_s"] = time.perf_counter() - t_start
    return outcome


def _reference_rows(dataset: Dataset, since: float | None) -> Dataset | None:
    """A drift run's reference: the rows of the new regime (from ``since`` on), if there are enough."""
    if since is None:
        return None
    rows = dataset.subset(dataset.time >= since)
    if len(rows) < MIN_REFERENCE_ROWS:
        log.warning("only %d rows since %s: the drift reference stays the training split", len(rows), since)
        return None
    return rows


def lineage(spec: TrainSpec, dataset: Dataset, store: ModelStore, options: Options) -> dict[str, Any]:
    """Which data this version came from: recording files, time window, filters, and the digest of the
    dataset its parent (the champion it warm-starts from) was trained on."""
    parent: dict[str, Any] = {}
    number = store.champion() if store.exists() else None
    if number is not None:
        try:
            prov = json.loads(store.manifest_path(number).read_text()).get("provenance", {})
            parent = {"version": number, "digest": prov.get("dataset", {}).get("digest"),
                      "run_id": prov.get("mlflow", {}).get("run_id")}
        except (OSError, ValueError, AttributeError):
            parent = {"version": number, "digest": None}
    f = spec.filters
    return {
        "source": dataset.source.get("kind"),
        "location": dataset.source.get("directory") or dataset.source.get("path") or dataset.source.get("url"),
        "files": [x["name"] for x in dataset.source.get("files", [])],
        "window": {"start": f.start, "end": f.end, "reference_since": options.reference_since},
        "filters": {"max_severity": f.max_severity, "status": list(f.status), "max_skew_s": f.max_skew_s,
                    "exclude": [[e.start, e.end, e.reason] for e in f.exclude], "dropped": dataset.filtered},
        "rows": len(dataset),
        "digest": dataset.digest,
        "parent": parent,
    }


def log_lineage(mlflow, spec: TrainSpec, dataset: Dataset, store: ModelStore, options: Options) -> None:
    """Dataset lineage with MLflow's dataset tracking: the run's input dataset (source = the recording
    location, digest = the dataset digest) tagged with its files, window, filters and parent digest,
    and the parent dataset as a second input (context ``parent``); the whole record as an artifact."""
    doc = lineage(spec, dataset, store, options)
    mlflow.log_dict(doc, "dataset/lineage.json")
    try:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        window = doc["window"]
        tags = {"mlioc.files": ",".join(doc["files"])[:490] or "-",
                "mlioc.window": f"{window['start']}..{window['end']}",
                "mlioc.reference_since": str(window["reference_since"]),
                "mlioc.filters": json.dumps(doc["filters"], sort_keys=True, default=str)[:490],
                "mlioc.parent_digest": str(doc["parent"].get("digest"))}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow guesses what kind of "source" a path is
            source = resolve_dataset_source(str(doc["location"] or doc["source"]))
            data = MetaDataset(source, name=f"{spec.model}-{doc['source']}-{dataset.digest[:12]}",
                               digest=dataset.digest[:36])
            mlflow.log_input(data, context="lineage", tags=tags)
            if doc["parent"].get("digest"):
                parent = MetaDataset(resolve_dataset_source(str(store.version_dir(doc["parent"]["version"]))),
                                     name=f"{spec.model}-v{doc['parent']['version']}-data",
                                     digest=str(doc["parent"]["digest"])[:36])
                mlflow.log_input(parent, context="parent", tags={"mlioc.parent_version": str(doc["parent"]["version"])})
    except Exception as exc:  # the entity is a convenience; lineage.json is the record
        log.warning("mlflow.log_input (lineage) failed: %s", exc)


def _log_dataset(mlflow, spec: TrainSpec, dataset: Dataset, split: Split) -> None:
    source = json.dumps(dataset.source, sort_keys=True, default=str)
    import warnings

    # MLflow's dataset entity infers a schema cell by cell: minutes for list columns (arrays), so array
    # data are identified by the digest tag and dataset/metadata.json alone.
    frame = dataset.to_frame() if spec.log_dataset or not dataset.shapes else None
    try:
        if dataset.shapes:
            log.info("array data: no MLflow dataset entity (its schema inference is too slow for list columns)")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MLflow guesses what kind of "source" a plain string is
                ds = mlflow.data.from_pandas(frame, source=dataset.source.get("directory")
                                             or dataset.source.get("path") or dataset.source.get("url")
                                             or dataset.source["kind"], name=f"{spec.model}-{dataset.digest[:12]}")
                mlflow.log_input(ds, context="training")
    except Exception as exc:  # the dataset entity is a convenience; the digest and artifact are what count
        log.warning("mlflow.log_input failed: %s", exc)
    mlflow.log_dict({"digest": dataset.digest, "rows": len(dataset), "source": dataset.source,
                     "source_json": source, "filtered": dataset.filtered,
                     "shapes": {k: list(v) for k, v in dataset.shapes.items()},
                     "split": {"train": [float(split.train.time[0]), float(split.train.time[-1])],
                               "test": [float(split.test.time[0]), float(split.test.time[-1])]}},
                    "dataset/metadata.json")
    if frame is not None and spec.log_dataset:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "data.parquet"
            frame.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), "dataset")


def _gate(config: Config, model: ModelConfig, spec: TrainSpec, store: ModelStore, onnx_bytes: bytes,
          manifest: dict[str, Any], parity: Parity, split: Split):
    if not parity.ok:
        return Decision(False, None, f"ONNX parity failed: max |ONNX - torch| = {parity.max_abs:.3g} on "
                        f"{parity.n} test rows > tolerance {parity.atol:g}", checks={"parity": False}), None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_bytes)
        doc = dict(manifest, sha256=sha256_file(path))
        try:
            loaded = build_model(path, parse_manifest(doc), model, config.ioc.inference, "candidate")
        except (EngineError, ManifestError) as exc:
            return Decision(False, None, f"the IOC would reject this version: {exc}",
                            checks={"parity": True, "ioc_validation": False}), None
    number, problem, champion = load_champion(store, model, config.ioc.inference)
    decision = decide(loaded, split.test, spec.gate, champion, number, problem)
    decision.checks = {"parity": True, "ioc_validation": True} | decision.checks
    return decision, loaded


def _push(store: ModelStore, client, model: ModelConfig, manifest: dict[str, Any], onnx_bytes: bytes,
          decision: Decision, outcome: Outcome, artifact_uri: str, dataset: Dataset) -> None:
    who = registry.user()
    if not decision.promote:
        store.append_event("rejected", model=model.name, reason=decision.reason, run_id=outcome.run_id,
                           dataset_digest=dataset.digest, champion=decision.champion_version, user=who)
        return
    try:
        number = store.add_version(onnx_bytes, manifest)
        previous = store.read_pointer(decision.pointer)
        store.write_pointer(decision.pointer, number)
    except (StoreError, OSError) as exc:
        raise TrainError(f"pushing into {store.root} failed: {exc}") from exc
    outcome.store_version = number
    store.append_event("push", model=model.name, to_version=number, pointer=decision.pointer,
                       previous=previous, reason=decision.reason, run_id=outcome.run_id,
                       dataset_digest=dataset.digest, user=who)
