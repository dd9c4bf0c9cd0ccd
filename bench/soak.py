"""bench/soak: the demo at 100 Hz for a long time, with the faults of a real night.

    python -m bench.soak [--minutes 10]

The simulated machine and the IOC run as on a control-room host (scan 100 Hz, every cycle posted).
Meanwhile: the champion is hot-reloaded every 10 s (alternating two versions), the source IOC (the
simulator) is killed and restarted every minute, and a client fires random bad writes (garbage
values, read-only PVs, out-of-range enums, NaN) over CA and PVA a few times a second. Reported:
missed cycles (the IOC's own counter: scan cycles started more than one period after their tick) beside
the IOC's cycle-lateness histogram and the gaps between prediction updates measured by a CA client
(p50, p99, max), prediction updates that were INVALID outside the fault windows
(a source restart is a fault window: from the kill until predictions are valid again), RSS growth and
file-descriptor growth of the IOC between the end of the warm-up and the end.
Targets: 0 missed cycles, 0 invalid outside fault windows, < 10 MB RSS growth, 0 fd growth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ports import PortPool  # noqa: E402

POOL = PortPool(n_ca=3)
os.environ.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=POOL.ca_addr_list, EPICS_PVA_AUTO_ADDR_LIST="NO")

import numpy as np  # noqa: E402

from ioc.core.store import ModelStore  # noqa: E402
from tests.support.demo import demo_inputs  # noqa: E402
from tests.support.metrics import histogram, quantiles_ms, scrape  # noqa: E402
from tests.support.procs import ServerProcess, server_env  # noqa: E402

WARMUP_S = 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return math.nan


def make_config(tmp: Path, prefix: str) -> Path:
    store = ModelStore(tmp / "store")
    demo = ModelStore(ROOT / "models" / "beam")
    n = demo.champion()
    for _ in range(2):  # two versions with the same weights: reloads swap between real validated sessions
        doc = json.loads(demo.manifest_path(n).read_text())
        store.add_version(demo.onnx_path(n), doc)
    store.write_pointer("champion", 1)
    sim = f"{prefix}SIM:"
    path = tmp / "soak.yaml"
    path.write_text(f"""
ioc: {{protocols: [ca, pva], store_poll_s: 0.5, stats_hz: 2}}
simulator: {{prefix: "{sim}", rate_hz: 100, seed: 7}}
models:
  - name: beam
    prefix: "{prefix}BEAM:"
    store: store
    trigger: {{scan_hz: 100}}
    inputs: {demo_inputs(sim, 2)}
    outputs:
      - {{name: sigma_x, units: mm, prec: 3, mdel: -1, alarm: {{high: 3, hihi: 4}}}}
      - {{name: sigma_y, units: mm, prec: 3, mdel: -1, alarm: {{high: 3, hihi: 4}}}}
      - {{name: loss, units: "%", prec: 2, mdel: -1, alarm: {{high: 25, hihi: 40}}}}
