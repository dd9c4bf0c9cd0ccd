"""Make the shipped demo model: train a small MLP on the simulator's documented data generator.

    python -m training.demo_model [--store models/beam] [--seed 0]

Data: ``ioc.sim.physics.generate_dataset`` (i.i.d. draws of the reference distribution of the four
knobs, observables with 1 % measurement noise). Model: 4 -> 64 -> 64 -> 3 MLP (SiLU) on
standardised inputs/outputs; the standardisation goes in the manifest and the IOC applies it around
the graph. The ONNX export is checked against torch on the held-out split before anything is
written; the version is published to the store with its manifest (reference distributions, test
vectors, provenance) and made champion.

This script is the bootstrap for the demo; the full pipeline (MLflow, warm start, gate) is
``mlioc train``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ioc.sim.physics import KNOBS, OBSERVABLES, generate_dataset
from ioc.store import ModelStore

PARITY_ATOL = 1e-5


def reference_stats(values: np.ndarray) -> dict:
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "quantiles": [float(q) for q in np.quantile(values, np.linspace(0, 1, 101))],
    }


def git_version() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", True
    return {"git_commit": commit, "dirty": dirty}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="models/beam")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=400)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    x, y = generate_dataset(args.samples, seed=args.seed)
    n_train = int(0.8 * len(x))
    x_tr, y_tr, x_te, y_te = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    x_mean, x_std = x_tr.mean(0), x_tr.std(0)
    y_mean, y_std = y_tr.mean(0), y_tr.std(0)

    net = torch.nn.Sequential(
        torch.nn.Linear(len(KNOBS), 64), torch.nn.SiLU(),
        torch.nn.Linear(64, 64), torch.nn.SiLU(),
        torch.nn.Linear(64, len(OBSERVABLES)),
    )
    xt = torch.tensor((x_tr - x_mean) / x_std, dtype=torch.float32)
    yt = torch.tensor((y_tr - y_mean) / y_std, dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    gen = torch.Generator().manual_seed(args.seed)
    for _epoch in range(args.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 512):
            idx = perm[i:i + 512]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    net.eval()

    xe = torch.tensor((x_te - x_mean) / x_std, dtype=torch.float32)
    with torch.no_grad():
        pred_norm = net(xe).numpy()
    pred = pred_norm * y_std + y_mean
    rmse = np.sqrt(((pred - y_te) ** 2).mean(0))
    print("held-out RMSE:", dict(zip([o.name for o in OBSERVABLES], np.round(rmse, 4), strict=True)))

    onnx_program = torch.onnx.export(
        net, (xe[:1],), input_names=["x"], output_names=["y"], dynamo=True, external_data=False,
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}}, opset_version=18,
    )
    buf = io.BytesIO()
    onnx.save(onnx_program.model_proto, buf)
    model_bytes = buf.getvalue()
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    onnx_out = sess.run(["y"], {"x": xe.numpy()})[0]
    parity = float(np.abs(onnx_out - pred_norm).max())
    print(f"ONNX vs torch max |diff| on the test split: {parity:.2e} (tolerance {PARITY_ATOL})")
    if parity > PARITY_ATOL:
        print("parity check failed: not publishing", file=sys.stderr)
        return 1

    tv_x = x_te[:16]
    tv_y = (sess.run(["y"], {"x": ((tv_x - x_mean) / x_std).astype(np.float32)})[0] * y_std + y_mean)
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.ascontiguousarray(y).tobytes()).hexdigest()
    manifest = {
        "format": 1,
        "model": "beam",
        "kind": "regression",
        "onnx": {"input": "x", "output": "y", "opset": 18},
        "inputs": [{"name": k.name, "units": k.units, "mean": float(m), "std": float(s)}
                   for k, m, s in zip(KNOBS, x_mean, x_std, strict=True)],
        "outputs": [{"name": o.name, "units": o.units, "mean": float(m), "std": float(s)}
                    for o, m, s in zip(OBSERVABLES, y_mean, y_std, strict=True)],
        "reference": {
            "source": "training split",
            "inputs": {k.name: reference_stats(x_tr[:, i]) for i, k in enumerate(KNOBS)},
            "outputs": {o.name: reference_stats(y_tr[:, j]) for j, o in enumerate(OBSERVABLES)},
        },
        "test_vectors": {"inputs": tv_x.tolist(), "outputs": tv_y.tolist(), "rtol": 1e-4, "atol": 1e-5},
        "provenance": {
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "created_by": "training/demo_model.py",
            "dataset": {"generator": "ioc.sim.physics.generate_dataset", "samples": args.samples,
                        "seed": args.seed, "digest": digest, "split": "first 80% train, last 20% test"},
            "code_version": git_version(),
            "environment": {"python": platform.python_version(), "torch": torch.__version__,
                            "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                            "numpy": np.__version__, "platform": platform.platform()},
            "metrics": {f"rmse_{o.name}": float(r) for o, r in zip(OBSERVABLES, rmse, strict=True)}
                       | {"onnx_parity_max_abs": parity},
            "seed": args.seed,
            "parent_version": None,
        },
    }
    store = ModelStore(Path(args.store))
    number = store.add_version(model_bytes, manifest)
    store.write_pointer("champion", number)
    store.append_event("push", to_version=number, reason="demo bootstrap (training/demo_model.py)", user="training")
    print(f"published {store.root} version {number} as champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
