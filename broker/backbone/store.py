"""The ``Store`` of a broker on the NATS backbone: what the chat reads is this broker's mirror
of the stream and the buckets; what it writes goes to the backbone."""

from __future__ import annotations

from broker.backbone.accounts import SharedAccounts
from broker.backbone.events import Record
from broker.backbone.layout import UNREACHABLE
from broker.backbone.node import Backbone
from broker.store.access import Access, Request
from broker.store.base import AuditEntry, Store, StoreError
from broker.store.memory import MemoryStore
from broker.wire import protocol as p


class BackboneStore:
    """The ``Store`` of a broker on the backbone. Messages go to the stream (``append`` returns
    None: the result comes back as an event); what the chat reads (history, sequence numbers,
    the blocklist) is this broker's mirror of the stream and the buckets, updated by the loop
    from the backbone's events so that it changes only between batches. The audit log stays in
    the broker's own database."""

    def __init__(self, backbone: Backbone, local: Store, endpoints: str) -> None:
        """Start the backbone; ``endpoints`` (this broker's) go in its lease."""
        self.backbone = backbone
        self.local = local
        self.mirror = MemoryStore(backbone.keep)
        history, self._blocked, self._access = backbone.start(endpoints)
        for record in history:
            self.mirror_put(record)
        self._pending: list[Record] = []

    def mirror_put(self, record: Record) -> p.Posted:
        return self.mirror.put(record.posted(), record.mid)

    def append(self, room: str, sender: str, text: str, ts: float, mid: int = 0) -> None:
        self._pending.append(Record(room, 0, ts, sender, text, mid))

    def last_seq(self, room: str) -> int:
        return self.mirror.last_seq(room)

    def recent(self, room: str, count: int) -> list[p.Posted]:
        return self.mirror.recent(room, count)

    def range(self, room: str, after: int, upto: int, limit: int) -> tuple[list[p.Posted], int]:
        return self.mirror.range(room, after, upto, limit)

    def acked(self, sender: str, mid: int) -> p.Ack | None:
        return self.mirror.acked(sender, mid)

    def highest_mid(self, sender: str) -> int:
        return self.mirror.highest_mid(sender)

    def rooms(self) -> list[str]:
        return self.mirror.rooms()

    def add_room(self, room: str) -> None:
        self.mirror.add_room(room)

    def remove_room(self, room: str) -> None:
        """Rooms live in the stream, shared by every broker: not removed one broker at a time."""
        if self.mirror.last_seq(room):
            raise StoreError("remove is not available with a backbone: the stream keeps rooms")
        self.mirror.remove_room(room)

    def prune(self, keep: int, before: float, limit: int) -> int:
        """The stream's own limits bound it; the mirror keeps a window."""
        return 0

    def reset(self) -> None:
        """Forget the mirror; the stream itself is purged by the broker that was asked."""
        self.mirror.reset()

    def blocked(self) -> set[str]:
        return self._blocked

    def block(self, name: str) -> bool:
        if name in self._blocked:
            return False
        self._reachable()
        self.backbone.link.call(self.backbone.registry.block(name, True))
        self._blocked.add(name)
        return True

    def unblock(self, name: str) -> bool:
        if name not in self._blocked:
            return False
        self._reachable()
        self.backbone.link.call(self.backbone.registry.block(name, False))
        self._blocked.discard(name)
        return True

    def _reachable(self) -> None:
        """Fail at once while the backbone is known to be away: the loop would otherwise wait
        out ``CALL_TIMEOUT`` for it, and every user of this broker with it."""
        if not self.backbone.link.connected:
            raise StoreError(UNREACHABLE)

    def block_changed(self, name: str, blocked: bool) -> bool:
        """Apply a blocklist change seen on the bucket; True if it is news here."""
        if (name in self._blocked) == blocked:
            return False
        if blocked:
            self._blocked.add(name)
        else:
            self._blocked.discard(name)
        return True

    def claim(self, name: str, session: str, resume: str) -> None:
        """Answered later, by a ``Claimed`` event: the loop never waits for NATS."""
        self.backbone.registry.claim_later(name, session, resume)

    def release(self, name: str, end_session: bool) -> None:
        self.backbone.link.soon(self.backbone.registry.release, name)

    def holder(self, name: str) -> str:
        node = self.backbone.registry.holder(name)
        return "" if node == self.backbone.node else node

    def access(self) -> Access:
        """Shared by every broker (``backbone.access``): as read at the start, then followed
        through ``AccessChanged`` events."""
        return self.backbone.access.snapshot()

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        self.backbone.access.set_private(room, allowed)

    def set_allowed(self, room: str, user: str, allowed: bool) -> None:
        self.backbone.access.set_allowed(room, user, allowed)

    def set_request(self, room: str, user: str, request: Request | None) -> None:
        self.backbone.access.set_request(room, user, request)

    def account_store(self) -> SharedAccounts:
        """Shared by every broker (``backbone.accounts``)."""
        return self.backbone.accounts

    def audit(self, entry: AuditEntry) -> None:
        self.local.audit(entry)

    def audit_log(self, limit: int) -> list[AuditEntry]:
        return self.local.audit_log(limit)

    def commit(self) -> None:
        """The audit is committed here; room messages leave for the stream, whose answers come
        back as events."""
        self.local.commit()
        if self._pending:
            self.backbone.link.soon(self.backbone.stream.submit, self._pending)
            self._pending = []

    def size(self) -> int:
        return self.local.size()

    def close(self) -> None:
        self.backbone.stop()
        self.local.close()
