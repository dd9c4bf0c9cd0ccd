"""Apache Airflow DAG ``mlioc_retrain``: the nightly retraining pipeline of an mlioc model.

Install: put this file into the DAGs folder of an Airflow 3 deployment whose workers can run
``mlioc`` (set ``MLIOC_COMMAND`` if it is not on PATH, e.g. ``/opt/mlioc/.venv/bin/mlioc``) and see
the config, the recordings and the model store (a shared file system). Set ``MLIOC_CONFIG`` and
``MLIOC_MODEL`` for the nightly schedule (``MLIOC_SCHEDULE``, cron, default ``0 2 * * *``; empty: no
schedule, only runs triggered by ``mlioc watch`` or a person), and ``MLFLOW_TRACKING_URI`` for the runs.
Unpausing a scheduled DAG starts the latest interval's run at once (Airflow's rule even without catch-up).

Each run is one task: ``mlioc train CONFIG --model NAME --data recorded --start T0 [--end T1] --push
--as challenger``: the new version enters the store as the **challenger** (the IOC's promotion
policy decides on live data), the MLflow run is tagged with the trigger and who asked. A run's
``conf`` (what ``mlioc watch`` sends with ``retrain.runner: airflow``, or a person from the UI):

    {"config": "/etc/mlioc/demo.yaml", "model": "beam", "as": "challenger",
     "start": 1796018749.0, "end": null, "reference_since": null,
     "trigger": "drift", "requested_by": "mlioc-watch", "result": "/store/requests/result-....json"}

A scheduled run (empty conf) trains on the recordings of its data interval. The arguments are passed
as a list to a subprocess (no shell): nothing in ``conf`` can inject a command.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess

from airflow.sdk import Param, dag, get_current_context, task

DEFAULT_WINDOW_S = 86400.0


def _iso(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(float(value), dt.UTC).isoformat()
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return str(value)


def train_command(conf: dict, interval_start=None, interval_end=None) -> list[str]:
    """The ``mlioc train`` command line of one DAG run (a list: no shell)."""
    command = shlex.split(os.environ.get("MLIOC_COMMAND", "mlioc"))
    config = conf.get("config") or os.environ.get("MLIOC_CONFIG")
    model = conf.get("model") or os.environ.get("MLIOC_MODEL")
    if not config or not model:
        raise ValueError("no config/model: give them in the run's conf or set MLIOC_CONFIG / MLIOC_MODEL")
    promote_to = conf.get("as") or "challenger"
    if promote_to not in ("challenger", "champion"):
        raise ValueError(f"conf 'as' must be challenger or champion, got {promote_to!r}")
    args = [*command, "train", str(config), "--model", str(model), "--data", "recorded", "--push", "--as",
            promote_to, "--no-progress", "--trigger", str(conf.get("trigger") or "schedule"),
            "--requested-by", str(conf.get("requested_by") or "airflow")]
    start = _iso(conf.get("start")) or _iso(interval_start)
    end = _iso(conf.get("end")) or (None if conf.get("start") else _iso(interval_end))
    for flag, value in (("--start", start), ("--end", end), ("--reference-since", _iso(conf.get("reference_since"))),
                        ("--result", conf.get("result")), ("--tracking-uri", conf.get("tracking_uri"))):
        if value:
            args += [flag, str(value)]
    return args


@dag(
    dag_id="mlioc_retrain",
    schedule=os.environ.get("MLIOC_SCHEDULE", "0 2 * * *") or None,  # "": triggered runs only
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # one run at a time per deployment, like mlioc watch
    tags=["mlioc"],
    params={"config": Param(None, type=["null", "string"]), "model": Param(None, type=["null", "string"]),
            "as": Param("challenger", enum=["challenger", "champion"])},
    doc_md=__doc__,
)
def mlioc_retrain():
    @task(execution_timeout=dt.timedelta(hours=4))
    def train() -> str:
        context = get_current_context()
        run = context["dag_run"]
        conf = dict(context.get("params") or {}) | dict(run.conf or {})
        args = train_command(conf, context.get("data_interval_start"), context.get("data_interval_end"))
        print("running:", " ".join(shlex.quote(a) for a in args), flush=True)
        done = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        print(done.stdout, flush=True)
        if done.returncode != 0:
            raise RuntimeError(f"mlioc train exited {done.returncode}")
        return conf.get("result") or ""

    train()


mlioc_retrain()
