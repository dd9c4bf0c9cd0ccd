"""Hyperparameter search cost: the demo's 24 trials with 1 and 2 workers, what pruning saved, and the best
validation loss against the shipped default configuration — same data, same run.

    python bench/tune.py [--config config/demo.yaml] [--model beam] [--trials 24] [--storage sqlite|postgres]
                         [--no-unpruned]

Each search is real ``mlioc tune`` processes (wall time includes their start-up: imports, data, MLflow)
on a fresh storage and a fresh sqlite MLflow store in a scratch directory:

* 1 worker, torch on all cores; 2 workers sharing one study, torch on cores / 2 each (``OMP_NUM_THREADS``),
  so both use the same CPUs. ``--storage postgres`` shares the study through a throw-away PostgreSQL
  server (tests/support/postgres.py) instead of the sqlite default.
* Pruning: from the 1-worker search, epochs the pruned trials did not train (cap - epochs run) and the
  time that saved, estimated per pruned trial as its own measured seconds per epoch x the epochs it
  skipped; and, measured, the same search with ``pruner: none`` (not the very same trials: the sampler
  sees different histories once a trial is not pruned).
* The shipped default (``training:`` of the config, from scratch, seed 0) trained in this process on the
  same time-ordered split and normalisation, at its own epochs and at the search's cap; and the best
  trial's values trained for the default's epochs (what ``mlioc train --params best --epochs N`` does).
* Interference: the CPU seconds the workers used (their rusage) and what every other process on the
  machine used meanwhile (``/proc/stat`` busy time minus the workers').

Other work on the machine (other engineers' tests on a shared 2-core box) slows everything; the
2-worker speed-up is the figure most sensitive to it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from ioc.core.configfile import load_config  # noqa: E402
from training.spec import load_search  # noqa: E402
from training.tune import TrialRecord, best_record, trial_records  # noqa: E402


def _busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have used (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _search(config: Path, model: str, workers: int, storage: str, tracking: str, trials: int, cwd: Path,
            study: str, threads: int) -> tuple[float, float, float]:
    """Wall seconds, the workers' CPU seconds, and the CPU seconds everything else used meanwhile."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "ioc", "tune", str(config), "--model", model, "--trials", str(trials),
           "--storage", storage, "--study", study, "--tracking-uri", tracking]
    busy0, t0 = _busy_cpu_s(), time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(cwd / f"{study}-worker{i}.log", "w"))  # noqa: SIM115
             for i in range(workers)]
    codes, cpu = [], 0.0
    for p in procs:
        _pid, status, usage = os.wait4(p.pid, 0)  # the child's own CPU time (threads included)
        p.returncode = os.waitstatus_to_exitcode(status)
        codes.append(p.returncode)
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - t0
    others = max(_busy_cpu_s() - busy0 - cpu, 0.0)
    if any(codes):
        logs = "\n".join((cwd / f"{study}-worker{i}.log").read_text()[-3000:] for i in range(workers))
        raise SystemExit(f"mlioc tune failed ({codes}):\n{logs}")
    return wall, cpu, others


def _pruned_config(config: Path, out: Path) -> Path:
    """The same config with ``pruner: none`` (line-level edit, so comments and paths stay as they are)."""
    lines = config.read_text().splitlines()
    edited = [ln.split("pruner:")[0] + "pruner: none" if ln.strip().startswith("pruner:") else ln for ln in lines]
    if edited == lines:
        raise SystemExit(f"{config}: no `pruner:` line in training.search to switch off")
    out.write_text("\n".join(edited) + "\n")  # tune reads no store or recording: the copy may live anywhere
    return out


def _stats(records: list[TrialRecord], cap: int) -> dict:
    complete = [r for r in records if r.state == "COMPLETE"]
    pruned = [r for r in records if r.state == "PRUNED"]
    skipped = sum(cap - r.epochs for r in pruned)
    saved = sum((cap - r.epochs) * (r.seconds / r.epochs) for r in pruned if r.epochs > 0)
    best = best_record(records)
    return {"n": len(records), "complete": len(complete), "pruned": len(pruned), "failed": len(records) -
            len(complete) - len(pruned), "epochs": sum(r.epochs for r in records), "skipped": skipped,
            "saved_s": saved, "train_s": sum(r.seconds for r in records), "best": best}


def _study_stats(url: str, study: str, cap: int) -> dict:
    s = optuna.load_study(study_name=study, storage=url)
    st = _stats(trial_records(s), cap)
    st["overrides"] = s.best_trial.user_attrs["mlioc.overrides"] if st["best"] is not None else {}
    return st


