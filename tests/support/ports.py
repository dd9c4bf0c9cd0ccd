"""Free loopback ports for test servers: each CA server, PVA server and metrics endpoint gets its own."""

from __future__ import annotations

import socket
from dataclasses import dataclass


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses the same number for both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


@dataclass(frozen=True)
class PortSet:
    """Ports of one server process."""

    ca: int
    pva: int
    pva_broadcast: int
    metrics: int


class PortPool:
    """CA ports are fixed for the whole session (libca reads its address list once per process);
    the other ports are taken fresh each time."""

    def __init__(self, n_ca: int):
        self.ca_ports = []
        seen: set[int] = set()
        while len(self.ca_ports) < n_ca:
            p = _free_port()
            if p not in seen:
                seen.add(p)
                self.ca_ports.append(p)
        self._next = 0
        self._rotation = list(self.ca_ports)  # what take() hands out in turn (hold() takes one out for good)

    def take(self) -> PortSet:
        """Ports for a server that stops before its CA port comes round again (``n_ca`` takes later)."""
        ca = self._rotation[self._next % len(self._rotation)]
        self._next += 1
        return PortSet(ca=ca, pva=_free_port(), pva_broadcast=_free_port(), metrics=_free_port())

    def hold(self) -> PortSet:
        """Ports for a server that runs for the whole session: its CA port leaves the rotation, so no later
        server is given it (two CA servers on one port share its UDP search: a search reaches only one)."""
        if len(self._rotation) < 2:
            raise RuntimeError("no CA port left to hold: make the pool larger")
        ca = self._rotation.pop(0)
        return PortSet(ca=ca, pva=_free_port(), pva_broadcast=_free_port(), metrics=_free_port())

    @property
    def ca_addr_list(self) -> str:
        return " ".join(f"127.0.0.1:{p}" for p in self.ca_ports)
