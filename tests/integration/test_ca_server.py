"""Our Channel Access server (ioc/protocols/ca/) through independent clients: caproto's command-line tools,
its sans-I/O client over a raw socket (to act as a slow or rude client), and pyepics (libca).

What used to be caproto's traps (tests/integration/test_caproto_fixes.py on earlier branches) is kept
here as behaviour: a taken port fails at once, clients that leave leave nothing behind and log nothing,
clearing one monitored channel keeps the client's other monitors. New: a client that does not read
costs bounded memory and its dropped updates are counted; EVENTS_OFF holds the newest update;
access rights follow CLIENT_NAME; NOT_FOUND only when asked for; beacons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from pathlib import Path

import caproto as ca
import numpy as np
import pytest
from caproto._commands import read_datagram  # noqa: PLC2701 - caproto has no public datagram reader

from ioc.core.pvmodel import Kind, PVDatabase, PVSpec
from ioc.protocols.ca import server as ca_server_core
from ioc.protocols.ca.server import bind_and_listen
from ioc.protocols.ca_server import CaServer


async def test_a_taken_port_fails_at_bind_time_not_later_in_a_background_task():
    first = bind_and_listen("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError):
            bind_and_listen("127.0.0.1", port)
    finally:
        first.close()
    again = bind_and_listen("127.0.0.1", port)  # free again: reusable at once (SO_REUSEADDR)
    assert again.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    again.close()


async def test_a_second_server_on_the_same_port_takes_another_tcp_port(port_pool, caplog):
    caplog.set_level(logging.INFO, logger="mlioc.ca")
    db = PVDatabase()
    db.add(PVSpec("TWICE:X", Kind.AI))
    port = port_pool.take().ca
    first, second = CaServer(db, port=port, interfaces=["127.0.0.1"]), CaServer(db, port=port, interfaces=["127.0.0.1"])
    await first.start()
    try:
        await second.start()
        assert first.port == port and second.port != port
        assert [r for r in caplog.records if f"CA TCP port {port} is taken" in r.getMessage()]  # said why
        await second.stop()
    finally:
        await first.stop()


async def test_port_0_serves_search_and_circuits_on_one_port_the_system_chose():
    """EPICS_CA_SERVER_PORT=0 (did not work with caproto): the OS picks a free port, and the UDP name search
    listens on that same port, so a client given 127.0.0.1:PORT finds the server (libca, in a subprocess)."""
    db = PVDatabase()
    db.add(PVSpec("ZERO:X", Kind.AI)).post(4.5, time.time())
    server = CaServer(db, port=0, interfaces=["127.0.0.1"])
    await server.start()
    try:
        assert server.port
        env = dict(os.environ, EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=f"127.0.0.1:{server.port}")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import epics; print(epics.caget('ZERO:X', timeout=5))", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert out.decode().split()[-1] == "4.5", out.decode()
    finally:
        await server.stop()


# ----------------------------------------------------------------------------- clients that leave
# A normal client disconnect must log nothing above DEBUG and leave nothing behind (issue 19.3).


async def _client(argv: list[str], port: int, *, interrupt_after: str | None = None) -> None:
    """Run a real CA client (a console script of the venv, or python -c) against the server on ``port``;
    with ``interrupt_after``, send it SIGINT (Ctrl-C) once that text is on its output."""
    import signal

    env = dict(os.environ, EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}")
    exe = argv[0] if argv[0] == sys.executable else str(Path(sys.executable).parent / argv[0])
    # caproto's tools spawn a repeater daemon when none runs on the host; it inherits our pipe and keeps it
    # open, so communicate() would wait for it forever: the test is about the server, not the repeater.
    args = argv[1:] if exe == sys.executable else ["--no-repeater", *argv[1:]]
    proc = await asyncio.create_subprocess_exec(exe, *args, env=env, stdout=asyncio.subprocess.PIPE,
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
    """A CA server (the IOC's adapter) whose FIX:TICK and FIX:TOCK change every 5 ms."""
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


async def test_clients_that_disconnect_leave_nothing_and_log_nothing(caplog, ticking_server):
    import gc

    server = ticking_server
    port = server.port
    caplog.set_level(logging.DEBUG)
    tasks_before = set(asyncio.all_tasks())
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
        while server.circuits and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # updates keep flowing to whatever is still subscribed
        gc.collect()
        await asyncio.sleep(0)
        assert not server.circuits
        assert server.subscriptions() == 0  # no update is fanned out to a closed client
        assert set(asyncio.all_tasks()) <= tasks_before | {asyncio.current_task()}
        assert server.server is not None and not server.server.pending  # no write left waiting
        noisy = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records
                 if r.levelno > logging.DEBUG and r.name in ("mlioc.ca", "asyncio")]
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
    env = dict(os.environ, EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_ADDR_LIST=f"127.0.0.1:{ticking_server.port}")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _CLEAR_ONE, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    before, after = map(int, out.split())
    assert before > 20  # TOCK changes every 5 ms
    assert after > 50  # ... and goes on reaching the client after it stopped watching TICK
    assert ticking_server.subscriptions() == 0  # and nothing is left of TICK's monitor when it is gone


