"""The broker's I/O: sockets, the poll loop, signals. All chat decisions are in ``state``.

One thread owns every socket. Each turn of the loop drains what is waiting (up to ``BATCH``
messages per socket), hands each decoded message to the chat, then flushes once: commit the store,
publish each room's events in one PUB send, send the replies, write the log. An idle broker
therefore answers a lone message at once, and a busy one packs its sends.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

import zmq

from . import protocol as p
from .admin import dispatch
from .config import DEFAULT_LIMITS, HEARTBEAT, LIVENESS, Limits
from .logfmt import LogWriter
from .sqlstore import SQLiteStore, StoreError
from .state import Chat, Settings
from .store import MemoryStore, Store

BATCH: Final = 512
"""Messages read from one socket before the loop flushes; bounds latency under load."""

ROUTER_HWM: Final = 10_000
PUB_HWM: Final = 100_000
"""Per-peer queues. A subscriber that falls this far behind loses messages, and repairs the gap
by sequence number; the broker never waits for it."""

CLOSE_LINGER_MS: Final = 500
"""How long goodbyes may take to leave at shutdown before the sockets are dropped."""


class StartError(Exception):
    """The broker cannot start; the message is one line for the operator."""


DB_FILE: Final = "room.db"
LOCK_FILE: Final = "broker.lock"


def open_store(home: Path, sync: str = "full") -> SQLiteStore:
    """Create the data dir, take its lock (one broker per data dir) and open the database."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(home / LOCK_FILE, "a")  # noqa: SIM115 - held for the life of the process
    except OSError as exc:
        raise StartError(
            f"cannot use the data dir {home}: {exc.strerror}: choose another"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StartError(
            f"another broker is using the data dir {home}: stop it, or choose another --data-dir"
        ) from None
    try:
        store = SQLiteStore(home / DB_FILE, sync)
    except StoreError as exc:
        lock.close()
        raise StartError(str(exc)) from None
    store.lock = lock
    return store


@dataclass(slots=True)
class Endpoints:
    router: str
    pub: str
    control: str


@dataclass
class Stats:
    received: int = 0
    bad_frames: int = 0
    dropped_replies: int = 0
    started: float = field(default_factory=time.time)


def _bindable(endpoint: str) -> str:
    """Accept port 0 as 'any free port', the way people write it."""
    return (
        endpoint[:-2] + ":*"
        if endpoint.startswith("tcp://") and endpoint.endswith(":0")
        else endpoint
    )


class Broker:
    """Binds the sockets on construction; ``run`` serves until closed or stopped."""

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
    ) -> None:
        self.ctx = zmq.Context()
        self.log = log or LogWriter()
        self.clock = clock
        self.stats = Stats()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        try:
            self.router = self._bind(zmq.ROUTER, endpoints.router, limits)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.setsockopt(zmq.SNDHWM, ROUTER_HWM)
            self.router.setsockopt(zmq.RCVHWM, ROUTER_HWM)
            self.pub = self._bind(zmq.PUB, endpoints.pub, limits)
            self.pub.setsockopt(zmq.SNDHWM, PUB_HWM)
            self.control = self._bind(zmq.ROUTER, endpoints.control, limits)
        except StartError:
            self.ctx.destroy(linger=0)
            raise
        self.endpoints = Endpoints(
            self._endpoint(self.router), self._endpoint(self.pub), self._endpoint(self.control)
        )
        settings = Settings(self.endpoints.pub, limits, rate, burst, heartbeat, liveness)
        self.chat = Chat(store or MemoryStore(limits.history_keep), settings)

    def _bind(self, kind: int, endpoint: str, limits: Limits) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind != zmq.PUB:
            sock.setsockopt(zmq.MAXMSGSIZE, limits.max_frame)
        try:
            sock.bind(_bindable(endpoint))
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            hint = (
                "is another broker running? choose another endpoint"
                if exc.errno == errno.EADDRINUSE
                else "check the endpoint"
            )
            raise StartError(f"cannot bind {endpoint}: {exc.strerror}: {hint}") from None
        return sock

    @staticmethod
    def _endpoint(sock: zmq.Socket[bytes]) -> str:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

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
        try:
            self._loop()
        finally:
            self.chat.goodbye_all(p.Bye.CLOSED, "the broker shut down", self.clock())
            self._flush([])
            self.log.line("room-broker stopped")
            self._close()

    def _close(self) -> None:
        for sock in (self.router, self.pub, self.control):
            sock.close(linger=CLOSE_LINGER_MS)
        self.ctx.term()
        self.chat.store.close()
        self._wake_r.close()
        self._wake_w.close()

    # ---- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        interval = self.chat.settings.heartbeat
        next_tick = self.clock() + interval
        while not self._stopping and not self.chat.closing:
            wait = max(0.0, next_tick - self.clock())
            ready = dict(poller.poll(wait * 1000))
            ctl_replies: list[list[bytes]] = []
            if self.router in ready:
                self._drain_router()
            if self.control in ready:
                ctl_replies = self._drain_control()
            now = self.clock()
            if now >= next_tick:
                self.chat.tick(now)
                next_tick = now + interval
            self._flush(ctl_replies)

    def _drain_router(self) -> None:
        router, chat, clock = self.router, self.chat, self.clock
        decode = p.decode_client
        for _ in range(BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.stats.received += 1
            peer = frames[0]
            if len(frames) != 2:
                self._bad_frame(peer, f"expected 1 frame after the peer id, got {len(frames) - 1}")
                continue
            try:
                msg = decode(frames[1])
            except p.ProtocolError as exc:
                self._bad_frame(peer, exc.reason)
                continue
            try:
                chat.handle(peer, msg, clock())
            except Exception as exc:  # a bug must cost one request, never the broker
                self._internal_error(peer, msg, exc)

    def _internal_error(self, peer: bytes | None, msg: object, exc: Exception) -> None:
        if peer is not None:
            self.chat.error(peer, p.Code.INTERNAL, "the broker failed on this request; see its log")
        what = f"{type(msg).__name__}: {type(exc).__name__}: {exc}"
        self.chat.out.log(self.clock(), "error", text=f"internal error on {what}")

    def _bad_frame(self, peer: bytes, reason: str) -> None:
        self.stats.bad_frames += 1
        self.chat.error(peer, p.Code.BAD_FRAME, reason)
        self.chat.out.log(self.clock(), "error", text=f"bad frame from peer {peer.hex()}: {reason}")

    def _drain_control(self) -> list[list[bytes]]:
        replies: list[list[bytes]] = []
        for _ in range(BATCH):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            now = self.clock()
            if len(frames) != 3 or frames[1] != b"":
                self.chat.out.log(now, "error", text="malformed control request: ignored")
                continue  # not a REQ peer: nothing we could address a reply to
            try:
                request = p.decode_ctl_request(frames[2])
            except p.ProtocolError as exc:
                reply = p.CtlReply(0, False, exc.reason, exc.code.value)
            else:
                try:
                    reply = dispatch(self.chat, request, now)
                except Exception as exc:  # a bug must cost one request, never the broker
                    self._internal_error(None, request, exc)
                    reply = p.CtlReply(
                        request.id, False, "the broker failed; see its log", "internal"
                    )
                command = " ".join((request.command, *request.args))
                self.chat.out.log(now, "admin", text=f"{command}: {reply.message}")
            replies.append([frames[0], b"", p.encode(reply)])
        return replies

    def _flush(self, ctl_replies: list[list[bytes]]) -> None:
        out = self.chat.out.take()
        if out.rooms or out.replies:
            self.chat.store.commit()
        pub, router, encode, topic = self.pub, self.router, p.encode, p.topic
        for room, events in out.rooms.items():
            pub.send_multipart((topic(room), encode(events)))
        for peer, msg in out.replies:
            try:
                router.send_multipart((peer, encode(msg)), zmq.NOBLOCK)
            except zmq.ZMQError:  # peer gone or its queue full: it repairs by retry or gap fill
                self.stats.dropped_replies += 1
        for frames in ctl_replies:
            with contextlib.suppress(zmq.ZMQError):  # room-ctl gave up waiting
                self.control.send_multipart(frames, zmq.NOBLOCK)
        if out.logs:
            self.log.events(out.logs)
