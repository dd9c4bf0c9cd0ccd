"""bench/profile: where a cycle's time goes, sampled with py-spy on the running IOC (as deployed).

    python -m bench.profile [--scenario ca-put|pva-put|mirrored|scan] [--seconds 10] [--rate 2000]

Starts the IOC (a subprocess) serving a 2-input linear model with CA and PVA monitors attached to its
output, drives it (puts over CA or PVA to a writable input, updates of a pythonSoftIOC source record,
or a fast scan), and samples the IOC's main thread with py-spy (``--gil``: only samples holding the
GIL, i.e. Python work). Each sampled stack is attributed to the first step it shows, from the leaf up:

    inference      ONNX Runtime and the engine's normalisation (ioc/core/engine.py)
    CA post        an update encoded and queued for CA subscribers (ioc/protocols/ca_server.py, ca/server.py)
    CA send        the queued replies and updates written to the clients' sockets (one send per circuit)
    PVA post       an update handed to p4p (ioc/protocols/pva_server.py)
    PV post        the PV model's alarm / deadband logic (ioc/core/pvmodel.py PV.post)
    listeners      cycle listeners: drift monitor, recorder, actions
    snapshot       the runner's pass over the inputs, validity checks
    cycle          the rest of ModelRunner.run_cycle / _finish
    CA request     a CA client's request read, parsed and dispatched (ioc/protocols/ca), the put path
    PVA request    a PVA put handed from pvxs to the loop
    source update  a source monitor update handed to the loop (ioc/runtime/feed.py, sources)
    event loop     asyncio's own scheduling and socket readiness
    other          anything else (statistics, timers ...)

Prints one table of shares (percent of GIL-holding samples), the command that made it, and the
process CPU time per cycle. Needs the `bench` extra (py-spy, softioc). py-spy must be allowed to
ptrace the IOC (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bench.latency reserves the CA ports and points libca at them (once per process): share its pool.
from bench import latency  # noqa: E402
from bench.latency import (  # noqa: E402
    POOL,
    CaProbe,
    PvaProbe,
    cpu_seconds,
    linear_config,
    linear_store,
    read_count,
    start,
)
from tests.support.procs import ServerProcess  # noqa: E402

# (step, substrings of a frame "function (file:line)"): a stack belongs to the FIRST step whose frame it
# contains anywhere. The steps nest (a CA put's request handling runs the cycle, which posts the outputs,
# which encodes CA updates), so the more specific steps come first.
RULES: list[tuple[str, tuple[str, ...]]] = [
    # our CA server (ioc/protocols/ca) and, for A/B runs against older checkouts, caproto's
    ("CA post", ("_Record.on_post ", "Server.post ", "_Bridge.apply ", "_MaskedPublish.", "subscription_queue_loop")),
    ("CA send", ("Circuit.flush ", "Server.flush ", "_TransportWrapper.send", "VirtualCircuit._send_buffers")),
    ("PVA post", ("PvaServer._post ",)),
    ("inference", ("onnxruntime", "LoadedModel.run")),
    ("listeners", ("runtime/monitor.py", "edges/recorder.py", "edges/actions/")),
    ("PV post", ("PV.post ",)),
    ("snapshot", ("ModelRunner._snapshot ", "ModelRunner._post_input ", "core/inputs.py")),
    ("cycle", ("runtime/runner.py", "runtime/offload.py", "runtime/triggers.py")),
    ("source update", ("runtime/feed.py", "edges/sources.py", "epics/")),
    ("CA request", ("protocols/ca/", "protocols/ca_server.py", "caproto")),
    ("PVA request", ("p4p", "pva_server.py")),
    ("event loop", ("asyncio/", "selectors.py")),
]


def classify(stack: list[str]) -> str:
    """The step a sampled stack (root first) belongs to: see RULES."""
    for step, needles in RULES:
        if any(n in frame for frame in stack for n in needles):
            return step
    return "other"


def read_raw(path: Path) -> collections.Counter:
    shares: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text:
            continue
        frames = stack_text.split(";")
        if frames and frames[0].startswith(("thread", "process")):
            frames = frames[1:]
        shares[classify(frames)] += int(count)
    return shares


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (the main thread is "main"; pvxs, libca and worker threads by name)."""
    out: collections.Counter = collections.Counter()
    tck = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = "main" if task.name == str(pid) else stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name.rstrip("0123456789-")] += (int(fields[11]) + int(fields[12])) / tck
    return dict(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=("ca-put", "pva-put", "mirrored", "scan"), default="ca-put")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=2000, help="scan scenario: scan_hz")
    ap.add_argument("--sample-rate", type=int, default=1000, help="py-spy samples per second")
    ap.add_argument("--out", help="also keep the raw py-spy output here")
    ap.add_argument("--ioc-root", type=Path, help="run the IOC from this checkout (A/B comparisons)")
    args = ap.parse_args()
    if args.ioc_root:
        latency.IOC_ROOT = args.ioc_root.resolve()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-profile-"))
    store, _, _ = linear_store(tmp, 2)
    procs: list[ServerProcess] = []
    try:
        soft_ports = None
        sources = None
        if args.scenario == "mirrored":
            soft_ports = POOL.take()
            procs.append(start(["softioc", "PFLOOR:X"], soft_ports, "softioc", module="bench._floors", ready="ready"))
            sources = {"x0": "ca://PFLOOR:X"}
        trigger = f"{{scan_hz: {args.rate}}}" if args.scenario == "scan" else "{on_change: true}"
        cfg = linear_config(tmp, "PRF:", store, trigger, sources=sources, mdel=-1)
        ports = POOL.take()
        ioc = start(["serve", str(cfg)], ports, "ioc", ca_sources=f"127.0.0.1:{soft_ports.ca}" if soft_ports else "")
        procs.append(ioc)
        # Monitors on the output over both protocols, as a control room would have them.
        ca_mon = CaProbe("PRF:IN:x1", "PRF:OUT:y0")
        pva_mon = PvaProbe(ports.pva_broadcast, "PRF:IN:x1", "PRF:OUT:y0")
        if args.scenario == "ca-put":
            driver = CaProbe("PRF:IN:x0", "PRF:OUT:y0")
        elif args.scenario == "pva-put":
            driver = PvaProbe(ports.pva_broadcast, "PRF:IN:x0", "PRF:OUT:y0")
        elif args.scenario == "mirrored":
            driver = CaProbe("PFLOOR:X", "PRF:OUT:y0")
        else:
            driver = None
        stop = threading.Event()

        def drive() -> None:
            while not stop.is_set() and driver is not None:
                driver.run(200, lambda v: 2 * v + 1.5)

        pid = ioc.proc.pid
        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        time.sleep(1.0)  # warm: the first puts are not what a steady state looks like
        # CPU per cycle without the sampler attached, then the sampled window.
        # COUNT is posted at stats_hz, stamped when counted: cycles/s from its stamps, CPU/s from the wall clock.
        t0, c0, w0, (n0, s0) = thread_cpu(pid), cpu_seconds(pid), time.monotonic(), read_count("PRF:COUNT")
        time.sleep(args.seconds / 2)
        t1, c1, w1, (n1, s1) = thread_cpu(pid), cpu_seconds(pid), time.monotonic(), read_count("PRF:COUNT")
        raw = Path(args.out) if args.out else tmp / "profile.txt"
        cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate",
               str(args.sample_rate), "--format", "raw", "--gil", "--nonblocking", "--output", str(raw)]
        subprocess.run(cmd, check=True, capture_output=True)
        stop.set()
        thread.join(30)
        for probe in (ca_mon, pva_mon, driver):
            if probe is not None:
                probe.close()
    finally:
        for p in procs:
            p.stop()
    shares = read_raw(raw)
    total = sum(shares.values()) or 1
    order = [s for s, _ in RULES] + ["other"]
    print()
    print(f"Scenario {args.scenario}: {' '.join(['python -m bench.profile', *sys.argv[1:]])}")
    print(f"py-spy --gil at {args.sample_rate} Hz for {args.seconds:.0f} s: {total} samples")
    print()
    print("| step | share of Python time |")
    print("|---|---|")
    for step in sorted(order, key=lambda s: -shares.get(s, 0)):
        if shares.get(step):
            print(f"| {step} | {100 * shares[step] / total:.1f} % |")
    rate = (n1 - n0) / (s1 - s0) if s1 > s0 else float("nan")
    wall = w1 - w0
    cpu = (c1 - c0) / wall
    busy = 100 * total / (args.seconds * args.sample_rate)
    print(f"\nIOC process CPU {1e6 * cpu / rate:.0f} us per cycle, not sampled ({rate:.0f} cycles/s, "
          f"{100 * cpu:.0f} % of a core); the main thread held the GIL in {busy:.0f} % of the sampled window")
    per_thread = sorted(((t1.get(k, 0.0) - t0.get(k, 0.0)) / wall / rate * 1e6, k) for k in t1)
    print("CPU us per cycle by thread: " + ", ".join(f"{name} {us:.0f}" for us, name in reversed(per_thread)
                                                    if us >= 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
