"""Name claims and sessions, the same in every store of a broker on its own: the chat's users are
every name held; kept here is each session's secret, which outlives its connection, so that a
client silent for longer than the heartbeat timeout resumes the same session (and, with SQLite, a
client of a broker that restarted). A session ends at /exit, fire and reset, or when a new
session takes its name."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final

from broker.wire.protocol import Code

SESSIONS_KEPT: Final = 100_000
"""Sessions a broker keeps for resuming; a new one beyond that ends the oldest."""

SessionSaved = Callable[[str, str | None], None]
"""Told of each session that starts (name, secret) or ends (name, None): a durable store writes
it in its batch."""


def _unsaved(name: str, secret: str | None) -> None:
    """In memory: nothing to write."""


class LocalNames:
    """Name claims of a broker on its own: ``MemoryStore`` and ``SQLiteStore`` each hold one, and
    answer ``claim``, ``release`` and ``holder`` with it."""

    def __init__(
        self, sessions: dict[str, str] | None = None, saved: SessionSaved = _unsaved
    ) -> None:
        self._sessions: dict[str, str] = sessions or {}
        self._saved = saved

    def claim(self, name: str, session: str, resume: str) -> str | Code:
        """A new session goes last; past ``SESSIONS_KEPT`` the oldest ends (its client, if it
        ever resumes, is told ``bad_session`` and starts anew): endless new names cost a bound."""
        if resume:
            known = self._sessions.get(name)
            if known is None or not secrets.compare_digest(known.encode(), resume.encode()):
                return Code.BAD_SESSION
            return known
        self._sessions.pop(name, None)
        self._sessions[name] = session
        self._saved(name, session)
        if len(self._sessions) > SESSIONS_KEPT:
            oldest = next(iter(self._sessions))
            del self._sessions[oldest]
            self._saved(oldest, None)
        return session

    def release(self, name: str, end_session: bool) -> None:
        if end_session and self._sessions.pop(name, None) is not None:
            self._saved(name, None)

    def holder(self, name: str) -> str:
        """Nothing is held outside the chat."""
        return ""

    def reset(self) -> None:
        """Every session ends (the store's own reset writes that, if it is durable)."""
        self._sessions.clear()
