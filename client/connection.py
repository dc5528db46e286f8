"""The client's thin I/O layer: ZeroMQ sockets under asyncio, feeding ``client.core.Session``.

Three parts: ``client.brokers`` picks the broker (the handshake down the ``--server`` list, the
resume on the next one), ``client.sockets`` owns the DEALER and the SUB and reads them, and
``Connection`` here runs the loop.

Everything the sockets, the user (or a program: ``call``) and the clock produce goes through one
queue into one loop, which hands it to the session and carries out the effects, so the session
never sees two things at once. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import zmq
import zmq.asyncio

from broker.wire.protocol import Welcome
from client.brokers import Brokers, handshake_timeout, pub_endpoint
from client.control import CurveKeys
from client.core import Session
from client.effects import (
    Answered,
    Effect,
    Line,
    Reconnect,
    Send,
    Stop,
    Subscribe,
    Unsubscribe,
)
from client.sockets import Queued, Sockets

__all__ = ["TICK", "Connection", "handshake_timeout", "pub_endpoint"]

TICK: Final = 0.05
"""Seconds between ``Session.tick`` calls (the session's timers are multiples of this)."""
FAIR_SHARE: Final = 32
"""Events handled in a row before the loop lets other tasks run: a connection with a long queue
must not starve the others that share its event loop (``room-web`` runs one per browser tab)."""


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
        ctx: zmq.asyncio.Context | None = None,
        tick: float = TICK,
        answered: Callable[[Answered], None] | None = None,
        password: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``ctx``: a ZeroMQ context shared by many connections (``room-web``), else its own;
        ``tick``: seconds between ``Session.tick`` calls (a gateway of many sessions ticks less
        often: the session's timers are 0.2 s and more); ``answered``: told of each
        ``Answered`` effect (a program's front end, ``client.bot``); ``password``: asked for
        the password of a registered name (None: there is none)."""
        self.session = session
        self.tick = tick
        self.show = show
        self.answered = answered
        self.events: asyncio.Queue[Queued] = asyncio.Queue()
        """What the sockets, the user and the clock produced, in the order it came."""
        self.settled = asyncio.Event()
        """Set while nothing is in flight (``Session.settled``)."""
        self.sockets = Sockets(self.events, sub_hwm=sub_hwm, curve=curve, ctx=ctx)
        self.brokers = Brokers(servers, self.sockets, session, show, password)

    # ---- the front end's side -----------------------------------------------------------------

    def feed(self, line: str) -> None:
        """A line the user typed."""
        self.settled.clear()
        self.events.put_nowait(("input", line))

    def call(self, do: Callable[[float], list[Effect]]) -> None:
        """Run ``do(now)`` in the loop, in turn with everything else, and carry out the effects
        it returns: how a program asks the session (``Session.say``...) where a person types."""
        self.settled.clear()
        self.events.put_nowait(("call", do))

    def end_input(self) -> None:
        """The user is done (end of file, Ctrl-D, a signal)."""
        self.events.put_nowait(("eof", None))

    async def wait_settled(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until nothing is in flight; see ``Session.settled``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), timeout)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def handshake(self) -> Stop | None:
        """Find a broker that welcomes the session (``Brokers.handshake``); a ``Stop`` says why
        the chat cannot start."""
        return await self.brokers.handshake()

    async def run(self) -> Stop:
        """Serve until the session stops (``close`` closes the sockets after)."""
        loop = asyncio.get_running_loop()
        self.sockets.receive_dealer()
        self.sockets.receive_sub()
        stop = await self._apply(self.brokers.welcome_effects)
        next_tick = loop.time() + self.tick
        unbroken = 0
        while stop is None:
            if not self.events.empty():
                unbroken += 1
                if unbroken % FAIR_SHARE == 0:
                    await asyncio.sleep(0)  # let the loop's other tasks run (room-web's tabs)
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
                next_tick = now + self.tick
            stop = await self._apply(effects)
            if self.session.settled:
                self.settled.set()
            else:
                self.settled.clear()
        return stop

    async def close(self, clean: bool) -> None:
        """Stop the receivers and close every socket; a clean exit lets ``Quit`` leave first."""
        await self.sockets.close(clean)

    # ---- the loop's parts ---------------------------------------------------------------------

    async def _handle(self, kind: str, item: Any, now: float) -> list[Effect]:
        s = self.session
        match kind:
            case "server":
                sock, msgs = item
                out: list[Effect] = []
                for msg in msgs:
                    if sock is self.sockets.dealer:
                        out += await self.brokers.from_current(msg)
                    out += s.on_server(msg, now)
                    if isinstance(msg, Welcome) and sock is self.sockets.dealer:
                        out += self.brokers.moved()
                return out
            case "room":
                sock, (topic, body) = item
                if sock is not self.sockets.sub:
                    return []  # queued by a SUB since replaced: another broker's numbering
                return s.on_room_frame(topic, body, now)
            case "input":
                return s.on_input(item, now)
            case "call":
                return item(now)
            case "eof":
                return s.end_of_input(now)
        return []

    async def _apply(self, effects: list[Effect]) -> Stop | None:
        for effect in effects:
            match effect:
                case Line():
                    self.show(effect)
                case Send(msg=msg):
                    await self.sockets.send(msg)
                case Subscribe(topic=topic):
                    assert self.sockets.sub is not None
                    self.sockets.sub.setsockopt(zmq.SUBSCRIBE, topic)
                case Unsubscribe(topic=topic):
                    assert self.sockets.sub is not None
                    self.sockets.sub.setsockopt(zmq.UNSUBSCRIBE, topic)
                case Reconnect(hello=hello):
                    await self.brokers.reconnect(hello)
                case Answered():
                    if self.answered is not None:
                        self.answered(effect)
                case Stop():
                    return effect
        return None
