"""The broker's I/O: sockets, the poll loop, signals. All chat decisions are in ``broker.chat``.

One thread owns every socket. Each turn of the loop drains what is waiting (up to ``BATCH``
messages per socket), hands each decoded message to the chat, then flushes once: commit the store,
publish each room's events in one PUB send, send the replies, write the log. An idle broker
therefore answers a lone message at once, and a busy one packs its sends. A commit that fails (disk
full, I/O error) costs that batch only: its messages are refused, nothing of it is published, one
line is logged, and the loop goes on.

Who may connect (CURVE, the admins' allow-list, refused handshakes) is ``security.guard.Guard``'s
business; the loop asks it and logs what it says. ``Broker`` holds its parts, each an object in
its own module and given what it uses: ``sockets.Sockets`` (bind, monitor, close),
``intake.ClientIntake`` (the ROUTER), ``control.ControlChannel`` (admin requests) and
``flush.BatchFlush`` (what a batch sends); with ``--metrics``, ``metrics.Exporter`` too.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, Final

import zmq

from broker.chat.chat import Chat, Settings
from broker.config import BATCH, DEFAULT_LIMITS, FRAME_OVERHEAD, HEARTBEAT, LIVENESS, Limits
from broker.logfmt import LogWriter
from broker.loop import descriptors
from broker.loop.control import ControlChannel, ControlRequest
from broker.loop.door import SUPPORTED as WATCHED
from broker.loop.door import Door
from broker.loop.flush import BatchFlush
from broker.loop.intake import ClientIntake
from broker.loop.plugin import Plugin
from broker.loop.publisher import Publisher
from broker.loop.sockets import Endpoints, Sockets
from broker.loop.subscribers import Subscribers
from broker.loop.watch import Budgets, Watch
from broker.security.gate import Gate
from broker.security.guard import Guard
from broker.security.keys import KeyDir, KeyFileError
from broker.security.roomkeys import RoomKeys
from broker.store.base import Store, StoreError
from broker.store.datadir import StartError, open_store
from broker.store.memory import MemoryStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.loop.metrics import Exporter

__all__ = ["BATCH", "Broker", "Endpoints", "StartError", "open_store"]

IO_THREADS: Final = 2
"""libzmq's I/O threads (its default is one): they accept, handshake and move every connection's
bytes without the interpreter. 8,000 users let in at once (room-bench --chat-day, two runs each,
alternating): all in after 17.1 and 16.1 s instead of 20.7 and 26.7 (hello to Welcome p99 10.4
and 8.9 s instead of 16.1 and 23.0: the kernel's accept queue overflows less), steady p99 37.8
and 36.8 ms instead of 50.9 and 49.8, the broker's CPU 52-56% instead of 58-60%."""
CLOSE_LINGER_MS: Final = 500
"""How long goodbyes may take to leave at shutdown before the sockets are dropped."""


class Broker:
    """Binds the sockets on construction; ``run`` serves until closed or stopped.

    ``keys`` is the data dir's key directory (the broker's pair and the admin allow-list); without
    it the broker makes a throwaway key pair and allows no admin key. ``curve`` encrypts the chat
    sockets too. With a ``plugin`` (a backbone) the broker is one of several: room messages,
    names and the blocklist live there (``store`` keeps only the audit log).
    """

    def __init__(
        self,
        endpoints: Endpoints,
        *,
        store: Store | None = None,
        limits: Limits = DEFAULT_LIMITS,
        rate: float = 10.0,
        burst: int = 30,
        heartbeat: float = HEARTBEAT,
        liveness: int = LIVENESS,
        log: LogWriter | None = None,
        clock: Callable[[], float] = time.time,
        keys: KeyDir | None = None,
        curve: bool = False,
        pub_hwm: int | None = None,
        pub_sndbuf: int | None = None,
        plugin: Plugin | None = None,
        room_keys: bool = True,
        metrics: tuple[str, int] | None = None,
        accounts: str = "optional",
        registration: str = "open",
    ) -> None:
        self.curve = curve
        self.ctx = zmq.Context(io_threads=IO_THREADS)
        self.log = log or LogWriter()
        self.clock = clock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        before, limit = descriptors.raise_limit()  # before anything else opens a descriptor
        try:
            self.gate = Gate(limits.max_per_address, limits.max_connections)
            self.guard = Guard(self.ctx, keys, curve, self.gate)
        except KeyFileError as exc:
            self._close_wake()
            self.ctx.destroy(linger=0)
            raise StartError(f"{exc}: the broker needs its key pair") from None
        try:
            self.sockets = Sockets(
                self.ctx, self.guard, endpoints, limits, pub_hwm, pub_sndbuf, heartbeat
            )
        except StartError:
            self.guard.stop()
            self._close_wake()
            self.ctx.destroy(linger=0)
            raise
        self.endpoints = self.sockets.endpoints
        self.publisher = Publisher(self.ctx, self.sockets.pub)
        door = Door(
            {"router": self.sockets.router_monitor, "pub": self.sockets.pub_monitor}, self.gate
        )
        for monitor, read in door.readers():
            self.guard.zap.also_read(monitor, read)
        self.watch = Watch(self.ctx, door.arrivals, self.gate, _budgets(limits, rate, burst, curve))
        self.guard.start()  # the handshakes that came meanwhile waited for it
        settings = Settings(
            self.endpoints.pub,
            limits,
            rate,
            burst,
            heartbeat,
            liveness,
            room_keys,
            accounts,
            registration,
        )
        store = store or MemoryStore(limits.history_keep)
        self.plugin = plugin
        if plugin is not None:
            e = self.endpoints
            try:
                store = plugin.attach(self, store, f"{e.router} {e.pub} {e.control}")
            except StoreError as exc:
                plugin.stop()
                self._close_sockets(linger=0)
                self._close_wake()
                raise StartError(str(exc)) from None
        self.chat = Chat(store, settings)
        self.chat.counters.started = self.clock()
        sockets = self.sockets
        self.intake = ClientIntake(sockets.router, self.chat, self.guard, self.clock, curve)
        self.control = ControlChannel(
            sockets.control,
            sockets.control_monitor,
            self.chat,
            self.guard,
            self.clock,
            self.intake.bad_frames,
        )
        self.flush = BatchFlush(
            sockets.router,
            self.publisher,
            self.chat,
            self.control,
            RoomKeys() if room_keys else None,
            self.log,
            self.clock,
        )
        if plugin is not None:
            self.control.route = plugin.control
            self.flush.plugin = plugin
        self.subscribers = Subscribers(self.chat, self.guard, self.watch, limits, curve)
        self.watch.sessions = self.subscribers.moves
        self.guard.check_subscribers(self.subscribers.admit)
        self.descriptors = descriptors.budget(before, limit)  # all set up: what is open now
        room = self.descriptors.for_connections
        if room is not None and room < limits.max_connections:
            if room < 2:
                if plugin is not None:
                    plugin.stop()
                self._close_sockets(linger=0)
                self._close_wake()
                raise StartError(
                    f"{self.descriptors.describe()}: no room is left for connections; raise "
                    "the limit (ulimit -n, or LimitNOFILE= in a systemd unit)"
                )
            self.gate.cap(room, f"what the file-descriptor limit {limit} leaves")
        users = self.gate.users()  # the users the connections hold, at most
        if users < limits.max_clients:
            capped = replace(limits, max_clients=users)
            self.chat.settings = replace(self.chat.settings, limits=capped)
        self._max_connections, self._max_clients = limits.max_connections, limits.max_clients
        self.exporter: Exporter | None = None
        if metrics is not None:  # last: nothing to undo after it; prometheus_client only here
            from broker.loop.metrics import Exporter

            try:
                self.exporter = Exporter(metrics, self.chat, self.flush, plugin, self.watch)
            except StartError:
                if plugin is not None:
                    plugin.stop()
                self._close_sockets(linger=0)
                self._close_wake()
                raise
        self._security_log(self.guard.refresh(), self.clock())

    # ---- what a backbone calls back (``plugin.Host``) ----------------------------------------

    def dispatch(self, request: cp.CtlRequest, now: float) -> cp.CtlReply:
        """Run an admin request on this broker."""
        return self.control.dispatch(request, now)

    def answer(self, asked: ControlRequest, reply: cp.CtlReply, now: float) -> None:
        """Answer an admin request that other brokers answered first."""
        self.control.answer(asked, reply, now)

    # ---- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to finish; safe from another thread or a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):  # a full pipe is already a wake-up
            self._wake_w.send(b"\0")

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the broker cleanly (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def run(self) -> None:
        """Serve until ``close`` or ``stop``; then tell every client and release the sockets."""
        e = self.endpoints
        self.log.line(f"room-broker listening: router {e.router} pub {e.pub} control {e.control}")
        chat = "encrypted (CURVE)" if self.curve else "not encrypted (start with --curve)"
        self.log.line(f"room-broker control: CURVE, admin keys only; chat traffic {chat}")
        gate, asked = self.gate, f"--max-connections {self._max_connections}"
        why = asked if gate.total == self._max_connections else f"{gate.total_why}; {asked}"
        users = self.chat.settings.limits.max_clients
        self.log.line(
            f"room-broker connections: at most {gate.total} chat connections ({why}), "
            f"{users} users (--max-clients {self._max_clients}); {self.descriptors.describe()}"
        )
        if self.plugin is not None:
            self.log.line(self.plugin.banner())
        if not WATCHED:
            self.log.line(
                "room-broker guard: this OS gives no per-connection byte counts; "
                "only the connection caps hold"
            )
        self.publisher.start()
        self.watch.start()
        if self.exporter is not None:
            self.log.line(f"room-broker metrics: {self.exporter.url}")
        self.flush.run()  # the admin keys found at start
        try:
            self._loop()
        finally:
            # ``close`` sends everyone away; a signal (a service manager, Ctrl-C) is a restart
            # for the users: their clients keep trying, and resume when the broker is back.
            if self.chat.closing:
                self.chat.goodbye_all(p.Bye.CLOSED, "the broker shut down", self.clock())
            else:
                self.chat.goodbye_all(p.Bye.RESTART, "the broker is restarting", self.clock())
            self.flush.run()
            self.log.line("room-broker stopped")
            self._close_sockets(linger=CLOSE_LINGER_MS)
            self.chat.store.close()
            self._close_wake()
            if self.exporter is not None:
                self.exporter.close()

    def _close_sockets(self, linger: int) -> None:
        self.watch.stop()
        self.guard.stop()  # its ZAP thread reads the monitors until it stops
        self.publisher.stop()  # it owns the PUB until it stops
        self.sockets.close(linger)
        self.ctx.term()

    def _close_wake(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def _security_log(self, lines: list[str], now: float) -> None:
        for line in lines:
            self.chat.out.log(now, "security", text=line)

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        sockets, intake, control, flush = self.sockets, self.intake, self.control, self.flush
        router, control_sock = sockets.router, sockets.control
        control_monitor = sockets.control_monitor
        poller = zmq.Poller()
        for sock in (router, control_sock, control_monitor):
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        plugin = self.plugin
        if plugin is not None:
            poller.register(plugin.wake, zmq.POLLIN)
        interval = self.chat.settings.heartbeat
        next_beat = self.clock()  # the heartbeats' wheel starts turning now
        next_tick = next_beat + interval
        while not self._stopping and not self.chat.closing:
            wait = max(0.0, min(next_tick, next_beat) - self.clock())
            ready = dict(poller.poll(wait * 1000))
            if plugin is not None:
                plugin.drain()
            if router in ready:
                intake.drain()
            if control_sock in ready:
                control.drain()
            if control_monitor in ready:
                control.drain_monitor()
            now = self.clock()
            if now >= next_beat:  # the users whose turn has come: a bounded share each time
                next_beat = self.chat.tick(now)
            if now >= next_tick:
                self._security_log(self.guard.tick(self.chat.by_peer), now)
                self._security_log(self.watch.take_lines(), now)
                self.chat.counters.connections = self.watch.open["router"]
                for line in intake.bad_frames.tick():
                    self.chat.out.log(now, "error", text=line)
                if plugin is not None:
                    plugin.tick(now)
                next_tick = now + interval
            flush.run()


def _budgets(limits: Limits, rate: float, burst: int, curve: bool) -> Budgets:
    """The guard's budgets: a ROUTER connection may send twice what the rate limit lets a
    client's messages take, and more (no limit without a rate limit)."""
    message = limits.max_message + FRAME_OVERHEAD
    return Budgets(
        hello_timeout=limits.hello_timeout,
        subscription_bytes=limits.subscription_bytes,
        router_burst=2 * (burst + 10) * message + 65_536,
        router_rate=2 * rate * message + 16_384 if rate > 0 else 0.0,
        evict_for=limits.evict_for,
        curve=curve,
    )
