"""bench/reload: what a hot reload costs a running IOC, beside the same IOC not reloading.

    python -m bench.reload [--reloads 200] [--rate 100]

One IOC runs a model at --rate Hz with every cycle posted (MDEL -1). First a quiet window (the
baseline), then --reloads champion swaps (alternating two versions, each pointer write waiting
for CHAMPION to follow). Measured in the same run: the gap between consecutive prediction updates
seen by a CA client (a stalled loop shows up as a long gap), missed cycles (the IOC's own counter: a
scan cycle that started more than one period after its tick) and the IOC's cycle-lateness histogram
beside them, pointer-write -> served latency, and the IOC's RSS and open file descriptors before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ports import PortPool  # noqa: E402

POOL = PortPool(n_ca=2)
os.environ.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=POOL.ca_addr_list, EPICS_PVA_AUTO_ADDR_LIST="NO")

import numpy as np  # noqa: E402

from ioc.core.store import ModelStore  # noqa: E402
from tests.support.metrics import histogram, quantiles_ms, samples, scrape  # noqa: E402
from tests.support.models import publish_version as publish  # noqa: E402
from tests.support.procs import ServerProcess, server_env  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def counters(port: int) -> tuple[float, dict[float, float]]:
    """The IOC's missed-cycle counter and its cycle-lateness histogram (cumulative buckets)."""
    families = scrape(port)
    missed = next((s.value for s in samples(families, "mlioc_missed_cycles_total")), float("nan"))
    return missed, histogram(families, "mlioc_cycle_lateness_seconds", "lin")


def gaps(times: list[float]) -> tuple[float, float, float]:
    d = np.diff(np.asarray(times)) * 1e3
    return float(np.median(d)), float(np.percentile(d, 99)), float(d.max())


def main() -> int:
    import epics

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reloads", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-reload-"))
    store = ModelStore(tmp / "store")
    v1 = publish(store, tmp, 1.0, "champion")
    v2 = publish(store, tmp, 2.0)
    cfg = tmp / "ioc.yaml"
    cfg.write_text(f"""
ioc: {{protocols: [ca, pva], store_poll_s: 0.1, stats_hz: 2}}
models:
  - name: lin
    prefix: "RL:"
    store: store
    trigger: {{scan_hz: {args.rate}}}
    inputs: [{{name: a, initial: 1.0}}, {{name: b, initial: 0.0}}]
    outputs: [{{name: y0, mdel: -1}}, {{name: y1, mdel: -1}}]
""")
    ports = POOL.take()
    ioc = ServerProcess(["serve", str(cfg), "--metrics-port", str(ports.metrics)], server_env(ports), "ioc")
    ioc.start()
    ioc.wait_for_line("mlioc ready", timeout=60)
    pid = ioc.proc.pid

    arrivals: list[float] = []
    champion = {"value": None, "event": threading.Event()}

    def on_out(**_):
        arrivals.append(time.perf_counter())

    def on_champion(value=None, char_value=None, **_):
        champion["value"] = char_value if char_value is not None else value
        champion["event"].set()

    out = epics.PV("RL:OUT:y0", auto_monitor=True, callback=on_out)
    ch = epics.PV("RL:CHAMPION", auto_monitor=True, callback=on_champion)
    out.wait_for_connection(10)
    ch.wait_for_connection(10)
    time.sleep(2.0)  # settle, then measure

    rows = []
    try:
        # Baseline: as long as the reload phase is expected to take, no reloads.
        quiet_s = max(5.0, args.reloads * 0.15)
        rss0, fd0 = rss_mb(pid), fds(pid)
        miss0, late0 = counters(ports.metrics)
        start = len(arrivals)
        time.sleep(quiet_s)
        base = arrivals[start:]
        miss_quiet, late_quiet = counters(ports.metrics)
        b50, b99, bmax = gaps(base)
        base_rate = len(base) / quiet_s

        # Reloads.
        latencies = []
        start = len(arrivals)
        t0 = time.perf_counter()
        for i in range(args.reloads):
            target = v2 if i % 2 == 0 else v1
            champion["event"].clear()
            w = time.perf_counter()
            store.write_pointer("champion", target)
            while champion["value"] != str(target):
                if not champion["event"].wait(10):
                    raise RuntimeError(f"reload {i} to v{target} not served within 10 s")
                champion["event"].clear()
            latencies.append(time.perf_counter() - w)
            if i == 19:
                rss20 = rss_mb(pid)
        busy_s = time.perf_counter() - t0
        during = arrivals[start:]
        r50, r99, rmax = gaps(during)
        rate = len(during) / busy_s
        rss1, fd1 = rss_mb(pid), fds(pid)
        miss1, late1 = counters(ports.metrics)
        lat = np.sort(np.asarray(latencies)) * 1e3

        rows = [
            ("prediction update gap p50 (ms)", f"{b50:.2f}", f"{r50:.2f}", f"{r50 / b50:.2f}x"),
            ("prediction update gap p99 (ms)", f"{b99:.2f}", f"{r99:.2f}", f"{r99 / b99:.2f}x"),
            ("longest gap = worst swap pause (ms)", f"{bmax:.2f}", f"{rmax:.2f}", f"{rmax / bmax:.2f}x"),
            ("updates per second delivered", f"{base_rate:.1f}", f"{rate:.1f}",
             "each swap adds one immediate re-evaluation"),
            ("missed cycles (IOC counter: started > 1 period late)", f"{miss_quiet - miss0:.0f}",
             f"{miss1 - miss_quiet:.0f}", f"of {len(base)} / {len(during)} updates"),
            ("cycle lateness p50 / p99 (ms, IOC histogram bucket)", quantiles_ms(late0, late_quiet),
             quantiles_ms(late_quiet, late1), ""),
            ("pointer write -> CHAMPION p50 / p99 (ms)", "", f"{np.median(lat):.0f} / {lat[int(len(lat) * .99)]:.0f}",
             f"poll period {100:.0f} ms"),
            (f"RSS (MB): start / after 20 / after {args.reloads}", f"{rss0:.1f}",
             f"{rss20:.1f} / {rss1:.1f}", f"+{rss1 - rss20:.1f} MB after warm-up"),
            ("open file descriptors", f"{fd0}", f"{fd1}", f"{fd1 - fd0:+d}"),
        ]
    finally:
        out.disconnect()
        ch.disconnect()
        ioc.stop()

    print(f"\n{args.reloads} reloads at {args.rate:g} Hz (every cycle posted), baseline = same IOC, no reloads\n")
    print("| measurement | baseline | with reloads | ratio / note |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
