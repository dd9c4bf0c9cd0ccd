"""The process-wide Channel Access and PV Access *client* contexts (one of each per process).

Sources (:mod:`ioc.edges.sources`) monitor other IOCs' PVs through them and closed-loop actions
(:mod:`ioc.edges.actions`) write setpoints through them: CA through pyepics' bundled libca (the C
client a control room's ``camonitor`` uses, preemptive callbacks), PVA through the p4p (pvxs) client.
libca must be initialised once per process and every thread that calls it must attach to that one
context, which is why they live here and nowhere else.
"""

from __future__ import annotations

import threading
from typing import Any

CA_LOCK = threading.RLock()  # held while CA channels are created or cleared (libca is not re-entrant there)
_ca_module: Any = None
_pva_context: Any = None


def ca_client() -> Any:
    """pyepics' ``epics.ca``, initialised once for the process (and attached to the calling thread)."""
    global _ca_module
    with CA_LOCK:
        if _ca_module is None:
            from epics import ca

            ca.PREEMPTIVE_CALLBACK = True
            ca.initialize_libca()
            _ca_module = ca
        else:
            _ca_module.use_initial_context()
    return _ca_module


def ca_module() -> Any:
    """``epics.ca`` once :func:`ca_client` has initialised it, without attaching the calling thread (libca's
    own callback threads are attached already)."""
    return _ca_module


def pva_client() -> Any:
    """The process's p4p client ``Context`` (raw values, no NT unwrapping)."""
    global _pva_context
    if _pva_context is None:
        from p4p.client.thread import Context

        _pva_context = Context("pva", nt=False)
    return _pva_context


def close_clients() -> None:
    """Tear down the process-wide client contexts (at shutdown)."""
    global _pva_context
    if _pva_context is not None:
        _pva_context.close()
        _pva_context = None
