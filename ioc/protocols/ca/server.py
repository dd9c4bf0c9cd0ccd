"""A Channel Access server on asyncio: UDP name search, beacons, one ``asyncio.Protocol`` per TCP circuit.

Why our own: caproto's server spends most of a put->monitor round trip in its own Python layers
(command objects, per-message queues and tasks, a stream reader per circuit): ~75 % of the IOC's
Python time on the CA put path as ``python -m bench.profile`` attributed it then (docs/explanation/
architecture.md, "Our Channel Access server"). This server does
the same protocol work directly on the bytes (:mod:`ioc.protocols.ca.wire`):

* a circuit is a ``Protocol``: ``data_received`` cuts the bytes into messages and dispatches each
  through a table; no task, queue or future per request;
* a monitor update is encoded once per post per (DBR type, count) and shared by every subscriber
  (:meth:`Channel.encoded`); only the 16-byte header differs;
* replies and updates are appended to the circuit's list and written in one ``send`` per circuit when
  the request (or the loop callback that posted) is done: a cycle's outputs leave together;
* sends are bounded: when a client does not read (the transport's buffer passes its high-water mark)
  or asks for no events (EVENTS_OFF), updates are held per subscription, the newest replacing the
  older (counted in :attr:`Server.dropped`), and requests from that client are not read until it
  catches up, as EPICS' rsrv does with its event queue.

What a served name is and does (value, metadata, access rights, writes) is the :class:`Channel`
subclass's business (:mod:`ioc.protocols.ca_server`); this module knows only the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ioc.protocols.ca import wire
from ioc.protocols.ca.wire import HEADER, Message

log = logging.getLogger("mlioc.ca")

HIGH_WATER = 4 << 20  # bytes a circuit's transport may hold unsent before updates are held back
LOW_WATER = 1 << 20
CACHE_ENTRIES = 16  # (DBR type, count) encodings kept per channel between two changes


class CaRefused(Exception):
    """A write the channel refuses; ``status`` is the ECA code the client gets, the text goes to the log."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


@dataclass(slots=True)
class Peer:
    """Who is on a circuit. Access rules match ``host``, the address the connection comes from, never the
    host name a client claims (anyone can claim any name), as pvxs does over PVA."""

    host: str
    port: int
    user: str = ""
    claimed_host: str = ""


class Channel:
    """One name the server answers for. Subclasses say what it holds and what a write does."""

    __slots__ = ("_cache", "_cache_gen", "name", "native", "nelm", "subs")

    def __init__(self, name: str, native: int, nelm: int = 1):
        self.name = name
        self.native = native  # wire.STRING ... wire.DOUBLE
        self.nelm = nelm  # the element count announced on connection (NELM)
        self.subs: list[Subscription] = []
        self._cache: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._cache_gen = -1

    # ---- what a subclass provides
    def state(self) -> tuple[Any, int, int, float]:
        """(value, severity, status, timestamp); an array value is a flat numpy array."""
        raise NotImplementedError

    def meta(self) -> wire.Meta:
        return wire.NO_META

    def generation(self) -> int:
        """A number that changes whenever :meth:`state` or :meth:`meta` may have changed."""
        raise NotImplementedError

    def length(self) -> int:
        """Elements the value holds now (what a request for count 0 gets)."""
        return self.nelm

    def ack(self) -> tuple[int, int]:
        """(ACKT, ACKS) for DBR_STSACK_STRING."""
        return 0, 0

    def rights(self, peer: Peer) -> int:
        return wire.ACCESS_READ

    def write(self, dbr_type: int, count: int, payload: bytes, peer: Peer) -> Awaitable[Any] | None:
        """Apply a client's write; may return an awaitable that completes it. Raises CaRefused."""
        raise CaRefused(wire.ECA_NOWTACCESS, f"{self.name} is read-only")

    # ---- provided
    def encoded(self, dbr_type: int, count: int) -> tuple[bytes, int]:
        """The payload of a read/update as ``dbr_type`` with ``count`` elements (0: as many as it holds now),
        and the count it carries; encoded once per change and shared by every reader."""
        gen = self.generation()
        cache = self._cache
        if gen != self._cache_gen:
            cache.clear()
            self._cache_gen = gen
        key = (dbr_type, count)
        hit = cache.get(key)
        if hit is None:
            n = count or self.length()
            value, severity, status, timestamp = self.state()
            hit = wire.encode(self.native, dbr_type, n, value, severity, status, timestamp, self.meta(),
                              self.ack()), n
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[key] = hit
        return hit


