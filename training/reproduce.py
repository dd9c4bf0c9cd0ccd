"""``mlioc reproduce RUN_ID``: retrain a logged run from what it logged, and measure how far it lands.

Everything comes from the run itself, not from today's config or store: ``spec.json`` (architecture,
hyper-parameters, seed), ``normalisation.json``, the exact dataset (``dataset/data.parquet``, whose
digest must equal the logged one; a simulator dataset that was not logged is regenerated from its
seed), and ``torch/init_state_dict.pt`` — the weights training started from, which for a warm start
are the parent champion's, so a reproduction does not depend on that champion still being in a store.

The retrained weights and its predictions on the same time-ordered test split are compared with the
original's (``torch/state_dict.pt``). Pass when

* max |prediction difference| on the test split <= ``reproduce.pred_atol`` (normalised output units,
  default 1e-3 = 0.1 % of each output's standard deviation), and
* relative L2 distance of all weights <= ``reproduce.weight_rtol`` (default 1e-3).

On the same hardware and library versions the run is deterministic and both differences are 0; the
tolerances leave room for another CPU/GPU's floating-point reduction order. The comparison is logged
as its own MLflow run tagged ``mlioc.reproduces=RUN_ID``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training import registry
from training.dataset import (
    ARRAY_GENERATOR,
    Dataset,
    Normalisation,
    dataset_from_frame,
    simulator_arrays,
    time_split,
)
from training.layout import Layout
from training.models import build_model
from training.pipeline import normalise_split
from training.spec import TrainSpec
from training.trainer import predict, seed_everything, train


class ReproduceError(Exception):
    """The run cannot be reproduced (not an `mlioc train` run, artifacts missing, data changed)."""


@dataclass
class ReproduceReport:
    run_id: str
    new_run_id: str
    digest: str
    pred_max_abs: float
    pred_atol: float
    weight_max_abs: float
    weight_rel_l2: float
    weight_rtol: float
    val_loss_original: float
    val_loss_new: float

    @property
    def passed(self) -> bool:
        return bool(self.pred_max_abs <= self.pred_atol and self.weight_rel_l2 <= self.weight_rtol)

    def rows(self) -> list[tuple[str, str, str, str]]:
        ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
        return [
            ("dataset digest", self.digest[:16], "must match the run", "PASS"),
            ("max |prediction diff| (test, normalised)", f"{self.pred_max_abs:.3g}", f"<= {self.pred_atol:g}",
             ok(self.pred_max_abs <= self.pred_atol)),
            ("weights: relative L2 distance", f"{self.weight_rel_l2:.3g}", f"<= {self.weight_rtol:g}",
             ok(self.weight_rel_l2 <= self.weight_rtol)),
            ("weights: max |diff|", f"{self.weight_max_abs:.3g}", "(reported)", ""),
            ("final val loss: original / new", f"{self.val_loss_original:.6g} / {self.val_loss_new:.6g}", "(reported)",
             ""),
        ]


def _download(client, run_id: str, path: str, dst: str) -> Path | None:
    try:
        return Path(client.download_artifacts(run_id, path, dst))
    except Exception:  # MlflowException / OSError: the artifact is absent
        return None


def reproduce(run_id: str, *, tracking_uri: str | None = None, reporter=None) -> ReproduceReport:
    import mlflow
    import pandas as pd

    uri = registry.resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise ReproduceError(f"no run {run_id!r} at {uri}: {str(exc).splitlines()[0][:200]}") from exc
    digest = run.data.tags.get("mlioc.dataset.digest")
    if digest is None:
        raise ReproduceError(f"run {run_id} is not an `mlioc train` run (no mlioc.dataset.digest tag)")
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: _download(client, run_id, name, tmp) for name in (
            "spec.json", "layout.json", "normalisation.json", "dataset/metadata.json", "dataset/data.parquet",
            "torch/init_state_dict.pt", "torch/state_dict.pt")}
        missing = [k for k in ("spec.json", "normalisation.json", "dataset/metadata.json", "torch/init_state_dict.pt",
                               "torch/state_dict.pt") if files[k] is None]
        if missing:
            raise ReproduceError(f"run {run_id} lacks artifact(s) {missing}")
        got = {k: v for k, v in files.items() if v is not None}
        spec = TrainSpec.from_dict(json.loads(got["spec.json"].read_text()))
        meta = json.loads(got["dataset/metadata.json"].read_text())
        norm_d = json.loads(got["normalisation.json"].read_text())
        init_state = torch.load(got["torch/init_state_dict.pt"], weights_only=True)
        original = torch.load(got["torch/state_dict.pt"], weights_only=True)
        # Runs from before arrays logged no layout: every signal a scalar, the inputs one [batch, N] tensor.
        layout = (Layout.from_dict(json.loads(files["layout.json"].read_text())) if files["layout.json"] is not None
                  else None)
        if files["dataset/data.parquet"] is not None:
            dataset = dataset_from_frame(pd.read_parquet(files["dataset/data.parquet"]), meta["source"],
                                         meta.get("shapes"))
        elif meta["source"].get("kind") == "simulator":
            dataset = _regenerate(meta["source"], run, layout)
        else:
            raise ReproduceError(f"run {run_id} did not log its dataset (log_dataset: false) and its source "
                                 f"({meta['source'].get('kind')}) cannot be regenerated")
    if dataset.digest != digest:
        raise ReproduceError(f"dataset digest {dataset.digest[:16]} != the run's {digest[:16]}: the data changed")
    split = time_split(dataset, spec.split)
    if layout is None:
        layout = Layout.build(dataset.input_signals, dataset.output_signals, spec.kind)
    norm = Normalisation(*(np.asarray(norm_d[k]) for k in ("x_mean", "x_std", "y_mean", "y_std")))
    arrays = normalise_split(split, norm, layout)

    if reporter is not None:
        reporter.stage(f"retraining run {run_id} ({len(dataset)} rows, {spec.epochs} epochs, seed {spec.seed})")
    seed_everything(spec.seed)
    net = build_model(spec, layout)
    net.load_state_dict(init_state)
    on_epoch = reporter.training(spec.epochs) if reporter is not None else None
    result = train(spec, net, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                   on_epoch=on_epoch)

    orig_net = build_model(spec, layout)
    orig_net.load_state_dict(original)
    orig_net.eval()
    pred_diff = float(np.abs(predict(result.net, arrays["x_test"]) - predict(orig_net, arrays["x_test"])).max())
    new_state = result.net.state_dict()
    w_old = torch.cat([original[k].flatten().double() for k in original])
    w_new = torch.cat([new_state[k].flatten().double() for k in original])
    w_max = float((w_new - w_old).abs().max())
    w_rel = float((w_new - w_old).norm() / w_old.norm().clamp_min(1e-30))
    orig_val = client.get_metric_history(run_id, "val_loss")
    val_orig = max(orig_val, key=lambda m: m.step).value if orig_val else float("nan")

    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    with mlflow.start_run(run_name=f"reproduce-{run_id[:8]}") as active:
        report = ReproduceReport(run_id, active.info.run_id, digest, pred_diff, spec.reproduce.pred_atol, w_max, w_rel,
                                 spec.reproduce.weight_rtol, val_orig, result.history[-1].val_loss)
        mlflow.set_tags({"mlioc.reproduces": run_id, "mlioc.model": spec.model, "mlioc.dataset.digest": digest,
                         "mlioc.reproduce.passed": str(report.passed)})
        mlflow.log_params({"reproduce.pred_atol": spec.reproduce.pred_atol,
                           "reproduce.weight_rtol": spec.reproduce.weight_rtol, "seed": spec.seed})
        mlflow.log_metrics({"pred_max_abs_diff": pred_diff, "weight_max_abs_diff": w_max,
                            "weight_rel_l2_diff": w_rel, "val_loss": report.val_loss_new})
    return report


def _regenerate(source: dict, run, layout: Layout | None) -> Dataset:
    from ioc.sim.physics import KNOBS, OBSERVABLES, generate_dataset
    from training.dataset import Dataset

    if source.get("generator") == ARRAY_GENERATOR:
        if layout is None:
            raise ReproduceError("an array-generator run without its layout.json cannot be regenerated")
        return simulator_arrays(source, layout)
    ins = tuple(json.loads(run.data.params["inputs"]))
    outs = tuple(json.loads(run.data.params["outputs"]))
    x_all, y_all = generate_dataset(int(source["samples"]), seed=int(source["seed"]), shift=float(source["shift"]))
    knobs, obs = [k.name for k in KNOBS], [o.name for o in OBSERVABLES]
    x = x_all[:, [knobs.index(n) for n in ins]]
    y = x if ins == outs else y_all[:, [obs.index(n) for n in outs]]
    return Dataset(np.arange(len(x), dtype=np.float64) * 0.1, x, y, ins, outs, source)
