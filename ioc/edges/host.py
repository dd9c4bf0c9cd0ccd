"""This host's network addresses: what ``localhost`` stands for in the IOC's access lists.

A client on the IOC's own host that finds it by broadcast search connects through the host's network
address (the search reply comes from it), not through loopback, so "this host" must be every address of
every interface. Enumerating interfaces is I/O, so it lives here at the edge and is handed to the pure
access-list code (``ioc.core.access.build_access``). Read once at start-up: an address added later
(a new DHCP lease) is this host only after a restart.
"""

from __future__ import annotations

import array
import fcntl
import logging
import socket
import struct
from pathlib import Path

log = logging.getLogger("mlioc")

SIOCGIFCONF = 0x8912  # Linux: the IPv4 address of every interface that is up
_IFREQ = 40  # sizeof(struct ifreq) on 64-bit Linux


def _ipv4_addresses() -> set[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        size = 128 * _IFREQ
        buf = array.array("B", b"\0" * size)
        request = struct.pack("iL", size, buf.buffer_info()[0])
        used = struct.unpack("iL", fcntl.ioctl(sock.fileno(), SIOCGIFCONF, request))[0]
        data = buf.tobytes()[:used]
    return {socket.inet_ntoa(data[i + 20:i + 24]) for i in range(0, len(data), _IFREQ)}


def _ipv6_addresses() -> set[str]:
    path = Path("/proc/net/if_inet6")  # one line per address: 32 hex digits, then index, scope, flags, name
    if not path.exists():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        digits = line.split()[0]
        out.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(digits)))
    return out


def local_addresses() -> list[str]:
    """Every address of this host's interfaces (IPv4 and IPv6), with loopback; never raises."""
    found = {"127.0.0.1", "::1"}
    for reader in (_ipv4_addresses, _ipv6_addresses):
        try:
            found |= reader()
        except OSError as exc:  # not Linux, or no permission: the host name's addresses must do
            log.debug("cannot list interface addresses (%s): %s", reader.__name__, exc)
    try:
        found |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return sorted(found)
