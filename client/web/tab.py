"""One browser tab's chat: the client's own session and connection, outliving its WebSocket.

``room-web`` runs one ``client.connection.Connection`` per tab, as ``room-client`` runs one per
process, so a tab gets the same sans-IO ``Session``: unique names, history on join, gap repair,
retries, resume after a lost broker. Where the piped front end prints each ``Line``, a ``Tab``
numbers it, keeps the last ``REPLAY`` as JSON and hands it to the WebSocket attached now, if any.

The WebSocket reads the lines from that buffer at its own pace (``line_after``), so a slow
browser falls behind rather than holding anyone up, and catches up from the buffer; one more than
``REPLAY`` lines behind is told how many it missed. A tab whose WebSocket dropped keeps its session
for ``GRACE`` seconds: a page that comes back in time with the tab's token gets what it missed from
the buffer. After that the session leaves as ``/exit`` does, which frees the name.

A registered name's password is held only until the handshake is over: the ``Connection`` asks
for it only then (a later resume, after a lost or restarted broker, proves the session with its
secret, as ``room-client``'s does; a broker that no longer knows the session ends it), so a tab
that kept it would keep it for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import zmq.asyncio

from broker.config import HEARTBEAT, LIVENESS, Exit
from broker.wire.protocol import LOBBY, ListUsers, Users
from client.connection import Connection
from client.control import CurveKeys
from client.core import PROG, Session
from client.effects import Effect, Kind, Line, Stop

REPLAY: Final = 2000
"""Lines a tab keeps for its WebSocket to read, and to replay to a page that reconnects."""
GRACE: Final = HEARTBEAT * (LIVENESS - 1)
"""Seconds a tab without a WebSocket keeps its session: a reload or a short network loss comes
back within it, and a closed tab frees its name before the broker's own heartbeat timeout."""
STATE_EVERY: Final = 0.25
"""Seconds between checks of the status, rooms and members shown on the page."""
TAB_TICK: Final = 0.2
"""Seconds between a tab's ``Session.tick`` calls: four times fewer than a terminal client's,
as a gateway runs hundreds of sessions (the session's shortest timer, ``SYNC_RETRY``, is this)."""
ACCOUNTS_EVERY: Final = 5.0
"""Seconds at least between a tab's quiet listings of its room for members who entered since
the last one (whether they are logged in: presence does not say)."""
TOKEN_BYTES: Final = 24
"""Random bytes in a tab's token (192 bits): no page can guess another tab's."""


