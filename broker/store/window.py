"""A room's newest messages in memory: the window a join's history and a gap's repair are read
from without touching the disk.

A window is contiguous: it holds every message from its first sequence number to the room's
newest, so a range that starts inside it is answered from it exactly. It is bounded by a count and,
optionally, by the characters of text it holds, always keeping the newest message.
``MemoryStore`` keeps its whole history in windows; the SQLite store keeps a short one per room so
that a ``Join`` or a ``Fetch`` during a flood never waits for the row writer.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from broker.wire.protocol import Posted


class Window:
    """The newest ``keep`` messages of one room (and at most ``max_chars`` of text, if given)."""

    __slots__ = ("chars", "keep", "max_chars", "messages")

    def __init__(self, keep: int, max_chars: int = 0) -> None:
        self.keep = keep
        self.max_chars = max_chars
        self.chars = 0
        self.messages: deque[Posted] = deque()

    def add(self, posted: Posted) -> None:
        """The room's next message (its seq is one above the last one held)."""
        messages = self.messages
        messages.append(posted)
        if self.max_chars:
            self.chars += len(posted.text)
            while self.chars > self.max_chars and len(messages) > 1:
                self.chars -= len(messages.popleft().text)
        if len(messages) > self.keep:
            self.chars -= len(messages.popleft().text)

    def first(self) -> int:
        """The oldest seq held, 0 when empty."""
        return self.messages[0].seq if self.messages else 0

    def newest(self, count: int, oldest: int) -> list[Posted] | None:
        """The newest ``count``, oldest first; None when fewer are held than asked and the
        window does not reach back to ``oldest``, the room's oldest stored message."""
        messages = self.messages
        if count <= 0:
            return []
        if count <= len(messages) or (messages and messages[0].seq <= oldest):
            return list(islice(reversed(messages), count))[::-1]
        return None

    def slice(self, start: int, stop: int) -> list[Posted] | None:
        """Messages ``start <= seq <= stop`` (``stop`` at most the newest held); None when the
        window starts after ``start``."""
        messages = self.messages
        if not messages or messages[0].seq > start:
            return None
        offset = start - messages[0].seq
        return [messages[i] for i in range(offset, offset + stop - start + 1)]

    def drop_oldest(self) -> None:
        self.chars -= len(self.messages.popleft().text)

    def drop_upto(self, seq: int) -> None:
        """Forget ``seq`` and older (they were pruned)."""
        messages = self.messages
        while messages and messages[0].seq <= seq:
            self.drop_oldest()

    def drop_after(self, seq: int) -> None:
        """Forget what is newer than ``seq`` (a batch that failed to commit)."""
        messages = self.messages
        while messages and messages[-1].seq > seq:
            self.chars -= len(messages.pop().text)

    def clear(self) -> None:
        self.messages.clear()
        self.chars = 0
