"""Training throughput: the device-resident batch iterator vs a standard DataLoader, same data, same run.

    python bench/training.py [--device auto|cpu|cuda] [--samples 20000] [--epochs 20] [--repeats 3]
                             [--batch-sizes 128,512] [--no-nightly]

Both variants train the demo architecture (4-64-64-3 MLP, Adam) on the demo's simulator data:

* ``device-resident``: ``training.batches.DeviceBatches`` — the whole training set copied to the
  device once, each epoch's permutation drawn on the device, batches sliced there;
* ``DataLoader`` (baseline): ``torch.utils.data.DataLoader(TensorDataset(x, y), shuffle=True)`` on
  host tensors, each batch copied to the device with ``.to(device)`` — the standard torch recipe.

Reported: samples/s (median of ``--repeats``, after one warm-up epoch) and the speed-up. Then the wall
time of one full nightly cycle on the demo data (``mlioc train config/demo.yaml --model beam --push``
in-process against a scratch copy of the demo store and a scratch sqlite MLflow store: data, warm
start from the champion, 400 epochs, ONNX export + parity, IOC validation, gate, push, registry).
On a GPU machine run the same script with ``--device cuda``; the baseline is measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ioc.sim.physics import generate_dataset  # noqa: E402
from training.batches import DeviceBatches, pick_device  # noqa: E402


def _net(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                               torch.nn.Linear(64, 3)).to(device)


def _epoch(net, opt, batches, device: torch.device, copy: bool) -> int:
    n = 0
    for xb, yb in batches:
        if copy:
            xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(xb), yb)
        loss.backward()
        opt.step()
        n += len(xb)
    return n


def throughput(kind: str, x: np.ndarray, y: np.ndarray, batch: int, epochs: int, device: torch.device) -> float:
    net = _net(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    if kind == "device":
        batches = DeviceBatches(x, y, batch, device, seed=0)
        copy = False
    else:
        ds = torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
        batches = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True,
                                              generator=torch.Generator().manual_seed(0))
        copy = True
    _epoch(net, opt, batches, device, copy)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = sum(_epoch(net, opt, batches, device, copy) for _ in range(epochs))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def nightly_cycle() -> tuple[float, dict[str, float], str]:
    from ioc.core.configfile import load_config
    from training.pipeline import Options, run
    from training.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        shutil.copytree(ROOT / "models" / "beam", tmp_path / "beam")
        text = (ROOT / "config" / "demo.yaml").read_text()
        text = text.replace("store: ../data/store/beam", f"store: {tmp_path / 'beam'}")
        text = text.replace("dir: ../data/beam", f"dir: {tmp_path / 'data'}")
        text = text.replace("store_template: ../models/beam", f"store_template: {ROOT / 'models' / 'beam'}")
        text = text.replace("state_dir: ../data/state", f"state_dir: {tmp_path / 'state'}")
        (tmp_path / "demo.yaml").write_text(text)
        config = load_config(tmp_path / "demo.yaml")
        t0 = time.perf_counter()
        outcome = run(config, "beam", load_spec(config, "beam"),
                      Options(push=True, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
        wall = time.perf_counter() - t0
        return wall, outcome.seconds, outcome.decision.reason


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="128,512")
    ap.add_argument("--no-nightly", action="store_true")
    args = ap.parse_args()
    device = pick_device(args.device)
    x, y = generate_dataset(args.samples, seed=0)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; {args.samples} samples, {args.epochs} epochs "
          f"x {args.repeats} repeats")
    print()
    print("| batch | DataLoader (baseline) samples/s | device-resident samples/s | speed-up |")
    print("|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        base = statistics.median(throughput("loader", x, y, batch, args.epochs, device) for _ in range(args.repeats))
        dev = statistics.median(throughput("device", x, y, batch, args.epochs, device) for _ in range(args.repeats))
        print(f"| {batch} | {base:,.0f} | {dev:,.0f} | {dev / base:.2f}x |")
    if not args.no_nightly:
        wall, parts, reason = nightly_cycle()
        print()
        print("| full nightly cycle on the demo data (400 epochs, warm start, export, gate, push) | seconds |")
        print("|---|---:|")
        for k, v in parts.items():
            print(f"| {k} | {v:.1f} |")
        print(f"| wall time | {wall:.1f} |")
        print(f"\ndecision: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
