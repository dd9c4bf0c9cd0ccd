"""Baseline servers for benchmarks, run as subprocesses: `python -m bench._floors KIND NAME [ARGS]`.

* softioc NAME: one pythonSoftIOC `ao` record, i.e. the EPICS C core (rsrv) serving CA;
* softioc-wf NAME N: one pythonSoftIOC `waveform` record of N doubles (bench/arrays);
* softioc-many PREFIX N: N `ao` records PREFIX00, PREFIX01, ... (a gathered vector's sources, bench/arrays);
* p4p NAME: one bare p4p SharedPV whose put handler posts the value back (pvxs serving PVA);
* frames NAME H W RATE: a bare p4p NTNDArray camera posting H x W float32 frames at RATE Hz (bench/arrays):
  frame k is filled with ``k % 10000 + 1``, its ``uniqueId`` is k and both time stamps the moment it is
  posted, so a client downstream can tell its latency and which frames it lost.
Each prints "ready" once it serves.
"""

from __future__ import annotations

import sys


def _softioc(name: str, build) -> None:
    """Serve the records ``build(record)`` makes under ``name``'s device (the part before the last ':')."""
    from softioc import asyncio_dispatcher, builder, softioc

    device, _, record = name.rpartition(":")
    builder.SetDeviceName(device)
    build(record)
    builder.LoadDatabase()
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher(), enable_pva=False)
    print("ready", flush=True)
    softioc.non_interactive_ioc()


def softioc_server(name: str) -> None:
    from softioc import builder

    _softioc(name, lambda record: builder.aOut(record, initial_value=0.0, always_update=True, PREC=3))


def softioc_waveform(name: str, n: str) -> None:
    import numpy as np
    from softioc import builder

    _softioc(name, lambda record: builder.WaveformOut(record, np.zeros(int(n)), always_update=True))


def softioc_many(prefix: str, n: str) -> None:
    from softioc import builder

    def build(stem: str) -> None:
        for i in range(int(n)):
            builder.aOut(f"{stem}{i:02d}", initial_value=0.0, always_update=True, PREC=3)

    _softioc(prefix, build)


def frame_server(name: str, h: str, w: str, rate: str) -> None:
    import time

    import numpy as np
    from p4p.nt import NTNDArray
    from p4p.server import Server
    from p4p.server.thread import SharedPV

    shape = (int(h), int(w))
    nt = NTNDArray()
    pv = SharedPV(initial=nt.wrap(np.zeros(shape, dtype=np.float32)))  # posts whole NTNDArray Values
    period = 1.0 / float(rate)
    with Server(providers=[{name: pv}]):
        print("ready", flush=True)
        k = 0
        due = time.monotonic()
        while True:
            due += period
            k += 1
            value = nt.wrap(np.full(shape, k % 10000 + 1, dtype=np.float32))  # a new frame: never mutated
            now = time.time()
            sec, ns = int(now), int((now % 1) * 1e9)
            value["uniqueId"] = k
            for stamp in ("timeStamp", "dataTimeStamp"):
                value[f"{stamp}.secondsPastEpoch"] = sec
                value[f"{stamp}.nanoseconds"] = ns
            pv.post(value)
            time.sleep(max(0.0, due - time.monotonic()))


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
    kind, args = sys.argv[1], sys.argv[2:]
    {"softioc": softioc_server, "softioc-wf": softioc_waveform, "softioc-many": softioc_many, "p4p": p4p_server,
     "frames": frame_server}[kind](*args)
