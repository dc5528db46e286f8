"""Interactive mode on a terminal: a prompt and a status bar at the bottom, lines printed above.

prompt_toolkit's ``patch_stdout`` prints each line above the prompt and then redraws the prompt, so
neither a burst of messages nor a resize garbles the line being typed, and what was printed stays in
the terminal's own scrollback. This module only reads the session (``client.core.Session``): the
status bar shows its name, room, members, connection state and whether the user is blocked, and Tab
completes its commands, rooms and users. Up and down walk through the lines typed before.

The styling is pure (``fragments``, ``status``): local ``HH:MM`` before messages, each sender in a
colour of its own (the same in every run), the user's own messages bold, ``@name`` mentions of the
user highlighted, history dim and marked ``~``, notices dim, errors red.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Final

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import get_app_or_none
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from broker.wire.protocol import VERSION, Register
from broker.wire.scram import verifier
from client.commands import HELP
from client.connection import Connection
from client.core import Session
from client.effects import Kind, Line, Stop, clean
from client.lines import failure

STYLE: Final = Style.from_dict(
    {
        "time": "fg:ansibrightblack",
        "room": "fg:ansibrightblack",
        "own": "bold",
        "history": "fg:ansibrightblack",
        "mention": "bold fg:ansiblack bg:ansiyellow",
        "direct": "bold fg:ansimagenta",
        "notice": "fg:ansibrightblack",
        "error": "fg:ansired",
        "prompt": "bold",
        "bottom-toolbar": "noreverse bg:ansiblue fg:ansiwhite",
        "bottom-toolbar.name": "bold",
        "bottom-toolbar.bad": "bold fg:ansiyellow",
    }
)

PALETTE: Final = (
    "ansicyan",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansibrightcyan",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
)

COMMANDS: Final = tuple(usage.split()[0] for usage, _ in HELP if not usage.startswith("//"))
"""The commands Tab completes, from the session's own ``/help``."""
_ROOM_ARG: Final = frozenset({"/join", "/who"})
_USER_ARG: Final = frozenset({"/msg"})
_NO_ARG: Final = frozenset(c for c, *rest in (u.split() for u, _ in HELP) if not rest)
_LEAVE_ON: Final = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGTERM") if hasattr(signal, name)
)
MEMBERS_SHOWN: Final = 40
"""Characters of member names the status bar shows before it says "and N more"."""

Fragments = list[tuple[str, str]]


def sender_style(name: str) -> str:
    """A colour of the sender's own: from the name alone, so the same in every run and client."""
    return "fg:" + PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


def _stamp(ts: float, now: float) -> str:
    """Local ``HH:MM``; with the day (``MM-DD HH:MM``) for an older day's message."""
    when = time.localtime(ts or now)
    if time.strftime("%Y%m%d", when) != time.strftime("%Y%m%d", time.localtime(now)):
        return time.strftime("%m-%d %H:%M", when)
    return time.strftime("%H:%M", when)


def _text(text: str, me: str, style: str) -> Fragments:
    """The message text, with mentions of ``me`` (``@me``) highlighted."""
    text = clean(text)
    mention = re.compile(rf"(?<![\w@-])@{re.escape(me)}(?![\w-])", re.IGNORECASE)
    out: Fragments = []
    at = 0
    for m in mention.finditer(text):
        out += [(style, text[at : m.start()]), ("class:mention", m.group())]
        at = m.end()
    out.append((style, text[at:]))
    return [f for f in out if f[1]]


def fragments(line: Line, me: str, now: float | None = None) -> Fragments:
    """One line, styled: its plain text is the piped-mode line, with the time before a message
    (and ``~`` before history)."""
    now = time.time() if now is None else now
    if line.kind in (Kind.MESSAGE, Kind.HISTORY, Kind.DIRECT):
        history = line.kind is Kind.HISTORY
        dim = "class:history " if history else ""
        text_style = dim + ("class:own" if line.own else "")
        sender = dim + sender_style(line.sender) + (" bold" if line.own else "")
        where = (
            [("class:direct", f"[@{line.to}] ")]
            if line.kind is Kind.DIRECT
            else [(dim + "class:room", f"[{line.room}] ")]
        )
        return [
            *([("class:history", "~ ")] if history else []),
            ("class:time", _stamp(line.ts, now) + " "),
            *where,
            (sender, line.sender),
            (text_style, ": "),
            *_text(line.text, me, text_style),
        ]
    style = "class:error" if line.kind is Kind.ERROR else "class:notice"
    return [(style, line.render())]


