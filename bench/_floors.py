"""Baseline servers for benchmarks, run as subprocesses: `python -m bench._floors softioc|p4p NAME`.

* softioc: one pythonSoftIOC `ao` record, i.e. the EPICS C core (rsrv) serving CA;
* p4p: one bare p4p SharedPV whose put handler posts the value back (pvxs serving PVA).
Each prints "ready" once it serves.
"""

from __future__ import annotations

import sys


def softioc_server(name: str) -> None:
    from softioc import asyncio_dispatcher, builder, softioc

    device, _, record = name.rpartition(":")
    builder.SetDeviceName(device)
    builder.aOut(record, initial_value=0.0, always_update=True, PREC=3)
    builder.LoadDatabase()
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(), enable_pva=False)
    print("ready", flush=True)
    softioc.non_interactive_ioc()


def p4p_server(name: str) -> None:
    import threading

    from p4p.nt import NTScalar
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    pv = SharedPV(nt=NTScalar("d"), initial=0.0)

    @pv.put
    def put(pv, op):
        pv.post(op.value())
        op.done()

    with Server(providers=[{name: pv}]):
        print("ready", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    kind, name = sys.argv[1], sys.argv[2]
    {"softioc": softioc_server, "p4p": p4p_server}[kind](name)
