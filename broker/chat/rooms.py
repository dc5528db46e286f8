"""Rooms: joining (and making) one, history for its members, and rooms that come and go.

A room is made by the first join, if the room cap (rooms someone is in) and the user's budget
of new rooms allow; one that nothing was said in goes with its last member. History is for the
room's members only, and what one client is answered is bounded in bytes. Part of
``state.Chat``, apart because it is one story.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from broker.chat.users import User
from broker.config import ANSWER_BYTES, FETCH_TOKEN_BYTES
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.chat.chat import Chat

    _Base = Chat
else:
    _Base = object

_POSTED_OVERHEAD: Final = 32
"""About what a stored message adds to its text and names on the wire."""


def _size(message: p.Posted) -> int:
    """About the bytes of ``message`` on the wire (characters, not UTF-8 bytes: a bound for
    budgets, not an exact count)."""
    return len(message.text) + len(message.sender) + len(message.room) + _POSTED_OVERHEAD


class Rooms(_Base):
    """The room rules of ``Chat`` (a mixin: it uses the chat's users, store and outbox)."""

    def _join(self, user: User, room: str, history: int, now: float, forced: bool = False) -> None:
        if not p.valid_name(room):
            self.error(user.peer, p.Code.BAD_ROOM, f"invalid room {room!r}: use {p.NAME_RULE}")
            return
        if not forced and user.room != room and not self.access.may_enter(user.name, room):
            self._request_join(user, room, history, now)
            return
        if room not in self.members:
            refusal = self._new_room_refusal(user, now)
            if refusal is not None:
                self.error(user.peer, *refusal)
                return
            self.members[room] = set()
            self.store.add_room(room)
        old = user.room
        if old != room:
            self.members[old].discard(user.name)
            self.out.publish(old, p.Presence(old, user.name, p.PresenceKind.LEFT))
            self._drop_if_unused(old)
            user.room = room
            self.members[room].add(user.name)
            self.out.publish(room, p.Presence(room, user.name, p.PresenceKind.ENTERED))
            self.out.log(now, "enter", room, user.name, f"from {old}")
        else:  # a client that lost its key asks again this way (spec: "Sealed rooms")
            self.out.want_key(user.peer, room)
        recent = self.store.recent(room, history)
        if recent:
            budget = max(0, ANSWER_BYTES - self.out.answered.get(user.peer, 0))
            recent = self._answer(user, recent, budget, newest=True)
        self.out.reply(user.peer, p.Joined(room, self.store.last_seq(room), recent, forced))

    def move(self, user: User, room: str, now: float) -> None:
        """Put a user in ``room`` on the admin's word (``out``)."""
        self._join(user, room, 0, now, forced=True)

    def _fetch(self, user: User, msg: p.Fetch, now: float) -> None:
        """History is for members: only the user's own room can be read. What one client is
        answered is bounded: per turn of the loop (``ANSWER_BYTES``), by its rate budget, and
        not at all while its queue is full (it does not read)."""
        if msg.room != user.room:
            if not p.valid_name(msg.room):
                reason = f"invalid room {msg.room!r}: use {p.NAME_RULE}"
                self.error(user.peer, p.Code.BAD_ROOM, reason)
            else:
                reason = f"you are not in {msg.room}: join it to read its history"
                self.error(user.peer, p.Code.NOT_MEMBER, reason)
            return
        budget = ANSWER_BYTES - self.out.answered.get(user.peer, 0)
        if budget < ANSWER_BYTES // 2 or user.peer in self.stalled or not self._afford(user, now):
            reason = "history is asked faster than it is read: read the answers, then ask again"
            self.error(user.peer, p.Code.BUSY, reason)
            return
        messages, first = self.store.range(msg.room, msg.after, msg.upto, msg.limit)
        messages = self._answer(user, messages, budget, newest=False)
        self.counters.fetched += len(messages)
        self.out.reply(user.peer, p.Messages(msg.room, messages, first))

    def _answer(
        self, user: User, messages: list[p.Posted], budget: int, newest: bool
    ) -> list[p.Posted]:
        """``messages`` cut to ``budget`` bytes (keeping the oldest, or the ``newest``), charged
        to the user's batch and rate budget."""
        total = 0
        kept = 0
        for m in reversed(messages) if newest else messages:
            total += _size(m)
            if total > budget and kept:
                total -= _size(m)
                break
            kept += 1
        if kept < len(messages):
            messages = messages[len(messages) - kept :] if newest else messages[:kept]
        self.out.answered[user.peer] = self.out.answered.get(user.peer, 0) + total
        if self.settings.rate > 0:
            user.tokens -= total / FETCH_TOKEN_BYTES
        return messages

    def _new_room_refusal(self, user: User, now: float) -> tuple[p.Code, str] | None:
        """Rooms are free to create, within limits: the cap counts rooms someone is in, and
        each user may create ``new_rooms`` a minute."""
        limits = self.settings.limits
        if sum(1 for names in self.members.values() if names) >= limits.max_rooms:
            return p.Code.FULL, "the broker is at its room limit: join another"
        per_second = limits.new_rooms / 60
        user.new_rooms = min(
            limits.new_rooms, user.new_rooms + (now - user.new_rooms_at) * per_second
        )
        user.new_rooms_at = now
        if user.new_rooms < 1:
            reason = (
                f"slow down: at most {limits.new_rooms} new rooms a minute; join one that exists"
            )
            return p.Code.RATE_LIMITED, reason
        user.new_rooms -= 1
        return None

    def _drop_if_unused(self, room: str) -> None:
        """A room nobody is in and nothing was ever said in goes (the lobby stays)."""
        if (
            room != p.LOBBY
            and not self.members.get(room, True)
            and not self.store.last_seq(room)
            and not self.access.is_private(room)
        ):
            del self.members[room]
            self.store.remove_room(room)

    def remove_room(self, room: str, now: float) -> list[str]:
        """The admin removes ``room`` and its history: its members are put in the lobby. Returns
        who was moved."""
        moved = sorted(self.members.get(room, ()))
        for name in moved:
            self.out.publish(room, p.Presence(room, name, p.PresenceKind.OUT))
            self._join(self.users[name], p.LOBBY, 0, now, forced=True)
        self.store.remove_room(room)
        self.members.pop(room, None)
        self.forget_access(room)
        return moved

    def prune(self, limit: int, now: float) -> int:
        """Retention: old messages go a few at a time, at each tick (bounded work in the loop)."""
        limits = self.settings.limits
        before = now - limits.keep_days * 86_400 if limits.keep_days > 0 else 0.0
        return self.store.prune(limits.keep_messages, before, limit)

    def room_list(self, allowed: bool = False) -> list[p.RoomInfo]:
        """Every room; with ``allowed`` (the admin's view), who may enter each private one."""
        private = self.access.private
        return [
            p.RoomInfo(
                room,
                len(names),
                self.store.last_seq(room),
                room in private,
                sorted(private[room]) if allowed and room in private else [],
            )
            for room, names in sorted(self.members.items())
        ]