""")
    return path


def main() -> int:
    import epics
    from p4p.client.thread import Context

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reload-s", type=float, default=10.0)
    ap.add_argument("--restart-s", type=float, default=60.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-soak-"))
    # As on any EPICS host: a CA repeater relays server beacons, so clients (the IOC's source monitors)
    # notice a restarted source IOC at once instead of at their next, backed-off, search.
    repeater = subprocess.Popen([str(Path(sys.executable).parent / "caproto-repeater")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = "SOAK:"
    cfg = make_config(tmp, prefix)
    p = f"{prefix}BEAM:"
    sim_ports, ioc_ports = POOL.take(), POOL.take()
    sim = ServerProcess(["sim", str(cfg)], server_env(sim_ports), "sim")
    sim.start()
    sim.wait_for_line("simulator ready", timeout=60)
    ioc = ServerProcess(["serve", str(cfg), "--metrics-port", str(ioc_ports.metrics)],
                        server_env(ioc_ports, f"127.0.0.1:{sim_ports.ca}"), "ioc")
    ioc.start()
    ioc.wait_for_line("mlioc ready", timeout=60)
    pid = ioc.proc.pid

    updates: list[tuple[float, int]] = []  # (arrival, severity)
    lock = threading.Lock()

    def on_update(severity=0, **_):
        with lock:
            updates.append((time.monotonic(), int(severity)))

    out = epics.PV(f"{p}OUT:sigma_x", form="time", auto_monitor=True, callback=on_update)
    out.wait_for_connection(10)
    pva = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{ioc_ports.pva_broadcast}",
                               "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False)
    store = ModelStore(tmp / "store")
    rng = random.Random(1)
    bad_writes = [(f"{p}ENABLE", 7), (f"{p}ENABLE", "sometimes"), (f"{p}ENABLE", math.nan),
                  (f"{p}IN:q1", 5.0), (f"{p}OUT:sigma_x", 1.0), (f"{p}ROLLBACK", "abc"), (f"{p}PROMOTE", 3),
                  (f"{p}RELOAD", -1), (f"{p}COUNT", 0), (f"{p}MESSAGE", "x" * 80)]
    windows: list[list[float]] = []  # fault windows [start, end]
    stop = threading.Event()
    n_bad = [0, 0]

    def bad_putter():
        while not stop.is_set():
            name, value = rng.choice(bad_writes)
            try:
                if rng.random() < 0.5:
                    epics.caput(name, value, wait=False, timeout=1)  # a refusal is not reported back here
                else:
                    pva.put(name, value, timeout=2)
                    n_bad[1] += 1  # PVA reports refusals: none of these writes should be accepted
            except Exception:
                pass
            n_bad[0] += 1
            stop.wait(0.25)

    threading.Thread(target=bad_putter, daemon=True).start()
    time.sleep(WARMUP_S)
    rss0, fd0, missed0 = rss_mb(pid), fds(pid), metric(ioc_ports.metrics, 'mlioc_missed_cycles_total{model="beam"}')
    late0 = histogram(scrape(ioc_ports.metrics), "mlioc_cycle_lateness_seconds", "beam")
    count0 = metric(ioc_ports.metrics, 'mlioc_cycles_total{model="beam",outcome="ok"}')
    t_start = time.monotonic()
    t_end = t_start + args.minutes * 60
    next_reload, next_restart = t_start + args.reload_s, t_start + args.restart_s
    reloads = restarts = 0
    version = 1
    while time.monotonic() < t_end:
        now = time.monotonic()
        if now >= next_reload:
            version = 2 if version == 1 else 1
            store.write_pointer("champion", version)
            reloads += 1
            next_reload += args.reload_s
        if now >= next_restart:
            killed = time.monotonic()
            sim.kill()
            sim = ServerProcess(["sim", str(cfg)], server_env(sim_ports), "sim")
            sim.start()
            sim.wait_for_line("simulator ready", timeout=60)
            windows.append([killed, time.monotonic()])  # closed below at the first valid update after this
            restarts += 1
            next_restart += args.restart_s
        time.sleep(0.05)
    t_stop = time.monotonic()
    stop.set()
    rss1, fd1 = rss_mb(pid), fds(pid)
    enabled = epics.caget(f"{p}ENABLE", timeout=5)  # no bad write may have switched the model off
    missed1 = metric(ioc_ports.metrics, 'mlioc_missed_cycles_total{model="beam"}')
    late1 = histogram(scrape(ioc_ports.metrics), "mlioc_cycle_lateness_seconds", "beam")
    count1 = metric(ioc_ports.metrics, 'mlioc_cycles_total{model="beam",outcome="ok"}')
    with lock:
        seen = [u for u in updates if t_start <= u[0] <= t_stop]
    # A fault window runs from the kill until the first valid prediction after the source is back.
    for w in windows:
        w[1] = next((t for t, sev in seen if t > w[1] and sev < 3), t_stop)
    invalid = [t for t, sev in seen if sev >= 3]
    outside = [t for t in invalid if not any(a <= t <= b for a, b in windows)]
    longest = max((b - a for a, b in windows), default=0.0)
    out.disconnect()
    pva.close()
    ioc.stop()
    sim.stop()
    repeater.terminate()
    shutil.rmtree(tmp, ignore_errors=True)

    elapsed = t_stop - t_start
    print(f"\nsoak: {elapsed / 60:.1f} min at 100 Hz; {reloads} reloads, {restarts} source restarts, "
          f"{n_bad[0]} bad writes (accepted over PVA: {n_bad[1]}; ENABLE at the end: {enabled})\n")
    print("| measurement | result | target |")
    print("|---|---|---|")
    gap = np.diff(np.array([t for t, _ in seen])) * 1e3 if len(seen) > 1 else np.array([math.nan])
    late = quantiles_ms(late0, late1)
    print(f"| missed cycles (IOC counter: started > 1 period late) | {missed1 - missed0:.0f} | 0 |")
    print(f"| cycle lateness p50 / p99 (IOC histogram bucket, ms) | {late} | <= 10 / <= 10 |")
    print(f"| prediction update gap p50 / p99 / max (CA client, ms) | {np.median(gap):.1f} / "
          f"{np.percentile(gap, 99):.1f} / {gap.max():.1f} | 10 / ~10 / |")
    print(f"| prediction updates received (CA) | {len(seen)} ({len(seen) / elapsed:.1f}/s) | ~100/s |")
    print(f"| successful cycles (IOC counter) | {count1 - count0:.0f} | |")
    print(f"| INVALID updates inside fault windows | {len(invalid) - len(outside)} "
          f"(longest window {longest:.1f} s) | expected |")
    print(f"| INVALID updates outside fault windows | {len(outside)} | 0 |")
    print(f"| RSS growth after {WARMUP_S:.0f} s warm-up | {rss1 - rss0:+.1f} MB ({rss0:.1f} -> {rss1:.1f}) | < 10 MB |")
    print(f"| open file descriptors | {fd0} -> {fd1} ({fd1 - fd0:+d}) | +0 |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
