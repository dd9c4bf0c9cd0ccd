"""Small, isolated fixes for caproto 1.3.0's asyncio server (see docs/explanation/architecture.md, "caproto traps").

Each fix was measured on loopback (FIELD-NOTES) and is tested in ``tests/integration/test_caproto_fixes.py``:

1. **TCP_NODELAY** is never set on accepted sockets (they are created with proto=0, so asyncio does
   not set it): a put that causes two server messages then waits ~22 ms for Nagle + delayed ACK.
   :class:`FastContext` sets it on every accepted connection.
2. **Monitor batching**: the per-circuit send loop waits up to 10 ms for more updates before sending
   (``HIGH_LOAD_TIMEOUT``). :class:`FastCircuit` sends what is queued *now* and never waits: under
   load, updates still leave in batches (everything queued since the last send), with no added latency.
3. **"deque mutated during iteration"** in ``_subscription_queue_iteration`` when clients subscribe
   or leave while updates are being fanned out stops the whole server. We iterate over a copy.
4. **Port binding race**: two servers started at the same instant can both bind the TCP port (bind
   with SO_REUSEADDR succeeds until someone listens) and one then fails silently in a background
   task. We ``listen()`` right after ``bind()`` so a taken port fails at once and the next is tried.
5. **Beacon tracebacks**: with no CA repeater listening, every beacon logs a full traceback. We log
   one warning and then stay quiet.
7. **Three loop hops per write and per update** (latency, not a bug): caproto hands every request
   from the receiving task to a command task through a queue, spawns a task for every write, and
   routes every monitor update through a context-wide queue before the per-circuit one.
   :meth:`FastCircuit.recv` handles a request in the receiving task when nothing is queued before it.
   :func:`run_inline` runs such a coroutine on the caller's stack and only spawns a task if it has
   to wait; :class:`FastCircuit` uses it for writes, :func:`fan_out` for updates (only when the
   context queue is empty, so an update can never overtake a queued initial monitor value).
6. **Refused writes log a traceback**: caproto logs every exception from a write handler with
   ``log.exception``. A refused write (bad value, read-only, access denied) is an operator's mistake,
   already logged once by the PV database; :class:`RefusedWriteFilter` drops caproto's copy.
8. **A client that leaves leaves tasks behind** (ERROR "Task was destroyed but it is pending!" in the
   log, later, whenever the garbage collector runs): caproto cancels a disconnected circuit's
   subscription task and *awaits* it inside ``_on_disconnect``, so the ``CancelledError`` escapes into
   the caller, and it never stops the command task at all. A disconnect noticed while a reply is sent
   (a client that closes right after a refused ``caput``) skipped ``_on_disconnect`` entirely (fix 7
   handles requests in the receiving task) and left the circuit's subscriptions in the context.
   :meth:`FastCircuit._on_disconnect` cancels both tasks without awaiting them in the caller.
9. **Clearing a monitored channel kills the client's monitors** (``KeyError`` in
   ``subscription_queue_loop``, e.g. when ``caproto-monitor`` is stopped with Ctrl-C): caproto's
   ClearChannel handler compares each subscription's channel *object* with the channel's *id*, so it
   never removes the channel's subscriptions; the next update for them fails on the unknown channel
   and the circuit's only subscription task dies, silently stopping every other monitor of that
   client. :meth:`FastCircuit._process_command` removes them first, as EPICS' rsrv does.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import caproto as ca
from caproto.asyncio.server import Context, VirtualCircuit
from caproto.asyncio.utils import _TransportWrapper
from caproto.server.common import DisconnectedCircuit
from caproto.server.common import VirtualCircuit as CommonCircuit

log = logging.getLogger("mlioc.ca")


def run_inline(coro, spawn) -> None:
    """Run ``coro`` now on the caller's stack; if it has to wait, hand the rest of it to ``spawn``.

    This is what an asyncio Task does on its first step, without the loop iteration a new task
    costs. If the coroutine suspends on a future, :func:`_resume` keeps driving it exactly as a
    Task would (wait for the future, then send into the coroutine, which reads the result).
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    spawn(_resume(coro, yielded))


async def _resume(coro, yielded):
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                # Take the future over as a Task would: it is flagged as "being awaited" by the
                # coroutine that yielded it, and asyncio refuses a second await until that is cleared.
                yielded._asyncio_future_blocking = False
                await yielded
        except asyncio.CancelledError as exc:
            if yielded is None or not yielded.cancelled():
                try:  # we were cancelled while the coroutine waits: pass it on
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
                continue
        except BaseException:
            pass  # the coroutine sees the outcome itself when it reads the future's result
        try:
            yielded = coro.send(None)
        except StopIteration:
            return


_FANOUT: dict[asyncio.Queue, Context] = {}


def register_context(context: Context) -> None:
    _FANOUT[context.subscription_queue] = context


def unregister_context(context: Context) -> None:
    _FANOUT.pop(context.subscription_queue, None)


def fan_out(queue: asyncio.Queue, update) -> bool:
    """Deliver a subscription update to the circuits now instead of through the context queue.

    Returns False (caller must queue it) when the queue is not ours or still holds updates.
    """
    context = _FANOUT.get(queue)
    if context is None or not queue.empty():
        return False
    run_inline(context._subscription_queue_iteration(*update), context.server_tasks.create)
    return True


