"""bench/latency: what a cycle costs (time and CPU), throughput, memory and start-up of the IOC, each
beside the floor it is judged against, all measured in the same runs on the same machine.

    python -m bench.latency [--runs 3] [--hog] [--samples 2000] [--only latency,cpu,saturate,...]
                            [--ioc-root PATH]

Every row is the median of ``--runs`` runs with its min-max; the floors are measured in every run and
each ratio is taken within its run. Floors: ONNX Runtime ``run`` alone; CA put->monitor of a
pythonSoftIOC record (the EPICS C core); PVA put->monitor of a bare p4p SharedPV. Then the IOC (a
subprocess, as deployed):

* latency: a writable input put -> prediction monitor over CA and over PVA, and a source-IOC put ->
  prediction for a mirrored input (the source is the pythonSoftIOC record; its own round trip is the floor);
* cpu: the demo (config/demo.yaml with its simulator, recorder and drift monitor, CA and PVA monitors on
  its outputs) scanning at ``--demo-hz``: IOC process CPU seconds per cycle, and its ratio to ORT ``run``;
* saturate: the IOC pinned to one core (``sched_setaffinity``), 1 model x 10 inputs, the scan raised until
  cycles/s stop growing or an update is not delivered: the most cycles/s with every update delivered;
* throughput: 1 model x 10 inputs at 2000 Hz, 10 models x 10 inputs at 100 Hz each, every update counted;
* memory: RSS of the linear IOC after the latency runs, of the demo IOC with its recorder after start and
  its peak (VmHWM);
* startup: process start to the first valid prediction seen by a CA client.

``--hog`` runs a busy loop pinned to the last core for the whole bench (the loaded variant: a control
room's IOC host is often shared). ``--ioc-root`` runs the IOC from another checkout (an A/B comparison
with the same clients and floors). Needs the `bench` extra (softioc, onnx, py-spy: ``scripts/setup bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.ports import PortPool, PortSet  # noqa: E402

POOL = PortPool(n_ca=12)
os.environ.update(EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=POOL.ca_addr_list, EPICS_PVA_AUTO_ADDR_LIST="NO")

import numpy as np  # noqa: E402

from tests.support.models import publish_linear  # noqa: E402
from tests.support.procs import ServerProcess, server_env  # noqa: E402

IOC_ROOT = ROOT  # where `python -m ioc` runs from (--ioc-root)
RUN = 0  # the run under way: every run's IOCs serve names of their own (see run_prefix)


def run_prefix(stem: str) -> str:
    """``stem`` made unique to this run. libca keeps searching, with a growing back-off, for a channel whose
    IOC stopped (without a CA repeater no beacon tells it a new server came up), so an IOC of the next run
    serving the same name would be found only when that back-off comes round: seconds to minutes."""
    return f"{stem}R{RUN}:"
GROUPS = ("latency", "cpu", "saturate", "throughput", "memory", "startup")


# --------------------------------------------------------------------------------------------- results

@dataclass
class Row:
    """One measurement over the runs: a value per run (p50/p99 for latencies) and its floor's per run."""

    what: str
    unit: str = "ms"
    target: str = ""
    floor: str = ""  # name of the row this one is divided by (run by run)
    values: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Table:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, key: str, what: str, **kw) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(what, **kw)
        return self.rows[key]

    def add(self, key: str, what: str, value: float, *, p99: float | None = None, floor: str = "",
            note: str = "", **kw) -> None:
        r = self.row(key, what, floor=floor, **kw)
        r.values.append(value)
        if p99 is not None:
            r.p99.append(p99)
        if floor and self.rows.get(floor) and self.rows[floor].values:
            r.ratios.append(value / self.rows[floor].values[-1])
        if note:
            r.notes.append(note)

    def print(self, runs: int, header: str) -> None:
        def spread(xs: list[float], fmt: str) -> str:
            if not xs:
                return ""
            med = statistics.median(xs)
            if len(xs) == 1:
                return fmt.format(med)
            return f"{fmt.format(med)} [{fmt.format(min(xs))}-{fmt.format(max(xs))}]"

        print()
        print(header)
        print()
        print("| measurement | median [min-max] | p99 | unit | vs | ratio | target | note |")
        print("|---|---|---|---|---|---|---|---|")
        for r in self.rows.values():
            fmt = "{:.3f}" if r.unit == "ms" else "{:.0f}" if r.unit in ("cycles/s", "MB", "us") else "{:.2f}"
            floor = self.rows[r.floor].what if r.floor in self.rows else ""
            note = r.notes[-1] if r.notes else ""
            print(f"| {r.what} | {spread(r.values, fmt)} | {spread(r.p99, fmt)} | {r.unit} | {floor} | "
                  f"{spread(r.ratios, '{:.2f}x')} | {r.target} | {note} |")
        print(f"\n{runs} run(s); machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")


