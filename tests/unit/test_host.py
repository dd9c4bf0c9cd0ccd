"""This host's addresses (ioc/edges/host.py): what ``localhost`` means in access lists."""

from __future__ import annotations

import socket

from ioc.edges.host import local_addresses


def test_local_addresses_are_this_hosts_own():
    found = local_addresses()
    assert "127.0.0.1" in found and "::1" in found
    for address in found:  # a socket can bind to an address only if it is one of this host's
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            if address.startswith("fe80:"):
                continue  # link-local: binding needs the interface's scope id
            s.bind((address, 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the address this host reaches others from
        try:
            s.connect(("192.0.2.254", 9))
            assert s.getsockname()[0] in found
        except OSError:
            pass  # no route at all: nothing more to check
