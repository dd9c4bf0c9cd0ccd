"""Run `mlioc serve` / `mlioc sim` as real subprocesses on their own loopback ports, and wait on
their readiness (a log line, then a real client connection), never on fixed sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.ports import PortSet

ROOT = Path(__file__).resolve().parents[2]


def server_env(ports: PortSet, ca_addr_list: str = "", extra: dict | None = None) -> dict[str, str]:
    """Environment of a server process: its own ports, loopback only, no broadcast discovery."""
    env = dict(os.environ)
    env.update(
        EPICS_CA_SERVER_PORT=str(ports.ca),
        EPICS_CAS_INTF_ADDR_LIST="127.0.0.1",
        EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
        EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1",
        EPICS_PVAS_SERVER_PORT=str(ports.pva),
        EPICS_PVAS_BROADCAST_PORT=str(ports.pva_broadcast),
        EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1",
        EPICS_PVA_AUTO_ADDR_LIST="NO",
        EPICS_CA_AUTO_ADDR_LIST="NO",
        EPICS_CA_ADDR_LIST=ca_addr_list,
        PYTHONUNBUFFERED="1",
    )
    if extra:
        env.update(extra)
    return env


class ServerProcess:
    """A child process whose combined output is collected line by line on a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str], name: str, cwd: Path = ROOT, module: str = "ioc",
                 preexec=None, command: list[str] | None = None, new_session: bool = False):
        self.module = module
        self.command = command  # run this instead of `python -m MODULE ARGS` (e.g. a script)
        self.new_session = new_session  # its own process group: signal_group() reaches its children too
        self.preexec = preexec
        self.args = args
        self.env = env
        self.name = name
        self.cwd = cwd
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self._eof = False

    def start(self) -> ServerProcess:
        self.started_at = time.monotonic()
        self._eof = False
        self.lines = []
        self.proc = subprocess.Popen(
            self.command or [sys.executable, "-m", self.module, *self.args], cwd=self.cwd, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=self.preexec,
            start_new_session=self.new_session,
        )
        threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, text: str, timeout: float = 20.0, start: int = 0) -> str:
        """Block until a line containing ``text`` appears (from line index ``start`` on)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if text in line:
                        return line
                if self._eof:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) before {text!r}:\n"
                                       + "\n".join(self.lines[-40:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.name}: no {text!r} within {timeout} s:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(remaining, 0.5))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def signal_group(self, sig: int) -> None:
        """What a terminal's Ctrl-C does: ``sig`` to every process of the group (needs ``new_session``)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
