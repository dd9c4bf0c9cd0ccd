"""The isolated caproto patches: inline coroutine runner, immediate sends, TCP_NODELAY, port binding."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ioc.protocols.caproto_fixes import bind_and_listen, run_inline


async def test_run_inline_completes_a_coroutine_that_does_not_wait_on_the_callers_stack():
    steps = []

    async def quick():
        steps.append("ran")
        return 1

    spawned = []
    run_inline(quick(), spawned.append)
    assert steps == ["ran"] and spawned == []  # no task, no loop iteration


async def test_run_inline_hands_a_waiting_coroutine_to_a_task_that_finishes_it():
    loop = asyncio.get_running_loop()
    results = []

    async def slow():
        value = await loop.run_in_executor(None, lambda: 41)
        await asyncio.sleep(0)
        value += await asyncio.wrap_future(loop.run_in_executor(None, lambda: 1))
        results.append(value)

    tasks = []
    run_inline(slow(), lambda coro: tasks.append(asyncio.ensure_future(coro)))
    assert len(tasks) == 1 and results == []
    await tasks[0]
    assert results == [42]


async def test_run_inline_delivers_exceptions_and_cancellation_to_the_coroutine():
    loop = asyncio.get_running_loop()
    seen = []

    async def failing():
        try:
            await loop.run_in_executor(None, lambda: 1 / 0)
        except ZeroDivisionError:
            seen.append("error reached the coroutine")

    tasks = []
    run_inline(failing(), lambda coro: tasks.append(asyncio.ensure_future(coro)))
    await tasks[0]
    assert seen == ["error reached the coroutine"]

    gate = loop.create_future()

    async def waiting():
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    run_inline(waiting(), lambda coro: tasks.append(asyncio.ensure_future(coro)))
    await asyncio.sleep(0)
    tasks[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[1]
    assert seen[-1] == "cancelled"


async def test_a_taken_port_fails_at_bind_time_not_later_in_a_background_task():
    first = await bind_and_listen("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError):
            await bind_and_listen("127.0.0.1", port)
    finally:
        first.close()
    again = await bind_and_listen("127.0.0.1", port)  # free again: reusable at once (SO_REUSEADDR)
    assert again.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    again.close()


# ----------------------------------------------------------------------------- clients that leave
# A normal client disconnect must log nothing above DEBUG and leave nothing behind (issue 19.3): caproto
# left a disconnected circuit's tasks pending until the garbage collector destroyed them ("Task was
# destroyed but it is pending!") and, when a client cleared a monitored channel (caproto-monitor on
# Ctrl-C), killed the circuit's subscription task with a KeyError.


async def _client(argv: list[str], port: int, *, interrupt_after: str | None = None) -> None:
    """Run a real CA client (a console script of the venv, or python -c) against the server on ``port``;
    with ``interrupt_after``, send it SIGINT (Ctrl-C) once that text is on its output."""
    import os
    import signal
    import sys
    from pathlib import Path

    env = dict(os.environ, EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}")
    exe = argv[0] if argv[0] == sys.executable else str(Path(sys.executable).parent / argv[0])
    proc = await asyncio.create_subprocess_exec(exe, *argv[1:], env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    if interrupt_after is not None:
        seen = b""
        while interrupt_after.encode() not in seen:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line, f"{argv}: exited before {interrupt_after!r}: {seen.decode()}"
            seen += line
        proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 30)


@pytest.fixture
async def ticking_server(port_pool):
    """A CA server (the IOC's adapter with every fix) whose FIX:TICK and FIX:TOCK change every 5 ms."""
    import time

    from ioc.core.pvmodel import Kind, PVDatabase, PVSpec
    from ioc.protocols.ca_server import CaServer

    db = PVDatabase()
    ticking = [db.add(PVSpec(f"FIX:{name}", Kind.AI, mdel=-1)) for name in ("TICK", "TOCK")]
    db.add(PVSpec("FIX:RO", Kind.AI))
    db.add(PVSpec("FIX:W", Kind.AO, writable=True), put_handler=lambda pv, v, c: pv.post(v, time.time()))
    server = CaServer(db, port=port_pool.take().ca, interfaces=["127.0.0.1"])
    await server.start()

    async def tick():
        n = 0
        while True:
            n += 1
            for pv in ticking:
                pv.post(float(n), time.time())
            await asyncio.sleep(0.005)

    ticker = asyncio.get_running_loop().create_task(tick())
    yield server
    ticker.cancel()
    await server.stop()


async def test_clients_that_disconnect_leave_no_task_and_log_nothing(caplog, ticking_server):
    import gc
    import logging
    import sys
    import time

    server = ticking_server
    port = server.port
    caplog.set_level(logging.DEBUG)
    py = sys.executable
    try:
        await _client(["caproto-put", "FIX:RO", "1"], port)  # refused: the server's reply races the close
        await _client(["caproto-put", "FIX:W", "2"], port)
        await _client(["caproto-get", "FIX:TICK"], port)
        await _client(["caproto-monitor", "FIX:TICK", "FIX:RO"], port, interrupt_after="FIX:TICK")  # Ctrl-C
        await _client([py, "-c", "import epics, os, time; ps = [epics.PV(n, auto_monitor=True) for n in "
                       "('FIX:TICK', 'FIX:W', 'FIX:TICK.SEVR')]; [p.wait_for_connection(5) for p in ps]; "
                       "time.sleep(0.5); os._exit(0)"], port)  # vanishes without a goodbye
        deadline = time.monotonic() + 10
        while server.context.circuits and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # updates keep flowing to whatever is still subscribed
        gc.collect()  # an abandoned task is reported when it is collected
        await asyncio.sleep(0)
        assert not server.context.circuits
        left = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.startswith("VirtualCircuit.")]
        assert left == []
        assert not any(server.context.subscriptions.values())  # no update is fanned out to a closed client
        noisy = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records
                 if r.levelno > logging.DEBUG and (r.name.startswith("caproto") or r.name == "asyncio")
                 and "onnected" not in r.getMessage()]  # caproto's INFO "Connected/Disconnected ... client"
        assert noisy == []
    finally:
        caplog.set_level(logging.WARNING)


