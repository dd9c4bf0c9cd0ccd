"""MLflow: where runs go, what each run records about itself, and the model registry with aliases.

Tracking URI: ``--tracking-uri`` > ``MLFLOW_TRACKING_URI`` > ``mlflow.db`` (sqlite) in the current
directory with artifacts in ``./mlruns`` (MLflow's own default: no server needed; recorded as an
absolute path so provenance and ``mlioc reproduce`` work from any directory). An http(s) URI is
checked with a 5 s ``/health`` request first, so an unreachable server fails fast with a clear
message instead of MLflow's minutes of retries.

Registry: the registered model is named after the model (``beam``). A registered version's source is
the run's ``store/`` artifact folder — ``model.onnx`` + ``manifest.json``, the same bytes as the
store version — so ``models:/beam@champion`` downloads exactly what the IOC serves. Status is carried
by the aliases ``champion`` / ``challenger`` (stages are deprecated in MLflow).
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class TrackingError(Exception):
    """The tracking server / store cannot be used."""


def resolve_tracking_uri(cli_uri: str | None = None) -> str:
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            r = requests.get(uri.rstrip("/") + "/health", timeout=5)
        except requests.RequestException as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {type(exc).__name__}") from exc
        if r.status_code != 200:
            raise TrackingError(f"MLflow tracking server {uri} answered /health with HTTP {r.status_code}")
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.parent.is_dir() or not os.access(db.parent, os.W_OK):
            raise TrackingError(f"tracking database directory {db.parent} does not exist or is not writable")
    return uri


def setup(uri: str, experiment: str):
    """Point MLflow at ``uri`` and select ``experiment``; returns the ``MlflowClient``."""
    import logging

    import mlflow

    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:  # MlflowException, sqlalchemy errors, HTTP errors
        raise TrackingError(f"cannot use experiment {experiment!r} at {uri}: {str(exc).splitlines()[0][:300]}") \
            from exc
    return mlflow.MlflowClient(uri)


def code_version() -> dict[str, Any]:
    """git commit of this checkout and whether its code has uncommitted changes (``dirty``)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        # models/ holds the shipped stores, which the pipeline itself writes: not code.
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)models"))
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "dirty": True, "branch": "unknown"}
    return {"git_commit": commit, "dirty": dirty, "branch": branch}


def environment() -> dict[str, Any]:
    """Python, platform and every installed distribution's version (the full environment)."""
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name.lower()] = dist.version
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "platform": platform.platform(), "packages": dict(sorted(packages.items()))}


def key_versions(env: dict[str, Any]) -> dict[str, str]:
    p = env["packages"]
    return {k: p.get(k, "-") for k in ("torch", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "mlflow",
                                        "mlioc")} | {"python": env["python"]}


def hardware(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    out = {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
           "torch_threads": torch.get_num_threads(), "device": device}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return out


def user() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return f"unknown@{socket.gethostname()}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> MLflow params (``a.b.c``); values as compact strings (MLflow caps them at 6000)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return out


def register(client, name: str, run_id: str, artifact_uri: str, alias: str, tags: dict[str, str]) -> str:
    """Register the run's ``store/`` artifacts as a new version of ``name`` and point ``alias`` at it."""
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # already exists
        client.create_registered_model(name, description=f"mlioc model {name}: ONNX + manifest.json")
    mv = client.create_model_version(name, f"{artifact_uri}/store", run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
