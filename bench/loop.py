"""bench/loop: how fast the continual-learning loop closes, and how often it would retrain for nothing.

    python -m bench.loop [--days 1] [--skip-live] [--skip-clean]

1. Live, with the shipped settings (config/demo.yaml's drift: and retrain:, a private copy of the demo
   store, recordings and MLflow in a temporary folder): `mlioc sim`, `mlioc serve` and `mlioc watch` as
   processes on loopback; after a clean recording (history_s + the drift window), `caput SIM:Q2:I_DRIFT
   5` (the README walk-through). Times from that put (wall clock, seen by a CA client) to DRIFT MINOR,
   MAJOR, RETRAIN:STATUS RUNNING, the challenger served (CHALLENGER = 2), CHALLENGER:MAE first valid,
   the promotion (CHAMPION = 2), and DRIFT back to NO_ALARM on the new champion. The parts the loop
   adds beside the parts it waits for by configuration (raise_s, on_drift_s, min_samples) are printed.
2. Clean, simulated: `--days` of in-distribution data through the demo model and the IOC's own drift
   monitor on a simulated clock (bench/drift.py's rig: no network, no sleeps); every DRIFT severity
   the IOC would serve goes through the watcher's own trigger logic (training.watch_policy) with the
   shipped on_drift_s and cooldown_s. Target: 0 retrains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ports import PortPool  # noqa: E402

POOL = PortPool(n_ca=3)
os.environ.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=POOL.ca_addr_list, EPICS_PVA_AUTO_ADDR_LIST="NO")

from bench.drift import DAY, RATE_HZ, build, step_cycle  # noqa: E402
from ioc.core.configfile import load_config  # noqa: E402
from ioc.sim.physics import Machine  # noqa: E402
from tests.support.procs import ServerProcess, server_env  # noqa: E402
from training.watch_policy import DriftEpisode, RunGate  # noqa: E402

DEMO = ROOT / "config" / "demo.yaml"


def make_config(tmp: Path, prefix: str) -> Path:
    """The demo config as shipped (drift:, record:, training:, retrain:), under its own prefix, with a
    private store, recordings and state."""
    doc = yaml.safe_load(DEMO.read_text())
    sim = f"{prefix}SIM:"
    doc["simulator"]["prefix"] = sim
    doc["ioc"]["metrics_port"] = 0
    model = doc["models"][0]
    model["prefix"] = f"{prefix}BEAM:"
    shutil.copytree(ROOT / "models" / "beam", tmp / "store", ignore=shutil.ignore_patterns(".lock"))
    model["store"] = str(tmp / "store")
    model["record"]["dir"] = str(tmp / "rec")

    def resim(ref: str) -> str:
        return ref.replace("ca://SIM:", f"ca://{sim}")

    for inp in model["inputs"]:
        inp["source"] = resim(inp["source"])
    for out in model["outputs"]:
        out["truth"] = resim(out["truth"])
    model["record"]["targets"] = {k: resim(v) for k, v in model["record"]["targets"].items()}
    doc["ioc"]["state_dir"] = str(tmp / "state")
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def live(tmp: Path) -> list[tuple[str, str, str]]:
    import epics

    prefix = "LOOPB:"
    cfg = make_config(tmp, prefix)
    config = load_config(cfg)
    m = config.models[0]
    p, s = m.prefix, config.simulator.prefix
    sim_ports, ioc_ports = POOL.take(), POOL.take()
    procs = []
    try:
        sim = ServerProcess(["sim", str(cfg)], server_env(sim_ports), "sim")
        procs.append(sim.start())
        sim.wait_for_line("simulator ready", timeout=60)
        ioc = ServerProcess(["serve", str(cfg)], server_env(ioc_ports, f"127.0.0.1:{sim_ports.ca}"), "ioc")
        procs.append(ioc.start())
        ioc.wait_for_line("mlioc ready", timeout=60)
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", PYTHONPATH=str(ROOT))
        watch = ServerProcess(["watch", str(cfg)], env, "watch")
        procs.append(watch.start())
        watch.wait_for_line("mlioc watch ready", timeout=60)

        events: dict[str, float] = {}

        def first(name: str, pv: str, test) -> None:
            def cb(value=None, severity=0, **_):
                if name not in events and test(value, severity):
                    events[name] = time.monotonic()

            epics.PV(pv, form="time", auto_monitor=True, callback=cb).wait_for_connection(10)

        clean = m.retrain.history_s + m.drift.window_s + 10
        print(f"recording {clean:.0f} s of clean running first ...", flush=True)
        time.sleep(clean)
        t0 = time.monotonic()
        first("minor", f"{p}DRIFT", lambda v, sev: sev >= 1)
        first("major", f"{p}DRIFT", lambda v, sev: sev >= 2)
        first("running", f"{p}RETRAIN:STATUS", lambda v, sev: v == 2)
        first("challenger", f"{p}CHALLENGER", lambda v, sev: str(v) == "2")
        first("mae", f"{p}CHALLENGER:MAE:sigma_y", lambda v, sev: sev < 3)
        first("promoted", f"{p}CHAMPION", lambda v, sev: str(v) == "2")
        epics.caput(f"{s}Q2:I_DRIFT", 5.0, wait=True)
        print(f"caput {s}Q2:I_DRIFT 5 ...", flush=True)
        deadline = t0 + 1800
        while "promoted" not in events and time.monotonic() < deadline:
            time.sleep(0.2)
        after: list[tuple[float, int]] = []  # DRIFT severities once the new champion's window has filled
        if "promoted" in events:
            filled = events["promoted"] + m.drift.window_s + 2 * m.drift.update_s

            def on_drift(severity=0, **_):
                if time.monotonic() >= filled:
                    after.append((time.monotonic(), int(severity)))

            epics.PV(f"{p}DRIFT", form="time", auto_monitor=True, callback=on_drift).wait_for_connection(10)
            time.sleep(max(0.0, filled - time.monotonic()) + 2 * m.drift.window_s)
        r = m.retrain
        rows = []
        labels = [("minor", "DRIFT MINOR", f"raise_s {m.drift.raise_s:g} s + window filling"),
                  ("major", "DRIFT MAJOR (the alarm)", ""),
                  ("running", "retrain RUNNING", f"MAJOR held on_drift_s {r.on_drift_s:g} s"),
                  ("challenger", "challenger served (CHALLENGER = 2)", "training run + store poll"),
                  ("mae", "CHALLENGER:MAE first valid", "truth pairing"),
                  ("promoted", "promoted (CHAMPION = 2)", f"min_samples {r.min_samples} cycles at 10 Hz")]
        prev = 0.0
        for key, label, note in labels:
            if key in events:
                at = events[key] - t0
                rows.append((f"injected drift -> {label}", f"{at:.1f} s", f"+{at - prev:.1f} s {note}".strip()))
                prev = at
            else:
                rows.append((f"injected drift -> {label}", "not reached", note))
        if after:
            worst = max(sev for _, sev in after)
            span = after[-1][0] - after[0][0]
            rows.append((f"DRIFT on the new champion, from its window filled ({m.drift.window_s:g} s after promotion)",
                         ("NO_ALARM", "MINOR", "MAJOR", "INVALID")[worst], f"worst of {len(after)} updates over "
                         f"{span:.0f} s; still drifted by 5 sigma"))
        return rows
    finally:
        for proc in reversed(procs):
            proc.stop()


async def clean(days: float, seed: int) -> list[tuple[str, str, str]]:
    config = load_config(DEMO)
    r = config.models[0].retrain
    rig = await build(DEMO)
    episode = DriftEpisode(r.on_drift_s, raise_s=config.models[0].drift.raise_s)
    gate = RunGate(r.cooldown_s)
    fired: list[float] = []
    worst = [0]

    def on_post(pv, reading, events) -> None:
        sev = int(reading.severity)
        worst[0] = max(worst[0], sev if sev < 3 else 0)
        episode.update(sev, reading.timestamp)
        if episode.due(reading.timestamp):
            gate.offer(episode.fire(reading.timestamp, r.history_s))
            if gate.start_next(reading.timestamp) is not None:
                fired.append(reading.timestamp)
                gate.finished(reading.timestamp)

    rig.monitor.drift_pv.subscribe(on_post)
    machine = Machine(seed=seed, rate_hz=RATE_HZ)
    n = int(days * DAY * RATE_HZ)
    t = time.perf_counter()
    for _ in range(n):
        step_cycle(rig, machine)
    wall = time.perf_counter() - t
    return [(f"retrains triggered on clean data ({days:g} simulated d, {n} cycles, on_drift_s {r.on_drift_s:g} s)",
             f"{len(fired)} ({len(fired) / days:.2f}/24 h)", f"target 0; worst DRIFT severity seen: "
             f"{('NO_ALARM', 'MINOR', 'MAJOR')[worst[0]]}; {wall:.0f} s wall")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=float, default=1.0, help="simulated clean days (864k cycles each)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-clean", action="store_true")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    if not args.skip_live:
        tmp = Path(tempfile.mkdtemp(prefix="mlioc-loop-"))
        try:
            rows += live(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not args.skip_clean:
        rows += asyncio.run(clean(args.days, args.seed))
    width = max(len(r[0]) for r in rows)
    print(f"\nbench/loop (config/demo.yaml as shipped; {os.cpu_count()} CPUs, shared machine)")
    print(f"| {'measurement':<{width}} | result | note |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for what, value, note in rows:
        print(f"| {what:<{width}} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