def status(session: Session, width: int = 0) -> Fragments:
    """The status bar: name, room, members, connection state, and a block if any. Member names
    only while the bar fits in ``width`` (0: any width); the rest comes first."""
    s = session
    members = s.members()
    shown = ", ".join(members)
    if len(shown) > MEMBERS_SHOWN:
        cut = shown[:MEMBERS_SHOWN].rsplit(", ", 1)[0]
        shown = f"{cut} and {len(members) - cut.count(', ') - 1} more"
    bar = _status(s, len(members), shown)
    if width and shown and sum(len(t) for _, t in bar) > width:
        bar = _status(s, len(members), "")
    return bar


def _status(s: Session, count: int, shown: str) -> Fragments:
    members = f"{count} member{'' if count == 1 else 's'}" + (f": {shown}" if shown else "")
    state = s.state
    bar = "class:bottom-toolbar"
    out: Fragments = [
        (bar + ".name", f" {s.name} "),
        (bar, f"| {s.room or s.want_room} | {members} | "),
        (bar + ("" if state == "connected" else ".bad"), state),
    ]
    if s.is_blocked:
        out += [(bar, " | "), (bar + ".bad", "blocked")]
    return [*out, (bar, " ")]


class ChatCompleter(Completer):
    """Tab completion from what the session knows: commands, then rooms after ``/join`` and
    ``/who``, users after ``/msg``, and ``@user`` anywhere in a message."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        words = document.text_before_cursor.split(" ")
        word = words[-1]
        if len(words) == 1 and word.startswith("/") and not word.startswith("//"):
            yield from _matching(word, (c if c in _NO_ARG else c + " " for c in COMMANDS))
        elif len(words) == 2 and words[0] in _ROOM_ARG:
            yield from _matching(word, self.session.room_names())
        elif len(words) == 2 and words[0] in _USER_ARG:
            yield from _matching(word, (u + " " for u in self.session.user_names()))
        elif word.startswith("@"):
            yield from _matching(word, ("@" + u for u in self.session.user_names()))


def _matching(word: str, candidates: Iterable[str]) -> Iterator[Completion]:
    for candidate in candidates:
        if candidate.startswith(word) and candidate != word:
            yield Completion(candidate, start_position=-len(word), display=candidate.strip())


class Tui:
    """The prompt_toolkit front end."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def show(self, line: Line) -> None:
        """Print one line above the prompt (and the status bar), styled."""
        text = FormattedText(fragments(line, self.session.name))
        print_formatted_text(text, style=STYLE)

    def _prompt(self) -> FormattedText:
        s = self.session
        return FormattedText([("class:prompt", f"[{s.room or s.want_room}] {s.name}> ")])

    def _status(self) -> FormattedText:
        app = get_app_or_none()
        width = app.output.get_size().columns if app is not None else 0
        return FormattedText(status(self.session, width))

    async def chat(self, conn: Connection) -> Stop:
        loop = asyncio.get_running_loop()
        for sig in _LEAVE_ON:  # the terminal closed, or a kill: leave as /exit does
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, conn.end_input)
        with patch_stdout(raw=True):
            prompting = asyncio.create_task(self._read(conn))
            try:
                return await conn.run()
            finally:
                prompting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prompting
                for sig in _LEAVE_ON:
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.remove_signal_handler(sig)

    async def _read(self, conn: Connection) -> None:
        prompt: PromptSession[str] = PromptSession(
            style=STYLE,
            erase_when_done=True,
            bottom_toolbar=self._status,
            completer=ChatCompleter(self.session),
            complete_while_typing=False,  # Tab completes; typing alone never pops a menu
            reserve_space_for_menu=0,
            refresh_interval=0.5,  # the status bar follows the session between lines too
        )
        # prompt_toolkit draws the status bar once the terminal has said where the cursor is (a
        # cursor position report). A terminal that never answers gets no status bar, and no
        # warning printed into the chat either.
        prompt.app.renderer.cpr_not_supported_callback = None
        while True:
            try:
                line = await prompt.prompt_async(self._prompt)
            except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: leave as /exit does
                conn.end_input()
                return
            if line.split() == ["/passwd"]:
                await self._passwd(conn)
                continue
            conn.feed(line)

    async def _passwd(self, conn: Connection) -> None:
        """``/passwd``: the new password twice, unechoed and in a prompt of its own (kept out of
        the lines' history), its SCRAM verifier derived off the loop, then sent."""
        asking: PromptSession[str] = PromptSession(style=STYLE, erase_when_done=True)
        try:
            first = await asking.prompt_async("New password: ", is_password=True)
            again = await asking.prompt_async("Again: ", is_password=True)
        except (EOFError, KeyboardInterrupt):
            first, again = "", "cancelled"
        if not first or first != again:
            self.show(failure("the passwords were empty or not the same: nothing changed"))
            return
        v = await asyncio.get_running_loop().run_in_executor(None, verifier, first)
        name = self.session.name
        register = Register(VERSION, name, "", v.salt, v.iterations, v.stored_key, v.server_key)
        conn.call(lambda now: self.session.change_password(register, now))