class RefusedWriteFilter(logging.Filter):
    """Drop caproto's traceback for writes our PV database refused (they are logged there)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ioc.core.pvmodel import PutRejected

        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, PutRejected)


def install_log_filters() -> None:
    logger = logging.getLogger("caproto.circ")
    if not any(isinstance(f, RefusedWriteFilter) for f in logger.filters):
        logger.addFilter(RefusedWriteFilter())


class FastCircuit(VirtualCircuit):
    """A circuit that sends queued monitor updates immediately instead of waiting to batch them,
    and runs writes inline instead of in a new task."""

    _command_task: asyncio.Task | None = None

    async def run(self):
        self._command_task = self.tasks.create(self.command_queue_loop())
        self._sub_task = self.tasks.create(self.subscription_queue_loop())

    async def _on_disconnect(self):
        """Fix 8: drop the subscriptions (caproto's common part, idempotent), close the socket, and stop
        both of the circuit's loops without awaiting them here: the caller may be one of them, and an
        awaited cancelled task would raise ``CancelledError`` into it. Write tasks in flight are left to
        finish: an operator's PROMOTE must not be cut short because the client did not wait."""
        await CommonCircuit._on_disconnect(self)
        self.client.close()
        current = asyncio.current_task()
        for task in (self._command_task, self._sub_task):
            if task is not None and task is not current:
                task.cancel()
        self._command_task = self._sub_task = None

    async def _start_write_task(self, handle_write):
        run_inline(handle_write(), self.tasks.create)

    async def _process_command(self, command):
        if isinstance(command, ca.ClearChannelRequest):  # fix 9: the channel's monitors end with it
            chan = self.circuit.channels_sid.get(command.sid)
            if chan is not None:
                await self._cull_subscriptions(self.context[chan.name], lambda sub: sub.channel is chan)
        response = await super()._process_command(command)
        if isinstance(command, ca.HostNameRequest):
            # Access lists match the client's address, not the host name it claims (anyone can claim
            # any name over CA); the same rule pvxs applies over PVA.
            self.client_claimed_hostname = self.client_hostname
            self.client_hostname = self.circuit.address[0]
        return response

    async def recv(self):
        """Process received requests in the receiving task when nothing is queued before them.

        caproto hands every request to a second task through a queue (one loop iteration each). When
        that queue is empty, handling the request right here is the same order with one hop fewer;
        otherwise it is queued behind the others, as caproto does.
        """
        try:
            bytes_received = await self.client.recv(4096)
        except OSError:
            bytes_received = []
        commands, _ = self.circuit.recv(bytes_received)
        for command in commands:
            if self.command_queue.empty() and command is not ca.DISCONNECTED:
                try:
                    response = await self._command_queue_iteration(command)
                    if response is not None:
                        await self.send(*response)
                except DisconnectedCircuit:  # as caproto's command loop does (fix 8)
                    await self._on_disconnect()
                    raise
            else:
                try:
                    await self.command_queue.put(command)
                except self.QueueFull:
                    self.log.warning("Circuit %r has a large backlog of received commands; disconnecting", self)
                    await self._on_disconnect()
                    raise DisconnectedCircuit() from None
        if not bytes_received:
            await self._on_disconnect()
            raise DisconnectedCircuit()

    async def get_from_sub_queue(self, timeout=None):
        if timeout is None:
            return await self.subscription_queue.get()
        try:
            return self.subscription_queue.get_nowait()
        except asyncio.QueueEmpty:
            return None


async def bind_and_listen(addr: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind((addr, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class FastContext(Context):
    """caproto's asyncio server Context with the fixes above."""

    CircuitClass = FastCircuit

    async def server_accept_loop(self, sock):
        def _new_client(reader, writer):
            raw = writer.get_extra_info("socket")
            if raw is not None:
                try:
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            transport = _TransportWrapper(reader, writer)
            self.server_tasks.create(self.tcp_handler(transport, transport.getpeername()))

        await asyncio.start_server(_new_client, sock=sock)

    async def _bind_tcp_sockets_with_consistent_port_number(self, make_socket):
        return await super()._bind_tcp_sockets_with_consistent_port_number(bind_and_listen)

    async def _subscription_queue_iteration(self, sub_specs, metadata, values, flags, sub):
        if sub is None:
            for sub_spec in sub_specs:
                for each in tuple(self.subscriptions[sub_spec]):
                    await self._subscription_queue_send(sub_spec, each, metadata=metadata, values=values,
                                                        flags=flags)
        else:
            await super()._subscription_queue_iteration(sub_specs, metadata, values, flags, sub)

    async def broadcast_beacon_loop(self):
        max_period = self.environ["EPICS_CAS_BEACON_PERIOD"]
        period = 0.02
        warned = False
        while True:
            for address, (interface, sock) in self.beacon_socks.items():
                try:
                    beacon = ca.Beacon(13, self.port, self.beacon_count, interface)
                    await sock.send(self.broadcaster.send(beacon))
                except OSError as exc:
                    # Typically ECONNREFUSED: no CA repeater listens. Clients still connect; they only
                    # lose beacon-driven fast reconnects. Say so once, not once per beacon.
                    (log.debug if warned else log.warning)(
                        "cannot send CA beacon to %s:%d (%s); is a CA repeater running?", *address, exc)
                    warned = True
            self.beacon_count += 1
            period = min(max_period, period * 2)
            await asyncio.sleep(period)
