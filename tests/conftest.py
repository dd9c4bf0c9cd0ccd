"""Shared fixtures: per-test loopback ports, real server subprocesses, real CA/PVA clients.

libca (pyepics) reads its address list once per process, so the CA ports of every server a test
session will start are reserved up front and the client searches all of them; PVA clients get a
fresh context pointed at exactly one server.
"""

from __future__ import annotations

import os

from tests.support.ports import PortPool

POOL = PortPool(n_ca=24)
os.environ.update(
    EPICS_CA_AUTO_ADDR_LIST="NO",
    EPICS_CA_ADDR_LIST=POOL.ca_addr_list,
    EPICS_CA_CONN_TMO="2.0",
    EPICS_PVA_AUTO_ADDR_LIST="NO",
    # C IOCs (RSRV) serve large waveforms only up to this; the IOC takes them with the default too
    # (tests/integration/test_arrays_integration.py).
    EPICS_CA_MAX_ARRAY_BYTES="10000000",
)

import secrets  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.support.clients import CaClient, PvaClient  # noqa: E402
from tests.support.procs import ServerProcess, server_env  # noqa: E402


@pytest.fixture(scope="session")
def port_pool() -> PortPool:
    return POOL


@pytest.fixture(scope="session")
def ca() -> CaClient:
    return CaClient()


@pytest.fixture
def processes():
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


class Launcher:
    """Starts IOC / simulator subprocesses for one test and remembers them for teardown."""

    def __init__(self, pool: PortPool, started: list[ServerProcess]):
        self.pool = pool
        self.started = started

    def ioc(self, config: Path, *, sources=None, extra_args=(), env=None, wait=True,
            name="ioc", preexec=None) -> ServerProcess:
        ports = self.pool.take()
        addr = " ".join(f"127.0.0.1:{p.ports.ca}" for p in (sources or []))
        proc = ServerProcess(["serve", str(config), "--metrics-port", str(ports.metrics), *extra_args],
                             server_env(ports, addr, env), name, preexec=preexec)
        proc.ports = ports
        self.started.append(proc)
        proc.start()
        if wait:
            proc.wait_for_line("mlioc ready", timeout=30)
        return proc

    def sim(self, config: Path, *, extra_args=(), env=None, name="sim", ports=None) -> ServerProcess:
        ports = ports or self.pool.take()
        proc = ServerProcess(["sim", str(config), *extra_args], server_env(ports, "", env), name)
        proc.ports = ports
        self.started.append(proc)
        proc.start()
        proc.wait_for_line("simulator ready", timeout=30)
        return proc


@pytest.fixture
def launch(port_pool, processes) -> Launcher:
    return Launcher(port_pool, processes)


@pytest.fixture
def pva():
    clients: list[PvaClient] = []

    def connect(proc: ServerProcess) -> PvaClient:
        client = PvaClient(proc.ports.pva_broadcast)
        clients.append(client)
        return client

    yield connect
    for c in clients:
        c.close()


_counter = iter(range(1, 10_000))
_SESSION = secrets.token_hex(3).upper()


@pytest.fixture
def prefix() -> str:
    """A PV prefix unique to this test, across concurrent test sessions on the same host too (pvxs
    servers forward searches to each other on one host, so ports alone do not keep names apart)."""
    return f"T{_SESSION}X{next(_counter)}:"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def pytest_collection_modifyitems(config, items):
    """Every test under tests/integration/ is marked ``integration`` (`-m "not integration"` runs the
    unit tests alone in about a minute)."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
