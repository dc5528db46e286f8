"""The broker's I/O: sockets, the poll loop, signals. All chat decisions are in ``state``.

One thread owns every socket. Each turn of the loop drains what is waiting (up to ``BATCH``
messages per socket), hands each decoded message to the chat, then flushes once: commit the store,
publish each room's events in one PUB send, send the replies, write the log. An idle broker
therefore answers a lone message at once, and a busy one packs its sends. A commit that fails (disk
full, I/O error) costs that batch only: its messages are refused, nothing of it is published, one
line is logged, and the loop goes on.

Who may connect (CURVE, the admins' allow-list, refused handshakes) is ``security.Guard``'s
business; the loop asks it and logs what it says. ``Broker``'s parts, each a mixin in its own
module: ``intake`` (the ROUTER), ``control`` (admin requests), ``sockets`` (bind, monitor, close),
``flush`` (what a batch sends).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Final, Protocol

import zmq

from broker.chat.chat import Chat, Outbox, Settings
from broker.config import BATCH, DEFAULT_LIMITS, HEARTBEAT, LIVENESS, Limits
from broker.logfmt import LogWriter, Throttle
from broker.loop.control import ControlChannel, ControlRequest
from broker.loop.flush import BatchFlush
from broker.loop.intake import ClientIntake
from broker.loop.sockets import BrokerSockets
from broker.security.gate import Gate
from broker.security.guard import CHAT_DOMAIN, CONTROL_DOMAIN, REFUSED_EVENTS, Guard
from broker.security.keys import KeyDir, KeyFileError
from broker.security.roomkeys import RoomKeys
from broker.store.base import Store, StoreError
from broker.store.datadir import StartError, open_store
from broker.store.memory import MemoryStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

__all__ = ["BATCH", "Broker", "Endpoints", "StartError", "open_store"]

ROUTER_RCVHWM: Final = 10_000
"""Client messages waiting to be read, per client."""

BAD_FRAMES_LOGGED: Final = 20
"""Bad frames logged one by one per heartbeat interval; the rest are counted in one line."""

CLOSE_LINGER_MS: Final = 500
"""How long goodbyes may take to leave at shutdown before the sockets are dropped."""

DB_FILE: Final = "room.db"
LOCK_FILE: Final = "broker.lock"


@dataclass(slots=True)
class Endpoints:
    router: str
    pub: str
    control: str


class Plugin(Protocol):
    """What a backbone adds to the loop (``backbone.plugin.BackbonePlugin``); a broker on its
    own has none, and its loop reads the same without it."""

    wake: socket.socket
    """Readable when the plugin has news for the loop (``drain``)."""

    def attach(self, broker: Broker, local: Store, endpoints: str) -> Store: ...
    def banner(self) -> str: ...
    def stop(self) -> None: ...
    def drain(self) -> None: ...
    def share(self, out: Outbox) -> None:
        """Just before a batch goes out."""
        ...

    def control(self, asked: ControlRequest, now: float) -> cp.CtlReply | None:
        """The reply, or None: answered later (``Broker.answer``)."""
        ...

    def tick(self, now: float) -> None: ...


class Broker(ClientIntake, ControlChannel, BrokerSockets, BatchFlush):
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
    ) -> None:
        self.curve = curve
        self.ctx = zmq.Context()
        self.log = log or LogWriter()
        self.clock = clock
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._bad_frames = Throttle(BAD_FRAMES_LOGGED, "{} more bad frames not logged")
        try:
            self.gate = Gate(limits.max_per_address, limits.max_connections)
            self.guard = Guard(self.ctx, keys, curve, self.gate)
        except KeyFileError as exc:
            self.ctx.destroy(linger=0)
            raise StartError(f"{exc}: the broker needs its key pair") from None
        try:
            # Per-peer queues bounded in bytes: a send is at most about ANSWER_BYTES (replies)
            # or PUB_SEND_BYTES (room events). A peer that falls that far behind loses what
            # does not fit, and repairs it by retry or sequence number: the broker never waits.
            router_options = {zmq.SNDHWM: limits.router_hwm, zmq.RCVHWM: ROUTER_RCVHWM}
            self.router = self._bind(
                zmq.ROUTER, endpoints.router, limits.max_frame, CHAT_DOMAIN, router_options
            )
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            pub_options = {zmq.SNDHWM: limits.pub_hwm if pub_hwm is None else pub_hwm}
            if pub_sndbuf is not None:  # tests: a small kernel buffer makes a slow peer drop
                pub_options[zmq.SNDBUF] = pub_sndbuf
            self.pub = self._bind(
                zmq.PUB, endpoints.pub, limits.max_subscription, CHAT_DOMAIN, pub_options
            )
            self.control = self._bind(
                zmq.ROUTER, endpoints.control, limits.max_frame, CONTROL_DOMAIN
            )
        except StartError:
            self.guard.stop()
            self.ctx.destroy(linger=0)
            raise
        self.control_monitor = self._monitor(self.control, REFUSED_EVENTS)
        self.router_monitor = self._monitor(self.router, _CONNECTION_EVENTS)
        self.pub_monitor = self._monitor(self.pub, _CONNECTION_EVENTS)
        self._gone = 0  # connections closed since the last tick
        self.endpoints = Endpoints(
            self._endpoint(self.router), self._endpoint(self.pub), self._endpoint(self.control)
        )
        settings = Settings(
            self.endpoints.pub, limits, rate, burst, heartbeat, liveness, sealed=room_keys
        )
        self.keys = RoomKeys() if room_keys else None
        """With room keys, every PUB send is sealed (``roomkeys``)."""
        store = store or MemoryStore(limits.history_keep)
        self.plugin = plugin
        self._ctl_out: list[tuple[bytes, cp.CtlReply]] = []
        if plugin is not None:
            e = self.endpoints
            try:
                store = plugin.attach(self, store, f"{e.router} {e.pub} {e.control}")
            except StoreError as exc:
                plugin.stop()
                self._close_sockets(linger=0)
                self._wake_r.close()
                self._wake_w.close()
                raise StartError(str(exc)) from None
        self.chat = Chat(store, settings)
        self.chat.counters.started = self.clock()
        self._security_log(self.guard.refresh(), self.clock())

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
        if self.plugin is not None:
            self.log.line(self.plugin.banner())
        self._flush()  # the admin keys found at start
        try:
            self._loop()
        finally:
            # ``close`` sends everyone away; a signal (a service manager, Ctrl-C) is a restart
            # for the users: their clients keep trying, and resume when the broker is back.
            if self.chat.closing:
                self.chat.goodbye_all(p.Bye.CLOSED, "the broker shut down", self.clock())
            else:
                self.chat.goodbye_all(p.Bye.RESTART, "the broker is restarting", self.clock())
            self._flush()
            self.log.line("room-broker stopped")
            self._close()

    def _close(self) -> None:
        self._close_sockets(linger=CLOSE_LINGER_MS)
        self.chat.store.close()
        self._wake_r.close()
        self._wake_w.close()

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.control_monitor, zmq.POLLIN)
        poller.register(self.router_monitor, zmq.POLLIN)
        poller.register(self.pub_monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        plugin = self.plugin
        if plugin is not None:
            poller.register(plugin.wake, zmq.POLLIN)
        interval = self.chat.settings.heartbeat
        next_tick = self.clock() + interval
        while not self._stopping and not self.chat.closing:
            wait = max(0.0, next_tick - self.clock())
            ready = dict(poller.poll(wait * 1000))
            if plugin is not None:
                plugin.drain()
            if self.router in ready:
                self._drain_router()
            if self.control in ready:
                self._drain_control()
            if self.router_monitor in ready:
                self._count_connections(self.router_monitor, "router")
            if self.pub_monitor in ready:
                self._count_connections(self.pub_monitor, "pub")
            if self.control_monitor in ready:
                self._drain_monitor()
            now = self.clock()
            if now >= next_tick:
                self.chat.tick(now)
                self._security_log(self.guard.tick(self.chat.by_peer), now)
                if self._gone:  # what their buffers took goes back to the OS
                    self._gone = 0
                    _release_memory()
                for line in self._bad_frames.tick():
                    self.chat.out.log(now, "error", text=line)
                if plugin is not None:
                    plugin.tick(now)
                next_tick = now + interval
            self._flush()


_CONNECTION_EVENTS: Final = int(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc
except (OSError, AttributeError):  # another C library: it keeps what it keeps
    _malloc_trim = None


def _release_memory() -> None:
    """Give freed heap back to the OS. glibc keeps it otherwise: a flood of 5,000 connections
    that came and went, four times, left the broker at 314 MB for good; with this, 32 MB, its
    idle size (measured)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
