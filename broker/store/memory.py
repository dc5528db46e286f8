"""The store of a broker on its own without a file: everything in process memory (tests,
benchmarks without durability, a backbone broker's mirror of the stream)."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final

from broker.store.access import Access, Request
from broker.store.accounts import MemoryAccounts
from broker.store.base import AuditEntry
from broker.store.names import LocalNames
from broker.store.window import Window
from broker.wire.protocol import LOBBY, Ack, Code, Posted

MEMORY_ACKS_KEPT: Final = 10_000
"""Message ids a MemoryStore remembers per sender (SQLite remembers every one)."""
AUDIT_KEPT: Final = 10_000
"""Audit entries a MemoryStore keeps (the SQLite store keeps them all)."""


class _RoomLog:
    """One room's recent messages (a bounded window) and its sequence counter."""

    __slots__ = ("seq", "window")

    def __init__(self, keep: int) -> None:
        self.seq = 0
        self.window = Window(keep)


class LocalAccess:
    """Room access kept in memory (gone when the broker stops): ``MemoryStore``'s part."""

    def __init__(self) -> None:
        self._access = Access()

    def reset(self) -> None:
        self._access = Access()

    def access(self) -> Access:
        a = self._access
        private = {room: set(users) for room, users in a.private.items()}
        return Access(private, {room: dict(users) for room, users in a.requests.items()})

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        if allowed is None:
            self._access.private.pop(room, None)
            self._access.requests.pop(room, None)
        else:
            self._access.private.setdefault(room, set()).update(allowed)

    def set_allowed(self, room: str, user: str, allowed: bool) -> None:
        users = self._access.private.setdefault(room, set())
        if allowed:
            users.add(user)
        else:
            users.discard(user)

    def set_request(self, room: str, user: str, request: Request | None) -> None:
        if request is None:
            self._access.requests.get(room, {}).pop(user, None)
        else:
            self._access.requests.setdefault(room, {})[user] = request


class MemoryStore:
    """Everything in process memory: fast, and gone when the broker stops. Its name claims
    (``LocalNames``) and room access (``LocalAccess``) are parts it answers with."""

    def __init__(self, keep: int = 10_000) -> None:
        self._names = LocalNames()
        self._access = LocalAccess()
        self._accounts = MemoryAccounts()
        self._keep = keep
        self._rooms: dict[str, _RoomLog] = {LOBBY: _RoomLog(keep)}
        self._blocked: set[str] = set()
        self._acks: dict[str, OrderedDict[int, Ack]] = {}
        """By sender, the ids of stored messages, oldest first (at most MEMORY_ACKS_KEPT)."""
        self._audit: deque[AuditEntry] = deque(maxlen=AUDIT_KEPT)

    def append(self, room: str, sender: str, text: str, ts: float, mid: int = 0) -> Posted:
        log = self._rooms.get(room) or self._new_room(room)
        log.seq += 1
        posted = Posted(room, log.seq, ts, sender, text)
        log.window.add(posted)
        if mid:
            self._remember(sender, Ack(mid, room, log.seq))
        return posted

    def _remember(self, sender: str, ack: Ack) -> None:
        acks = self._acks.get(sender)
        if acks is None:
            acks = self._acks[sender] = OrderedDict()
        acks[ack.mid] = ack
        if len(acks) > MEMORY_ACKS_KEPT:
            # OrderedDict, not dict: ``del d[next(iter(d))]`` on a dict walks past every slot
            # deleted before, 5 us a message at 10,000 kept (a tenth of a mirroring broker's
            # time in the cluster bench's profile); popitem(last=False) is O(1).
            acks.popitem(last=False)

    def last_seq(self, room: str) -> int:
        log = self._rooms.get(room)
        return log.seq if log else 0

    def recent(self, room: str, count: int) -> list[Posted]:
        log = self._rooms.get(room)
        if not log:
            return []
        return log.window.newest(count, log.window.first()) or []

    def range(self, room: str, after: int, upto: int, limit: int) -> tuple[list[Posted], int]:
        log = self._rooms.get(room)
        if not log or not log.window.messages:
            return [], (log.seq + 1 if log else 1)
        first = log.window.first()
        upto = log.seq if upto <= 0 else min(upto, log.seq)
        start = max(after + 1, first)
        stop = min(upto, start + limit - 1)
        if stop < start:
            return [], first
        return log.window.slice(start, stop) or [], first

    def acked(self, sender: str, mid: int) -> Ack | None:
        return self._acks.get(sender, {}).get(mid)

    def highest_mid(self, sender: str) -> int:
        return max(self._acks.get(sender, {0: None}))

    def rooms(self) -> list[str]:
        return list(self._rooms)

    def add_room(self, room: str) -> None:
        if room not in self._rooms:
            self._new_room(room)

    def remove_room(self, room: str) -> None:
        self._rooms.pop(room, None)

    def prune(self, keep: int, before: float, limit: int) -> int:
        """The window already keeps at most ``keep`` (the smaller of both); old ones go here."""
        pruned = 0
        for log in self._rooms.values():
            messages = log.window.messages
            while messages and pruned < limit and messages[0].ts < before:
                log.window.drop_oldest()
                pruned += 1
        return pruned

    def reset(self) -> None:
        self._rooms = {LOBBY: _RoomLog(self._keep)}
        self._acks.clear()
        self._names.reset()
        self._access.reset()

    def blocked(self) -> set[str]:
        return self._blocked

    def claim(self, name: str, session: str, resume: str) -> str | Code:
        return self._names.claim(name, session, resume)

    def release(self, name: str, end_session: bool) -> None:
        self._names.release(name, end_session)

    def holder(self, name: str) -> str:
        return self._names.holder(name)

    def access(self) -> Access:
        return self._access.access()

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        self._access.set_private(room, allowed)

    def set_allowed(self, room: str, user: str, allowed: bool) -> None:
        self._access.set_allowed(room, user, allowed)

    def set_request(self, room: str, user: str, request: Request | None) -> None:
        self._access.set_request(room, user, request)

    def block(self, name: str) -> bool:
        added = name not in self._blocked
        self._blocked.add(name)
        return added

    def unblock(self, name: str) -> bool:
        if name in self._blocked:
            self._blocked.discard(name)
            return True
        return False

    def put(self, posted: Posted, mid: int = 0) -> Posted:
        """Mirror a message stored elsewhere, numbered there. A number at or below the room's
        last means the room started over (a reset on the backbone): its window is dropped."""
        log = self._rooms.get(posted.room) or self._new_room(posted.room)
        if posted.seq <= log.seq:
            log.window.clear()
        log.seq = posted.seq
        log.window.add(posted)
        if mid:
            self._remember(posted.sender, Ack(mid, posted.room, posted.seq))
        return posted

    def account_store(self) -> MemoryAccounts:
        return self._accounts

    def audit(self, entry: AuditEntry) -> None:
        self._audit.append(entry)

    def audit_log(self, limit: int) -> list[AuditEntry]:
        return list(self._audit)[-limit:] if limit > 0 else []

    def commit(self) -> None:
        """Nothing to make durable in memory."""

    def size(self) -> int:
        return 0

    def close(self) -> None:
        """Nothing to release."""

    def _new_room(self, room: str) -> _RoomLog:
        log = self._rooms[room] = _RoomLog(self._keep)
        return log