def stats(samples: list[float]) -> tuple[float, float]:
    a = np.sort(np.asarray(samples))
    return float(np.median(a)) * 1e3, float(a[int(len(a) * 0.99)]) * 1e3


# --------------------------------------------------------------------------------------------- processes

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, key: str) -> float:
    """A /proc/PID/status entry in MB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS")


def _pinned(core: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {core})


def start(args, ports, name, module="ioc", ca_sources="", ready="mlioc ready", core: int | None = None,
          timeout: float = 60) -> ServerProcess:
    """A server subprocess on its own ports; an IOC (module "ioc") runs from IOC_ROOT."""
    env = server_env(ports, ca_sources)
    cwd = ROOT
    if module == "ioc":
        env["PYTHONPATH"] = str(IOC_ROOT)
        cwd = IOC_ROOT
    proc = ServerProcess(args, env, name, module=module, cwd=cwd,
                         preexec=_pinned(core) if core is not None else None)
    proc.ports = ports
    proc.start()
    proc.wait_for_line(ready, timeout=timeout)
    return proc


@contextlib.contextmanager
def cpu_hog(enabled: bool):
    """A busy loop pinned to the last core (the IOC and the clients share the rest)."""
    if not enabled:
        yield
        return
    core = (os.cpu_count() or 1) - 1
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_pinned(core))
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


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

    def close(self) -> None:
        for pv in (self.put_pv, self.mon):
            pv.clear_callbacks()
            pv.disconnect()


def pva_context(broadcast_port: int):
    from p4p.client.thread import Context

    return Context("pva", conf={"EPICS_PVA_ADDR_LIST": f"127.0.0.1:{broadcast_port}",
                                "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False, nt=False)


class PvaProbe(_Probe):
    """The p4p client: put (acknowledged) to one PV, monitor another."""

    def __init__(self, broadcast_port: int, put_name: str, mon_name: str):
        self.ctx = pva_context(broadcast_port)
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


class Counters:
    """CA and PVA monitors on a set of PVs, counting updates (every update delivered?)."""

    def __init__(self, names: list[str], broadcast_port: int):
        import epics

        self.ca = [0] * len(names)
        self.pva = [0] * len(names)

        def ca_cb(i):
            def cb(**_):
                self.ca[i] += 1
            return cb

        def pva_cb(i):
            def cb(v):
                if not isinstance(v, Exception):
                    self.pva[i] += 1
            return cb

        self.pvs = [epics.PV(n, auto_monitor=True, callback=ca_cb(i)) for i, n in enumerate(names)]
        for pv in self.pvs:
            pv.wait_for_connection(10)
        self.ctx = pva_context(broadcast_port)
        self.subs = [self.ctx.monitor(n, pva_cb(i), request="field()record[queueSize=100]")
                     for i, n in enumerate(names)]

    def snapshot(self) -> tuple[list[int], list[int]]:
        return list(self.ca), list(self.pva)

    def close(self) -> None:
        for s in self.subs:
            s.close()
        self.ctx.close()
        for pv in self.pvs:
            pv.clear_callbacks()
            pv.disconnect()


_COUNT_PVS: dict = {}


def read_count(name: str) -> tuple[float, float]:
    """(COUNT, its time stamp): COUNT is posted at stats_hz stamped with the moment it was counted."""
    import epics

    pv = _COUNT_PVS.get(name)
    if pv is None:
        pv = _COUNT_PVS[name] = epics.PV(name, auto_monitor=False)
        pv.wait_for_connection(10)
    got = pv.get_with_metadata(use_monitor=False, form="time", timeout=5)
    if got is None:  # say which: never found (search) or found and not answered (the circuit)
        state = f"connected to {pv.host}" if pv.connected else "not connected"
        raise RuntimeError(f"cannot read {name} ({state}; search list {os.environ['EPICS_CA_ADDR_LIST']})")
    return float(got["value"]), float(got["timestamp"])


def forget_counts() -> None:
    """Clear the COUNT channels once their IOC stops: a channel kept to a stopped IOC is searched for ever, and
    the next IOC serving the same name is then found only when libca's backed-off search comes round."""
    while _COUNT_PVS:
        _COUNT_PVS.popitem()[1].disconnect()