class Subscription:
    __slots__ = ("circuit", "count", "dbr_type", "mask", "ref", "subid")

    def __init__(self, circuit: Circuit, ref: _Ref, subid: int, dbr_type: int, count: int, mask: int):
        self.circuit = circuit
        self.ref = ref
        self.subid = subid
        self.dbr_type = dbr_type
        self.count = count
        self.mask = mask


class _Ref:
    """A channel as one circuit knows it: the client's id, ours, its access rights, its subscriptions."""

    __slots__ = ("channel", "cid", "rights", "sid", "subs")

    def __init__(self, channel: Channel, cid: int, sid: int, rights: int):
        self.channel = channel
        self.cid = cid
        self.sid = sid
        self.rights = rights
        self.subs: dict[int, Subscription] = {}


# ------------------------------------------------------------------------------------------ configuration

def _env_list(env: Mapping[str, str], key: str) -> list[str]:
    return env.get(key, "").split()


def _yes(env: Mapping[str, str], key: str, default: str = "YES") -> bool:
    return env.get(key, default).strip().lower() == "yes"


def _env_number(env: Mapping[str, str], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        value = env.get(key, "").strip()
        if value:
            try:
                return float(value)
            except ValueError:
                log.warning("ignoring %s=%r: not a number", key, value)
    return default


@dataclass(frozen=True)
class Config:
    """Where the server listens and beacons, from the EPICS environment unless given."""

    port: int = 5064  # UDP search port, and the TCP port tried first
    interfaces: tuple[str, ...] = ("0.0.0.0",)
    beacon_addresses: tuple[tuple[str, int], ...] = ()
    beacon_period: float = 15.0
    ignore: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_env(cls, port: int | None = None, interfaces: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> Config:
        """EPICS_CAS_SERVER_PORT / EPICS_CA_SERVER_PORT, EPICS_CAS_INTF_ADDR_LIST, EPICS_CAS_BEACON_ADDR_LIST,
        EPICS_CAS_AUTO_BEACON_ADDR_LIST (broadcast too, unless NO and a list is given), EPICS_CAS_BEACON_PORT /
        EPICS_CA_REPEATER_PORT, EPICS_CAS_BEACON_PERIOD / EPICS_CA_BEACON_PERIOD, EPICS_CAS_IGNORE_ADDR_LIST."""
        env = os.environ if env is None else env
        if port is None:
            port = int(_env_number(env, ("EPICS_CAS_SERVER_PORT", "EPICS_CA_SERVER_PORT"), 5064))
        if not interfaces:
            interfaces = [a.split(":")[0] for a in _env_list(env, "EPICS_CAS_INTF_ADDR_LIST")] or ["0.0.0.0"]
        beacon_port = int(_env_number(env, ("EPICS_CAS_BEACON_PORT", "EPICS_CA_REPEATER_PORT"), 5065))
        listed = _env_list(env, "EPICS_CAS_BEACON_ADDR_LIST")
        if not listed or _yes(env, "EPICS_CAS_AUTO_BEACON_ADDR_LIST"):
            listed.append("255.255.255.255")
        beacons = []
        for item in dict.fromkeys(listed):
            host, _, p = item.partition(":")
            beacons.append((host, int(p) if p.isdigit() else beacon_port))
        period = _env_number(env, ("EPICS_CAS_BEACON_PERIOD", "EPICS_CA_BEACON_PERIOD"), 15.0)
        ignore = frozenset(a.split(":")[0] for a in _env_list(env, "EPICS_CAS_IGNORE_ADDR_LIST"))
        return cls(port, tuple(dict.fromkeys(interfaces)), tuple(beacons), max(period, 0.1), ignore)


# ------------------------------------------------------------------------------------------ the server

def bind_and_listen(address: str, port: int) -> socket.socket:
    """A TCP socket bound *and listening* on (address, port): a port another server took fails here, at
    once (binding alone succeeds with SO_REUSEADDR until someone listens)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((address, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # several servers share a host's search port
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setblocking(False)
    return sock


class Server:
    """Serves ``channels`` (name -> :class:`Channel`) once :meth:`start` returns."""

    def __init__(self, channels: Mapping[str, Channel], config: Config):
        self.channels = channels
        self.config = config
        self.port = 0  # the TCP port really listened on
        self.search_port = config.port  # the UDP port name searches are answered on
        self.circuits: set[Circuit] = set()
        self.dropped = 0  # monitor updates replaced by a newer one before a slow client could take them
        biggest = max((c.nelm for c in channels.values()), default=1)
        self.max_payload = max(1 << 14, biggest * 8 + 1024)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tcp: list[asyncio.base_events.Server] = []
        self._udp: list[asyncio.BaseTransport] = []
        self._beacon_task: asyncio.Task | None = None
        self.pending: set[asyncio.Future] = set()  # writes that complete later
        self._dirty: list[Circuit] = []
        self._flush_handle: asyncio.Handle | None = None
        self.batch = 0  # >0 while requests are dispatched: their replies are flushed at the end

    # ---- start / stop
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        socks = self._bind_tcp()
        try:
            for sock in socks:
                self._tcp.append(await loop.create_server(lambda: Circuit(self), sock=sock))
            # Port 0 (EPICS_CA_SERVER_PORT=0): the search listens on the TCP port the system chose, so
            # a client given HOST:PORT finds the server (a random UDP port of its own would hide it).
            self.search_port = self.config.port or self.port
            for interface in self.config.interfaces:
                udp = _udp_socket()
                try:
                    udp.bind((interface, self.search_port))
                except OSError:
                    udp.close()
                    raise
                transport, _ = await loop.create_datagram_endpoint(lambda: _SearchProtocol(self), sock=udp)
                self._udp.append(transport)
        except BaseException:
            await self.stop()
            raise
        self._beacon_task = loop.create_task(self._beacons(), name="ca-beacons")

    def _bind_tcp(self) -> list[socket.socket]:
        """The configured port on every interface, else the same random port on all of them (port 0: the
        one the system chose for the first interface)."""
        last: OSError | None = None
        ports = [self.config.port] + [random.randint(49152, 65535) for _ in range(100)]
        for port in ports:
            socks: list[socket.socket] = []
            try:
                for interface in self.config.interfaces:
                    socks.append(bind_and_listen(interface, socks[0].getsockname()[1] if socks else port))
            except OSError as exc:
                last = exc
                for s in socks:
                    s.close()
                continue
            self.port = socks[0].getsockname()[1]
            return socks
        raise OSError(f"no free TCP port for the CA server: {last}")

    async def stop(self) -> None:
        if self._beacon_task is not None:
            self._beacon_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beacon_task
            self._beacon_task = None
        for tcp in self._tcp:
            tcp.close()
        self._tcp.clear()
        for udp in self._udp:
            udp.close()
        self._udp.clear()
        self.flush()
        for circuit in list(self.circuits):
            circuit.close()

    # ---- sending
    def post(self, channel: Channel, mask: int) -> None:
        """A change of ``channel`` with these DBE bits: an update to every subscription that asked for one."""
        for sub in channel.subs:
            if sub.mask & mask and sub.ref.rights & wire.ACCESS_READ:
                payload, n = channel.encoded(sub.dbr_type, sub.count)
                sub.circuit.send_update(sub, payload, n)

    def mark_dirty(self, circuit: Circuit) -> None:
        self._dirty.append(circuit)
        if not self.batch and self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """One send per circuit for everything queued since the last flush."""
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for circuit in dirty:
            circuit.flush()

    def keep(self, future: asyncio.Future) -> None:
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)

    # ---- beacons
    async def _beacons(self) -> None:
        """RSRV_IS_UP to every beacon address: every 20 ms at first, doubling up to EPICS_CAS_BEACON_PERIOD."""
        socks = []
        for address in self.config.beacon_addresses:
            sock = _udp_socket()
            try:
                sock.connect(address)  # connected: a refused beacon (no repeater) shows up as an error
            except OSError as exc:
                log.warning("cannot send CA beacons to %s:%d: %s", *address, exc)
                sock.close()
                continue
            socks.append((address, sock))
        first = self.config.interfaces[0]
        origin = 0 if first == "0.0.0.0" else int.from_bytes(socket.inet_aton(first), "big")
        period, sequence, warned = 0.02, 0, False
        try:
            while True:
                message = wire.beacon(self.port, sequence, origin)
                for address, sock in socks:
                    try:
                        sock.send(message)
                    except OSError as exc:
                        # Typically ECONNREFUSED: no CA repeater listens. Clients still connect; they only
                        # lose beacon-driven fast reconnects. Say so once, not once per beacon.
                        (log.debug if warned else log.warning)(
                            "cannot send CA beacon to %s:%d (%s); is a CA repeater running?", *address, exc)
                        warned = True
                sequence = (sequence + 1) & 0xFFFFFFFF
                period = min(self.config.beacon_period, period * 2)
                await asyncio.sleep(period)
        finally:
            for _, sock in socks:
                sock.close()

    # ---- search
    def search_replies(self, messages: list[Message]) -> bytes:
        """Replies to the SEARCH requests among ``messages`` (NOT_FOUND only where the client asked)."""
        out = []
        channels = self.channels
        for m in messages:
            if m.command != wire.SEARCH:
                continue
            if wire.payload_text(m.payload) in channels:
                out.append(wire.search_reply(self.port, m.p2))
            elif m.data_type == wire.DO_REPLY:
                out.append(wire.not_found_reply(m.data_type, m.data_count, m.p2))
        return b"".join(out)


class _SearchProtocol(asyncio.DatagramProtocol):
    """UDP name search: one reply datagram (VERSION, then a reply per name found) per request datagram."""

    def __init__(self, server: Server):
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        server = self.server
        if addr[0] in server.config.ignore or self.transport is None:
            return
        try:
            messages = wire.Framer(1 << 16).feed(data)
        except wire.FramingError:
            return
        replies = server.search_replies(messages)
        if replies:
            self.transport.sendto(wire.version_message() + replies, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable after a reply
        log.debug("CA search socket: %s", exc)


# ------------------------------------------------------------------------------------------ circuits

_NO_ACCESS_TEXT = "no read access"


class Circuit(asyncio.Protocol):
    """One client's TCP connection."""

    def __init__(self, server: Server):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = Peer("", 0)
        self.framer = wire.Framer(server.max_payload)
        self.refs: dict[int, _Ref] = {}
        self.next_sid = 1
        self.out: list[bytes] = []
        self.held: dict[Subscription, tuple[bytes, bytes]] = {}  # updates waiting for a slow client
        self.write_paused = False
        self.events_off = False
        self.dropped = 0
        self.closed = False
        self.handlers: list[Callable[[Message], None] | None] = [None] * wire.N_COMMANDS
        for command, handler in (
            (wire.VERSION, self._version), (wire.EVENT_ADD, self._event_add), (wire.EVENT_CANCEL, self._event_cancel),
            (wire.READ, self._read), (wire.WRITE, self._write), (wire.SEARCH, self._search),
            (wire.EVENTS_OFF, self._events_off), (wire.EVENTS_ON, self._events_on),
            (wire.CLEAR_CHANNEL, self._clear_channel), (wire.READ_NOTIFY, self._read),
            (wire.CREATE_CHAN, self._create_chan), (wire.WRITE_NOTIFY, self._write),
            (wire.CLIENT_NAME, self._client_name), (wire.HOST_NAME, self._host_name), (wire.ECHO, self._echo),
        ):
            self.handlers[command] = handler

    def __repr__(self) -> str:
        return f"<CA circuit {self.peer.user}@{self.peer.host}:{self.peer.port}>"

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # a put answered with two messages must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = Peer(peer[0], peer[1])
        self.server.circuits.add(self)
        log.debug("CA client connected from %s:%d", peer[0], peer[1])

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except wire.FramingError as exc:
            log.warning("CA client %s:%d sent %s: disconnected", self.peer.host, self.peer.port, exc)
            self.close()
            return
        server = self.server
        server.batch += 1
        handlers = self.handlers
        try:
            for m in messages:
                handler = handlers[m.command] if m.command < wire.N_COMMANDS else None
                if handler is None:
                    continue  # READ_SYNC, REPEATER_*, obsolete or unknown: nothing to answer
                try:
                    handler(m)
                except Exception:  # a bug here must cost one request, not the client's connection
                    log.exception("CA request %d from %s:%d failed", m.command, self.peer.host, self.peer.port)
                    self.send(wire.error_message(m, 0, wire.ECA_INTERNAL, "internal server error"))
        finally:
            server.batch -= 1
            if not server.batch:
                server.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for ref in self.refs.values():
            self._drop_subs(ref)
        self.refs.clear()
        self.held.clear()
        self.out.clear()
        self.server.circuits.discard(self)
        if self.dropped:
            log.info("CA client %s:%d left; %d monitor updates were dropped for it (too slow)", self.peer.host,
                     self.peer.port, self.dropped)
        log.debug("CA client %s:%d disconnected%s", self.peer.host, self.peer.port, f" ({exc})" if exc else "")

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # no more requests until it reads what it asked for

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        self._release()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush()
            self.transport.close()

    # ---- sending
    def queued_bytes(self) -> int:
        """What this client has not taken yet: the transport's buffer and the updates held for it."""
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return buffered + sum(len(head) + len(payload) for head, payload in self.held.values())

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.out:
            self.server.mark_dirty(self)
        self.out.append(data)

    def send_update(self, sub: Subscription, payload: bytes, count: int) -> None:
        size = len(payload)
        if size < 0xFFFF and count < 0xFFFF:
            head = HEADER.pack(1, size, sub.dbr_type, count, 1, sub.subid)  # EVENT_ADD, ECA_NORMAL
        else:
            head = wire.header(wire.EVENT_ADD, size, sub.dbr_type, count, wire.ECA_NORMAL, sub.subid)
        if self.closed:
            return
        if self.write_paused or self.events_off:
            self._hold(sub, head, payload)
            return
        out = self.out
        if not out:
            self.server.mark_dirty(self)
        out.append(head)
        out.append(payload)

    def _hold(self, sub: Subscription, head: bytes, payload: bytes) -> None:
        """Keep the newest update of each subscription while the client cannot take them; count the rest."""
        if self.closed:
            return
        held = self.held
        if held.pop(sub, None) is not None:
            if not self.dropped:
                log.warning("CA client %s:%d is too slow for its monitors: newest update per channel kept, older "
                            "ones dropped (counted)", self.peer.host, self.peer.port)
            self.dropped += 1
            self.server.dropped += 1
        held[sub] = (head, payload)

    def _release(self) -> None:
        if self.write_paused or self.events_off or not self.held:
            return
        held, self.held = self.held, {}
        for head, payload in held.values():
            self.send(head)
            self.out.append(payload)
        self.server.flush()

    def flush(self) -> None:
        out = self.out
        if out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        out.clear()

    # ---- requests
    def _version(self, m: Message) -> None:
        self.send(wire.version_message())

    def _client_name(self, m: Message) -> None:
        self.peer.user = wire.payload_text(m.payload)
        self._refresh_rights()

    def _host_name(self, m: Message) -> None:
        self.peer.claimed_host = wire.payload_text(m.payload)  # for the log only: the address decides access
        self._refresh_rights()

    def _refresh_rights(self) -> None:
        """Rights follow who the client says it is (CLIENT_NAME): tell it, and (re)send what it may now read."""
        for ref in self.refs.values():
            rights = ref.channel.rights(self.peer)
            if rights != ref.rights:
                ref.rights = rights
                self.send(HEADER.pack(wire.ACCESS_RIGHTS, 0, 0, 0, ref.cid, rights))
                for sub in ref.subs.values():
                    self._initial_update(sub)

    def _create_chan(self, m: Message) -> None:
        name = wire.payload_text(m.payload)
        channel = self.server.channels.get(name)
        if channel is None:
            self.send(HEADER.pack(wire.CREATE_CH_FAIL, 0, 0, 0, m.p1, 0))
            return
        sid = self.next_sid
        self.next_sid += 1
        ref = _Ref(channel, m.p1, sid, channel.rights(self.peer))
        self.refs[sid] = ref
        self.send(HEADER.pack(wire.ACCESS_RIGHTS, 0, 0, 0, m.p1, ref.rights)
                  + wire.header(wire.CREATE_CHAN, 0, channel.native, channel.nelm, m.p1, sid))

    def _ref(self, m: Message, sid: int) -> _Ref | None:
        ref = self.refs.get(sid)
        if ref is None:
            self.send(wire.error_message(m, 0, wire.ECA_BADCHID, f"no channel with server id {sid}"))
        return ref

    def _readable_ref(self, m: Message) -> _Ref | None:
        """The channel a READ / EVENT_ADD names, if it exists and its DBR type can be read (else the error)."""
        ref = self._ref(m, m.p1)
        if ref is not None and not wire.readable(m.data_type):
            self.send(wire.error_message(m, ref.cid, wire.ECA_BADTYPE, f"DBR type {m.data_type} cannot be read"))
            return None
        return ref

    def _read(self, m: Message) -> None:
        """READ_NOTIFY (and the old READ): one encoded value, or the reason it cannot be read."""
        ref = self._readable_ref(m)
        if ref is None:
            return
        count = min(m.data_count, ref.channel.nelm)
        command = m.command
        status_or_sid = wire.ECA_NORMAL if command == wire.READ_NOTIFY else ref.sid
        if not ref.rights & wire.ACCESS_READ:
            payload, n = self._zeros(ref, m.data_type, count), count or ref.channel.length()
            status_or_sid = wire.ECA_NORDACCESS if command == wire.READ_NOTIFY else status_or_sid
        else:
            payload, n = ref.channel.encoded(m.data_type, count)
        self.send(wire.header(command, len(payload), m.data_type, n, status_or_sid, m.p2) + payload)

    @staticmethod
    def _zeros(ref: _Ref, dbr_type: int, count: int) -> bytes:
        """What a client without read access gets in place of the value (EPICS: zero-filled)."""
        n = count or ref.channel.length()
        return bytes(len(wire.encode(ref.channel.native, dbr_type, n, 0 if ref.channel.native else "", 0, 0, 0.0)))

    def _event_add(self, m: Message) -> None:
        ref = self._readable_ref(m)
        if ref is None:
            return
        mask = wire.event_mask(m.payload) or (wire.EVENT_VALUE | wire.EVENT_ALARM)
        old = ref.subs.pop(m.p2, None)
        if old is not None:
            self._drop_sub(old)
        sub = Subscription(self, ref, m.p2, m.data_type, min(m.data_count, ref.channel.nelm), mask)
        ref.subs[m.p2] = sub
        ref.channel.subs.append(sub)
        self._initial_update(sub)

    def _initial_update(self, sub: Subscription) -> None:
        ref = sub.ref
        if ref.rights & wire.ACCESS_READ:
            payload, n = ref.channel.encoded(sub.dbr_type, sub.count)
            self.send_update(sub, payload, n)
        else:
            n = sub.count or ref.channel.length()
            payload = self._zeros(ref, sub.dbr_type, sub.count)
            self.send(wire.header(wire.EVENT_ADD, len(payload), sub.dbr_type, n, wire.ECA_NORDACCESS, sub.subid)
                      + payload)

    def _drop_sub(self, sub: Subscription) -> None:
        try:
            sub.ref.channel.subs.remove(sub)
        except ValueError:
            pass
        self.held.pop(sub, None)

    def _drop_subs(self, ref: _Ref) -> None:
        for sub in ref.subs.values():
            self._drop_sub(sub)
        ref.subs.clear()

    def _event_cancel(self, m: Message) -> None:
        ref = self.refs.get(m.p1)
        sub = ref.subs.pop(m.p2, None) if ref is not None else None
        if sub is not None:
            self._drop_sub(sub)
        # The reply is an EVENT_ADD without payload carrying the subscription id.
        self.send(HEADER.pack(wire.EVENT_ADD, 0, m.data_type, m.data_count, m.p1, m.p2))

    def _clear_channel(self, m: Message) -> None:
        ref = self.refs.pop(m.p1, None)
        if ref is not None:  # its monitors end with it (rsrv does so too)
            self._drop_subs(ref)
        self.send(HEADER.pack(wire.CLEAR_CHANNEL, 0, 0, 0, m.p1, m.p2))

    def _echo(self, m: Message) -> None:
        self.send(HEADER.pack(wire.ECHO, 0, 0, 0, 0, 0))

    def _events_off(self, m: Message) -> None:
        self.events_off = True

    def _events_on(self, m: Message) -> None:
        self.events_off = False
        self._release()

    def _search(self, m: Message) -> None:  # a search over TCP (a CA name server, EPICS_CA_NAME_SERVERS)
        replies = self.server.search_replies([m])
        if replies:
            self.send(replies)

    def _write(self, m: Message) -> None:
        """WRITE (answered only when it fails) and WRITE_NOTIFY (always answered, when the write is done)."""
        ref = self._ref(m, m.p1)
        if ref is None:
            return
        notify = m.command == wire.WRITE_NOTIFY
        if not ref.rights & wire.ACCESS_WRITE:
            self._write_done(m, ref, notify, wire.ECA_NOWTACCESS, "no write access")
            return
        try:
            result = ref.channel.write(m.data_type, m.data_count, m.payload, self.peer)
        except CaRefused as exc:
            self._write_done(m, ref, notify, exc.status, str(exc))
            return
        except wire.BadPut as exc:
            self._write_done(m, ref, notify, exc.status, str(exc))
            return
        if result is None:
            self._write_done(m, ref, notify, wire.ECA_NORMAL, "")
            return
        future = asyncio.ensure_future(result)
        self.server.keep(future)
        future.add_done_callback(lambda f: self._write_finished(f, m, ref, notify))

    def _write_finished(self, future: asyncio.Future, m: Message, ref: _Ref, notify: bool) -> None:
        status, text = wire.ECA_NORMAL, ""
        if future.cancelled():
            status, text = wire.ECA_PUTFAIL, "cancelled"
        elif isinstance(exc := future.exception(), CaRefused):
            status, text = exc.status, str(exc)
        elif exc is not None:
            status, text = wire.ECA_PUTFAIL, f"{type(exc).__name__}: {exc}"
        self._write_done(m, ref, notify, status, text)
        if not self.server.batch:
            self.server.flush()

    def _write_done(self, m: Message, ref: _Ref, notify: bool, status: int, text: str) -> None:
        if notify:
            self.send(wire.header(wire.WRITE_NOTIFY, 0, m.data_type, m.data_count, status, m.p2))
        elif status != wire.ECA_NORMAL:
            self.send(wire.error_message(m, ref.cid, status, text))
