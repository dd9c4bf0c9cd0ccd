"""``mlioc train`` and ``mlioc reproduce``: progress bar, summary table, exit status.

Imported only by those two commands (``ioc/cli.py`` dispatches here lazily), so ``mlioc serve`` never
loads torch or MLflow. Exit status: 0 the run finished (promoted, or not promoted because it lost to
the champion: a normal nightly outcome) / reproduce passed; 1 bad data, config, store or tracking
server, a failed ONNX parity or IOC validation, or reproduce out of tolerance; 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ioc.core.config import ConfigError
from ioc.core.configfile import load_config
from training.dataset import DatasetError
from training.registry import TrackingError
from training.spec import load_spec_and_search, parse_time

log = logging.getLogger("mlioc.training")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class RichReporter:
    """Stage lines and a per-epoch progress bar on stderr (stdout keeps the summary table)."""

    def __init__(self, console: Console, enabled: bool):
        self.console = console
        self.enabled = enabled
        self.progress: Progress | None = None

    def stage(self, text: str) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(f"[bold]•[/bold] {text}")

    def training(self, epochs: int):
        if not self.enabled:
            return lambda stats: None
        self.progress = Progress(TextColumn("  epoch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[loss]}"), console=self.console,
                                 transient=False)
        progress = self.progress
        task = progress.add_task("train", total=epochs, loss="")
        progress.start()

        def on_epoch(stats) -> None:
            progress.update(task, advance=1, loss=f"train {stats.train_loss:.4g}  val {stats.val_loss:.4g}")
            if stats.epoch == epochs:
                progress.stop()
                self.progress = None

        return on_epoch


def _error(text: str) -> None:
    """Errors go to stderr unwrapped (rich would fold long paths at the terminal width)."""
    print(f"error: {text}", file=sys.stderr)


def _time_arg(value: str | None, flag: str) -> float | None:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise SystemExit(f"error: {flag}: {exc}") from exc


def train_command(args: argparse.Namespace) -> int:
    from training.pipeline import Options, TrainError, run

    err = Console(stderr=True)
    params = getattr(args, "params", None)
    if params is None and (getattr(args, "study", None) or getattr(args, "storage", None)):
        _error("--study and --storage go with --params best")
        return EXIT_USAGE
    try:
        config = load_config(args.config)
        try:
            spec, search = load_spec_and_search(config, args.model)
        except KeyError as exc:
            _error(exc.args[0])
            return EXIT_USAGE
        tuning = None
        if params == "best":
            from training.tune import TuneError, apply_overrides, best_trial

            try:
                best = best_trial(args.model, search, study=args.study, storage=args.storage,
                                  tracking_uri=args.tracking_uri)
                spec = apply_overrides(spec, best.overrides)
            except TuneError as exc:
                _error(str(exc))
                return EXIT_FAIL
            tuning = best.provenance()
            err.print(f"[bold]•[/bold] parameters of trial {best.number} of study {best.study!r} "
                      f"(val loss {best.value:.5g}): {best.overrides}")
        tags = {k: v for k, v in (("mlioc.trigger", getattr(args, "trigger", None)),
                                  ("mlioc.requested_by", getattr(args, "requested_by", None))) if v}
        options = Options(data=args.data, push=args.push, tracking_uri=args.tracking_uri, epochs=args.epochs,
                          seed=args.seed, start=_time_arg(args.start, "--start"), end=_time_arg(args.end, "--end"),
                          tuning=tuning, promote_to=getattr(args, "promote_to", None), tags=tags,
                          reference_since=_time_arg(getattr(args, "reference_since", None), "--reference-since"))
        reporter = RichReporter(err, enabled=not args.no_progress)
        outcome = run(config, args.model, spec, options, reporter)
    except ConfigError as exc:
        _error(f"invalid configuration {exc.path}:")
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_FAIL
    except (DatasetError, TrackingError, TrainError) as exc:
        _error(str(exc))
        return EXIT_FAIL
    print_summary(outcome)
    if getattr(args, "result", None):
        write_result(args.result, outcome)
    failed_checks = [k for k in ("parity", "ioc_validation") if outcome.decision.checks.get(k) is False]
    return EXIT_FAIL if failed_checks else EXIT_OK


def write_result(path: str, outcome) -> None:
    """The outcome for a caller that is a program (``mlioc watch``, the Airflow DAG): one JSON object."""
    import json
    from pathlib import Path

    from ioc.core.store import atomic_write_text

    d = outcome.decision
    doc = {"run_id": outcome.run_id, "tracking_uri": outcome.tracking_uri, "promote": d.promote,
           "pointer": d.pointer, "reason": d.reason, "store_version": outcome.store_version,
           "dataset_digest": outcome.dataset.digest, "rows": len(outcome.dataset), "warm_start": outcome.warm_start}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(doc, sort_keys=True) + "\n")


def print_summary(outcome) -> None:
    out = Console(width=120)
    d = outcome.decision
    table = Table(title=f"mlioc train: run {outcome.run_id}", show_lines=False)
    table.add_column("", style="bold")
    table.add_column("value", overflow="fold")
    ds = outcome.dataset
    table.add_row("data", f"{ds.source['kind']}: {len(ds)} rows (train {len(outcome.split.train)}, "
                  f"val {len(outcome.split.val)}, test {len(outcome.split.test)}), digest {ds.digest[:16]}")
    if ds.filtered:
        table.add_row("filtered", ", ".join(f"{k}: {v}" for k, v in ds.filtered.items()))
    r = outcome.result
    table.add_row("training", f"{outcome.warm_start}; {len(r.history)} epochs on {r.device} in {r.seconds:.1f} s "
                  f"({r.samples_per_s:,.0f} samples/s); final train {r.history[-1].train_loss:.4g}, "
                  f"val {r.history[-1].val_loss:.4g}")
    table.add_row("ONNX parity", f"{'OK' if outcome.parity.ok else 'FAIL'}: max |diff| {outcome.parity.max_abs:.2e} "
                  f"(tolerance {outcome.parity.atol:g}, {outcome.parity.n} test rows)")
    if d.challenger is not None:
        cols = ", ".join(f"{k} {v:.4g}" for k, v in d.challenger.rmse.items())
        table.add_row("test RMSE", f"{cols}; mean NRMSE {d.challenger.mean_nrmse:.4g}")
    if d.champion is not None:
        cols = ", ".join(f"{k} {v:.4g}" for k, v in d.champion.rmse.items())
        table.add_row(f"champion v{d.champion_version}", f"{cols}; mean NRMSE {d.champion.mean_nrmse:.4g}")
    table.add_row("decision", ("PROMOTE to " + d.pointer if d.promote else "NOT PROMOTED") + f": {d.reason}")
    if outcome.store_version is not None:
        table.add_row("pushed", f"store version {outcome.store_version} ({d.pointer}), MLflow registry version "
                      f"{outcome.registry_version} @{d.pointer}")
    elif d.promote:
        table.add_row("pushed", "no (dry run: add --push)")
    table.add_row("tracking", outcome.tracking_uri)
    out.print(table)


class RichTuneReporter:
    """One line per trial started / finished on stderr (works in logs and pipes too)."""

    def __init__(self, console: Console):
        self.console = console

    def stage(self, text: str) -> None:
        self.console.print(f"[bold]•[/bold] {text}", highlight=False, soft_wrap=True)

    def trial_started(self, number: int, params: dict, worker: str) -> None:
        from training.tune import format_params

        self.console.print(f"  trial {number} started: {format_params(params)}", highlight=False, soft_wrap=True)

    def trial_finished(self, record, done: int, target: int, pruned: int, best) -> None:
        value = f"val loss {record.value:.5g}" if record.value is not None else "no value"
        what = {"COMPLETE": f"complete, {value}", "PRUNED": f"pruned at epoch {record.epochs}, {value}"}.get(
            record.state, f"{record.state.lower()}")
        best_txt = f"best #{best.number} {best.value:.5g}" if best is not None else "no best yet"
        self.console.print(f"  trial {record.number} {what} ({record.seconds:.1f} s) | {done}/{target} done, "
                           f"{pruned} pruned | {best_txt}", highlight=False, soft_wrap=True)


def tune_command(args: argparse.Namespace) -> int:
    """``mlioc tune``: 0 the search ran (or the study already had its trials); 1 bad config, storage, data,
    tracking or a study that is not this search's; 2 usage; 128 + signal when stopped by SIGINT / SIGTERM."""
    if args.trials is not None and args.trials <= 0:
        _error(f"--trials must be > 0, got {args.trials}")
        return EXIT_USAGE
    if args.timeout is not None and not args.timeout > 0:
        _error(f"--timeout must be > 0, got {args.timeout}")
        return EXIT_USAGE
    from training.spec import load_search
    from training.tune import TuneError, TuneOptions, tune

    err = Console(stderr=True)
    try:
        config = load_config(args.config)
        try:
            spec, search = load_search(config, args.model)
        except KeyError as exc:
            _error(exc.args[0])
            return EXIT_USAGE
        options = TuneOptions(trials=args.trials, storage=args.storage, study=args.study, timeout=args.timeout,
                              tracking_uri=args.tracking_uri, data=args.data)
        outcome = tune(config, args.model, spec, search, options, RichTuneReporter(err))
    except ConfigError as exc:
        _error(f"invalid configuration {exc.path}:")
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_FAIL
    except (DatasetError, TrackingError, TuneError) as exc:
        _error(str(exc))
        return EXIT_FAIL
    nxt = f"mlioc train {args.config} --model {args.model} --params best"
    if args.study:
        nxt += f" --study {args.study}"
    if args.storage:
        nxt += " --storage " + (outcome.storage if "***" not in outcome.storage else "<the same URL>")
    print_tune_summary(outcome, nxt)
    if outcome.interrupted is not None:
        _error(f"stopped by signal {outcome.interrupted}; run the same command again to resume study "
               f"{outcome.study!r}")
        return 128 + outcome.interrupted
    return EXIT_OK


