"""A Channel Access client with a chosen identity, run as a subprocess by the access tests:

    python -m tests.support.ca_identity SOURCE_IP USER CLAIMED_HOST PV VALUE

caproto's client lets us pick the user and the host name it claims; its TCP socket is bound to
SOURCE_IP (any 127.x.y.z address works on loopback), which is the address the IOC really sees.
Prints one JSON line: the access rights the server granted and the outcome of a put.
"""

from __future__ import annotations

import json
import socket
import sys

source, user, host, name, value = sys.argv[1:6]
_create = socket.create_connection


def _bound(address, timeout=None, source_address=None, **kw):
    return _create(address, timeout, source_address=(source, 0), **kw)


socket.create_connection = _bound  # caproto's threading client opens its circuits with this

from caproto.threading.client import Context  # noqa: E402

ctx = Context(host_name=host, client_name=user, timeout=5)
(pv,) = ctx.get_pvs(name, timeout=5)
pv.wait_for_connection(timeout=5)
rights = int(pv.access_rights)
result = {"read": bool(rights & 1), "write": bool(rights & 2)}
try:
    response = pv.write([float(value)], wait=True, timeout=5)
    # The server's answer to WRITE_NOTIFY carries its verdict (ECA_NOWTACCESS, ECA_PUTFAIL ...), as caput shows it.
    status = response.status
    result["put"] = "ok" if status.success else f"refused: {status.name}: {status.description}"
except Exception as exc:  # the server's refusal, as a client sees it
    result["put"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(result), flush=True)
ctx.disconnect()
