"""The client's two sockets, and the tasks that read them into the connection's one queue.

Sockets::

    DEALER  -> broker ROUTER (``--server``)   requests and their answers, heartbeats
    SUB     -> broker PUB (from ``Welcome``)   the current room's events, topic ``room\\0``

Both are CURVE clients when the client has keys. Each socket's receiver decodes what it reads and
puts it on the queue tagged with the socket, which may be replaced while the event waits there.
Every socket has linger 0 except the DEALER's last ``Quit``, which gets a moment to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

import zmq
import zmq.asyncio

from broker.wire.protocol import (
    ClientMsg,
    ProtocolError,
    ServerMsg,
    Welcome,
    decode_server,
    encode,
)
from client.control import CurveKeys

QUIT_LINGER_MS: Final = 500
"""How long the last ``Quit`` may take to leave on a clean exit."""
DEALER_SNDHWM: Final = 1000
RCVHWM: Final = 10_000
"""Room events come in bursts; a dropped one is a gap the session repairs, but rarely is best."""

Queued = tuple[str, Any]
"""What the connection's loop takes from its queue: a kind (``"server"``, ``"room"``, ...) and
what came with it."""


class Sockets:
    """The DEALER to the current broker and the SUB to its PUB, each read by its own task."""

    def __init__(
        self,
        events: asyncio.Queue[Queued],
        *,
        sub_hwm: int | None = None,
        curve: CurveKeys | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.events = events
        """Where the receivers put what the sockets read: ``("server", (dealer, messages))``
        and ``("room", (sub, events))``."""
        self.curve = curve
        """With keys, both sockets are CURVE clients of a ``--curve`` broker."""
        self.sub_hwm = sub_hwm or RCVHWM
        self.ctx = ctx or zmq.asyncio.Context()
        """Our own, or one shared by many sessions (``room-web``), which its owner ends."""
        self._own_ctx = ctx is None
        self.dealer: zmq.asyncio.Socket | None = None
        self.sub: zmq.asyncio.Socket | None = None
        self.sub_endpoint: str | None = None
        """The PUB endpoint the SUB is connected to."""
        self._receivers: dict[str, asyncio.Task[None]] = {}

    def new_dealer(
        self, server: str, monitor_events: int = 0
    ) -> tuple[zmq.asyncio.Socket, zmq.asyncio.Socket | None]:
        """A DEALER connected to ``server``, as ``self.dealer``; with ``monitor_events``, also a
        monitor socket that reports them from before the connect (else None)."""
        dealer: zmq.asyncio.Socket = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, DEALER_SNDHWM)
        dealer.setsockopt(zmq.RCVHWM, RCVHWM)
        if self.curve is not None:
            self.curve.apply(dealer)
        monitor = dealer.get_monitor_socket(monitor_events) if monitor_events else None
        try:
            dealer.connect(server)
        except zmq.ZMQError:
            if monitor is not None:
                end_monitor(dealer, monitor)
            dealer.close(linger=0)
            raise
        self.dealer = dealer
        return dealer, monitor

    def new_sub(self, endpoint: str, welcome: Welcome) -> zmq.asyncio.Socket:
        """A SUB connected to ``endpoint`` (no topic yet), as ``self.sub``. Only a session's
        subscribers may connect: it logs in with the session of ``welcome`` (PLAIN: its name
        and secret), or with CURVE uses the key the DEALER uses."""
        sub: zmq.asyncio.Socket = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.sub_hwm)
        if self.curve is not None:
            self.curve.apply(sub)
        else:
            log_in(sub, welcome)
        self.sub = sub
        self.sub_endpoint = endpoint
        sub.connect(endpoint)
        return sub

    async def send(self, msg: ClientMsg) -> None:
        """Send on the DEALER without ever blocking: a message that cannot be queued (or finds no
        DEALER) is dropped, and the session's retries (Say, Sync, Fetch) or the broker's
        heartbeat cover for it."""
        if self.dealer is not None:
            with contextlib.suppress(zmq.Again):
                await self.dealer.send(encode(msg), zmq.NOBLOCK)

    async def drop_dealer(self) -> None:
        """Stop reading the DEALER and close it at once (a new one replaces it)."""
        await self._stop_receiver("dealer")
        if self.dealer is not None:
            self.dealer.close(linger=0)
            self.dealer = None

    async def drop_sub(self) -> None:
        """Stop reading the SUB and close it, with whatever it still held."""
        await self._stop_receiver("sub")
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None

    async def close(self, clean: bool) -> None:
        """Stop the receivers and close every socket; a clean exit lets ``Quit`` leave first."""
        for task in self._receivers.values():
            task.cancel()
        for task in self._receivers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.sub is not None:
            self.sub.close(linger=0)
        if self.dealer is not None:
            self.dealer.close(linger=QUIT_LINGER_MS if clean else 0)
        if self._own_ctx:
            await asyncio.to_thread(self.ctx.term)

    # ---- receiving ----------------------------------------------------------------------------

    def receive_dealer(self) -> None:
        """Read the DEALER into ``events``, as ``("server", (dealer, messages))``."""
        assert self.dealer is not None
        self._start_receiver("dealer", self.dealer, _dealer_frames)

    def receive_sub(self) -> None:
        """Read the SUB into ``events``, as ``("room", (sub, events))``."""
        assert self.sub is not None
        self._start_receiver("sub", self.sub, _sub_frames)

    def _start_receiver(
        self,
        name: str,
        sock: zmq.asyncio.Socket,
        handle: Callable[[list[bytes]], Queued | None],
    ) -> None:
        async def receive() -> None:
            while True:
                event = handle(await sock.recv_multipart())
                if event is not None:  # tagged with its socket, which may be replaced meanwhile
                    self.events.put_nowait((event[0], (sock, event[1])))

        self._receivers[name] = asyncio.create_task(receive(), name=f"recv-{name}")

    async def _stop_receiver(self, name: str) -> None:
        task = self._receivers.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def log_in(sub: zmq.Socket[Any], welcome: Welcome) -> None:
    """Make ``sub`` (not yet connected) a subscriber of the session ``welcome`` began: PLAIN
    with the session's name and secret (a broker without ``--curve`` refuses any other)."""
    sub.setsockopt(zmq.PLAIN_USERNAME, welcome.name.encode())
    sub.setsockopt(zmq.PLAIN_PASSWORD, welcome.session.encode())


def end_monitor(sock: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket) -> None:
    """Stop ``sock``'s monitor and close its socket."""
    sock.disable_monitor()
    monitor.close(linger=0)


def decode_replies(frames: list[bytes]) -> list[ServerMsg]:
    """The broker's messages in ``frames`` (one batch), or none for anything malformed."""
    if len(frames) != 1:
        return []
    try:
        return decode_server(frames[0])
    except ProtocolError:
        return []


def _dealer_frames(frames: list[bytes]) -> Queued | None:
    msgs = decode_replies(frames)
    return ("server", msgs) if msgs else None


def _sub_frames(frames: list[bytes]) -> Queued | None:
    """A PUB send as it came: its topic and body (the session opens it: it may be sealed)."""
    if len(frames) != 2:
        return None
    return ("room", (frames[0], frames[1]))
