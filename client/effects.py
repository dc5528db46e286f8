"""What the client session asks of its front end and its sockets: lines to show and effects.

``client.core.Session`` returns these; ``client.connection`` carries them out and the front ends
(``piped``, ``tui``) show the lines. ``Line.render`` is the piped-mode output contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from broker.config import Exit
from broker.wire.protocol import Ack, ClientMsg, Code, Hello

# Terminal control characters in a peer's text could rewrite the screen: show them as U+FFFD,
# and line breaks as spaces so that every event stays one line.
_CLEAN: Final = {c: "\ufffd" for c in [*range(0x20), *range(0x7F, 0xA0)]} | {
    0x09: " ",
    0x0A: " ",
    0x0D: " ",
}


def clean(text: str) -> str:
    """``text`` safe to print on one line of a terminal."""
    return text.translate(_CLEAN)


class Kind(StrEnum):
    """What a ``Line`` is, so a front end can style it."""

    MESSAGE = "message"  # a live room message
    HISTORY = "history"  # an older room message, shown on join or /history
    DIRECT = "direct"  # a direct message, to this user or from it
    NOTICE = "notice"  # anything else the broker or the client says
    ERROR = "error"  # a failed request


@dataclass(frozen=True, slots=True)
class Line:
    """One line to show. Room messages keep their parts so a front end can decorate them."""

    kind: Kind
    text: str
    room: str = ""
    sender: str = ""
    ts: float = 0.0
    own: bool = False
    to: str = ""
    """The recipient of a direct message."""
    seq: int = 0
    """A room message's sequence number in its room (0 for anything else)."""
    what: str = ""
    """For programs (``client.bot``), what a notice or an error is, so that none has to read the
    text: a notice of someone's presence says its kind (``entered``, ``left``, ``blocked``,
    ``unblocked``, ``out``, ``fired``; ``sender`` is the user), and others say ``joined``,
    ``requested``, ``out`` (this user put out), ``history``, ``lost`` (messages),
    ``reconnecting``, ``reconnected`` or ``blocked`` (this user); an error names the request it
    answers (``join``, ``say``, ``tell``, ``fetch``...). Empty for anything else."""
    code: Code | None = None
    """An error's protocol code (a refused message's too)."""

    def render(self) -> str:
        """The plain line of the piped-mode contract: ``[ROOM] SENDER: TEXT``, a direct message
        ``[@TO] SENDER: TEXT`` (on both sides; no room name starts with ``@``), or ``* TEXT``."""
        if self.kind in (Kind.MESSAGE, Kind.HISTORY):
            return f"[{self.room}] {self.sender}: {clean(self.text)}"
        if self.kind is Kind.DIRECT:
            return f"[@{self.to}] {self.sender}: {clean(self.text)}"
        return f"* {clean(self.text)}"


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` on the DEALER."""

    msg: ClientMsg


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add ``topic`` to the SUB socket's filters."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove ``topic`` from the SUB socket's filters."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Replace the DEALER with a new one and send ``hello`` on it (the broker seems gone); with
    several brokers, the connection picks which one (``client.brokers``)."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Stop:
    """End the program with ``code``; ``error`` (if any) is the one line for stderr."""

    code: Exit
    error: str = ""
    cause: Code | None = None
    """The broker's code, when an ``Error`` from the broker is why the session cannot start."""


@dataclass(frozen=True, slots=True)
class Answered:
    """The broker answered message ``mid`` (a ``Say`` or a ``Tell``): ``ack`` when it was stored
    (a ``Tell``: delivered), else ``code`` and ``reason`` say why not (``unavailable`` too when
    the client gave up on a ``Tell``: the broker was lost). Returned only by a session made for a
    program (``Session(answers=True)``), whose front end waits for each answer."""

    mid: int
    ack: Ack | None
    code: Code | None = None
    reason: str = ""


Effect = Line | Send | Subscribe | Unsubscribe | Reconnect | Stop | Answered