class Peer(Protocol):
    """The WebSocket of a tab: it reads the tab's lines after ``follow``, and is told of new ones
    (and of the end) by ``notify``; ``show_state`` replaces the state still unsent, ``send``
    queues anything else. None of them blocks."""

    def send(self, text: str) -> None: ...

    def show_state(self, text: str) -> None: ...

    def follow(self, tab: Tab, after: int) -> None: ...

    def notify(self) -> None: ...

    def replaced(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Upstream:
    """How every tab reaches the broker: the ``--server`` list, CURVE keys, one ZeroMQ context."""

    servers: Sequence[str]
    curve: CurveKeys | None
    ctx: zmq.asyncio.Context
    history: int
    max_message: int
    """The broker's ``--max-message``: the page refuses a longer message before sending it."""


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def line_message(line: Line, n: int) -> dict[str, Any]:
    """A ``Line`` for the page, numbered ``n`` within its tab (docs/web.md)."""
    kind = line.kind
    message: dict[str, Any] = {"t": "line", "n": n, "kind": kind.value, "text": line.text}
    if kind is Kind.NOTICE and line.room:
        message["room"] = line.room  # the room it is about: shown only there
    if line.kind in (Kind.MESSAGE, Kind.HISTORY, Kind.DIRECT):
        message |= {"sender": line.sender, "ts": line.ts, "own": line.own}
    if line.kind in (Kind.MESSAGE, Kind.HISTORY):
        message |= {"room": line.room, "seq": line.seq}
    if line.kind is Kind.DIRECT:
        message["to"] = line.to
    return message


def end_message(stop: Stop) -> dict[str, Any]:
    """Why the session ended, in the page's words (``room-client``'s, minus its command line)."""
    text = stop.error.removeprefix(f"{PROG}: ") or "you left the chat"
    text = text.replace("run room-client join again", "join again")
    text = text.replace("another room-client", "another tab or client")
    return {"t": "end", "code": int(stop.code), "text": text}


def state_message(session: Session) -> dict[str, Any]:
    """What the page shows beside the messages: status, room, rooms (which are private, which
    the user asked to join) and members."""
    status = session.state
    if status == "connected" and session.is_blocked:
        status = "blocked"
    members = session.members()
    accounts = session.roster.accounts
    rooms = dict(session.roster.rooms)
    for room in (LOBBY, *session.roster.requested):
        rooms.setdefault(room, 0)
    if session.room is not None:
        rooms[session.room] = max(len(members), rooms.get(session.room, 0))
    listed = sorted(rooms.items(), key=lambda item: (item[0] != LOBBY, item[0]))
    return {
        "t": "state",
        "status": status,
        "name": session.name,
        "room": session.room or session.want_room,
        "rooms": [list(item) for item in listed],
        "private": sorted(session.roster.private & rooms.keys()),
        "requested": sorted(session.roster.requested),
        "members": members,
        "accounts": [name for name in members if accounts.get(name)],
    }


class Tab:
    """A chat session for one browser tab; ``start`` it, then ``attach`` WebSockets to it."""

    def __init__(
        self,
        upstream: Upstream,
        name: str,
        room: str,
        *,
        secret: str = "",
        last: int = 0,
        password: str | None = None,
        on_gone: Callable[[Tab], None],
    ) -> None:
        """``secret`` and ``last`` continue a session another gateway ran (``Session.carry_on``);
        ``password``: a registered name's, for the handshake only; ``on_gone`` is told when the
        tab can be forgotten."""
        self._password = password
        self.password_asked = False
        """Whether the broker wanted the password (the name is registered)."""
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.max_message = upstream.max_message
        self.session = Session(name, room, 0 if last else upstream.history, track=True)
        self.session.carry_on(secret, last)
        self.conn = Connection(
            upstream.servers,
            self.session,
            self._show,
            curve=upstream.curve,
            ctx=upstream.ctx,
            tick=TAB_TICK,
            password=self._give_password,
        )
        self.lines: deque[tuple[int, str]] = deque(maxlen=REPLAY)
        """The last lines shown, numbered, as JSON."""
        self.shown = 0
        """How many lines the tab has shown (the number of the last one)."""
        self.peer: Peer | None = None
        self.state = ""
        """The last state sent, as JSON."""
        self.ended: str | None = None
        """Why the session ended, as JSON, once it has."""
        self.on_gone = on_gone
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._listed_at = -ACCOUNTS_EVERY
        """When the tab last asked who of its room is logged in."""

    async def start(self) -> Stop | None:
        """The handshake; a ``Stop`` says why there is no session (its sockets are closed).
        The password is dropped after it, whatever came of it."""
        given = bool(self._password)
        try:
            stop = await self.conn.handshake()
        except BaseException:  # cancelled: the page went away meanwhile
            await self.conn.close(clean=False)
            raise
        finally:
            self._password = None
        if stop is not None:
            await self.conn.close(clean=False)
            return stop
        if given and not self.password_asked:  # said, lest the user think the name is theirs
            name = self.session.name
            self._show(Line(Kind.NOTICE, f"{name} is not registered: the password was not needed"))
        self._task = asyncio.create_task(self._run(), name=f"tab-{self.session.name}")
        return None

    # ---- the page's side ----------------------------------------------------------------------

    def attach(self, peer: Peer, after: int) -> None:
        """``peer`` is this tab's WebSocket from now on: it gets the welcome, every buffered line
        numbered above ``after``, and the state. A WebSocket attached before is told it was
        replaced (a duplicated tab) and closed."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.peer is not None and self.peer is not peer:
            self.peer.replaced()
        self.peer = peer
        welcome = {
            "t": "welcome",
            "token": self.token,
            "name": self.session.name,
            "secret": self.session.link.session_secret,
            "max_message": self.max_message,
        }
        peer.send(encode(welcome))
        self.state = encode(state_message(self.session))
        peer.show_state(self.state)
        peer.follow(self, min(after, self.shown))

    def line_after(self, n: int) -> tuple[int, str]:
        """The line after number ``n`` (``n`` < ``shown``), as JSON; when it is no longer kept, a
        notice of how many were missed, numbered as the last of them."""
        oldest = self.lines[0][0] if self.lines else self.shown + 1
        if n + 1 >= oldest:
            return self.lines[n + 1 - oldest]
        missed = oldest - 1 - n
        text = f"{missed} lines were missed here: this page fell behind; /history shows more"
        return oldest - 1, encode({"t": "line", "n": oldest - 1, "kind": "error", "text": text})

    def detach(self, peer: Peer) -> None:
        """``peer`` closed: keep the session for ``GRACE`` seconds, in case the page comes back."""
        if self.peer is not peer:
            return
        self.peer = None
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(GRACE, self._expire)

    def feed(self, text: str) -> None:
        """What the user typed: each line as the terminal client takes it (slash commands too)."""
        if self.ended is None:
            for line in text.splitlines():
                self.conn.feed(line)

    async def close(self) -> None:
        """The gateway stops: drop the connection without ``Quit``, so that a gateway started
        again can resume the session (the broker drops it after its heartbeat timeout)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ---- the session's side -------------------------------------------------------------------

    def _give_password(self) -> str | None:
        """The ``Connection``'s ``password``: asked (in a thread) when the name is registered."""
        self.password_asked = True
        return self._password

    def _show(self, line: Line) -> None:
        self.shown += 1
        text = encode(line_message(line, self.shown))
        self.lines.append((self.shown, text))
        if self.peer is not None:
            self.peer.notify()

    def _send_state(self) -> None:
        self._ask_accounts()
        state = encode(state_message(self.session))
        if state != self.state:
            self.state = state
            if self.peer is not None:
                self.peer.show_state(state)

    def _ask_accounts(self) -> None:
        """A quiet listing of the room when a member entered since the last one, to mark who is
        logged in (presence does not say); at most every ``ACCOUNTS_EVERY`` seconds."""
        session = self.session
        roster, room = session.roster, session.room
        if room is None or session.state != "connected" or roster.asked[Users]:
            return  # not in a room yet, or a listing is on its way
        if all(name in roster.accounts for name in session.members()):
            return
        now = asyncio.get_running_loop().time()
        if now - self._listed_at < ACCOUNTS_EVERY:
            return
        self._listed_at = now

        def ask(at: float) -> list[Effect]:
            return [roster.ask(ListUsers(room), at, shown=False)]

        self.conn.call(ask)

    async def _run(self) -> None:
        run = asyncio.ensure_future(self.conn.run())
        stop = Stop(Exit.ERROR, f"{PROG}: the gateway stopped")
        try:
            while not run.done():
                await asyncio.wait({run}, timeout=STATE_EVERY)
                self._send_state()
            stop = run.result()
        except asyncio.CancelledError:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            await self.conn.close(clean=False)
            raise
        except Exception as exc:  # a bug: the tab says so in one line, the gateway goes on
            stop = Stop(Exit.ERROR, f"{PROG}: internal error: {type(exc).__name__}: {exc}")
        await self.conn.close(clean=stop.code == Exit.OK)
        self._end(stop)

    def _end(self, stop: Stop) -> None:
        self._send_state()
        self.ended = encode(end_message(stop))
        if self.peer is not None:
            self.peer.notify()  # the end goes out after every line
        # Kept a while, so that a page that missed the end (its socket dropped) still hears it.
        asyncio.get_running_loop().call_later(GRACE, self.on_gone, self)

    def _expire(self) -> None:
        self._expiry = None
        if self.peer is None and self.ended is None:
            self.conn.end_input()  # leaves as /exit does; _end follows
