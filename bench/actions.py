"""bench/actions: what closed-loop actions cost on the cycle, and how fast a decision reaches a setpoint,
each beside its baseline measured in the same run on the same machine.

    python -m bench.actions [--samples 500]

The IOC serves y = a (a writable input) and the simulator's corrector setpoint is the target. Rows:
the prediction latency (CA put input -> OUT monitor) of the IOC with no action (baseline) and with a
dry-run action on the output (the guards run in the cycle listener); the put -> published proposal
(``ACTION:y:SETPOINT``); the floor of one CA write (client put -> monitor on the simulator's setpoint);
and the whole armed loop: put input -> prediction -> guards -> writer thread -> CA put to the simulator
-> the setpoint's monitor. Armed writes are paced at 50 Hz (each write must settle before the next).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.latency import POOL, CaProbe, start, stats  # noqa: E402  (sets the EPICS client environment)
from tests.support.models import publish_linear  # noqa: E402
from tests.support.procs import ServerProcess  # noqa: E402


def config(tmp: Path, name: str, prefix: str, sim: str, action: str | None) -> Path:
    lines = ["ioc: {protocols: [ca], metrics_port: 0, stats_hz: 2}", f'simulator: {{prefix: "{sim}"}}', "models:",
             "  - name: lin", f'    prefix: "{prefix}"', f"    store: {tmp / 'store'}",
             "    trigger: {on_change: true}",
             "    inputs: [{name: a, initial: 0.0}, {name: b, initial: 0.0}]", "    outputs:"]
    if action:
        lines.append(f'      - {{name: y, action: {{target: "ca://{sim}COR:I_SP", {action}}}}}')
    else:
        lines.append("      - {name: y}")
    lines.append("      - {name: big}")
    path = tmp / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Paced(CaProbe):
    """Like CaProbe, with in-range values and a pause between samples (each write must settle)."""

    def __init__(self, put_name: str, mon_name: str, pause_s: float = 0.0, offset: float = 0.0):
        super().__init__(put_name, mon_name)
        self.pause_s = pause_s
        self.offset = offset

    def run(self, n: int, expect) -> list[float]:
        times = []
        for i in range(n):
            value = ((i % 16) - 8) * 0.5 + 0.25 + self.offset  # -3.75 .. 3.75, never twice in a row
            self.want = expect(value)
            self.event.clear()
            t0 = time.perf_counter()
            self.put_pv.put(value, wait=False)
            if not self.event.wait(5):
                raise RuntimeError(f"no monitor for {value} on {self.mon.pvname}")
            times.append(time.perf_counter() - t0)
            if self.pause_s:
                time.sleep(self.pause_s)
        return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()
    n = args.samples
    tmp = Path(tempfile.mkdtemp(prefix="mlioc-bench-actions-"))
    publish_linear(tmp / "store", ["a", "b"], ["y", "big"], [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    sim_prefix = "BA:SIM:"
    procs: list[ServerProcess | QuietProcess] = []
    rows: list[tuple[str, float, float, str, float | None]] = []
    try:
        sim_ports = POOL.take()
        sim_cfg = config(tmp, "sim", "BA:X:", sim_prefix, None)
        procs.append(start(["sim", str(sim_cfg), "--rate-hz", "10"], sim_ports, "sim", ready="simulator ready"))
        addr = f"127.0.0.1:{sim_ports.ca}"

        floor = Paced(f"{sim_prefix}COR:I_SP", f"{sim_prefix}COR:I_SP")
        floor.run(50, lambda v: v)
        f50, f99 = stats(floor.run(n, lambda v: v))

        base_cfg = config(tmp, "base", "BA:N:", sim_prefix, None)
        procs.append(start_quiet(["serve", str(base_cfg)], POOL.take(), "ioc-base", ca_sources=addr))
        probe = Paced("BA:N:IN:a", "BA:N:OUT:y")
        probe.run(50, lambda v: v)
        b50, b99 = stats(probe.run(n, lambda v: v))
        rows.append(("IOC, no action: CA put input -> prediction", b50, b99, "baseline", None))

        dry = "min: -5, max: 5, max_step: 10, max_rate_hz: 10000, mode: dry_run"
        dry_cfg = config(tmp, "dry", "BA:D:", sim_prefix, dry)
        procs.append(start_quiet(["serve", str(dry_cfg)], POOL.take(), "ioc-dry", ca_sources=addr))
        probe = Paced("BA:D:IN:a", "BA:D:OUT:y")
        _wait_state("BA:D:ACTION:y:STATE", ("DRY_RUN", "HELD_DEADBAND"))
        probe.run(50, lambda v: v)
        d50, d99 = stats(probe.run(n, lambda v: v))
        rows.append(("IOC, dry-run action: CA put input -> prediction", d50, d99, "baseline", d50 / b50))
        probe = Paced("BA:D:IN:a", "BA:D:ACTION:y:SETPOINT")
        probe.run(50, lambda v: v)
        s50, s99 = stats(probe.run(n, lambda v: v))
        rows.append(("IOC, dry-run action: put input -> SETPOINT proposal", s50, s99, "baseline", s50 / b50))

        armed = ("min: -5, max: 5, max_step: 10, max_rate_hz: 10000, tolerance: 0.001, settle_s: 2, mode: write, "
                 "max_held: 1000000")
        write_cfg = config(tmp, "write", "BA:W:", sim_prefix, armed)
        procs.append(start_quiet(["serve", str(write_cfg)], POOL.take(), "ioc-write", ca_sources=addr))
        _wait_state("BA:W:ACTION:y:STATE", ("OFF",))
        import epics

        epics.caput("BA:W:ACTIONS", 1, wait=True)
        probe = Paced("BA:W:IN:a", f"{sim_prefix}COR:I_SP", pause_s=0.02)
        probe.run(50, lambda v: v)
        w50, w99 = stats(probe.run(n, lambda v: v))
        rows.append(("CA put -> monitor on the simulator's setpoint", f50, f99, "one CA write", None))
        rows.append(("IOC, armed: put input -> setpoint written on the simulator", w50, w99,
                     "baseline + one CA write", w50 / (b50 + f50)))
        if epics.caget("BA:W:ACTIONS") != 1:
            raise RuntimeError(f"actions tripped during the run: {epics.caget('BA:W:ACTIONS:TRIP')}")
    finally:
        for proc in procs:
            proc.stop()


    print(f"\nbench/actions: {n} samples each, one machine, same run (CA, loopback)\n")
    print(f"| {'what':<58} | {'p50 ms':>7} | {'p99 ms':>7} | {'against':<24} | {'ratio (p50)':>11} |")
    print(f"|{'-' * 60}|{'-' * 9}|{'-' * 9}|{'-' * 26}|{'-' * 13}|")
    for what, p50, p99, against, ratio in rows:
        r = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"| {what:<58} | {p50:7.3f} | {p99:7.3f} | {against:<24} | {r:>11} |")
    return 0


class QuietProcess:
    """A server whose log goes to a file, not to a pipe read by a thread of this (measuring) process:
    the IOC logs every write at INFO, and waking a reader thread per line here would slow the very
    CA callbacks being timed."""

    def __init__(self, args: list[str], ports, name: str, ca_sources: str):
        import subprocess

        from tests.support.procs import server_env

        self.log = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.proc = subprocess.Popen([sys.executable, "-m", "ioc", *args], cwd=ROOT, env=server_env(ports, ca_sources),
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "mlioc ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_quiet(args: list[str], ports, name: str, ca_sources: str) -> QuietProcess:
    return QuietProcess(args, ports, name, ca_sources)


def _wait_state(name: str, states: tuple[str, ...], timeout: float = 20.0) -> None:
    import epics

    done = threading.Event()
    pv = epics.PV(name, auto_monitor=True, form="native",
                  callback=lambda char_value=None, **_: done.set() if char_value in states else None)
    if not pv.wait_for_connection(10):
        raise RuntimeError(f"cannot connect {name}")
    if pv.get(as_string=True) not in states and not done.wait(timeout):
        raise RuntimeError(f"{name} never reached {states}: {pv.get(as_string=True)}")


if __name__ == "__main__":
    sys.exit(main())
