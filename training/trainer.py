"""The training loop: seeded, deterministic where torch allows, on the GPU when there is one.

Determinism: one seed drives the initial weights (``torch.manual_seed``) and the batch order (the
:class:`~training.batches.DeviceBatches` generator); ``torch.use_deterministic_algorithms(True)`` makes
torch refuse non-deterministic kernels (on CUDA with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``). On the same
hardware, thread count and library versions a run is then bit-for-bit repeatable; across hardware,
floating-point reduction order differs, which is why ``mlioc reproduce`` judges against a tolerance.
Loss: MSE on standardised targets (each output weighs the same whatever its units).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from training.batches import DeviceBatches, pick_device
from training.spec import TrainSpec


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    lr: float


@dataclass
class TrainResult:
    net: torch.nn.Sequential  # on the CPU, in eval mode
    init_state: dict[str, torch.Tensor]  # the weights training started from (CPU copies)
    history: list[EpochStats] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0
    samples_per_s: float = 0.0


def seed_everything(seed: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True)


def _chunk(x, elements: int = 1 << 22) -> int:
    """Rows per forward pass: 65536 scalar rows, fewer images (about 16 MB of float32 input at a time)."""
    return max(1, min(65536, elements // max(1, int(np.prod(x.shape[1:])))))


@torch.no_grad()
def _loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) == 0:
        return float("nan")
    chunk = _chunk(x)
    total = 0.0
    for i in range(0, len(x), chunk):
        total += torch.nn.functional.mse_loss(net(x[i:i + chunk]), y[i:i + chunk], reduction="sum").item()
    return total / (len(x) * y.shape[1])


def train(spec: TrainSpec, net: torch.nn.Sequential, x_train: np.ndarray, y_train: np.ndarray,
          x_val: np.ndarray, y_val: np.ndarray, *, epochs: int | None = None,
          on_epoch: Callable[[EpochStats], None] | None = None) -> TrainResult:
    """Train ``net`` (already seeded/initialised or warm-started) on normalised arrays."""
    device = pick_device(spec.device)
    init_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net = net.to(device)
    batches = DeviceBatches(x_train, y_train, spec.batch_size, device, spec.seed)
    xv = torch.as_tensor(x_val, dtype=torch.float32, device=device)
    yv = torch.as_tensor(y_val, dtype=torch.float32, device=device)
    opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    n_epochs = epochs or spec.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_epochs)
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        net.train()
        total, n = torch.zeros((), device=device), 0
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * len(xb)
            n += len(xb)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        net.eval()
        stats = EpochStats(epoch, float(total.item()) / max(n, 1), _loss(net, xv, yv), lr)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    net = copy.deepcopy(net).cpu().eval()
    return TrainResult(net, init_state, history, str(device), seconds,
                       n_epochs * len(x_train) / seconds if seconds > 0 else 0.0)


@torch.no_grad()
def predict(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Normalised in (the input tensor's shape) -> normalised out, float32, on the CPU (what the ONNX graph
    computes)."""
    t = torch.as_tensor(x, dtype=torch.float32)
    chunk = _chunk(t)
    return torch.cat([net(t[i:i + chunk]) for i in range(0, len(t), chunk)]).numpy() if len(t) else \
        net(t).numpy()
