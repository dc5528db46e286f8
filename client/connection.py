"""The client's thin I/O layer: ZeroMQ sockets under asyncio, feeding ``client.core.Session``.

Sockets::

    DEALER  -> broker ROUTER (``--server``)   requests and their answers, heartbeats
    SUB     -> broker PUB (from ``Welcome``)   the current room's events, topic ``room\\0``

Everything the sockets, the user and the clock produce goes through one queue into one loop, which
hands it to the session and carries out the effects, so the session never sees two things at once.
Every wait has a timeout; every socket has linger 0 except the DEALER's last ``Quit``, which gets a
moment to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any, Final

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from broker.config import CTL_TIMEOUT, Exit
from broker.protocol import (
    ClientMsg,
    Error,
    ProtocolError,
    ServerMsg,
    Welcome,
    decode_room,
    decode_server,
    encode,
)

from .control import HANDSHAKE_EVENTS, CurveKeys, handshake_failure
from .core import PROG, Session
from .effects import Effect, Line, Reconnect, Send, Stop, Subscribe, Unsubscribe

TICK: Final = 0.05
"""Seconds between ``Session.tick`` calls (the session's timers are multiples of this)."""
QUIT_LINGER_MS: Final = 500
"""How long the last ``Quit`` may take to leave on a clean exit."""
DEALER_SNDHWM: Final = 1000
RCVHWM: Final = 10_000
"""Room events come in bursts; a dropped one is a gap the session repairs, but rarely is best."""

_TCP: Final = re.compile(r"^tcp://(?P<host>.+):(?P<port>[^:\]]+)$")
_WILDCARD_HOSTS: Final = {"*", "0.0.0.0", "::", "[::]"}


def pub_endpoint(pub: str, server: str) -> str:
    """Where to subscribe: the broker's PUB endpoint, with a wildcard host replaced by the host we
    reached the broker at (a broker bound to ``*`` cannot tell us its address)."""
    m = _TCP.match(pub)
    if m is None or m["host"] not in _WILDCARD_HOSTS:
        return pub
    s = _TCP.match(server)
    host = s["host"] if s is not None and s["host"] not in _WILDCARD_HOSTS else "127.0.0.1"
    return f"tcp://{host}:{m['port']}"


class Connection:
    """One session's sockets and loop. ``handshake`` first, then ``run`` until the session stops."""

    def __init__(
        self,
        server: str,
        session: Session,
        show: Callable[[Line], None],
        *,
        sub_hwm: int | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.server = server
        self.curve = curve
        """With keys, both sockets are CURVE clients of a ``--curve`` broker."""
        self.sub_hwm = sub_hwm or RCVHWM
        self.session = session
        self.show = show
        self.ctx = zmq.asyncio.Context()
        self.dealer: zmq.asyncio.Socket | None = None
        self.sub: zmq.asyncio.Socket | None = None
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.settled = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._welcome_effects: list[Effect] = []
        self._monitor: zmq.asyncio.Socket | None = None

    # ---- the front end's side -----------------------------------------------------------------

    def feed(self, line: str) -> None:
        """A line the user typed."""
        self.settled.clear()
        self.events.put_nowait(("input", line))

    def end_input(self) -> None:
        """The user is done (end of file, Ctrl-D, a signal)."""
        self.events.put_nowait(("eof", None))

    async def wait_settled(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until nothing is in flight; see ``Session.settled``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def handshake(self) -> Stop | None:
        """Say Hello and wait for Welcome; a ``Stop`` says why the chat cannot start. A monitor
        on the DEALER reports a failed CURVE handshake (no server key for a ``--curve`` broker,
        the wrong one, or a key for a plain broker) at once, instead of a timeout."""
        try:
            # The monitor goes on before the connect: a side that detects a failed handshake
            # does not retry, so its one event must not be missed.
            dealer = self._new_dealer(HANDSHAKE_EVENTS)
        except zmq.ZMQError as exc:
            return Stop(Exit.ERROR, f"{PROG}: cannot connect to {self.server}: {exc.strerror}")
        monitor = self._monitor
        assert monitor is not None
        try:
            return await self._await_welcome(dealer, monitor)
        finally:
            dealer.disable_monitor()
            monitor.close(linger=0)

    async def _await_welcome(
        self, dealer: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket
    ) -> Stop | None:
        await self._send_on(dealer, self.session.hello())
        poller = zmq.asyncio.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CTL_TIMEOUT
        while (left := deadline - loop.time()) > 0:
            ready = dict(await poller.poll(left * 1000))
            if monitor in ready:
                event = parse_monitor_message(await monitor.recv_multipart())
                why = handshake_failure(event, self.server, self.curve)
                return Stop(Exit.REFUSED, f"{PROG}: {why}")
            if dealer not in ready:
                continue
            for msg in _decode_replies(await dealer.recv_multipart()):
                if isinstance(msg, Error):
                    return Stop(Exit.ERROR, f"{PROG}: {msg.reason}")
                if isinstance(msg, Welcome):
                    return self._welcomed(msg, loop.time())
        return Stop(
            Exit.UNREACHABLE,
            f"{PROG}: no answer from the broker at {self.server} within {CTL_TIMEOUT:g}s: "
            "is room-broker running?",
        )

    def _welcomed(self, welcome: Welcome, now: float) -> Stop | None:
        endpoint = pub_endpoint(welcome.pub, self.server)
        sub: zmq.asyncio.Socket = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.sub_hwm)
        if self.curve is not None:
            self.curve.apply(sub)
        self.sub = sub
        try:
            sub.connect(endpoint)
        except zmq.ZMQError as exc:
            return Stop(Exit.ERROR, f"{PROG}: cannot subscribe at {endpoint}: {exc.strerror}")
        self._welcome_effects = self.session.on_server(welcome, now)
        return None

    async def run(self) -> Stop:
        """Serve until the session stops; the sockets are closed on the way out."""
        loop = asyncio.get_running_loop()
        assert self.dealer is not None and self.sub is not None
        self._start_receiver("dealer", self.dealer, self._dealer_frames)
        self._start_receiver("sub", self.sub, self._sub_frames)
        stop = await self._apply(self._welcome_effects)
        next_tick = loop.time() + TICK
        while stop is None:
            if not self.events.empty():
                kind, item = self.events.get_nowait()
            else:
                try:
                    kind, item = await asyncio.wait_for(
                        self.events.get(), max(0.001, next_tick - loop.time())
                    )
                except TimeoutError:
                    kind, item = "tick", None
            now = loop.time()
            effects = self._handle(kind, item, now)
            if now >= next_tick:
                effects += self.session.tick(now)
                next_tick = now + TICK
            stop = await self._apply(effects)
            if self.session.settled:
                self.settled.set()
            else:
                self.settled.clear()
        return stop

    def _handle(self, kind: str, item: Any, now: float) -> list[Effect]:
        s = self.session
        match kind:
            case "server":
                return [effect for msg in item for effect in s.on_server(msg, now)]
            case "room":
                return s.on_room(item, now)
            case "input":
                return s.on_input(item, now)
            case "eof":
                return s.end_of_input(now)
        return []

    async def close(self, clean: bool) -> None:
        """Stop the receivers and close every socket; a clean exit lets ``Quit`` leave first."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.sub is not None:
            self.sub.close(linger=0)
        if self.dealer is not None:
            self.dealer.close(linger=QUIT_LINGER_MS if clean else 0)
        await asyncio.to_thread(self.ctx.term)

    # ---- effects ------------------------------------------------------------------------------

    async def _apply(self, effects: list[Effect]) -> Stop | None:
        for effect in effects:
            match effect:
                case Line():
                    self.show(effect)
                case Send(msg=msg):
                    if self.dealer is not None:
                        await self._send_on(self.dealer, msg)
                case Subscribe(topic=topic):
                    assert self.sub is not None
                    self.sub.setsockopt(zmq.SUBSCRIBE, topic)
                case Unsubscribe(topic=topic):
                    assert self.sub is not None
                    self.sub.setsockopt(zmq.UNSUBSCRIBE, topic)
                case Reconnect(hello=hello):
                    await self._reconnect(hello)
                case Stop():
                    return effect
        return None

    async def _send_on(self, sock: zmq.asyncio.Socket, msg: ClientMsg) -> None:
        """Send without ever blocking: a message that cannot be queued is dropped, and the
        session's retries (Say, Sync, Fetch) or the broker's heartbeat cover for it."""
        with contextlib.suppress(zmq.Again):
            await sock.send(encode(msg), zmq.NOBLOCK)

    async def _reconnect(self, hello: ClientMsg) -> None:
        """A new DEALER (a new identity at the broker) saying Hello with the session secret."""
        task = self._tasks.pop("dealer", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.dealer is not None:
            self.dealer.close(linger=0)
            self.dealer = None
        dealer = self._new_dealer()
        await self._send_on(dealer, hello)
        self._start_receiver("dealer", dealer, self._dealer_frames)

    def _new_dealer(self, monitor_events: int = 0) -> zmq.asyncio.Socket:
        """A DEALER connected to the broker; with ``monitor_events``, ``self._monitor`` reports
        them from before the connect."""
        dealer: zmq.asyncio.Socket = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, DEALER_SNDHWM)
        dealer.setsockopt(zmq.RCVHWM, RCVHWM)
        if self.curve is not None:
            self.curve.apply(dealer)
        if monitor_events:
            self._monitor = dealer.get_monitor_socket(monitor_events)
        try:
            dealer.connect(self.server)
        except zmq.ZMQError:
            if monitor_events:
                dealer.disable_monitor()
                self._monitor.close(linger=0)
            dealer.close(linger=0)
            raise
        self.dealer = dealer
        return dealer

    # ---- receiving ----------------------------------------------------------------------------

    def _start_receiver(
        self,
        name: str,
        sock: zmq.asyncio.Socket,
        handle: Callable[[list[bytes]], tuple[str, Any] | None],
    ) -> None:
        async def receive() -> None:
            while True:
                event = handle(await sock.recv_multipart())
                if event is not None:
                    self.events.put_nowait(event)

        self._tasks[name] = asyncio.create_task(receive(), name=f"recv-{name}")

    @staticmethod
    def _dealer_frames(frames: list[bytes]) -> tuple[str, Any] | None:
        msgs = _decode_replies(frames)
        return ("server", msgs) if msgs else None

    @staticmethod
    def _sub_frames(frames: list[bytes]) -> tuple[str, Any] | None:
        if len(frames) != 2:
            return None
        try:
            return ("room", decode_room(frames[1]))
        except ProtocolError:
            return None  # not ours to answer; a gap in sequence numbers repairs any loss


def _decode_replies(frames: list[bytes]) -> list[ServerMsg]:
    """The broker's messages in ``frames`` (one batch), or none for anything malformed."""
    if len(frames) != 1:
        return []
    try:
        return decode_server(frames[0])
    except ProtocolError:
        return []
