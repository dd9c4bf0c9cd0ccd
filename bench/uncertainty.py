"""bench/uncertainty: are the bands honest, how wide are they, and does the spread see drift coming?

    python -m bench.uncertainty [--epochs 100] [--members 5] [--quick]

Two versions of the demo model (inputs q1, q2, rf_phase, charge -> sigma_x, sigma_y, loss):

* **conformal**: the shipped champion ``models/beam`` (intervals calibrated by ``mlioc train`` at 0.9);
* **ensemble**: trained here by the real pipeline (``training.pipeline.run``: N seeded members, one graph,
  noise floor calibrated for +-2 STD = 95.45 %) on the same simulator data, into a scratch store.

Both are served by the IOC's own engine and judged by the IOC's own monitor and COVERAGE
(ioc.runtime.monitor, ioc.runtime.coverage on an in-process PV database, severities computed by the PV
model with its debouncer) on a simulated clock, with the demo's drift settings:

1. held out, i.i.d.: 20,000 fresh draws of the documented generator (another seed): measured coverage
   per output against the stated one, and the mean band width (HI - LO, or 4 STD);
2. live, in distribution: ``--live-min`` simulated minutes of the simulator's machine (knobs wandering
   with a 1 s correlation time at 10 Hz): the mean of the served COVERAGE and its false alarms;
3. drift: then q1's centre ramps to +``--shift`` reference std devs over 10 minutes and stays there 5: when
   DRIFT, COVERAGE and the ensemble's spread react (the served STD averaged over the outputs, relative to
   its in-distribution median, 10 s rolling mean; "above in-distribution" = above the largest value of the
   live part). The spread must rise before or with DRIFT; the table says whether it did.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.drift import RATE_HZ, Edges, SimClock  # noqa: E402
from ioc.core.configfile import load_config  # noqa: E402
from ioc.core.engine import EnsembleModel, LoadedModel, load_champion  # noqa: E402
from ioc.core.layout import ModelStatus  # noqa: E402
from ioc.core.manifest import ENSEMBLE_K  # noqa: E402
from ioc.core.pvmodel import PVDatabase  # noqa: E402
from ioc.runtime.coverage import CoverageMonitor  # noqa: E402
from ioc.runtime.monitor import ModelMonitor  # noqa: E402
from ioc.runtime.runner import CycleRecord, ModelRunner  # noqa: E402
from ioc.sim.physics import Machine, generate_dataset  # noqa: E402

OUTPUTS = ("sigma_x", "sigma_y", "loss")
RAMP_S, HOLD_S = 600.0, 300.0


def write_config(tmp: Path, store: Path, method: str, *, members: int, epochs: int, samples: int) -> Path:
    """config/demo.yaml with a scratch store, no recorder, and the given uncertainty."""
    doc = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    doc["ioc"].pop("state_dir", None)
    m = doc["models"][0]
    m["store"] = str(store)
    m.pop("store_template", None)
    m.pop("record", None)
    m.pop("retrain", None)  # the loop needs a recorder; this bench drives the monitors itself
    t = m["training"]
    t.pop("search", None)
    t["epochs"], t["warm_start"] = epochs, "scratch"
    t["data"] = {"source": "simulator", "samples": samples, "seed": 0}
    t["uncertainty"] = ({"method": "ensemble", "members": members} if method == "ensemble"
                        else {"method": "conformal", "coverage": 0.9})
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def train_ensemble(config_path: Path, tmp: Path) -> float:
    from training.pipeline import Options, run
    from training.spec import load_spec

    config = load_config(config_path)
    t0 = time.perf_counter()
    outcome = run(config, "beam", load_spec(config, "beam"),
                  Options(push=True, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}"))
    if outcome.store_version is None:
        raise SystemExit(f"the ensemble was not pushed: {outcome.decision.reason}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- 1. held out


def held_out(model: LoadedModel, samples: int) -> tuple[list[float], list[float]]:
    """(coverage per output, mean band width per output) on fresh i.i.d. draws."""
    x, y = generate_dataset(samples, seed=7)
    if isinstance(model, EnsembleModel):
        pred, std = model.run_batch_spread(x)
        bound = ENSEMBLE_K * std
    else:
        pred = model.run_batch(x)
        assert model.uncertainty is not None and model.uncertainty.halfwidth is not None
        bound = np.broadcast_to(model.uncertainty.halfwidth, pred.shape)
    inside = np.abs(pred - y) <= bound
    return inside.mean(axis=0).tolist(), (2 * bound).mean(axis=0).tolist()


# ----------------------------------------------------------------------------- 2 + 3. live and drift


@dataclasses.dataclass
class Live:
    coverage: list[float] = dataclasses.field(default_factory=list)  # in distribution: COVERAGE posts, output mean
    false_minor: int = 0
    false_major: int = 0
    drifted_coverage: list[float] = dataclasses.field(default_factory=list)  # during the hold
    drift_minor: float | None = None  # s after the ramp started
    drift_major: float | None = None
    coverage_minor: float | None = None
    coverage_major: float | None = None
    # "STD" (served) and "spread" (without the noise floor): when first above in distribution, and how high
    spread_above: dict[str, float | None] = dataclasses.field(default_factory=dict)
    spread_at: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


async def live(config_path: Path, live_min: float, shift: float, seed: int) -> Live:
    config = load_config(config_path)
    cfg = config.models[0]
    clock = SimClock()
    db = PVDatabase()
    runner = ModelRunner(cfg, db, config.ioc.inference, asyncio.get_running_loop(), clock=clock)
    monitor = ModelMonitor(runner, db, clock=clock)
    coverage = CoverageMonitor(cfg, monitor, db, clock=clock)
    monitor.pair_listeners.append(coverage.on_pairs)
    monitor.start()
    coverage.start()
    model = load_champion(cfg, config.ioc.inference)
    monitor.on_model(model)
    coverage.on_model(model)
    await monitor.calibrated.wait()
    sinks = [monitor.truth_sink(k) for k in range(len(monitor.truth_index))]
    drift_edges = Edges(monitor.drift_pv)
    cov_edges = [Edges(pv) for pv in coverage.pvs]
    machine = Machine(seed=seed, rate_hz=RATE_HZ)
    out = Live()
    n_live = int(live_min * 60 * RATE_HZ)
    n_drift = int((RAMP_S + HOLD_S) * RATE_HZ)
    times, spreads = [], []
    last_posts = [pv.reading.timestamp for pv in coverage.pvs]
    for i in range(n_live + n_drift):
        ramp_t = (i - n_live) / RATE_HZ
        if ramp_t >= 0:
            machine.knob_drift["q1"] = shift * min(1.0, ramp_t / RAMP_S)
        if i == n_live:  # in-distribution COVERAGE alarms, up to the ramp
            out.false_minor = sum(e.minor for e in cov_edges)
            out.false_major = sum(e.major for e in cov_edges)
        x, observed = machine.step()
        clock.t += 1.0 / RATE_HZ
        t = clock.t
        y = model.run(x)
        for k, j in enumerate(monitor.truth_index):
            sinks[k](observed[j], 0, t, True)
        record = CycleRecord(t, x, y, ModelStatus.OK, model.version, 0.0, "")
        monitor.on_cycle(record)
        coverage.on_cycle(record)
        spread = model.spread(y)
        if spread is not None:
            times.append(ramp_t)
            spreads.append(spread.copy())
        posts = [pv.reading for pv in coverage.pvs]
        if any(r.timestamp != last for r, last in zip(posts, last_posts, strict=True)):
            last_posts = [r.timestamp for r in posts]
            values = [r.value for r in posts if r.severity < 3]
            if values and ramp_t < 0:
                out.coverage.append(float(np.mean(values)))
            elif values and ramp_t >= RAMP_S:
                out.drifted_coverage.append(float(np.mean(values)))
        if ramp_t < 0:
            continue
        if out.drift_minor is None and drift_edges.last >= 1:
            out.drift_minor = ramp_t
        if out.drift_major is None and drift_edges.last >= 2:
            out.drift_major = ramp_t
        worst = max((e.last for e in cov_edges), default=0)
        if out.coverage_minor is None and worst >= 1:
            out.coverage_minor = ramp_t
        if out.coverage_major is None and worst >= 2:
            out.coverage_major = ramp_t
    if spreads:
        u = model.manifest.raw.get("uncertainty", {})
        noise = np.asarray(u["noise_std"], dtype=np.float64) if "noise_std" in u else None
        _spread_reaction(out, np.array(times), np.array(spreads), noise)
    return out


SUSTAIN = 3  # 10 s means in a row: a rise, not one noisy window


def _spread_reaction(out: Live, times: np.ndarray, spreads: np.ndarray, noise: np.ndarray | None) -> None:
    """How the ensemble's STD (and its members' spread alone, the STD without the calibrated noise floor)
    react: relative to their in-distribution median, mean over outputs, in 10 s means; when each first goes
    above anything seen in distribution for SUSTAIN windows, and how high each is when DRIFT alarms."""
    series = {"STD": spreads}
    if noise is not None:
        series["spread"] = np.sqrt(np.maximum(spreads**2 - noise**2, 0.0))
    n = int(10 * RATE_HZ)
    k = len(times) // n
    t10 = times[: k * n].reshape(k, n)[:, -1]
    for name, values in series.items():
        base = np.median(values[times < 0], axis=0)
        ratio = (values / np.where(base > 0, base, 1.0)).mean(axis=1)
        r10 = ratio[: k * n].reshape(k, n).mean(axis=1)
        top = float(r10[t10 < 0].max()) if (t10 < 0).any() else float("inf")
        above = (r10 > top) & (t10 >= 0)
        run = np.convolve(above, np.ones(SUSTAIN, dtype=int), mode="valid") == SUSTAIN
        first = np.nonzero(run)[0]
        out.spread_above[name] = float(t10[first[0]]) if len(first) else None
        for when_name, when in (("DRIFT MINOR", out.drift_minor), ("DRIFT MAJOR", out.drift_major), ("end", t10[-1])):
            if when is not None:
                at = np.nonzero(t10 >= when)[0]
                out.spread_at.setdefault(name, {})[when_name] = float(r10[at[0]] if len(at) else r10[-1])


# ----------------------------------------------------------------------------- report


def _three(values: list[float], fmt: str = "{:.3f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def _t(v: float | None) -> str:
    return "not within the drift" if v is None else f"{v:.0f} s"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100, help="the ensemble members' epochs")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20000, help="simulator rows the ensemble trains on")
    parser.add_argument("--live-min", type=float, default=20.0, help="simulated in-distribution minutes")
    parser.add_argument("--shift", type=float, default=4.0, help="q1 drift, reference std devs")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="CI size (figures not meaningful)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the monitor announces each drift alarm: the table says it all
    if args.quick:
        args.epochs, args.members, args.samples, args.live_min = 5, 2, 3000, 2.0
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        shipped = tmp / "beam-store"
        shutil.copytree(ROOT / "models" / "beam", shipped, ignore=shutil.ignore_patterns(".lock"))
        conformal_cfg = write_config(tmp, shipped, "conformal", members=0, epochs=args.epochs, samples=args.samples)
        ensemble_cfg = write_config(tmp, tmp / "ensemble-store", "ensemble", members=args.members,
                                    epochs=args.epochs, samples=args.samples)
        train_s = train_ensemble(ensemble_cfg, tmp)
        models = {}
        for name, path in (("conformal", conformal_cfg), ("ensemble", ensemble_cfg)):
            config = load_config(path)
            models[name] = (path, load_champion(config.models[0], config.ioc.inference))
        rows = [("what", "conformal", "ensemble", "target")]
        results = {}
        for name, (path, model) in models.items():
            cov, width = held_out(model, 20000)
            results[name] = (model, cov, width, await live(path, args.live_min, args.shift, args.seed))
        c, e = results["conformal"], results["ensemble"]
        rows.append(("version", f"shipped v{c[0].version} (mlioc train, 400 epochs)",
                     f"{e[0].uncertainty.members} members x {args.epochs} epochs ({train_s:.0f} s)", "-"))
        rows.append(("stated coverage", f"{c[0].uncertainty.coverage:.4g} ([LO, HI])",
                     f"{e[0].uncertainty.coverage:.4g} (+-2 STD)", "-"))
        rows.append(("held out i.i.d. (20k rows), coverage sigma_x / sigma_y / loss", _three(c[1]), _three(e[1]),
                     ">= stated - 0.01"))
        rows.append(("held out, mean band width (mm / mm / %)", _three(c[2], "{:.3g}"), _three(e[2], "{:.3g}"),
                     "narrow"))
        for label, idx in (("live in distribution", 3),):
            lc, le = c[idx], e[idx]
            rows.append((f"{label} ({args.live_min:g} min at 10 Hz): mean COVERAGE ({len(lc.coverage)} posts)",
                         f"{np.mean(lc.coverage):.3f}" if lc.coverage else "-",
                         f"{np.mean(le.coverage):.3f}" if le.coverage else "-", "~ stated"))
            rows.append((f"{label}: false COVERAGE MINOR / MAJOR", f"{lc.false_minor} / {lc.false_major}",
                         f"{le.false_minor} / {le.false_major}", "0 / 0"))
        lc, le = c[3], e[3]
        rows.append((f"q1 ramp to +{args.shift:g} std: DRIFT MINOR / MAJOR after the ramp started",
                     f"{_t(lc.drift_minor)} / {_t(lc.drift_major)}", f"{_t(le.drift_minor)} / {_t(le.drift_major)}",
                     "-"))
        rows.append(("... COVERAGE (worst output) MINOR / MAJOR", f"{_t(lc.coverage_minor)} / {_t(lc.coverage_major)}",
                     f"{_t(le.coverage_minor)} / {_t(le.coverage_major)}", "-"))
        rows.append((f"... mean COVERAGE during the {HOLD_S:.0f} s hold",
                     f"{np.mean(lc.drifted_coverage):.3f}" if lc.drifted_coverage else "-",
                     f"{np.mean(le.drifted_coverage):.3f}" if le.drifted_coverage else "-", "-"))
        for name, label in (("STD", "ensemble STD"), ("spread", "members' spread (STD less noise floor)")):
            if name not in le.spread_at:
                continue
            at = ", ".join(f"{k} x{v:.2f}" for k, v in le.spread_at[name].items())
            rows.append((f"... {label} / in-distribution median at", "-", at, "rises"))
            rows.append((f"... {label} above its in-distribution max (30 s)", "-", _t(le.spread_above[name]),
                         "<= DRIFT MINOR"))
        first = [t for t in le.spread_above.values() if t is not None]
        rise = min(first) if first else None
        if rise is not None and (le.drift_minor is None or rise <= le.drift_minor):
            verdict = "yes: " + ("DRIFT never alarmed" if le.drift_minor is None
                                 else f"{le.drift_minor - rise:.0f} s before DRIFT MINOR")
        else:
            verdict = "NO: the spread did not rise before DRIFT" + (f" (it rose {rise - le.drift_minor:.0f} s after)"
                                                                    if rise is not None else "")
        rows.append(("spread rises before or with DRIFT?", "-", verdict, "yes"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        print("| " + " | ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
