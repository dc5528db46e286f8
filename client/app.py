"""Run one chat: the handshake, then the front end and the connection together until the end."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

from broker.config import Exit
from client.connection import Connection
from client.control import CurveKeys
from client.core import PROG, Session
from client.effects import Line, Stop


class Frontend(Protocol):
    """What a front end does: show lines, and feed the connection what the user types."""

    def show(self, line: Line) -> None:
        """Show one line (called from the event loop)."""

    async def chat(self, conn: Connection) -> Stop:
        """Run ``conn.run()`` while handing the user's input to ``conn``; return its ``Stop``."""
        ...


def run(
    *,
    servers: str | Sequence[str],
    name: str,
    room: str,
    history: int,
    interactive: bool,
    sub_hwm: int | None = None,
    curve: CurveKeys | None = None,
    password: Callable[[], str | None] = lambda: None,
) -> int:
    """Chat until the user leaves or the broker ends the session; returns the exit code.
    ``servers`` lists the brokers to try in order (see ``client.connection``), or is one."""
    session = Session(name, room, history, track=interactive)
    front: Frontend
    if interactive:
        from client.tui import Tui

        front = Tui(session)
    else:
        from client.piped import Piped

        front = Piped()
    try:
        stop = asyncio.run(_chat(servers, session, front, sub_hwm, curve, password))
    except KeyboardInterrupt:  # before the front end could take the signal over
        stop = Stop(Exit.OK)
    except Exception as exc:  # a bug: still one line, never a traceback
        stop = Stop(Exit.ERROR, f"{PROG}: internal error: {type(exc).__name__}: {exc}")
    if stop.error:
        print(stop.error, file=sys.stderr, flush=True)
    return int(stop.code)


async def _chat(
    servers: str | Sequence[str],
    session: Session,
    front: Frontend,
    sub_hwm: int | None,
    curve: CurveKeys | None = None,
    password: Callable[[], str | None] = lambda: None,
) -> Stop:
    conn = Connection(servers, session, front.show, sub_hwm=sub_hwm, curve=curve, password=password)
    stop: Stop | None = None
    try:
        stop = await conn.handshake()
        if stop is None:
            stop = await front.chat(conn)
    finally:
        await conn.close(clean=stop is not None and stop.code == Exit.OK)
    return stop