def print_tune_summary(outcome, next_command: str) -> None:
    out = Console(width=120)
    table = Table(title=f"mlioc tune: study {outcome.study}", show_lines=False)
    table.add_column("", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("storage", outcome.storage)
    table.add_row("trials", f"{outcome.count('COMPLETE')} complete, {outcome.count('PRUNED')} pruned, "
                  f"{outcome.count('FAIL')} failed, {outcome.count('RUNNING')} running (target {outcome.target}); "
                  f"this worker ran {len(outcome.mine)}")
    if outcome.epochs_saved:
        table.add_row("pruning", f"{outcome.epochs_saved} epochs not trained by pruned trials")
    if outcome.best is not None:
        from training.tune import format_params

        b = outcome.best
        table.add_row("best", f"trial {b.number}: val loss {b.value:.5g} ({format_params(b.params)}), run {b.run_id}")
    if outcome.parent_run_id:
        table.add_row("MLflow", f"parent run {outcome.parent_run_id} ({outcome.parent_status}) at "
                      f"{outcome.tracking_uri}")
    if outcome.best is not None:
        table.add_row("next", next_command)
    out.print(table)


def reproduce_command(args: argparse.Namespace) -> int:
    from training.reproduce import ReproduceError, reproduce

    err = Console(stderr=True)
    try:
        report = reproduce(args.run_id, tracking_uri=args.tracking_uri,
                           reporter=RichReporter(err, enabled=not args.no_progress))
    except (ReproduceError, TrackingError, DatasetError) as exc:
        _error(str(exc))
        return EXIT_FAIL
    out = Console(width=120)
    table = Table(title=f"mlioc reproduce {args.run_id}")
    table.add_column("check", style="bold")
    table.add_column("measured")
    table.add_column("tolerance")
    table.add_column("result")
    for row in report.rows():
        table.add_row(*row)
    out.print(table)
    out.print(f"{'PASS' if report.passed else 'FAIL'}: reproduction run {report.new_run_id}")
    return EXIT_OK if report.passed else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - `python -m training.cli`
    from ioc.cli import main as ioc_main

    return ioc_main(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