# --------------------------------------------------------------------------------------------- configs

def linear_config(tmp: Path, prefix: str, store: Path, trigger: str, sources: dict[str, str] | None = None,
                  n_models: int = 1, n_inputs: int = 2, mdel: float = 0.0) -> Path:
    state = tmp / f"{prefix.strip(':')}-state"  # one IOC per state directory (several run side by side)
    lines = [f"ioc: {{protocols: [ca, pva], metrics_port: 0, stats_hz: 2, state_dir: {state}}}", "models:"]
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
    if not root.exists():
        publish_linear(root, [f"x{i}" for i in range(n_inputs)], ["y0", "y1"], w, b)
    return root, w, b


def demo_config(tmp: Path, scan_hz: float | None, metrics: bool = True) -> Path:
    """config/demo.yaml as shipped (simulator, recorder, drift monitor), its files under ``tmp``."""
    import yaml

    doc = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    doc["ioc"]["state_dir"] = str(tmp / "state")
    doc["ioc"]["metrics_port"] = POOL.take().metrics if metrics else 0
    model = doc["models"][0]
    model["store"] = str(tmp / "store")
    model["store_template"] = str(ROOT / "models" / "beam")
    model["record"]["dir"] = str(tmp / "record")
    if scan_hz is not None:
        model["trigger"] = {"scan_hz": scan_hz}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------- measurements

def bench_ort(samples: int) -> tuple[list[float], list[float]]:
    from dataclasses import replace

    from ioc.core.configfile import load_config
    from ioc.core.engine import load_champion

    cfg = load_config(ROOT / "config" / "demo.yaml")
    # The shipped model itself (read-only here): the demo's working store may not exist on a fresh clone.
    model = load_champion(replace(cfg.models[0], store=str(ROOT / "models" / "beam"), store_template=None),
                          cfg.ioc.inference)
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