def _reference_val_loss(config_path: Path, model: str, runs: list[tuple[str, dict]]) -> list[tuple[str, int, float,
                                                                                                   float]]:
    """Final validation loss, from scratch, of the config's own ``training:`` with each set of overrides
    (``{}``: the shipped default), trained in this process on the search's data: (label, epochs, loss, s)."""
    import torch  # noqa: F401 - imported here so the searches above start without it

    from training.dataset import Normalisation, build_dataset, time_split
    from training.layout import Layout
    from training.models import build_model
    from training.pipeline import normalise_split
    from training.spec import load_spec
    from training.trainer import seed_everything, train
    from training.tune import apply_overrides

    config = load_config(config_path)
    spec = load_spec(config, model)
    ds = build_dataset(config.model(model), spec, None)
    split = time_split(ds, spec.split)
    layout = Layout.from_model(config.model(model), spec.kind)
    arrays = normalise_split(split, Normalisation.fit(split.train), layout)
    out = []
    for label, ov in runs:
        s = apply_overrides(spec, ov)
        seed_everything(s.seed)
        net = build_model(s, layout)
        t0 = time.perf_counter()
        result = train(s, net, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"])
        out.append((label, s.epochs, result.history[-1].val_loss, time.perf_counter() - t0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"))
    ap.add_argument("--model", default="beam")
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--storage", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--no-unpruned", action="store_true", help="skip the measured search without a pruner")
    args = ap.parse_args()
    config = Path(args.config).resolve()
    spec, search = load_search(load_config(config), args.model)
    cores = os.cpu_count() or 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    server = None
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        tmp = Path(tmp)
        tracking = f"sqlite:///{tmp / 'mlflow.db'}"
        if args.storage == "postgres":
            from tests.support.postgres import start_postgres

            server = start_postgres()
            print(f"PostgreSQL server set up in {server.setup_s:.2f} s")

        def storage(name: str) -> str:
            return server.create_database(name) if server else f"sqlite:///{tmp / (name + '.db')}"

        runs: list[tuple[str, int, int, tuple[float, float, float], dict]] = []
        try:
            for label, workers, cfg in (("median pruner", 1, config), ("median pruner", 2, config)):
                url = storage(f"w{workers}")
                threads = max(1, cores // workers)
                wall = _search(cfg, args.model, workers, url, tracking, args.trials, tmp, f"bench-w{workers}",
                               threads)  # (wall, CPU, others' CPU)
                runs.append((label, workers, threads, wall, _study_stats(url, f"bench-w{workers}", search.epochs)))
            if not args.no_unpruned and search.pruner != "none":
                cfg = _pruned_config(config, tmp / "unpruned.yaml")
                url = storage("nopruner")
                wall = _search(cfg, args.model, 1, url, tracking, args.trials, tmp, "bench-nopruner", cores)
                runs.append(("no pruner", 1, cores, wall, _study_stats(url, "bench-nopruner", search.epochs)))
        finally:
            if server is not None:
                server.stop()
        best_ov = runs[0][4]["overrides"]
        refs = [("shipped default `training:`", {"epochs": search.epochs}), ("shipped default `training:`", {}),
                ("best trial's values (1-worker search)",
                 {k: v for k, v in best_ov.items() if k != "epochs"})]
        reference = _reference_val_loss(config, args.model, refs)

    print(f"{args.trials} trials of the {args.model} search in {config.name} (<= {search.epochs} epochs each, "
          f"{search.sampler} sampler, {search.pruner} pruner), {args.storage} study storage, sqlite MLflow; "
          f"{cores} cores shared with other work (its CPU time during each search is in the table)\n")
    print("| run | workers | torch threads / worker | wall s | workers' CPU s | other processes' CPU s "
          "| complete / pruned / failed | epochs trained | best val loss |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for label, workers, threads, (wall, cpu, others), st in runs:
        best = st["best"]
        print(f"| search, {label} | {workers} | {threads} | {wall:.1f} | {cpu:.1f} | {others:.1f} "
              f"| {st['complete']} / {st['pruned']} / {st['failed']} | {st['epochs']} of {st['n'] * search.epochs} "
              f"| {best.value:.4g} (trial {best.number}) |")
    for label, epochs, loss, secs in reference:
        print(f"| {label}, {epochs} epochs | - | {cores} | {secs:.1f} (training only) | | | | {epochs} | {loss:.4g} |")
    (one_wall, one_cpu, one_others), (two_wall, _cpu, two_others) = runs[0][3], runs[1][3]
    st = runs[0][4]
    print()
    print(f"- 2 workers vs 1: {one_wall / two_wall:.2f}x the speed in wall time ({one_wall:.1f} s -> "
          f"{two_wall:.1f} s); other processes used {one_others:.0f} s and {two_others:.0f} s of CPU meanwhile.")
    print(f"- pruning (1-worker search): {st['pruned']} of {st['n']} trials pruned, {st['skipped']} of "
          f"{st['n'] * search.epochs} epochs not trained ({st['skipped'] / (st['n'] * search.epochs):.0%}); "
          f"estimated time saved {st['saved_s']:.1f} s (each pruned trial's own s/epoch x epochs skipped) against "
          f"{st['train_s']:.1f} s of trial time spent.")
    if len(runs) > 2:
        nw, ncpu, nothers = runs[2][3]
        print(f"- measured: the same search with `pruner: none` took {nw:.1f} s wall / {ncpu:.1f} s CPU vs "
              f"{one_wall:.1f} s / {one_cpu:.1f} s with pruning ({runs[2][4]['epochs']} epochs trained vs "
              f"{st['epochs']}).")
    best = st["best"].value
    for label, epochs, loss, _s in reference:
        print(f"- best trial ({best:.4g}) vs {label} at {epochs} epochs ({loss:.4g}): "
              + (f"{loss / best:.3f}x lower validation loss" if best < loss else f"{best / loss:.3f}x higher"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
