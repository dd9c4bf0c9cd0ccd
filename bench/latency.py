"""bench/latency: put -> prediction latency, throughput, memory and start-up of the IOC, each beside the
floor it is judged against, all measured in the same run on the same machine.

    python -m bench.latency [--samples 2000] [--quick]

Floors: ONNX Runtime `run` alone; CA put->monitor of a pythonSoftIOC record (the EPICS C core);
PVA put->monitor of a bare p4p SharedPV. Then the IOC (a subprocess, as deployed): a writable
input put -> prediction monitor over CA and over PVA, and a source-IOC put -> prediction for a
mirrored input (the source is the pythonSoftIOC record; its own round trip is the floor). Then
sustained cycles/s with every update delivered (1 model x 10 inputs; 10 models x 10 inputs),
the IOC's RSS and its start-up time to the first prediction. Needs the `bench` extra (softioc).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ports import PortPool  # noqa: E402

POOL = PortPool(n_ca=8)
os.environ.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=POOL.ca_addr_list, EPICS_PVA_AUTO_ADDR_LIST="NO")

import numpy as np  # noqa: E402

from tests.support.models import publish_linear  # noqa: E402
from tests.support.procs import ServerProcess, server_env  # noqa: E402


@dataclass
class Row:
    what: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    floor: str = ""
    ratio: float | None = None
    target: str = ""
    note: str = ""


def print_rows(rows: list[Row]) -> None:
    """The benchmark's table (markdown), each row beside its floor (bench/latency, bench/arrays)."""

    def f(v: float | None) -> str:
        return f"{v:.3f}" if v is not None else ""

    print()
    print("| measurement | p50 ms | p99 ms | vs | ratio (p50) | target | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        print(f"| {r.what} | {f(r.p50_ms)} | {f(r.p99_ms)} | {r.floor} | {ratio} | {r.target} | {r.note} |")


def stats(samples: list[float]) -> tuple[float, float]:
    a = np.sort(np.asarray(samples))
    return float(np.median(a)) * 1e3, float(a[int(len(a) * 0.99)]) * 1e3


# --------------------------------------------------------------------------------------------- clients


class _Probe:
    """Time put -> monitor round trips: put a fresh value, wait for the monitor that reflects it."""

    event: threading.Event
    want: float | None

    def _seen(self, value: float) -> None:
        if self.want is not None and abs(value - self.want) < 1e-6:
            self.event.set()

    def _put(self, value: float) -> None:
        raise NotImplementedError

    def run(self, n: int, expect) -> list[float]:
        times = []
        for i in range(n):
            value = float(i % 500) + 10.0 + (i % 2) * 0.5  # never the initial value: it must change
            self.want = expect(value)
            self.event.clear()
            t0 = time.perf_counter()
            self._put(value)
            if not self.event.wait(5):
                raise RuntimeError(f"no monitor for {value} ({type(self).__name__})")
            times.append(time.perf_counter() - t0)
        return times


class CaProbe(_Probe):
    """pyepics (libca): put to one PV, monitor another."""

    def __init__(self, put_name: str, mon_name: str):
        import epics

        self.put_pv = epics.PV(put_name, auto_monitor=False)
        self.event = threading.Event()
        self.want = None
        self.mon = epics.PV(mon_name, auto_monitor=True, callback=lambda value=None, **_: self._seen(value))
        for pv in (self.put_pv, self.mon):
            if not pv.wait_for_connection(10):
                raise RuntimeError(f"cannot connect {pv.pvname}")

    def _put(self, value: float) -> None:
        self.put_pv.put(value, wait=False)


class PvaProbe(_Probe):
    """The p4p client: put (acknowledged) to one PV, monitor another."""

    def __init__(self, broadcast_port: int, put_name: str, mon_name: str):
        from p4p.client.thread import Context

        self.ctx = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{broadcast_port}",
                                        "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False, nt=False)
        self.put_name = put_name
        self.event = threading.Event()
        self.want = None
        self.ctx.get(put_name, timeout=10)
        self.sub = self.ctx.monitor(mon_name, lambda v: None if isinstance(v, Exception) else self._seen(v["value"]))

    def _put(self, value: float) -> None:
        self.ctx.put(self.put_name, value, get=False, wait=True)

    def close(self):
        self.sub.close()
        self.ctx.close()


# --------------------------------------------------------------------------------------------- servers

def start(args, ports, name, module="ioc", ca_sources="", ready="mlioc ready") -> ServerProcess:
    proc = ServerProcess(args, server_env(ports, ca_sources), name, module=module)
    proc.ports = ports
    proc.start()
    proc.wait_for_line(ready, timeout=60)
    return proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def linear_config(tmp: Path, prefix: str, store: Path, trigger: str, sources: dict[str, str] | None = None,
                  n_models: int = 1, n_inputs: int = 2, mdel: float = 0.0) -> Path:
    lines = ["ioc: {protocols: [ca, pva], metrics_port: 0, stats_hz: 2}", "models:"]
    for m in range(n_models):
        p = f"{prefix}M{m}:" if n_models > 1 else prefix
        lines += [f"  - name: m{m}", f'    prefix: "{p}"', f"    store: {store}", f"    trigger: {trigger}",
                  "    inputs:"]
        for i in range(n_inputs):
            src = (sources or {}).get(f"x{i}")
            lines.append(f'      - {{name: x{i}, source: "{src}"}}' if src else f"      - {{name: x{i}, initial: 1.0}}")
        lines += ["    outputs:", f"      - {{name: y0, mdel: {mdel}}}", f"      - {{name: y1, mdel: {mdel}}}"]
    path = tmp / f"{prefix.strip(':')}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def linear_store(tmp: Path, n_inputs: int) -> tuple[Path, np.ndarray, np.ndarray]:
    w = np.zeros((2, n_inputs))
    w[0, 0], w[1, 0] = 2.0, -1.0
    if n_inputs > 1:
        w[0, 1] = 1.0
    b = np.array([0.5, 3.0])
    root = tmp / f"store{n_inputs}"
    publish_linear(root, [f"x{i}" for i in range(n_inputs)], ["y0", "y1"], w, b)
    return root, w, b


# --------------------------------------------------------------------------------------------- measurements

def bench_ort(samples: int) -> tuple[list[float], list[float]]:
    from ioc.core.configfile import load_config
    from ioc.core.engine import load_champion

    cfg = load_config(ROOT / "config" / "demo.yaml")
    model = load_champion(cfg.models[0], cfg.ioc.inference)
    x = model.in_mean.copy()
    xn = np.zeros((1, len(x)), dtype=np.float32)
    raw, full = [], []
    for _ in range(samples * 5):
        t0 = time.perf_counter()
        model.session.run([model.output_name], {model.input_name: xn})
        t1 = time.perf_counter()
        model.run(x)
        t2 = time.perf_counter()
        raw.append(t1 - t0)
        full.append(t2 - t1)
    return raw, full


def throughput(tmp: Path, rate_hz: float, n_models: int, seconds: float) -> dict:
    """Scan at rate_hz with MDEL=-1 (every cycle posts); count cycles and CA/PVA updates delivered."""
    import epics
    from p4p.client.thread import Context

    store, _, _ = linear_store(tmp, 10)
    prefix = f"TP{int(rate_hz)}X{n_models}:"
    cfg = linear_config(tmp, prefix, store, f"{{scan_hz: {rate_hz}}}", n_models=n_models, n_inputs=10, mdel=-1)
    ports = POOL.take()
    ioc = start(["serve", str(cfg)], ports, f"ioc-tp{n_models}")
    names = [f"{prefix}M{m}:" if n_models > 1 else prefix for m in range(n_models)]
    counts_ca = [0] * n_models
    counts_pva = [0] * n_models

    def ca_cb(i):
        def cb(**_):
            counts_ca[i] += 1
        return cb

    def pva_cb(i):
        def cb(v):
            if not isinstance(v, Exception):
                counts_pva[i] += 1
        return cb

    pvs = [epics.PV(f"{n}OUT:y0", auto_monitor=True, callback=ca_cb(i)) for i, n in enumerate(names)]
    count_pvs = [epics.PV(f"{n}COUNT", auto_monitor=False) for n in names]
    for pv in pvs + count_pvs:
        pv.wait_for_connection(10)
    ctx = Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{ports.pva_broadcast}",
                               "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False, nt=False)
    subs = [ctx.monitor(f"{n}OUT:y0", pva_cb(i), request="field()record[queueSize=100]")
            for i, n in enumerate(names)]
    time.sleep(2.0)  # let every monitor connect and the scan settle before the measured window
    # COUNT is posted at stats_hz stamped with the moment it was counted: rate = d(count) / d(stamp).
    c0 = [pv.get_with_metadata(use_monitor=False, form="time") for pv in count_pvs]
    a0, p0 = list(counts_ca), list(counts_pva)
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = [pv.get_with_metadata(use_monitor=False, form="time") for pv in count_pvs]
    a1, p1 = list(counts_ca), list(counts_pva)
    dt = time.monotonic() - t0
    rss = rss_mb(ioc.proc.pid)
    for s in subs:
        s.close()
    ctx.close()
    for pv in pvs:
        pv.clear_callbacks()
        pv.disconnect()
    ioc.stop()
    cycles = [(b["value"] - a["value"]) / (b["timestamp"] - a["timestamp"]) for a, b in zip(c0, c1, strict=True)]
    ca_rate = [(b - a) / dt for a, b in zip(a0, a1, strict=True)]
    pva_rate = [(b - a) / dt for a, b in zip(p0, p1, strict=True)]
    return {"cycles": min(cycles), "ca": min(ca_rate), "pva": min(pva_rate), "rss": rss}


def startup(tmp: Path) -> tuple[float, float]:
    """Seconds from process start to the first valid prediction seen by a CA client, and RSS then."""
    import epics

    store, _, _ = linear_store(tmp, 2)
    prefix = "SU:"
    cfg = linear_config(tmp, prefix, store, "{scan_hz: 10}")
    ports = POOL.take()
    first = threading.Event()

    def cb(severity=3, **_):
        if severity < 3:
            first.set()

    pv = epics.PV(f"{prefix}OUT:y0", auto_monitor=True, callback=cb)
    proc = ServerProcess(["serve", str(cfg)], server_env(ports), "ioc-startup")
    t0 = time.monotonic()
    proc.start()
    if not first.wait(30):
        raise RuntimeError("no first prediction")
    elapsed = time.monotonic() - t0
    rss = rss_mb(proc.proc.pid)
    pv.disconnect()
    proc.stop()
    return elapsed, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    args = ap.parse_args()
    n = args.samples
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-bench-"))
    procs: list[ServerProcess] = []
    try:
        raw, full = bench_ort(n)
        ort50, ort99 = stats(raw)
        rows.append(Row("ONNX Runtime run (demo MLP, batch 1)", ort50, ort99, note="floor for inference"))
        e50, e99 = stats(full)
        rows.append(Row("engine.run (normalise + run + de-normalise)", e50, e99, "ORT run", e50 / ort50))

        # ---- floors
        soft_ports = POOL.take()
        soft = start(["softioc", "FLOOR:X"], soft_ports, "softioc", module="bench._floors", ready="ready")
        procs.append(soft)
        probe = CaProbe("FLOOR:X", "FLOOR:X")
        probe.run(100, lambda v: v)
        c_floor = probe.run(n, lambda v: v)
        cf50, cf99 = stats(c_floor)
        rows.append(Row("CA put->monitor, pythonSoftIOC record (C core)", cf50, cf99, note="CA floor"))

        p4p_ports = POOL.take()
        bare = start(["p4p", "FLOOR:P"], p4p_ports, "p4p", module="bench._floors", ready="ready")
        procs.append(bare)
        pprobe = PvaProbe(p4p_ports.pva_broadcast, "FLOOR:P", "FLOOR:P")
        pprobe.run(100, lambda v: v)
        p_floor = pprobe.run(n, lambda v: v)
        pprobe.close()
        pf50, pf99 = stats(p_floor)
        rows.append(Row("PVA put->monitor, bare p4p SharedPV", pf50, pf99, note="PVA floor"))

        # ---- the IOC: writable input
        store, _, _ = linear_store(tmp, 2)
        cfg = linear_config(tmp, "LAT:", store, "{on_change: true}")
        ioc_ports = POOL.take()
        ioc = start(["serve", str(cfg)], ioc_ports, "ioc-lat")
        procs.append(ioc)
        probe = CaProbe("LAT:IN:x0", "LAT:OUT:y0")
        probe.run(100, lambda v: 2 * v + 1.0 + 0.5)
        ca_t = probe.run(n, lambda v: 2 * v + 1.0 + 0.5)  # y0 = 2 x0 + x1 + 0.5, x1 = 1
        c50, c99 = stats(ca_t)
        rows.append(Row("IOC: CA put input -> prediction monitor", c50, c99, "C core", c50 / cf50,
                        "p50 <= 1.3x, p99 <= 2 ms"))
        pprobe = PvaProbe(ioc_ports.pva_broadcast, "LAT:IN:x0", "LAT:OUT:y0")
        pprobe.run(100, lambda v: 2 * v + 1.5)
        pva_t = pprobe.run(n, lambda v: 2 * v + 1.5)
        pprobe.close()
        v50, v99 = stats(pva_t)
        rows.append(Row("IOC: PVA put input -> prediction monitor", v50, v99, "bare p4p", v50 / pf50, "p50 <= 1.3x"))

        # ---- the IOC: mirrored input from the pythonSoftIOC record
        cfg_m = linear_config(tmp, "MIR:", store, "{on_change: true}", sources={"x0": "ca://FLOOR:X"})
        mir = start(["serve", str(cfg_m)], POOL.take(), "ioc-mirror", ca_sources=f"127.0.0.1:{soft_ports.ca}")
        procs.append(mir)
        probe = CaProbe("FLOOR:X", "MIR:OUT:y0")
        probe.run(100, lambda v: 2 * v + 1.5)
        m_t = probe.run(n, lambda v: 2 * v + 1.5)
        m50, m99 = stats(m_t)
        rows.append(Row("IOC: source-IOC put -> prediction (mirrored, CA)", m50, m99, "source's own", m50 / cf50,
                        "p50 <= 2.5x"))
        rss_idle = rss_mb(ioc.proc.pid)
        for p in (ioc, mir):
            p.stop()

        # ---- throughput
        one = throughput(tmp, 2000, 1, args.seconds)
        rows.append(Row("1 model x 10 inputs, scan 2000 Hz: cycles/s", note=(
            f"{one['cycles']:.0f} cycles/s; delivered CA {one['ca']:.0f}/s, PVA {one['pva']:.0f}/s"),
            target=">= 2000 cycles/s, every update delivered"))
        hi = throughput(tmp, 3000, 1, args.seconds)
        rows.append(Row("1 model x 10 inputs, scan 3000 Hz: cycles/s", note=(
            f"{hi['cycles']:.0f} cycles/s; delivered CA {hi['ca']:.0f}/s, PVA {hi['pva']:.0f}/s"),
            target="(headroom)"))
        ten = throughput(tmp, 100, 10, args.seconds)
        rows.append(Row("10 models x 10 inputs, scan 100 Hz each: cycles/s", note=(
            f"min over models {ten['cycles']:.0f} cycles/s; delivered CA {ten['ca']:.0f}/s, PVA {ten['pva']:.0f}/s"),
            target=">= 100 Hz each"))
        rows.append(Row("IOC RSS (MB)", note=f"{rss_idle:.0f} MB idle after latency runs; {one['rss']:.0f} MB at "
                        f"2000 cycles/s; {ten['rss']:.0f} MB with 10 models", target="<= 150 MB"))
        t_first, rss_first = startup(tmp)
        rows.append(Row("start-up to first prediction (process start -> CA monitor)",
                        note=f"{t_first:.2f} s", target="<= 1.5 s"))
    finally:
        for p in procs:
            p.stop()

    print_rows(rows)
    print(f"\n{n} samples per latency row after 100 warm-up; machine: {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
