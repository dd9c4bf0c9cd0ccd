"""The continual-learning loop's test rigs: a demo-like config with a ``retrain:`` section and short
timers, a real recording written by the IOC's own recorder, and ``mlioc watch`` as a subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.demo import demo_inputs, demo_store_copy
from tests.support.procs import ROOT, ServerProcess, server_env

# The demo's architecture (so runs warm-start from the shipped champion), with few epochs.
TRAINING = {"kind": "regression", "hidden": [64, 64], "activation": "silu", "epochs": 8, "batch_size": 64,
            "lr": 0.003, "warm_start": "auto", "data": {"source": "recorded"}, "split": {"val": 0.1, "test": 0.2},
            "filters": {"max_severity": "MINOR"},
            # the live policy judges the challenger; offline, only a broken version is kept out
            "gate": {"min_improvement": -1.0, "max_output_regression": 100.0}}


def loop_model(tmp: Path, prefix: str, sim: str, retrain: dict[str, Any], training: dict | None = None) -> dict:
    """The demo model (store copied, inputs from the simulator ``sim``, every output with a truth),
    with fast drift settings, a recording and the given ``retrain:`` section."""
    truths = {"sigma_x": "SIGMA:X", "sigma_y": "SIGMA:Y", "loss": "LOSS"}
    return {
        "name": "beam", "prefix": prefix, "store": demo_store_copy(tmp), "trigger": {"scan_hz": 10},
        "inputs": demo_inputs_list(sim),
        "outputs": [{"name": n, "units": "mm" if n != "loss" else "%", "truth": f"ca://{sim}{pv}"}
                    for n, pv in truths.items()],
        "drift": {"method": "wasserstein", "window_s": 8, "update_s": 0.25, "raise_s": 0.5, "clear_s": 1.5,
                  "correlation_s": 1.0, "error": {"window_s": 6}},
        "record": {"dir": "rec", "roll": "daily", "flush_s": 0.5,
                   "targets": {n: f"ca://{sim}{pv}" for n, pv in truths.items()}},
        "training": training or TRAINING,
        "retrain": retrain,
    }


def demo_inputs_list(sim: str) -> list[dict]:
    import yaml

    return yaml.safe_load(demo_inputs(sim, 2))


def record_synthetic(model_config, rows: int = 600, rate_hz: float = 10.0, t0: float | None = None) -> list[Path]:
    """A real recording (the IOC's own Recorder writing Parquet) of the simulated machine, no IOC needed."""
    import time

    from ioc.core.layout import ModelStatus
    from ioc.edges.recorder import Recorder
    from ioc.runtime.runner import CycleRecord
    from ioc.sim.physics import Machine

    machine = Machine(seed=7, rate_hz=rate_hz)
    t = (t0 if t0 is not None else time.time() - rows / rate_hz)
    states = [(0, t)] * len(model_config.inputs)
    recorder = Recorder(model_config, model_config.record, lambda: states)
    for _ in range(rows):
        x, y = machine.step()
        states[:] = [(0, t)] * len(model_config.inputs)
        for k in range(len(model_config.record.targets)):
            recorder.target_sink(k)(float(y[k]), 0, t, True)
        recorder.listener(CycleRecord(t, np.asarray(x, dtype=float), np.asarray(y, dtype=float), ModelStatus.OK,
                                      "1", 1e-5, ""))
        t += 1.0 / rate_hz
    recorder.close()
    return recorder.files_closed


def start_watcher(config: Path, *, tracking_uri: str, extra: tuple[str, ...] = (), name: str = "watch",
                  ca_addr_list: str = "", ports=None) -> ServerProcess:
    env = server_env(ports, ca_addr_list) if ports is not None else None
    import os

    env = env or dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = str(ROOT)
    proc = ServerProcess(["watch", str(config), "--tracking-uri", tracking_uri, *extra], env, name)
    proc.start()
    proc.wait_for_line("mlioc watch ready", timeout=60)
    return proc


def status(store: Path) -> dict:
    try:
        return json.loads((store / "requests" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def events(store: Path, action: str | None = None) -> list[dict]:
    lines = (store / "events.jsonl").read_text().splitlines()
    out = [json.loads(line) for line in lines if line.strip()]
    return [e for e in out if action is None or e["action"] == action]


def run_async(coro):
    return asyncio.run(coro)


def mlioc(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ioc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def offline_loop(tmp: Path, *, epochs: int, retrain: dict[str, Any], record: bool = True) -> Path:
    """The demo model with a recording written offline (no simulator, no IOC), for watcher and
    Airflow tests; returns the config path (store: ``tmp/beam-store``)."""
    from ioc.core.configfile import load_config
    from tests.support.configs import model, write_config

    sim = "NOSIM:"
    outs = ("sigma_x", "sigma_y", "loss")
    entry = model("NOIOC:", name="beam", store=demo_store_copy(tmp), trigger={"scan_hz": 10},
                  inputs=demo_inputs_list(sim), outputs=list(outs),
                  record={"dir": "rec", "targets": {n: f"ca://{sim}{n}" for n in outs}},
                  training=TRAINING | {"epochs": epochs}, retrain=retrain)
    config = write_config(tmp / "offline.yaml", entry, ioc={"metrics_port": 0})
    if record:
        record_synthetic(load_config(config).models[0], rows=600)
    return config


@pytest.fixture
def show_logs(processes):
    """After a loop test, print what the watcher, the IOC and the simulator said (pytest shows captured
    output only for a failed test). Use with ``pytestmark = pytest.mark.usefixtures("show_logs")``."""
    yield
    for proc in processes:
        print(f"----- {proc.name}\n" + "\n".join(proc.lines[-80:]))