# ----------------------------------------------------------------------------- a raw client

class RawClient:
    """caproto's sans-I/O client circuit over a blocking socket we control (buffer size, when to read)."""

    def __init__(self, port: int, user: str = "raw", rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", port), 0)
        self.commands: list = []
        self.send(ca.VersionRequest(0, ca.DEFAULT_PROTOCOL_VERSION), ca.HostNameRequest("rawhost"),
                  ca.ClientNameRequest(user))
        self.until(lambda c: isinstance(c, ca.VersionResponse))

    def send(self, *commands) -> None:
        self.sock.sendall(b"".join(self.circuit.send(*commands)))

    def until(self, predicate, timeout: float = 10.0):
        """Read until a command matching ``predicate`` arrives; every command read is kept in order."""
        deadline = time.monotonic() + timeout
        while True:
            for c in self.commands:
                if predicate(c):
                    return c
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching command; got {self.commands[-3:]}")
            self.read_once()

    def read_once(self) -> None:
        data = self.sock.recv(1 << 20)
        assert data, "server closed the connection"
        commands, _ = self.circuit.recv(data)
        for c in commands:
            self.circuit.process_command(c)
            self.commands.append(c)

    def channel(self, name: str) -> ca.ClientChannel:
        chan = ca.ClientChannel(name, self.circuit)
        self.send(chan.create())
        self.until(lambda c: isinstance(c, ca.CreateChanResponse) and c.cid == chan.cid)
        return chan

    def close(self) -> None:
        self.sock.close()


async def _in_thread(fn, *args):
    return await asyncio.to_thread(fn, *args)


@contextlib.asynccontextmanager
async def _serving(db: PVDatabase, port_pool, *client_args):
    """``db`` served by the IOC's CA adapter on its own port, and a :class:`RawClient` connected to it."""
    server = CaServer(db, port=port_pool.take().ca, interfaces=["127.0.0.1"])
    await server.start()
    try:
        client = await _in_thread(RawClient, server.port, *client_args)
        try:
            yield server, client
        finally:
            client.close()
    finally:
        await server.stop()


async def test_a_client_that_does_not_read_costs_bounded_memory_and_its_drops_are_counted(port_pool, prefix):
    """A monitor of 1 MB frames posted 60 times to a client that stops reading: the server holds at most one
    frame for it beyond its transport's high-water mark, counts every update it dropped, stops reading the
    client's requests meanwhile, and, once the client reads again, delivers the newest frame last.
    (caproto kept every subscription's last 1000 updates: a frame per post; seen failing then: 30 MB kept.)"""
    db = PVDatabase()
    n = 1 << 17  # 1 MB of float64
    pv = db.add(PVSpec(name=f"{prefix}BIG", kind=Kind.WAVEFORM, shape=(n,), initial=0.0))
    pv.post(np.zeros(n), time.time())
    async with _serving(db, port_pool, "slow", 1 << 16) as (server, client):
        chan = await _in_thread(client.channel, f"{prefix}BIG")
        sub = chan.subscribe(data_type=ca.ChannelType.DOUBLE, data_count=n)
        await _in_thread(client.send, sub)
        while server.subscriptions() == 0:
            await asyncio.sleep(0.01)
        (circuit,) = server.circuits
        posts = 60
        worst = 0
        for k in range(1, posts + 1):
            pv.post(np.full(n, float(k)), time.time())
            await asyncio.sleep(0.002)
            worst = max(worst, circuit.transport.get_write_buffer_size())
            assert len(circuit.held) <= 1  # one subscription: at most its newest update waits
        assert circuit.write_paused and server.dropped_updates > 0
        assert worst <= ca_server_core.HIGH_WATER + 8 * n + 64  # the buffer never grows by a frame per post

        def read_all():
            while True:
                values = [float(c.data[0]) for c in client.commands
                          if isinstance(c, ca.EventAddResponse) and c.subscriptionid == sub.subscriptionid]
                if values and values[-1] == float(posts):
                    return values
                client.read_once()

        seen = await _in_thread(read_all)
        assert seen[-1] == float(posts) and seen == sorted(seen)  # in order, the newest last
        assert len(seen) - 1 + server.dropped_updates == posts  # every post delivered or counted as dropped


async def test_events_off_holds_the_newest_update_until_events_on(port_pool, prefix):
    db = PVDatabase()
    pv = db.add(PVSpec(f"{prefix}V", Kind.AI, mdel=-1))
    pv.post(0.0, time.time())
    async with _serving(db, port_pool) as (server, client):
        chan = await _in_thread(client.channel, f"{prefix}V")
        sub = chan.subscribe(data_type=ca.ChannelType.TIME_DOUBLE)
        await _in_thread(client.send, sub)
        await _in_thread(client.until, lambda c: isinstance(c, ca.EventAddResponse))
        await _in_thread(client.send, ca.EventsOffRequest())
        await _in_thread(client.send, ca.EchoRequest())  # once answered, EVENTS_OFF has been handled
        await _in_thread(client.until, lambda c: isinstance(c, ca.EchoResponse))
        for k in range(1, 11):
            pv.post(float(k), time.time())
        await _in_thread(client.send, ca.EchoRequest())
        client.commands.clear()
        await _in_thread(client.until, lambda c: isinstance(c, ca.EchoResponse))
        assert not any(isinstance(c, ca.EventAddResponse) for c in client.commands)  # nothing before the echo
        await _in_thread(client.send, ca.EventsOnRequest())
        update = await _in_thread(client.until, lambda c: isinstance(c, ca.EventAddResponse))
        assert update.data[0] == 10.0 and server.dropped_updates == 9


class _OnlyAlice:
    def can_read(self, asg, user, host):
        return True

    def can_write(self, asg, user, host):
        return user == "alice"


async def test_access_rights_follow_the_client_name(port_pool, prefix):
    db = PVDatabase(access=_OnlyAlice())
    db.add(PVSpec(f"{prefix}W", Kind.AO, writable=True), put_handler=lambda pv, v, c: pv.post(v, time.time()))
    async with _serving(db, port_pool, "mallory") as (server, client):
        chan = await _in_thread(client.channel, f"{prefix}W")
        assert chan.access_rights == ca.AccessRights.READ
        write = chan.write([1.0], ioid=1, notify=True)
        await _in_thread(client.send, write)
        refused = await _in_thread(client.until, lambda c: isinstance(c, ca.WriteNotifyResponse))
        assert refused.status.name == "ECA_NOWTACCESS"
        await _in_thread(client.send, ca.ClientNameRequest("alice"))
        await _in_thread(client.until, lambda c: isinstance(c, ca.AccessRightsResponse)
                         and c.access_rights == ca.AccessRights.READ | ca.AccessRights.WRITE)
        await _in_thread(client.send, chan.write([2.0], ioid=2, notify=True))
        done = await _in_thread(client.until, lambda c: isinstance(c, ca.WriteNotifyResponse) and c.ioid == 2)
        assert done.status.success and db[f"{prefix}W"].value == 2.0


async def test_a_write_that_completes_later_is_answered_when_done(port_pool, prefix):
    """A put whose handler returns an awaitable (a PROMOTE that loads a model) is answered when it is done,
    while the circuit keeps serving; one refused on the way gets ECA_PUTFAIL."""
    from ioc.core.pvmodel import PutRejected

    gate = asyncio.get_running_loop().create_future()

    async def slow(pv, value):
        await gate
        if value < 0:
            raise PutRejected("negative")
        pv.post(value, time.time())

    db = PVDatabase()
    db.add(PVSpec(f"{prefix}SLOW", Kind.AO, writable=True), put_handler=lambda pv, v, c: slow(pv, v))
    db.add(PVSpec(f"{prefix}R", Kind.AI)).post(7.0, time.time())
    async with _serving(db, port_pool) as (server, client):
        chan = await _in_thread(client.channel, f"{prefix}SLOW")
        other = await _in_thread(client.channel, f"{prefix}R")
        await _in_thread(client.send, chan.write([3.0], ioid=10, notify=True))
        await _in_thread(client.send, chan.write([-1.0], ioid=11, notify=True))
        await _in_thread(client.send, other.read(ioid=12))
        read = await _in_thread(client.until, lambda c: isinstance(c, ca.ReadNotifyResponse))
        assert read.data[0] == 7.0  # served while both writes wait
        assert not any(isinstance(c, ca.WriteNotifyResponse) for c in client.commands)
        gate.set_result(None)
        ok = await _in_thread(client.until, lambda c: isinstance(c, ca.WriteNotifyResponse) and c.ioid == 10)
        bad = await _in_thread(client.until, lambda c: isinstance(c, ca.WriteNotifyResponse) and c.ioid == 11)
        assert ok.status.success and bad.status.name == "ECA_PUTFAIL"
        assert db[f"{prefix}SLOW"].value == 3.0


# ----------------------------------------------------------------------------- UDP: search and beacons

async def test_search_answers_names_it_serves_and_not_found_only_when_asked(port_pool, prefix):
    db = PVDatabase()
    db.add(PVSpec(f"{prefix}HERE", Kind.AI))
    server = CaServer(db, port=port_pool.take().ca, interfaces=["127.0.0.1"])
    await server.start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(5)
    try:
        b = ca.Broadcaster(ca.CLIENT)
        request = b.send(ca.VersionRequest(0, 13), ca.SearchRequest(f"{prefix}HERE", 1, 13),
                         ca.SearchRequest(f"{prefix}ELSEWHERE", 2, 13, reply=ca.NO_REPLY),
                         ca.SearchRequest(f"{prefix}NOWHERE", 3, 13, reply=ca.DO_REPLY),
                         ca.SearchRequest(f"{prefix}HERE.EGU", 4, 13))
        udp.sendto(request, ("127.0.0.1", server.requested_port))
        data, _ = await asyncio.to_thread(udp.recvfrom, 4096)
        replies = read_datagram(data, ("127.0.0.1", server.requested_port), ca.SERVER)
        found = {r.cid: r.port for r in replies if isinstance(r, ca.SearchResponse)}
        assert found == {1: server.port, 4: server.port}
        assert [r.cid for r in replies if isinstance(r, ca.NotFoundResponse)] == [3]
    finally:
        udp.close()
        await server.stop()


async def test_beacons_go_to_the_configured_addresses(port_pool, prefix, monkeypatch):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    monkeypatch.setenv("EPICS_CAS_BEACON_ADDR_LIST", f"127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
    db = PVDatabase()
    db.add(PVSpec(f"{prefix}B", Kind.AI))
    server = CaServer(db, port=port_pool.take().ca, interfaces=["127.0.0.1"])
    await server.start()
    try:
        beacons = []
        for _ in range(2):
            data, _ = await asyncio.to_thread(listener.recvfrom, 64)
            beacons += read_datagram(data, ("127.0.0.1", 0), ca.SERVER)
        assert all(isinstance(b, ca.Beacon) and b.server_port == server.port for b in beacons)
        assert beacons[1].beacon_id == beacons[0].beacon_id + 1
    finally:
        listener.close()
        await server.stop()


# ----------------------------------------------------------------------------- alarm acknowledgement

async def test_the_update_that_raises_an_alarm_carries_the_severity_to_acknowledge(port_pool, prefix):
    """DBR_STSACK_STRING: the monitor update of the post that raises MAJOR says ACKS = MAJOR, and so do reads
    after it (recGblResetAlarms sets ACKS before the record posts), until an operator acknowledges it
    (DBR_PUT_ACKS)."""
    from ioc.core.pvmodel import AlarmLimits

    db = PVDatabase()
    pv = db.add(PVSpec(f"{prefix}T", Kind.AO, writable=True, mdel=-1, alarm=AlarmLimits(hihi=10.0)),
                put_handler=lambda pv, v, c: pv.post(v, time.time()))  # acknowledging takes write access
    pv.post(1.0, time.time())
    async with _serving(db, port_pool) as (server, client):
        chan = await _in_thread(client.channel, f"{prefix}T")
        sub = chan.subscribe(data_type=ca.ChannelType.STSACK_STRING)
        await _in_thread(client.send, sub)
        first = await _in_thread(client.until, lambda c: isinstance(c, ca.EventAddResponse))
        assert first.metadata.acks == 0
        client.commands.clear()
        pv.post(20.0, time.time())  # HIHI: MAJOR
        update = await _in_thread(client.until, lambda c: isinstance(c, ca.EventAddResponse))
        assert update.metadata.severity == 2 and update.metadata.acks == 2
        await _in_thread(client.send, chan.read(data_type=ca.ChannelType.STSACK_STRING, ioid=5))
        read = await _in_thread(client.until, lambda c: isinstance(c, ca.ReadNotifyResponse) and c.ioid == 5)
        assert read.metadata.acks == 2
        await _in_thread(client.send, chan.write([2], data_type=ca.ChannelType.PUT_ACKS, ioid=6, notify=True))
        done = await _in_thread(client.until, lambda c: isinstance(c, ca.WriteNotifyResponse) and c.ioid == 6)
        assert done.status.success
        await _in_thread(client.send, chan.read(data_type=ca.ChannelType.STSACK_STRING, ioid=7))
        read = await _in_thread(client.until, lambda c: isinstance(c, ca.ReadNotifyResponse) and c.ioid == 7)
        assert read.metadata.acks == 0 and read.metadata.severity == 2  # acknowledged, still in alarm
