"""``mlioc``: the command line (docs/reference/cli.md).

Exit status: 0 success, 1 a check failed / the config or a model is bad, 2 usage errors.
Ports and interfaces follow EPICS conventions: ``--ca-port`` > config ``ioc.ca_port`` >
``EPICS_CA_SERVER_PORT`` > 5064, and likewise for PVA (``EPICS_PVAS_SERVER_PORT``, 5075).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from ioc.client_cli import ClientError
from ioc.core.access import AccessError
from ioc.core.config import Config, ConfigError, default_config_path
from ioc.core.configfile import load_config

log = logging.getLogger("mlioc")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # p4p is chatty at INFO; keep its warnings. (The IOC no longer imports caproto: CA is served by
    # ioc/protocols/ca.)
    logging.getLogger("p4p").setLevel(max(logging.WARNING, logging.getLogger().level))


def _load(path: str | None) -> Config:
    return load_config(path or default_config_path())


def _report_access_error(exc: Exception) -> int:
    print(f"error: invalid access security configuration: {exc}", file=sys.stderr)
    return EXIT_FAIL


def _report_config_error(exc: ConfigError) -> int:
    print(f"error: invalid configuration {exc.path}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_FAIL


def _run_until_signal(main) -> int:
    # A file-size limit (ulimit -f) must give the recorder an error (EFBIG), not kill the IOC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ioc.app import ServeOptions, serve

    config = _load(args.config)
    options = ServeOptions(
        ca_port=args.ca_port,
        pva_port=args.pva_port,
        pva_broadcast_port=args.pva_broadcast_port,
        interfaces=args.interfaces.split() if args.interfaces else None,
        metrics_port=args.metrics_port,
        allow_duplicates=args.allow_duplicates,
    )
    from ioc.edges.dirlock import DirectoryLocked
    from ioc.edges.duplicates import DuplicatePVs

    log.info("serving %s", config.path)
    try:
        return _run_until_signal(lambda stop: serve(config, options, stop))
    except (DuplicatePVs, DirectoryLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_sim(args: argparse.Namespace) -> int:
    from ioc.core.config import SimulatorConfig
    from ioc.sim.server import serve_simulator

    config = _load(args.config)
    sim = config.simulator or SimulatorConfig()
    return _run_until_signal(
        lambda stop: serve_simulator(
            sim.prefix,
            args.rate_hz or sim.rate_hz,
            sim.seed if args.seed is None else args.seed,
            image_hz=args.image_hz or sim.image_hz,
            ca_port=args.ca_port or sim.ca_port,
            pva_port=args.pva_port or sim.pva_port,
            interfaces=args.interfaces.split() if args.interfaces else None,
            stop=stop,
        )
    )


def cmd_check(args: argparse.Namespace) -> int:
    from ioc.core.access import build_access
    from ioc.core.configfile import where
    from ioc.core.engine import EngineError, SignatureMismatch, load_champion
    from ioc.core.inputs import range_warnings
    from ioc.edges.host import local_addresses

    config = _load(args.config)
    access = build_access(config.access, local_addresses())
    n = len(config.models)
    print(f"{config.path}: {n} model(s); access from {access.source}")
    failed = 0
    for index, model in enumerate(config.models):
        try:
            loaded = load_champion(model, config.ioc.inference)
        except SignatureMismatch as exc:  # the config disagrees with the model: point at the key to change
            print(f"  {model.name}: FAIL: {where(config.path, ('models', index, *exc.key))}: {exc}; fix: {exc.fix}")
            failed += 1
            continue
        except EngineError as exc:
            print(f"  {model.name}: FAIL: {exc}")
            failed += 1
            continue
        print(f"  {model.name}: v{loaded.version} OK on {loaded.provider} "
              f"(warm-up median {loaded.warm_median_ms * 1e3:.0f} us, p99 {loaded.warm_p99_ms * 1e3:.0f} us)")
        for warning in range_warnings(model.inputs, loaded.manifest.reference, loaded.version):
            print(f"  {model.name}: warning: {warning}")
        u = loaded.uncertainty
        if model.uncertainty is not None and (u is None or u.method != model.uncertainty):
            has = "no uncertainty" if u is None else f"{u.method} uncertainty"
            pvs = "OUT:<name>:STD" if model.uncertainty == "ensemble" else "OUT:<name>:LO/HI"
            print(f"  {model.name}: warning: v{loaded.version} has {has}, the config asks for {model.uncertainty}: "
                  f"its {pvs} (and COVERAGE) PVs will be INVALID until such a version is served")
    if failed:
        print(f"{config.path}: {failed} of {n} model(s) FAILED")
        return EXIT_FAIL
    print(f"{config.path}: configuration OK ({n} model(s))")
    return EXIT_OK


def cmd_pvs(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.sim:
        from ioc.core.config import SimulatorConfig
        from ioc.sim.server import sim_pv_names

        names = sim_pv_names((config.simulator or SimulatorConfig()).prefix)
    else:
        from ioc.core.layout import model_pv_names

        names = [name for model in config.models for name in model_pv_names(model)]
    sys.stdout.write("".join(f"{n}\n" for n in names))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from training.cli import train_command  # lazily: only `mlioc train` loads torch and MLflow

    return train_command(args)


def cmd_watch(args: argparse.Namespace) -> int:
    from training.watch import watch_command  # lazily: the daemon lives with the training sidecar

    return watch_command(args)


def cmd_tune(args: argparse.Namespace) -> int:
    from training.cli import tune_command  # lazily: only the sidecar loads torch, MLflow and Optuna

    return tune_command(args)


def cmd_episodes(args: argparse.Namespace) -> int:
    from training.cli import episodes_command  # lazily: the sidecar's recordings reader (pandas) and plots

    return episodes_command(args)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from training.cli import reproduce_command

    return reproduce_command(args)


def cmd_generate(args: argparse.Namespace) -> int:
    """``mlioc generate KIND CONFIG -o DIR``: generators are imported only here (see ioc/generate)."""

    from ioc.generate import GenerateOptions, run

    config = _load(args.config)
    if args.out is None and not (args.kind == "archiver" and args.submit):
        print("mlioc generate: -o DIR is required", file=sys.stderr)
        return EXIT_USAGE
    if args.submit and args.kind != "archiver":
        print("mlioc generate: --submit goes with the archiver kind", file=sys.stderr)
        return EXIT_USAGE
    if args.preview and args.kind not in ("opi", "all"):
        print("mlioc generate: --preview goes with the opi (or all) kind", file=sys.stderr)
        return EXIT_USAGE
    options = GenerateOptions(protocol=args.protocol, display_base=args.display_base)
    try:
        if args.out is not None:
            for path in run(args.kind, config, Path(args.out), options):
                print(path)
        if args.preview:
            try:
                from ioc.generate.preview import render_all
            except ImportError as exc:
                print(f"error: previews need Pillow (pip install 'mlioc[docs]'): {exc}", file=sys.stderr)
                return EXIT_FAIL
            opi_dir = Path(args.out) / ("opi" if args.kind == "all" else "")
            for path in render_all(opi_dir, Path(args.preview)):
                print(path)
    except OSError as exc:
        print(f"error: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.submit:
        from ioc.generate.archiver import ArchiverError, entries, submit

        body = entries(config, options)
        try:
            result = submit(body, args.submit)
        except ArchiverError as exc:
            print(f"error: archiver submit failed: {exc}", file=sys.stderr)
            return EXIT_FAIL
        for pv, status in result.statuses.items():
            print(f"{pv}: {status}")
        if result.missing:
            print(f"error: the appliance did not accept {len(result.missing)} PV(s): {', '.join(result.missing)}",
                  file=sys.stderr)
            return EXIT_FAIL
        print(f"submitted {len(body)} PV(s) to {args.submit}")
    return EXIT_OK


def cmd_not_yet(args: argparse.Namespace) -> int:
    print(f"mlioc {args.command}: not available in this build yet", file=sys.stderr)
    return EXIT_USAGE


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-port", type=int, help="CA server (UDP search) port [EPICS_CA_SERVER_PORT, 5064]")
    p.add_argument("--pva-port", type=int, help="PVA server TCP port [EPICS_PVAS_SERVER_PORT, 5075]")
    p.add_argument("--interfaces", help="addresses to serve on, space separated [EPICS_CAS_INTF_ADDR_LIST]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlioc", description="EPICS-native machine-learning IOC")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the IOC (default config: the shipped demo)")
    p.add_argument("config", nargs="?", help="YAML config (default: config/demo.yaml)")
    _add_server_flags(p)
    p.add_argument("--pva-broadcast-port", type=int, help="PVA UDP search port [EPICS_PVAS_BROADCAST_PORT, 5076]")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 = off) [config ioc.metrics_port]")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="serve even when another server already answers for this IOC's PV names")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("sim", help="run the simulated machine IOC the demo's inputs come from")
    p.add_argument("config", nargs="?", help="YAML config with a simulator section (default: demo)")
    _add_server_flags(p)
    p.add_argument("--rate-hz", type=float, help="update rate [simulator.rate_hz]")
    p.add_argument("--seed", type=int, help="random seed [simulator.seed]")
    p.add_argument("--image-hz", type=float, help="screen image rate [simulator.image_hz, else the update rate]")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("check", help="validate a config and its models without serving")
    p.add_argument("config", help="YAML config")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("pvs", help="print every PV the IOC (or, with --sim, the simulator) serves")
    p.add_argument("--sim", action="store_true", help="the simulator's PVs instead of the IOC's")
    p.add_argument("config", nargs="?", help="YAML config (default: demo)")
    p.set_defaults(func=cmd_pvs)

    p = sub.add_parser("train", help="train / retrain a model, log to MLflow, optionally push")
    p.add_argument("config", help="YAML config")
    p.add_argument("--model", required=True, help="model name in the config")
    p.add_argument("--data", help="a CSV/Parquet file or recording directory, 'recorded', 'simulator', or an "
                   "archiver URL (default: the config's training.data.source)")
    p.add_argument("--push", action="store_true", help="publish a winning version into the store")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--seed", type=int, help="override training.seed")
    p.add_argument("--start", help="only data from this time on (ISO 8601 or unix seconds)")
    p.add_argument("--end", help="only data before this time")
    p.add_argument("--tracking-uri", help="MLflow tracking URI [MLFLOW_TRACKING_URI, sqlite:///mlflow.db]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs and cron jobs)")
    p.add_argument("--unlabelled-episodes", choices=("exclude", "include"),
                   help="recorded data: rows of DRIFT/ANOMALY episodes nobody labelled (mlioc episodes) "
                   "[training.filters.episodes.unlabelled, exclude]")
    # The continual-learning loop (mlioc watch, the Airflow DAG) runs `mlioc train` with these.
    p.add_argument("--as", dest="promote_to", choices=("champion", "challenger"),
                   help="a winner becomes this (override training.gate.promote_to); the loop uses challenger")
    p.add_argument("--reference-since", help="drift reference from this time on (the new regime; ISO or unix s)")
    p.add_argument("--trigger", help="why this run happened (schedule, drift, operator): an MLflow tag")
    p.add_argument("--requested-by", help="who asked for it (user@host): an MLflow tag")
    p.add_argument("--result", metavar="FILE", help="write the outcome (run id, decision, store version) as JSON")
    p.add_argument("--params", choices=("best",), help="best: train with the best trial of the model's "
                   "`mlioc tune` study (recorded in the run and the manifest's provenance)")
    p.add_argument("--study", help="with --params best: the study [training.search.study, mlioc-<model>]")
    p.add_argument("--storage", help="with --params best: the study's storage URL [sqlite optuna.db beside "
                   "MLflow's database]")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("watch", help="retrain on schedule, drift and RETRAIN requests (the loop's daemon)")
    p.add_argument("config", help="YAML config; models with a retrain: section are watched")
    p.add_argument("--model", action="append", help="watch only this model (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI passed to every run [MLFLOW_TRACKING_URI]")
    p.add_argument("--log-dir", help="where each run's log goes [STATE_DIR/retrain-logs]")
    p.add_argument("--once", action="store_true", help="handle what is due now, wait for its run, then exit")
    p.add_argument("--flush-wait-s", type=float, default=15.0,
                   help="how long a run waits for the IOC to close its recording file (0: do not ask) [15]")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("tune", help="hyperparameter search (Optuna) as nested MLflow runs (docs/how-to/training.md)")
    p.add_argument("config", help="YAML config")
    p.add_argument("--model", required=True, help="model name in the config (its training.search is searched)")
    p.add_argument("--trials", type=int, help="stop when the study has this many trials [training.search.trials]")
    p.add_argument("--storage", help="Optuna storage URL shared by all workers, e.g. postgresql://user:pw@host/db "
                   "[sqlite optuna.db beside MLflow's database]")
    p.add_argument("--study", help="study name; the same name resumes or joins it [training.search.study, "
                   "mlioc-<model>]")
    p.add_argument("--timeout", type=float, metavar="S", help="start no new trial after S seconds")
    p.add_argument("--data", help="as for train (default: the config's training.data.source)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI [MLFLOW_TRACKING_URI, sqlite:///mlflow.db]")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("reproduce", help="retrain a logged run and report how far it lands from the original")
    p.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of an `mlioc train` run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI [MLFLOW_TRACKING_URI, sqlite:///mlflow.db]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reproduce)

    _add_episodes(sub)

    from ioc.client_cli import add_parser as add_client_parser
    from ioc.models_cli import add_parser as add_models_parser

    add_client_parser(sub)
    add_models_parser(sub)
    _add_generate(sub)
    return parser


def _add_episodes(sub) -> None:
    """``mlioc episodes list|show|label``: the DRIFT/ANOMALY stretches of a model's recordings, and verdicts."""
    p = sub.add_parser("episodes", help="DRIFT/ANOMALY episodes in a model's recordings: list, show, label "
                       "accept|reject (docs/how-to/uncertainty-and-episodes.md)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("config", help="YAML config")
        q.add_argument("--model", required=True, help="model name in the config")
        q.add_argument("--data", metavar="DIR", help="recording directory [the model's record.dir]")

    q = actions.add_parser("list", help="every episode: id, start, end, duration, severity, worst inputs, label")
    common(q)
    q = actions.add_parser("show", help="one episode in detail, and a PNG plot of its inputs and scores")
    common(q)
    q.add_argument("id", metavar="ID", help="episode id (from list), e.g. beam-20261130T071502Z")
    q.add_argument("--out", metavar="FILE", help="where to write the plot [ID.png]")
    q = actions.add_parser("label", help="record a verdict: accept (a new normal: train on it) or reject (a fault)")
    common(q)
    q.add_argument("id", metavar="ID", help="episode id (from list)")
    q.add_argument("verdict", choices=("accept", "reject"), help="accept: train on it; reject: never train on it")
    q.add_argument("--why", required=True, help="why (kept with the label, shown to the next engineer)")
    q.add_argument("--by", help="who decides [the login user@host]")
    q.add_argument("--force", action="store_true", help="overrule a colleague's different verdict (theirs stays "
                   "in the history)")
    p.set_defaults(func=cmd_episodes)


def _add_generate(sub) -> None:
    from ioc.generate import KINDS  # the registry only: no generator is imported here

    kinds = "; ".join(f"{name}: {kind.help}" for name, kind in KINDS.items())
    p = sub.add_parser("generate", help="generate control-room artefacts (screens, archiver list, .db, dashboards)",
                       description=f"Kinds: {kinds}; all: every kind, each into its own folder under DIR.")
    p.add_argument("kind", choices=[*KINDS, "all"], metavar="KIND", help=f"one of {', '.join([*KINDS, 'all'])}")
    p.add_argument("config", help="YAML config")
    p.add_argument("-o", "--out", metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--protocol", choices=("ca", "pva"), default="ca",
                   help="name PVs for CA (plain names, default) or PVA (pva:// prefix) in screens and archiver list")
    p.add_argument("--submit", metavar="URL", help="archiver: POST the list to the appliance (its URL, e.g. "
                   "http://archiver:17665/mgmt/bpl)")
    p.add_argument("--preview", metavar="IMGDIR", help="opi: also render a PNG preview of each screen into IMGDIR")
    p.add_argument("--display-base", default="opi", metavar="DIR_OR_URL",
                   help="alarms: where the model screens are installed (default: opi)")
    p.set_defaults(func=cmd_generate)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    if args.command not in ("serve", "sim"):
        # `mlioc models list STORE | head` should just stop, not print a BrokenPipe traceback. (Never
        # for the servers: there SIGPIPE must stay ignored so a vanished client is only an EPIPE.)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return args.func(args)
    except ConfigError as exc:
        return _report_config_error(exc)
    except AccessError as exc:
        return _report_access_error(exc)
    except ClientError as exc:  # mlioc get|put|monitor: a PV that does not connect, a refused write
        print(f"mlioc {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
