"""Before an IOC serves, ask the network whether someone serves its PV names already.

Two IOCs serving the same PV names is a classic control-room fault: clients connect to whichever
answers first, and an operator's ``caput`` may reach the wrong process. ``mlioc serve`` searches a few
representative names of its own (each model's STATUS) over both protocols, exactly as a client would
(libca for CA, the p4p/pvxs client for PVA, with the standard EPICS address lists), and refuses to
start when another server answers. The search is short (:data:`SEARCH_S`) and runs while the models
load, before this IOC's own servers listen. It is a guard, not a proof: a server that is down now,
or that the address lists do not reach, is not found.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("mlioc")

SEARCH_S = 0.25  # a server on the network answers a search in milliseconds; libca repeats it meanwhile


@dataclass(frozen=True)
class Answer:
    protocol: str  # "CA" or "PVA"
    name: str
    server: str  # host:port that answered (CA); pvxs does not tell a client which server answered


class DuplicatePVs(Exception):
    """Another server answers for this IOC's PV names; the message names the PV and the server."""

    def __init__(self, answers: list[Answer]):
        self.answers = answers
        first = answers[0]
        by = f"by {first.server}" if first.server else "by another server"
        more = f" (and {len(answers) - 1} more)" if len(answers) > 1 else ""
        super().__init__(f"{first.name} is already served over {first.protocol} {by}{more}: another IOC serves this "
                         "IOC's PV names. Two servers for one PV name is a classic control-room fault (clients "
                         "reach either). Stop that IOC or change this config's prefixes; --allow-duplicates starts "
                         "anyway")


def _nowhere(protocol: str) -> bool:
    """No automatic address list and no addresses: a search could not reach anyone (libca would say so)."""
    return (os.environ.get(f"EPICS_{protocol}_AUTO_ADDR_LIST", "YES").upper() == "NO"
            and not os.environ.get(f"EPICS_{protocol}_ADDR_LIST", "").strip())


def _search_ca(names: list[str], timeout: float) -> list[Answer]:
    from ioc.edges.clients import ca_client

    if _nowhere("CA"):
        return []

    ca = ca_client()
    chids = {name: ca.create_channel(name, connect=False, auto_cb=False) for name in names}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(ca.isConnected(c) for c in chids.values()):
            time.sleep(0.01)
        return [Answer("CA", name, ca.host_name(chid)) for name, chid in chids.items() if ca.isConnected(chid)]
    finally:
        for chid in chids.values():
            ca.clear_channel(chid)


def _search_pva(names: list[str], timeout: float) -> list[Answer]:
    from ioc.edges.clients import pva_client

    if _nowhere("PVA"):
        return []
    results = pva_client().get(names, timeout=timeout, throw=False)
    return [Answer("PVA", name, "") for name, r in zip(names, results, strict=True) if not isinstance(r, Exception)]


def find_servers(names: Iterable[str], timeout: float = SEARCH_S) -> list[Answer]:
    """Every answer to a search for ``names`` over CA and PVA (blocking: run it off the event loop).

    Searches both protocols even for an IOC that serves one: a client of the other protocol would
    still reach the other server. A search that cannot run at all is logged and finds nothing.
    """
    import concurrent.futures

    names = list(names)
    found: list[Answer] = []
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="duplicates") as pool:
        futures = {pool.submit(search, names, timeout): label for label, search in (("CA", _search_ca),
                                                                                    ("PVA", _search_pva))}
        for future, label in futures.items():
            try:
                found += future.result()
            except Exception as exc:  # no network, client library trouble: never stop an IOC for this
                log.warning("could not search the network for %s servers of this IOC's PV names: %s", label, exc)
    return found
