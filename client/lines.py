"""The wording of what the session shows, shared by its parts so that each line is written once."""

from __future__ import annotations

from typing import Final

from broker.wire.protocol import Code, Posted
from client.effects import Kind, Line

PROG: Final = "room-client"
"""The program's name, which starts every line the client writes to stderr."""


def notice(text: str, what: str = "", *, room: str = "", user: str = "") -> Line:
    """A notice; ``what`` (and the ``room`` and ``user`` it is about) tell programs what it is
    (``Line.what``)."""
    return Line(Kind.NOTICE, text, room=room, sender=user, what=what)


def failure(text: str, what: str = "", code: Code | None = None) -> Line:
    """What the user asked for failed (a refused message, a mistyped command): shown as an
    error by the front ends that style lines; ``what`` is the request, ``code`` the broker's."""
    return Line(Kind.ERROR, text, what=what, code=code)


def plural(n: int, word: str) -> str:
    """``1 member``, ``2 members``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def table(rows: list[tuple[str, str]]) -> list[Line]:
    """Two aligned columns, one notice line per row."""
    width = max(len(left) for left, _ in rows)
    return [notice(f"{left.ljust(width)}  {right}".rstrip()) for left, right in rows]


def message(msg: Posted, kind: Kind, me: str) -> Line:
    """A room message; ``me`` is this user's name, to mark its own messages."""
    own = msg.sender == me
    return Line(kind, msg.text, room=msg.room, sender=msg.sender, ts=msg.ts, own=own, seq=msg.seq)
