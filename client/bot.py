"""The client library for programs: bots, bridges, anything that chats without a person.

::

    async with Client("tcp://127.0.0.1:5555", "helper") as chat:
        await chat.join("ops")
        await chat.say("hello")
        async for event in chat:
            if isinstance(event, Message) and event.text == "ping":
                await chat.say("pong")

``Client`` runs room-client's own session (``client.core.Session``) on room-client's own
connection (``client.connection.Connection``), so a program gets what ``room-client`` does with
nothing to do: the handshake down a list of brokers, reconnect and resume (on the next broker of
the list too), gap repair, ``Say`` retried until acknowledged and stored once, room keys. It is
that session's front end for programs: where ``room-client`` prints each ``Line``, a ``Client``
turns it into a typed event (``client.botevents``) for ``async for``; and where a person types
``/join``, a program awaits ``join``, which returns once the client reads the room. ``say`` and
``tell`` return the broker's answer, or raise ``Refused`` with its protocol code.

Every public name of the library is here: ``from client.bot import Client, Message``.
docs/bots.md is the guide.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Self

from broker.config import HISTORY, Exit
from broker.wire.protocol import LOBBY, Ack, Code, valid_name
from client.botevents import (
    ChatError,
    Direct,
    Disconnected,
    Entered,
    Error,
    Event,
    History,
    Joined,
    JoinRequested,
    Left,
    Message,
    Notice,
    Refused,
    bad_room,
    error_of,
    event_of,
)
from client.botwaits import Waits
from client.connection import Connection
from client.control import client_keys
from client.core import PROG, Session
from client.effects import Effect, Line, Stop
from client.outbox import EXIT_WAIT

__all__ = [
    "Ack",
    "ChatError",
    "Client",
    "Code",
    "Direct",
    "Disconnected",
    "Entered",
    "Error",
    "Event",
    "History",
    "JoinRequested",
    "Joined",
    "Left",
    "Message",
    "Notice",
    "Refused",
]

BACKLOG: Final = 10_000
"""Events kept for ``async for`` by default; a program that never reads them (a bridge that only
says) holds no more than this, the oldest dropped first."""
CLOSE_WAIT: Final = EXIT_WAIT + 3.0
"""Seconds ``close`` waits for the session to leave (its messages answered, ``Quit`` sent)."""

Ask = Callable[[float], tuple[int, list[Effect]]]
"""A request to the session that sends a message: its mid and the effects."""


class Client:
    """One user of the chat, for a program. ``async with`` it (or ``start`` and ``close``)."""

    def __init__(
        self,
        server: str | Sequence[str],
        name: str,
        *,
        room: str = LOBBY,
        history: int = HISTORY,
        password: str | None = None,
        server_key: str | None = None,
        backlog: int = BACKLOG,
    ) -> None:
        """``server``: the broker's ROUTER endpoint, or several brokers of one chat, tried in
        order; ``name``: the user name; ``room``: the room to be in once started; ``history``:
        how many older messages a join brings (``History`` events); ``server_key``: the broker's
        public key (or its file), for a broker started with ``--curve``; ``backlog``: events kept
        until read; ``password``: the account's, for a registered name (the client logs in with
        SCRAM when the broker asks, and the password never leaves it)."""
        self.servers = server
        self._password = password
        self._session = Session(name, room, history, answers=True)
        self._curve = client_keys(server_key, None) if server_key else None
        self._backlog = backlog
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: Stop | None = None
        """Why the session ended, once it has."""
        self._closing = False
        self._events: deque[Event] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._waits = Waits()
        self._join_lock = asyncio.Lock()

    # ---- what a program reads -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The user name, as the broker welcomed it."""
        return self._session.name

    @property
    def room(self) -> str | None:
        """The current room (None before the first join)."""
        return self._session.room

    @property
    def state(self) -> str:
        """``connecting``, ``connected``, ``reconnecting`` (the broker is lost; the session
        keeps trying) or ``disconnected``."""
        return self._session.state

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, and return once in the starting room. Raises ``Refused`` (``name_taken``,
        ``bad_name``, ``full``... or ``bad_room``), ``JoinRequested`` (a private room) or
        ``Disconnected`` (no broker answered)."""
        if self._conn is not None:
            raise RuntimeError("the client was started already")
        first = self._session.want_room
        if not valid_name(first):
            raise bad_room(first)
        conn = Connection(
            self.servers,
            self._session,
            self._show,
            curve=self._curve,
            answered=self._waits.answered,
            password=lambda: self._password,
        )
        self._conn = conn
        try:
            stop = await conn.handshake()
        except BaseException:  # cancelled (Ctrl-C) while saying Hello
            await conn.close(clean=False)
            raise
        if stop is not None:
            await conn.close(clean=False)
            self._end(stop)
            raise error_of(stop)
        joined = self._waits.join(first)  # the session joins it once welcomed
        self._task = asyncio.create_task(self._run(), name=f"bot-{self.name}")
        try:
            await joined
        except BaseException:
            await self.close()
            raise
        finally:
            self._waits.joining = None

    async def close(self) -> None:
        """Leave the chat as ``/exit`` does: wait (briefly) for messages still unanswered, say
        ``Quit`` (the name is free at once), close the sockets. ``async for`` then ends."""
        self._closing = True
        task = self._task
        if task is None or task.done():
            return
        assert self._conn is not None
        self._conn.end_input()
        done, _ = await asyncio.wait({task}, timeout=CLOSE_WAIT)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- requests -----------------------------------------------------------------------------

    async def join(self, room: str) -> Joined:
        """Move to ``room`` (made if new), with its history (``History`` events, then this
        ``Joined``); return once every later message of it will be read. Raises ``Refused``
        (``bad_room``, ``full``, ``rate_limited``) or ``JoinRequested`` (a private room)."""
        async with self._join_lock:
            return await self._join(room, lambda now: self._session.join(room, now))

    async def leave(self) -> Joined:
        """Back to ``public``, the lobby."""
        async with self._join_lock:
            return await self._join(LOBBY, self._session.leave)

    async def say(self, text: str, *, room: str | None = None) -> Ack:
        """Say ``text`` in the current room (or in ``room``, joined first if need be); return
        the broker's ``Ack`` (``room``, ``seq``) once it is stored. Raises ``Refused``
        (``too_long``, ``bad_text``, ``blocked``, ``rate_limited``). While the broker is lost
        the message waits and is sent again; bound the wait with ``asyncio.timeout`` if
        needed."""
        if room is None:
            answer = self._send(lambda now: self._session.say(text, now))
        else:
            async with self._join_lock:  # no other join between this one and the Say
                if room != self.room:
                    await self._join(room, lambda now: self._session.join(room, now))
                answer = self._send(lambda now: self._session.say(text, now))
        return await answer

    async def tell(self, to: str, text: str) -> None:
        """A direct message to the user ``to``, not stored: return once delivered. Raises
        ``Refused`` (``not_connected``, ``too_long``...; ``unavailable`` when the broker was
        lost meanwhile: it may not have arrived)."""
        await self._send(lambda now: self._session.tell(to, text, now))

    # ---- reading ------------------------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        """The next event; the iteration ends after ``close``, and raises ``Disconnected`` when
        the broker ended the session."""
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return Notice(f"{dropped} events were dropped: nobody read them", "dropped")
            if self._events:
                return self._events.popleft()
            if self._stop is not None:
                if self._closing or self._stop.code == Exit.OK:
                    raise StopAsyncIteration
                raise error_of(self._stop)
            if self._conn is None:
                raise RuntimeError("start the client first (async with Client(...) as chat)")
            self._wake.clear()
            await self._wake.wait()

    # ---- the session's side -------------------------------------------------------------------

    async def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        stop = Stop(Exit.ERROR, f"{PROG}: the client was closed")
        try:
            stop = await conn.run()
        except Exception as exc:  # a bug: the session ends, and says so
            stop = Stop(Exit.ERROR, f"{PROG}: internal error: {type(exc).__name__}: {exc}")
        finally:
            try:
                await conn.close(clean=stop.code == Exit.OK)
            finally:
                self._end(stop)

    def _end(self, stop: Stop) -> None:
        """The session is over: nothing waits any more."""
        self._stop = stop
        self._waits.fail(error_of(stop))
        self._wake.set()

    def _show(self, line: Line) -> None:
        """A line of the session: an event to read, and perhaps the end of a join."""
        event = event_of(line)
        if self._waits.line(line, event) or event is None:
            return  # raised by join, not read
        if len(self._events) >= self._backlog:
            self._events.popleft()
            self._dropped += 1
        self._events.append(event)
        self._wake.set()

    def _live(self) -> Connection:
        """The connection, if the session can still take a request."""
        if self._stop is not None or self._closing:
            raise error_of(self._stop or Stop(Exit.OK, f"{PROG}: the client was closed"))
        if self._conn is None or self._task is None:
            raise RuntimeError("start the client first (async with Client(...) as chat)")
        return self._conn

    def _send(self, ask: Ask) -> asyncio.Future[Ack]:
        """Ask the session to send a message; the future is its answer."""
        conn = self._live()
        answer: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()

        def do(now: float) -> list[Effect]:
            if answer.done():  # the caller gave up before the loop came to it
                return []
            mid, effects = ask(now)
            if mid == 0:
                answer.set_exception(error_of(Stop(Exit.OK, f"{PROG}: the session is leaving")))
            else:
                self._waits.answers[mid] = answer
            return effects

        conn.call(do)
        return answer

    async def _join(self, room: str, ask: Callable[[float], list[Effect]]) -> Joined:
        """Ask the session for a join (one at a time: the caller holds ``_join_lock``), and
        wait for its end."""
        if not valid_name(room):
            raise bad_room(room)
        conn = self._live()
        joined = self._waits.join(room)
        try:
            conn.call(ask)
            return await joined
        finally:
            self._waits.joining = None
