"""What the client session asks of its front end and its sockets: lines to show and effects.

``client.core.Session`` returns these; ``client.connection`` carries them out and the front ends
(``piped``, ``tui``) show the lines. ``Line.render`` is the piped-mode output contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from broker.config import Exit
from broker.wire.protocol import ClientMsg, Hello

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


Effect = Line | Send | Subscribe | Unsubscribe | Reconnect | Stop
