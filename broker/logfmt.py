"""The broker's log: one line per event, human-readable or JSON, flushed as written.

The loop hands over a batch of events at a time, so a burst of messages costs one write and one
flush, not one per line.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

import msgspec

from broker.chat.outbox import LogEvent
from broker.wire.protocol import CONTROL_CHARS

CHAT_KINDS = frozenset({"msg", "direct", "blocked"})
"""Kinds that ``--quiet`` hides; admin and error lines always show."""


_CHECKED_KINDS = frozenset({"msg", "direct"})
"""Log kinds whose fields the chat has checked: printed as they are (the hot path)."""

_second: list = [None, ""]  # the last whole second formatted, and its text
_milli: list = [None, ""]  # the last millisecond stamped, and its stamp


def stamp(ts: float) -> str:
    """UTC time with milliseconds, ISO 8601. The text of the second, and the whole stamp of the
    millisecond, are reused while they last: every chat message is logged, so this is on the
    broker's hot path, and a flood logs dozens of messages a millisecond."""
    milli = int(ts * 1000)
    if _milli[0] == milli:
        return _milli[1]
    whole = milli // 1000  # from the millisecond: never a ".1000"
    if _second[0] != whole:
        _second[0] = whole
        _second[1] = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _milli[0] = milli
    _milli[1] = text = f"{_second[1]}.{milli - whole * 1000:03d}Z"
    return text


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode()


def format_text(e: LogEvent) -> str:
    """One line. A chat line's fields were checked by the chat (names, printable text); any
    other may carry what a peer sent (a bad frame's reason, a blocked user's text, a name), so
    control characters and line breaks are escaped there: no peer can forge a log line."""
    when = stamp(e.ts)
    if e.kind not in _CHECKED_KINDS:
        e = LogEvent(e.ts, e.kind, *(CONTROL_CHARS.sub(_escaped, f) for f in e[2:]))
    match e.kind:
        case "msg" | "direct":
            return f"{when} [{e.room}] {e.user}: {e.text}"
        case "blocked":
            return f"{when} [{e.room}] {e.user} (blocked, not published): {e.text}"
        case "connect":
            suffix = f" ({e.text})" if e.text else ""
            return f"{when} * {e.user} connected in {e.room}{suffix}"
        case "disconnect":
            return f"{when} * {e.user} disconnected from {e.room}: {e.text}"
        case "enter":
            return f"{when} * {e.user} entered {e.room} ({e.text})"
        case "admin":
            return f"{when} ! admin {e.text}"
        case _:
            return f"{when} ! {e.kind}: {e.text}"


_json = msgspec.json.Encoder()


def format_json(e: LogEvent) -> str:
    record = {"ts": stamp(e.ts), "kind": e.kind, "room": e.room, "user": e.user, "text": e.text}
    return _json.encode(record).decode()


class LogWriter:
    """Writes events to a stream; ``quiet`` drops chat lines, ``fmt`` is "text" or "json"."""

    def __init__(
        self, stream: TextIO | None = None, fmt: str = "text", quiet: bool = False
    ) -> None:
        self.stream = stream or sys.stdout
        self.json = fmt == "json"
        self.format = format_json if self.json else format_text
        self.quiet = quiet

    def events(self, events: Iterable[LogEvent]) -> None:
        fmt, quiet = self.format, self.quiet
        lines = [fmt(e) for e in events if not (quiet and e.kind in CHAT_KINDS)]
        if lines:
            self._write("\n".join(lines) + "\n")

    def line(self, text: str) -> None:
        """A status line (start, stop), shown even when quiet: as it is, or in JSON a record of
        kind ``status``, so that every line of a JSON log parses."""
        if self.json:
            text = format_json(LogEvent(time.time(), "status", text=text))
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # reader went away; serving matters more than logging
            pass
