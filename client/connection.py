"""The client's thin I/O layer: ZeroMQ sockets under asyncio, feeding ``client.core.Session``.

Sockets::

    DEALER  -> broker ROUTER (``--server``)   requests and their answers, heartbeats
    SUB     -> broker PUB (from ``Welcome``)   the current room's events, topic ``room\\0``

``--server`` may name several brokers. The handshake tries them in order and the first to answer
``Welcome`` wins; when the session later takes its broker for lost (``Reconnect``), the new DEALER
goes to the next broker in the list (round robin), and the ``Welcome`` from there says which PUB to
subscribe to: the SUB follows it, and gap repair (Sync, Fetch) does the rest. One broker in the list
behaves as before: every DEALER goes to it. The CURVE keys (``--server-key``) are the same for
every broker in the list, so the brokers of one list must share their key pair.

Everything the sockets, the user and the clock produce goes through one queue into one loop, which
hands it to the session and carries out the effects, so the session never sees two things at once.
Every wait has a timeout; every socket has linger 0 except the DEALER's last ``Quit``, which gets a
moment to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from broker.config import CTL_TIMEOUT, Exit
from broker.protocol import (
    ClientMsg,
    Code,
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
from .effects import Effect, Kind, Line, Reconnect, Send, Stop, Subscribe, Unsubscribe

TICK: Final = 0.05
"""Seconds between ``Session.tick`` calls (the session's timers are multiples of this)."""
QUIT_LINGER_MS: Final = 500
"""How long the last ``Quit`` may take to leave on a clean exit."""
DEALER_SNDHWM: Final = 1000
RCVHWM: Final = 10_000
"""Room events come in bursts; a dropped one is a gap the session repairs, but rarely is best."""
HANDSHAKE_MIN: Final = 2.0
"""The least time each broker of a list gets to answer Hello at start (see
``handshake_timeout``)."""
_SILENT: Final = Stop(Exit.UNREACHABLE)
"""What ``_await_welcome`` returns when the broker said nothing in time (compared by identity)."""
_ALIVE_CODES: Final = frozenset({Code.HELLO_FIRST, Code.NAME_TAKEN})
"""Errors by which a broker answers a Hello it did not welcome: it is alive, so the session's next
``Reconnect`` says Hello to it again instead of moving on to the next broker."""

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


def handshake_timeout(brokers: int) -> float:
    """Seconds each of ``brokers`` brokers gets to answer Hello at start: ``CTL_TIMEOUT`` shared
    between them, but at least ``HANDSHAKE_MIN`` each (a loaded broker still answers in time).
    One broker keeps the whole ``CTL_TIMEOUT`` as before; three dead ones cost 6 s, not 15."""
    return max(CTL_TIMEOUT / max(1, brokers), min(HANDSHAKE_MIN, CTL_TIMEOUT))


class Connection:
    """One session's sockets and loop. ``handshake`` first, then ``run`` until the session stops."""

    def __init__(
        self,
        servers: str | Sequence[str],
        session: Session,
        show: Callable[[Line], None],
        *,
        sub_hwm: int | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.servers: tuple[str, ...] = (servers,) if isinstance(servers, str) else tuple(servers)
        """The brokers' ROUTER endpoints, in the order to try them."""
        if not self.servers:
            raise ValueError("no broker endpoint given")
        self.current = 0
        """The index in ``servers`` of the broker the DEALER talks to."""
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
        self._sub_endpoint: str | None = None
        """The PUB endpoint the SUB is connected to."""
        self._welcomed_by: str | None = None
        """The broker whose ``Welcome`` the session took last."""
        self._answered = False
        """Whether the current DEALER's broker answered our Hello without welcoming us
        (``_ALIVE_CODES``): then the next ``Reconnect`` stays with it."""

    @property
    def server(self) -> str:
        """The ROUTER endpoint of the broker the DEALER talks to (or is trying)."""
        return self.servers[self.current]

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
        """Say Hello to each broker in turn until one says Welcome; a ``Stop`` says why the chat
        cannot start. Only silence (``handshake_timeout``) moves on to the next broker: any
        answer (an error, a refused CURVE handshake) is a real one, and the same from every
        broker of a list, so it ends the start at once. A monitor on the DEALER reports a failed
        CURVE handshake (no server key for a ``--curve`` broker, the wrong one, or a key for a
        plain broker) at once, instead of a timeout."""
        timeout = handshake_timeout(len(self.servers))
        for index in range(len(self.servers)):
            self.current = index
            try:
                # The monitor goes on before the connect: a side that detects a failed handshake
                # does not retry, so its one event must not be missed.
                dealer = self._new_dealer(HANDSHAKE_EVENTS)
            except zmq.ZMQError as exc:
                return Stop(Exit.ERROR, f"{PROG}: cannot connect to {self.server}: {exc.strerror}")
            monitor = self._monitor
            assert monitor is not None
            try:
                stop = await self._await_welcome(dealer, monitor, timeout)
            finally:
                dealer.disable_monitor()
                monitor.close(linger=0)
            if stop is not _SILENT:
                return stop
            dealer.close(linger=0)
            self.dealer = None
        if len(self.servers) == 1:
            why = f"no answer from the broker at {self.server} within {timeout:g}s"
        else:
            where = ", ".join(self.servers)
            why = f"no answer from any of the brokers at {where} within {timeout:g}s each"
        return Stop(Exit.UNREACHABLE, f"{PROG}: {why}: is room-broker running?")

    async def _await_welcome(
        self, dealer: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket, timeout: float
    ) -> Stop | None:
        await self._send_on(dealer, self.session.hello())
        poller = zmq.asyncio.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
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
        return _SILENT

    def _welcomed(self, welcome: Welcome, now: float) -> Stop | None:
        endpoint = pub_endpoint(welcome.pub, self.server)
        try:
            self._new_sub(endpoint)
        except zmq.ZMQError as exc:
            return Stop(Exit.ERROR, f"{PROG}: cannot subscribe at {endpoint}: {exc.strerror}")
        self._welcomed_by = self.server
        self._welcome_effects = self.session.on_server(welcome, now)
        return None

    def _new_sub(self, endpoint: str) -> zmq.asyncio.Socket:
        """A SUB connected to ``endpoint`` (no topic yet), as ``self.sub``."""
        sub: zmq.asyncio.Socket = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.sub_hwm)
        if self.curve is not None:
            self.curve.apply(sub)
        self.sub = sub
        self._sub_endpoint = endpoint
        sub.connect(endpoint)
        return sub

    async def _follow_pub(self, welcome: Welcome) -> list[Effect]:
        """After a resume, subscribe where the welcoming broker publishes: a new SUB when that
        is another PUB than before (another broker), with the session's topic; what the old SUB
        still held is dropped, and gap repair fetches anything missed."""
        endpoint = pub_endpoint(welcome.pub, self.server)
        if endpoint == self._sub_endpoint:
            return []
        await self._stop_receiver("sub")
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None
        try:
            sub = self._new_sub(endpoint)
        except zmq.ZMQError as exc:
            return [Stop(Exit.ERROR, f"{PROG}: cannot subscribe at {endpoint}: {exc.strerror}")]
        if self.session.subscribed is not None:
            sub.setsockopt(zmq.SUBSCRIBE, self.session.subscribed)
        self._start_receiver("sub", sub, self._sub_frames)
        return []

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
            effects = await self._handle(kind, item, now)
            if now >= next_tick:
                effects += self.session.tick(now)
                next_tick = now + TICK
            stop = await self._apply(effects)
            if self.session.settled:
                self.settled.set()
            else:
                self.settled.clear()
        return stop

    async def _handle(self, kind: str, item: Any, now: float) -> list[Effect]:
        s = self.session
        match kind:
            case "server":
                sock, msgs = item
                out: list[Effect] = []
                for msg in msgs:
                    if sock is self.dealer:
                        out += await self._from_current(msg)
                    out += s.on_server(msg, now)
                    if isinstance(msg, Welcome) and sock is self.dealer:
                        out += self._moved()
                return out
            case "room":
                sock, events = item
                if sock is not self.sub:
                    return []  # queued by a SUB since replaced: another broker's numbering
                return s.on_room(events, now)
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

    async def _from_current(self, msg: ServerMsg) -> list[Effect]:
        """Note what the current DEALER's broker said, before the session sees it."""
        self._answered = isinstance(msg, Error) and msg.code in _ALIVE_CODES
        if isinstance(msg, Welcome) and not self.session.done:
            return await self._follow_pub(msg)
        return []

    def _moved(self) -> list[Effect]:
        """A notice when a resume landed on another broker of the list than before."""
        if self._welcomed_by == self.server:
            return []
        self._welcomed_by = self.server
        return [Line(Kind.NOTICE, f"now on the broker at {self.server}")]

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
        """A new DEALER (a new identity at the broker) saying Hello with the session secret: to
        the next broker of the list (round robin), as the current one seems gone, unless it
        just answered our Hello without a Welcome (``_ALIVE_CODES``: it is alive, and the
        session only wants to say Hello again). With one broker, always to that one."""
        advance = not self._answered
        self._answered = False
        await self._stop_receiver("dealer")
        if self.dealer is not None:
            self.dealer.close(linger=0)
            self.dealer = None
        for attempt in range(len(self.servers)):
            if advance or attempt:
                self.current = (self.current + 1) % len(self.servers)
            try:
                dealer = self._new_dealer()
            except zmq.ZMQError as exc:  # a bad endpoint: say so, and try the next one
                self.show(Line(Kind.NOTICE, f"cannot connect to {self.server}: {exc.strerror}"))
                continue
            await self._send_on(dealer, hello)
            self._start_receiver("dealer", dealer, self._dealer_frames)
            return
        # None could be opened: sends are dropped until the session's next Reconnect.

    async def _stop_receiver(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

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
                if event is not None:  # tagged with its socket, which may be replaced meanwhile
                    self.events.put_nowait((event[0], (sock, event[1])))

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
