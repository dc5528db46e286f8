"""What a program reads from the chat (``client.bot``): typed events, and the errors it may meet.

The session speaks to its front ends in ``Line``\\ s, each tagged for programs (``Line.what``,
``Line.code``); ``event_of`` turns one into the event a program reads, so that no program reads
English text. Import these names from ``client.bot``, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.wire.protocol import NAME_RULE, Code
from client.effects import Kind, Line, Stop
from client.lines import PROG

# ---- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A live room message, in order, each once (gaps repaired, retries dropped), this client's
    own too (``own``)."""

    room: str
    sender: str
    text: str
    ts: float
    """When the broker stored it: seconds since the Unix epoch, UTC."""
    seq: int
    """Its number in its room."""
    own: bool


@dataclass(frozen=True, slots=True)
class History:
    """An older room message, from the history a join brings (``Client(history=...)``): a
    ``Message`` said before this client came, so that a bot that acts on messages acts on these
    only if it means to."""

    room: str
    sender: str
    text: str
    ts: float
    seq: int
    own: bool


@dataclass(frozen=True, slots=True)
class Direct:
    """A direct message to this client, or this client's own to someone (``own``: the broker
    echoes it to its sender)."""

    sender: str
    to: str
    text: str
    ts: float
    own: bool


@dataclass(frozen=True, slots=True)
class Entered:
    """Someone else came into the current room."""

    room: str
    user: str


@dataclass(frozen=True, slots=True)
class Left:
    """Someone else left the current room (to another, or the chat)."""

    room: str
    user: str


@dataclass(frozen=True, slots=True)
class Joined:
    """This client is in ``room``, and from here on reads every later message of it: after a
    ``join``, after a resume, and when the admin moves it (a ``Notice`` with ``what`` ``out``
    comes first)."""

    room: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Anything else: from the broker or the admin (``what`` empty), or from the session, which
    ``what`` names (``Line.what``): someone ``blocked``, ``unblocked``, put ``out`` or ``fired``
    (``user``), this client ``blocked``, ``reconnecting`` or ``reconnected``, messages ``lost``."""

    text: str
    what: str = ""
    room: str = ""
    user: str = ""


@dataclass(frozen=True, slots=True)
class Error:
    """A request that failed and whose caller was not waiting for it (``say``, ``tell`` and
    ``join`` raise theirs instead): ``request`` is the request's tag (``fetch``...)."""

    code: Code
    text: str
    request: str = ""


Event = Message | History | Direct | Entered | Left | Joined | Notice | Error
"""What ``async for event in client`` gives."""


# ---- errors --------------------------------------------------------------------------------------


class ChatError(Exception):
    """Every error of the library; ``reason`` is one line for people."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Refused(ChatError):
    """The broker refused what was asked: ``code`` is the protocol's (``Code.TOO_LONG``,
    ``Code.NOT_CONNECTED``, ``Code.NAME_TAKEN``..., docs/protocol.md section 5). ``unavailable``
    also when a direct message was sent while the broker was lost: send it again."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class JoinRequested(ChatError):
    """The room is private: the join waits for the admin, and a ``Joined`` event comes if it
    allows this client in. Meanwhile the client stays where it was."""

    def __init__(self, room: str) -> None:
        super().__init__(f"{room} is private: the request to join was sent to the admin")
        self.room = room


class Disconnected(ChatError):
    """There is no session: it could not start (no broker answered), or it ended (the admin
    fired this client, reset or shut the broker down, another client took the session over).
    ``exit_code`` is what ``room-client`` would exit with (``broker.config.Exit``)."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


def bad_room(room: str) -> Refused:
    """What the broker would answer a join of ``room``, a name it cannot be."""
    return Refused(Code.BAD_ROOM, f"not a room name: {room!r} (a name is {NAME_RULE})")


def error_of(stop: Stop) -> ChatError:
    """What a program is told of the end of its session (``Stop``): ``Refused`` when the broker
    said no at the start, else ``Disconnected``, in words without ``room-client``'s."""
    reason = stop.error.removeprefix(f"{PROG}: ") or "the session has ended"
    reason = reason.replace("run room-client join again", "connect again")
    if stop.cause is not None:
        return Refused(stop.cause, reason)
    return Disconnected(reason, int(stop.code))


# ---- from the session's lines --------------------------------------------------------------------

PRESENCE_NOTICES = {"entered": Entered, "left": Left}
ANSWERED_ELSEWHERE = ("say", "tell")
"""Failures of these requests are raised by the call that made them, not read as events."""


def event_of(line: Line) -> Event | None:
    """The event a program reads for ``line``, or None for one it reads otherwise."""
    match line.kind:
        case Kind.MESSAGE | Kind.HISTORY:
            said = Message if line.kind is Kind.MESSAGE else History
            return said(line.room, line.sender, line.text, line.ts, line.seq, line.own)
        case Kind.DIRECT:
            return Direct(line.sender, line.to, line.text, line.ts, line.own)
        case Kind.ERROR:
            if line.what in ANSWERED_ELSEWHERE:
                return None
            if line.code is None:
                return Notice(line.text, "error")
            return Error(line.code, line.text.removeprefix("error: "), line.what)
    if line.what in PRESENCE_NOTICES and line.sender:
        return PRESENCE_NOTICES[line.what](line.room, line.sender)
    if line.what == "joined":
        return Joined(line.room)
    return Notice(line.text, line.what, line.room, line.sender)