def measure_rate(prefix_names: list[str], counters: Counters, seconds: float) -> dict:
    c0 = [read_count(f"{n}COUNT") for n in prefix_names]
    a0, p0 = counters.snapshot()
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = [read_count(f"{n}COUNT") for n in prefix_names]
    a1, p1 = counters.snapshot()
    dt = time.monotonic() - t0
    cycles = [(b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else 0.0 for a, b in zip(c0, c1, strict=True)]
    return {"cycles": cycles, "ca": [(b - a) / dt for a, b in zip(a0, a1, strict=True)],
            "pva": [(b - a) / dt for a, b in zip(p0, p1, strict=True)]}


def throughput(tmp: Path, rate_hz: float, n_models: int, seconds: float, core: int | None = None) -> dict:
    """Scan at rate_hz with MDEL=-1 (every cycle posts); cycles/s and CA/PVA updates delivered per model."""
    store, _, _ = linear_store(tmp, 10)
    prefix = run_prefix(f"TP{int(rate_hz)}X{n_models}{'P' if core is not None else ''}")
    cfg = linear_config(tmp, prefix, store, f"{{scan_hz: {rate_hz}}}", n_models=n_models, n_inputs=10, mdel=-1)
    ports = POOL.take()
    ioc = start(["serve", str(cfg)], ports, f"ioc-tp{n_models}", core=core)
    names = [f"{prefix}M{m}:" if n_models > 1 else prefix for m in range(n_models)]
    counters = Counters([f"{n}OUT:y0" for n in names], ports.pva_broadcast)
    try:
        time.sleep(2.0)  # let every monitor connect and the scan settle before the measured window
        r = measure_rate(names, counters, seconds)
        r["rss"] = rss_mb(ioc.proc.pid)
    finally:
        counters.close()
        forget_counts()
        ioc.stop()
    delivered = [min(ca, pva) / c if c else 0.0 for ca, pva, c in zip(r["ca"], r["pva"], r["cycles"], strict=True)]
    r.update(min_cycles=min(r["cycles"]), min_ca=min(r["ca"]), min_pva=min(r["pva"]), delivered=min(delivered))
    return r


def saturate(tmp: Path, seconds: float) -> tuple[float, str]:
    """The IOC on one core: raise the scan until cycles/s stop growing or updates go missing."""
    best, note, previous = 0.0, "", 0.0
    for rate in (1000, 2000, 3000, 4000, 5000, 6000, 8000):
        r = throughput(tmp, rate, 1, seconds, core=0)
        ok = r["delivered"] >= 0.99 and r["min_cycles"] >= 0.97 * rate
        if r["delivered"] >= 0.99 and r["min_cycles"] > best:
            best = r["min_cycles"]
            note = (f"scan {rate} Hz: {r['min_cycles']:.0f} cycles/s, delivered CA {r['min_ca']:.0f}/s, "
                    f"PVA {r['min_pva']:.0f}/s")
        if not ok or r["min_cycles"] < previous * 1.02:
            break
        previous = r["min_cycles"]
    return best, note


def latency(tmp: Path, table: Table, n: int, soft: ServerProcess, bare: ServerProcess) -> int:
    """Floors and the IOC's put -> prediction rows; returns the latency IOC's pid's RSS (MB)."""
    probe = CaProbe("FLOOR:X", "FLOOR:X")
    probe.run(100, lambda v: v)
    cf50, cf99 = stats(probe.run(n, lambda v: v))
    probe.close()
    table.add("ca_floor", "CA put->monitor, pythonSoftIOC record (C core)", cf50, p99=cf99, note="CA floor")
    pprobe = PvaProbe(bare.ports.pva_broadcast, "FLOOR:P", "FLOOR:P")
    pprobe.run(100, lambda v: v)
    pf50, pf99 = stats(pprobe.run(n, lambda v: v))
    pprobe.close()
    table.add("pva_floor", "PVA put->monitor, bare p4p SharedPV", pf50, p99=pf99, note="PVA floor")

    store, _, _ = linear_store(tmp, 2)
    lat = run_prefix("LAT")
    cfg = linear_config(tmp, lat, store, "{on_change: true}")
    ioc = start(["serve", str(cfg)], POOL.take(), "ioc-lat")
    try:
        probe = CaProbe(f"{lat}IN:x0", f"{lat}OUT:y0")
        probe.run(100, lambda v: 2 * v + 1.0 + 0.5)
        c50, c99 = stats(probe.run(n, lambda v: 2 * v + 1.0 + 0.5))  # y0 = 2 x0 + x1 + 0.5, x1 = 1
        probe.close()
        table.add("ca", "IOC: CA put input -> prediction monitor", c50, p99=c99, floor="ca_floor",
                  target="p50 <= 1.5x, p99 <= 2 ms")
        pprobe = PvaProbe(ioc.ports.pva_broadcast, f"{lat}IN:x0", f"{lat}OUT:y0")
        pprobe.run(100, lambda v: 2 * v + 1.5)
        v50, v99 = stats(pprobe.run(n, lambda v: 2 * v + 1.5))
        pprobe.close()
        table.add("pva", "IOC: PVA put input -> prediction monitor", v50, p99=v99, floor="pva_floor",
                  target="p50 <= 1.3x")

        mirror = run_prefix("MIR")
        cfg_m = linear_config(tmp, mirror, store, "{on_change: true}", sources={"x0": "ca://FLOOR:X"})
        mir = start(["serve", str(cfg_m)], POOL.take(), "ioc-mirror", ca_sources=f"127.0.0.1:{soft.ports.ca}")
        try:
            probe = CaProbe("FLOOR:X", f"{mirror}OUT:y0")
            probe.run(100, lambda v: 2 * v + 1.5)
            m50, m99 = stats(probe.run(n, lambda v: 2 * v + 1.5))
            probe.close()
            table.add("mirrored", "IOC: source-IOC put -> prediction (mirrored, CA)", m50, p99=m99,
                      floor="ca_floor", target="p50 <= 2x")
        finally:
            mir.stop()
        return int(rss_mb(ioc.proc.pid))
    finally:
        ioc.stop()


def start_demo(tmp: Path, scan_hz: float | None, name: str) -> tuple[ServerProcess, ServerProcess, PortSet]:
    cfg = demo_config(tmp, scan_hz)
    sim_ports, ioc_ports = POOL.take(), POOL.take()
    sim = start(["sim", str(cfg)], sim_ports, f"{name}-sim", ready="simulator ready")
    try:
        ioc = start(["serve", str(cfg)], ioc_ports, name, ca_sources=f"127.0.0.1:{sim_ports.ca}")
    except BaseException:
        sim.stop()
        raise
    return sim, ioc, ioc_ports


def demo_cpu(tmp: Path, scan_hz: float, seconds: float) -> tuple[float, float, float, float]:
    """The demo at ``scan_hz`` with CA and PVA monitors on its outputs: IOC CPU us per cycle, RSS after
    start, its peak (VmHWM) and RSS at the end."""
    sim, ioc, ports = start_demo(tmp / f"demo{scan_hz:g}", scan_hz, "ioc-demo")
    try:
        rss_start = rss_mb(ioc.proc.pid)
        ioc.wait_for_line("output drift limits", timeout=300)  # measured once the drift limits are calibrated
        outs = [f"DEMO:BEAM:OUT:{o}" for o in ("sigma_x", "sigma_y", "loss")]
        counters = Counters(outs, ports.pva_broadcast)
        try:
            time.sleep(2.0)
            pid = ioc.proc.pid
            n0, c0 = read_count("DEMO:BEAM:COUNT")[0], cpu_seconds(pid)
            time.sleep(seconds)
            n1, c1 = read_count("DEMO:BEAM:COUNT")[0], cpu_seconds(pid)
        finally:
            counters.close()
            forget_counts()
        return (1e6 * (c1 - c0) / max(n1 - n0, 1), rss_start, proc_status(ioc.proc.pid, "VmHWM"),
                rss_mb(ioc.proc.pid))
    finally:
        ioc.stop()
        sim.stop()


def startup(tmp: Path) -> tuple[float, float]:
    """Seconds from process start to the first valid prediction seen by a CA client, and RSS then."""
    import epics

    store, _, _ = linear_store(tmp, 2)
    prefix = run_prefix("SU")
    cfg = linear_config(tmp, prefix, store, "{scan_hz: 10}")
    ports = POOL.take()
    first = threading.Event()

    def cb(severity=3, **_):
        if severity < 3:
            first.set()

    pv = epics.PV(f"{prefix}OUT:y0", auto_monitor=True, callback=cb)
    env = server_env(ports)
    env["PYTHONPATH"] = str(IOC_ROOT)
    proc = ServerProcess(["serve", str(cfg)], env, "ioc-startup", cwd=IOC_ROOT)
    t0 = time.monotonic()
    proc.start()
    try:
        if not first.wait(30):
            raise RuntimeError("no first prediction")
        elapsed = time.monotonic() - t0
        rss = rss_mb(proc.proc.pid)
    finally:
        pv.clear_callbacks()
        pv.disconnect()
        proc.stop()
    return elapsed, rss


# --------------------------------------------------------------------------------------------- main

def one_run(args, table: Table, tmp: Path, soft: ServerProcess, bare: ServerProcess) -> None:
    groups = set(args.only.split(",")) if args.only else set(GROUPS)
    raw, full = bench_ort(args.samples)
    ort50, ort99 = stats(raw)
    table.add("ort", "ONNX Runtime run (demo MLP, batch 1)", ort50, p99=ort99, note="floor for inference")
    e50, e99 = stats(full)
    table.add("engine", "engine.run (normalise + run + de-normalise)", e50, p99=e99, floor="ort")
    rss_idle = None
    if "latency" in groups:
        rss_idle = latency(tmp, table, args.samples, soft, bare)
    if "cpu" in groups:
        per_cycle, rss_start, rss_peak, rss_end = demo_cpu(tmp, args.demo_hz, args.seconds * 2)
        table.add("cpu", f"demo IOC CPU per cycle (scan {args.demo_hz:g} Hz, CA+PVA monitors)", per_cycle / 1e3,
                  floor="ort", target="<= 10x ORT run", unit="ms")
        table.add("rss_demo", "demo IOC RSS with its recorder, after start", rss_start, unit="MB",
                  target="<= 150 MB")
        table.add("rss_demo_peak", "demo IOC peak RSS (VmHWM)", rss_peak, unit="MB")
        table.add("rss_demo_end", f"demo IOC RSS after {args.seconds * 2:.0f} s at {args.demo_hz:g} Hz", rss_end,
                  unit="MB")
    if "saturate" in groups:
        best, note = saturate(tmp, args.seconds)
        table.add("saturate", "1 model x 10 inputs, IOC on one core: most cycles/s, every update delivered", best,
                  unit="cycles/s", target=">= 2000", note=note)
    if "throughput" in groups:
        one = throughput(tmp, 2000, 1, args.seconds)
        table.add("tp2000", "1 model x 10 inputs, scan 2000 Hz: cycles/s", one["min_cycles"], unit="cycles/s",
                  target=">= 2000, every update delivered",
                  note=f"delivered CA {one['min_ca']:.0f}/s, PVA {one['min_pva']:.0f}/s")
        ten = throughput(tmp, 100, 10, args.seconds)
        table.add("tp10", "10 models x 10 inputs, scan 100 Hz each: slowest model cycles/s", ten["min_cycles"],
                  unit="cycles/s", target=">= 100 each, every update delivered",
                  note=f"delivered min CA {ten['min_ca']:.0f}/s, PVA {ten['min_pva']:.0f}/s; RSS {ten['rss']:.0f} MB")
    if "memory" in groups and rss_idle is not None:
        table.add("rss_idle", "linear IOC RSS after the latency runs", rss_idle, unit="MB")
    if "startup" in groups:
        t_first, _ = startup(tmp)
        table.add("startup", "start-up to first prediction (process start -> CA monitor)", t_first, unit="s",
                  target="<= 1.0 s")


def main() -> int:
    global IOC_ROOT, RUN
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000, help="round trips per latency row")
    ap.add_argument("--seconds", type=float, default=5.0, help="throughput window")
    ap.add_argument("--runs", type=int, default=3, help="runs; every row is their median [min-max]")
    ap.add_argument("--hog", action="store_true", help="a CPU hog pinned to the last core for the whole bench")
    ap.add_argument("--demo-hz", type=float, default=100.0, help="scan rate of the demo for CPU per cycle")
    ap.add_argument("--only", help=f"comma-separated groups of {','.join(GROUPS)}")
    ap.add_argument("--ioc-root", type=Path, help="run the IOC from this checkout (A/B comparisons)")
    args = ap.parse_args()
    if args.ioc_root:
        IOC_ROOT = args.ioc_root.resolve()
    table = Table()
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-bench-"))
    with cpu_hog(args.hog):
        # The floors run for the whole bench: their CA ports must never be handed to a later IOC.
        soft = start(["softioc", "FLOOR:X"], POOL.hold(), "softioc", module="bench._floors", ready="ready")
        bare = start(["p4p", "FLOOR:P"], POOL.hold(), "p4p", module="bench._floors", ready="ready")
        try:
            for run in range(args.runs):
                RUN = run
                print(f"run {run + 1}/{args.runs} ...", file=sys.stderr, flush=True)
                one_run(args, table, tmp, soft, bare)
        finally:
            soft.stop()
            bare.stop()
    where = f"IOC from {IOC_ROOT}" + (", CPU hog on the last core" if args.hog else "")
    table.print(args.runs, f"bench.latency ({where}): {' '.join(['python -m bench.latency', *sys.argv[1:]])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