# A raw CA client (caproto's sans-I/O circuit over a socket): monitor TICK and TOCK on one circuit, clear
# TICK's channel without cancelling its monitor first (as caproto's own clients do), then count TOCK updates.
_CLEAR_ONE = """
import socket, sys, time
import caproto as ca
from caproto.sync.client import make_channel, recv, send
udp = ca.bcast_socket()
udp.settimeout(5)
tick, tock = (make_channel(n, udp, 0, 5) for n in ("FIX:TICK", "FIX:TOCK"))
subs = {}
for chan in (tick, tock):
    req = chan.subscribe(data_type=ca.ChannelType.TIME_DOUBLE)
    subs[req.subscriptionid] = chan.name
    send(chan.circuit, req)

def count(seconds):
    seen = {"FIX:TICK": 0, "FIX:TOCK": 0}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            for c in recv(tock.circuit):
                if isinstance(c, ca.EventAddResponse) and c.subscriptionid in subs:
                    seen[subs[c.subscriptionid]] += 1
        except socket.timeout:
            pass
    return seen

before = count(0.5)
send(tick.circuit, tick.clear())
after = count(1.0)
print(before["FIX:TOCK"], after["FIX:TOCK"], flush=True)
"""


async def test_clearing_one_monitored_channel_keeps_the_clients_other_monitors(ticking_server):
    import os
    import sys

    env = dict(os.environ, EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=f"127.0.0.1:{ticking_server.port}")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CLEAR_ONE, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    before, after = map(int, out.split())
    assert before > 20  # TOCK changes every 5 ms
    assert after > 50  # ... and goes on reaching the client after it stopped watching TICK
