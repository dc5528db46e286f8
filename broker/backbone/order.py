"""Which stored batches count: the rule every broker applies to the stream, in stream order.

The writer stores a room's batch on the condition that the room's subject ends where it thinks
(``Nats-Expected-Last-Subject-Sequence``). A single nats-server checks that under a lock; a
clustered stream (R3, nats-server 2.9) checks it against what is applied, not against what is
being replicated, so two brokers racing for the same room may both get their batch stored with
the same room numbers. The stream's order is the same for everyone, though, so every broker keeps
a batch only if it takes up the room's numbering where the last kept one ended, and skips the
other: the same batches on every broker, and dense numbers. The writer of a skipped batch learns
it from its own consumer (``Stream``) and writes it again; only a kept batch is acknowledged.

Pure: no NATS here.
"""

from __future__ import annotations

from broker.backbone.events import Record


class Order:
    """The last room number kept per room, from the stream as read so far."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def admit(self, records: list[Record]) -> bool:
        """Whether a batch counts. An empty batch is a reset's marker: every room starts over.
        The first batch seen of a room counts whatever its number (the stream may keep only a
        room's latest messages); after it, a batch counts if its first number follows."""
        if not records:
            self.last.clear()
            return True
        room, first = records[0].room, records[0].seq
        last = self.last.get(room)
        if last is not None and first != last + 1:
            return False
        self.last[room] = records[-1].seq
        return True
