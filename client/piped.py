"""Line mode, for scripts and tests: stdin is not a terminal.

Output contract (other programs rely on it): one line per event on stdout, flushed at once; a room
message is ``[ROOM] SENDER: TEXT``; everything else starts with ``* ``; ``* joined ROOM`` means the
client now receives every later message of ROOM. Errors that end the program are one line on stderr.

Each input line waits (boundedly) until the previous one has settled, so a script such as
``printf 'hi\\n/join x\\nho\\n'`` gives the same transcript every time; end of input waits for
pending messages to be acknowledged, then leaves like ``/exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from typing import Final

from client.connection import Connection
from client.effects import Line, Stop

SETTLE_WAIT: Final = 5.0
"""Seconds an input line waits for the previous one to settle before it goes anyway."""
EOF_SETTLE_WAIT: Final = 2.0
"""Seconds end of input waits for what is in flight before leaving."""


class Piped:
    """Reads stdin one line at a time and writes plain lines to stdout."""

    def __init__(self) -> None:
        self.broken = False

    def show(self, line: Line) -> None:
        """One rendered line, flushed at once; a closed stdout is ignored from then on."""
        if self.broken:
            return
        try:
            sys.stdout.buffer.write((line.render() + "\n").encode("utf-8", "replace"))
            sys.stdout.buffer.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.broken = True
            # Keep the interpreter from failing again when it flushes stdout at exit.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())

    async def chat(self, conn: Connection) -> Stop:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, conn.end_input)
        reader = asyncio.create_task(self._read(conn))
        try:
            return await conn.run()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    async def _read(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        threading.Thread(target=_read_stdin, args=(loop, lines), name="stdin", daemon=True).start()
        while (line := await lines.get()) is not None:
            await conn.wait_settled(SETTLE_WAIT)
            conn.feed(line)
        await conn.wait_settled(EOF_SETTLE_WAIT)
        conn.end_input()


def _read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    """Hand stdin's lines to the loop, then None at its end.

    A thread, because stdin may be a pipe, a file or /dev/null, and only a pipe can be watched by
    the event loop. It reads the file descriptor directly: a daemon thread blocked inside Python's
    buffered stdin would hold its lock while the interpreter shuts down.
    """

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has already closed: nobody listens
            loop.call_soon_threadsafe(lines.put_nowait, item)

    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        put(None)
        return
    rest = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            break
        *complete, rest = (rest + chunk).split(b"\n")
        for raw in complete:
            put(raw.decode("utf-8", "replace"))
    if rest:
        put(rest.decode("utf-8", "replace"))
    put(None)
