"""Interactive mode on a terminal: a prompt at the bottom, incoming lines printed above it.

prompt_toolkit redraws the input line around every printed line, so nothing typed is garbled. Kept
modest on purpose: local ``HH:MM`` before room messages, own messages bold, notices dim, errors red.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from .connection import Connection
from .core import Kind, Line, Session, Stop

STYLE = Style.from_dict(
    {
        "time": "fg:ansibrightblack",
        "message": "",
        "own": "bold",
        "history": "fg:ansibrightblack",
        "notice": "dim",
        "error": "fg:ansired",
        "prompt": "bold",
    }
)


class Tui:
    """The prompt_toolkit front end."""

    def __init__(self, session: Session) -> None:
        self.session = session
        # A terminal that never answers a cursor position request would make prompt_toolkit
        # print a warning into the chat; the prompt does not need the answer.
        os.environ.setdefault("PROMPT_TOOLKIT_NO_CPR", "1")

    def show(self, line: Line) -> None:
        """Print one line above the prompt, styled by kind, the text itself left contiguous."""
        if line.kind in (Kind.MESSAGE, Kind.HISTORY):
            stamp = time.strftime("%H:%M", time.localtime(line.ts or time.time()))
            if line.kind is Kind.HISTORY:
                style = "class:history"
            else:
                style = "class:own" if line.own else "class:message"
            fragments = [("class:time", f"{stamp} "), (style, line.render())]
        else:
            style = "class:error" if line.kind is Kind.ERROR else "class:notice"
            fragments = [(style, line.render())]
        print_formatted_text(FormattedText(fragments), style=STYLE)

    def _prompt(self) -> FormattedText:
        s = self.session
        return FormattedText([("class:prompt", f"[{s.room or s.want_room}] {s.name}> ")])

    async def chat(self, conn: Connection) -> Stop:
        with patch_stdout(raw=True):
            prompting = asyncio.create_task(self._read(conn))
            try:
                return await conn.run()
            finally:
                prompting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prompting

    async def _read(self, conn: Connection) -> None:
        prompt: PromptSession[str] = PromptSession(style=STYLE, erase_when_done=True)
        while True:
            try:
                line = await prompt.prompt_async(self._prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: leave as /exit does
                conn.end_input()
                return
            conn.feed(line)
