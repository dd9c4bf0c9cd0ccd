"""How ``mlioc watch`` carries out one retraining run: a local subprocess, or an Airflow DAG run.

Both run the same command, ``mlioc train CONFIG --model NAME --data recorded --start T0 --push
--as challenger ...`` (:func:`train_args`), so torch never loads into the watcher and a run that
crashes, hangs or is killed cannot take the watcher with it. Both report through the JSON file that
``mlioc train --result`` writes, into the store's ``requests/`` folder (shared, so an Airflow worker
on another host can write it too).

* :class:`LocalRun` — a child process in its own session, output appended to a log file, killed
  with its whole process group on timeout (a watcher restarted after a crash kills the orphan: its
  pid is in ``status.json``).
* :class:`AirflowRun` — ``retrain.runner: airflow``: a DAG run of ``deploy/airflow/mlioc_retrain.py``
  triggered through Airflow's REST API (v2, Airflow 3: a JWT from ``/auth/token``), then polled; on
  timeout the DAG run is marked failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioc.core.config import AirflowConfig
from training.watch_policy import Trigger

log = logging.getLogger("mlioc.watch")


@dataclass(frozen=True)
class RunResult:
    ok: bool
    message: str
    run_id: str = ""
    version: int | None = None


def train_args(config: str, model: str, trigger: Trigger, result: Path, tracking_uri: str | None) -> list[str]:
    """The ``mlioc train`` arguments of a loop run (after the program name)."""
    args = ["train", config, "--model", model, "--data", "recorded", "--push", "--as", "challenger",
            "--no-progress", "--trigger", trigger.kind, "--requested-by", trigger.who, "--result", str(result)]
    for flag, t in (("--start", trigger.start), ("--end", trigger.end), ("--reference-since", trigger.reference_since)):
        if t is not None:
            args += [flag, iso(t)]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    return args


def iso(t: float) -> str:
    """Unix seconds as ISO 8601 UTC with microseconds (what ``mlioc train --start`` parses)."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def read_result(path: Path) -> RunResult | None:
    """What ``mlioc train --result`` wrote; None if it wrote nothing (it failed before the end)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    version = doc.get("store_version")
    run_id = str(doc.get("run_id", ""))
    if version is not None:
        return RunResult(True, f"v{version} is the challenger (run {run_id[:8]})", run_id, int(version))
    reason = str(doc.get("reason", "not published"))
    return RunResult(True, f"not published: {reason}", run_id)


def last_line(path: Path, default: str = "") -> str:
    """The last meaningful line of a log (an ``error: ...`` line if there is one), for MESSAGE."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return default
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or [default])[-1][:200]


class LocalRun:
    """``mlioc train`` as a child process of the watcher."""

    def __init__(self, args: list[str], log_path: Path, result_path: Path, env: dict[str, str] | None = None):
        self.log_path = log_path
        self.result_path = result_path
        with contextlib.suppress(FileNotFoundError):
            result_path.unlink()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - held for the run's lifetime
        self._log.write(f"$ mlioc {' '.join(args)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "ioc", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)  # its own process group: killed as one
        self.pid = self.proc.pid
        self.run_id = ""

    def poll(self) -> RunResult | None:
        code = self.proc.poll()
        if code is None:
            return None
        self._log.close()
        result = read_result(self.result_path)
        if code == 0 and result is not None:
            return result
        why = last_line(self.log_path, f"exit status {code}")
        return RunResult(False, f"exit {code}: {why}", result.run_id if result else "")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


class AirflowError(Exception):
    """Airflow's API refused or could not be reached; the message says which call and why."""


class AirflowClient:
    """The few calls of Airflow 3's REST API (``/api/v2``) that the watcher needs."""

    def __init__(self, settings: AirflowConfig, timeout_s: float = 10.0):
        import requests

        self.settings = settings
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self._token: str | None = None

    def _password(self) -> str:
        name = self.settings.password_env
        return os.environ.get(name, "") if name else ""

    def _auth(self) -> dict[str, str]:
        if self._token is None and self.settings.user:
            r = self._call("POST", "/auth/token", auth=False,
                           json={"username": self.settings.user, "password": self._password()})
            self._token = r["access_token"]
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _call(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> dict[str, Any]:
        import requests

        url = self.settings.url + path
        try:
            r = self.session.request(method, url, headers=self._auth() if auth else {}, timeout=self.timeout_s,
                                     **kw)
        except requests.RequestException as exc:
            raise AirflowError(f"{method} {url}: {type(exc).__name__}") from exc
        if r.status_code == 401 and auth and self._token is not None:
            self._token = None  # expired: once more with a fresh token
            return self._call(method, path, auth=auth, **kw)
        if r.status_code >= 400:
            raise AirflowError(f"{method} {url}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json() if r.content else {}

    def trigger(self, dag_run_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        dag = self.settings.dag_id
        self._call("PATCH", f"/api/v2/dags/{dag}", json={"is_paused": False})  # a new DAG starts paused
        return self._call("POST", f"/api/v2/dags/{dag}/dagRuns",
                          json={"dag_run_id": dag_run_id, "logical_date": None, "conf": conf})

    def state(self, dag_run_id: str) -> str:
        return str(self._call("GET", f"/api/v2/dags/{self.settings.dag_id}/dagRuns/{dag_run_id}").get("state"))

    def fail(self, dag_run_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{self.settings.dag_id}/dagRuns/{dag_run_id}", json={"state": "failed"})


def airflow_conf(config: str, model: str, trigger: Trigger, result: Path, tracking_uri: str | None) -> dict:
    """The DAG run's conf (``deploy/airflow/mlioc_retrain.py`` reads exactly these keys)."""
    return {"config": config, "model": model, "as": "challenger", "trigger": trigger.kind,
            "requested_by": trigger.who, "start": trigger.start, "end": trigger.end,
            "reference_since": trigger.reference_since, "result": str(result), "tracking_uri": tracking_uri}


class AirflowRun:
    """A DAG run of the retraining pipeline, followed by polling its state."""

    POLL_S = 2.0

    def __init__(self, client: AirflowClient, conf: dict[str, Any], result_path: Path):
        self.client = client
        self.result_path = result_path
        with contextlib.suppress(FileNotFoundError):
            result_path.unlink()
        self.run_id = f"mlioc-{conf['model']}-{conf['trigger']}-{time.strftime('%Y%m%dT%H%M%S')}"
        self.pid: int | None = None
        self.log_path = Path(conf["result"]).with_suffix(".log")
        client.trigger(self.run_id, conf)
        self._next_poll = 0.0
        self._errors = 0

    def poll(self) -> RunResult | None:
        now = time.monotonic()
        if now < self._next_poll:
            return None
        self._next_poll = now + self.POLL_S
        try:
            state = self.client.state(self.run_id)
            self._errors = 0
        except AirflowError as exc:
            self._errors += 1
            log.warning("Airflow poll of %s failed (%d in a row): %s", self.run_id, self._errors, exc)
            return RunResult(False, f"Airflow unreachable: {exc}", self.run_id) if self._errors >= 30 else None
        if state in ("queued", "running"):
            return None
        result = read_result(self.result_path)
        if state == "success" and result is not None:
            return RunResult(True, result.message, self.run_id, result.version)
        return RunResult(False, f"Airflow DAG run {self.run_id} {state}", self.run_id)

    def kill(self) -> None:
        with contextlib.suppress(AirflowError):
            self.client.fail(self.run_id)
