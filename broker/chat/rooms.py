"""Rooms: joining (and making) one, history for its members, and rooms that come and go.

A room is made by the first join, if the room cap (rooms someone is in) and the user's budget
of new rooms allow; one that nothing was said in goes with its last member. History is for the
room's members only, and what one client is answered is bounded in bytes and drawn from the
user's rate budget (``Posting.afford``). A Join of a private room the user may not enter becomes
a request that waits for the admin (``privaterooms`` answers it); a removed room's access goes
with it. Uses the shared ``State`` and ``Posting``.
"""

from __future__ import annotations

from typing import Final

from broker.chat.posting import Posting
from broker.chat.state import State
from broker.chat.users import User
from broker.config import ANSWER_BYTES, FETCH_TOKEN_BYTES
from broker.store.access import Request
from broker.wire import protocol as p

_POSTED_OVERHEAD: Final = 32
"""About what a stored message adds to its text and names on the wire."""


def _size(message: p.Posted) -> int:
    """About the bytes of ``message`` on the wire (characters, not UTF-8 bytes: a bound for
    budgets, not an exact count)."""
    return len(message.text) + len(message.sender) + len(message.room) + _POSTED_OVERHEAD


class Rooms:
    """The room rules: who is in which room, its history, its coming and going."""

    def __init__(self, state: State, posting: Posting) -> None:
        self.state = state
        self.posting = posting

    def join(self, user: User, room: str, history: int, now: float, forced: bool = False) -> None:
        """Put ``user`` in ``room`` (made if needed) and answer with its recent history; a
        ``forced`` join (the admin's) goes in whatever the room's access."""
        state = self.state
        if not p.valid_name(room):
            state.error(user.peer, p.Code.BAD_ROOM, f"invalid room {room!r}: use {p.NAME_RULE}")
            return
        if not forced and user.room != room and not state.access.may_enter(user.name, room):
            self._request_join(user, room, history, now)
            return
        members, out = state.members, state.out
        if room not in members:
            refusal = self._new_room_refusal(user, now)
            if refusal is not None:
                state.error(user.peer, *refusal)
                return
            members[room] = set()
            state.store.add_room(room)
        old = user.room
        if old != room:
            members[old].discard(user.name)
            out.publish(old, p.Presence(old, user.name, p.PresenceKind.LEFT))
            self.drop_if_unused(old)
            user.room = room
            user.moves += 1
            members[room].add(user.name)
            out.publish(room, p.Presence(room, user.name, p.PresenceKind.ENTERED))
            out.log(now, "enter", room, user.name, f"from {old}")
        else:  # a client that lost its key asks again this way (spec: "Sealed rooms")
            out.want_key(user.peer, room)
        recent = state.store.recent(room, history)
        if recent:
            budget = max(0, ANSWER_BYTES - out.answered.get(user.peer, 0))
            recent = self._answer(user, recent, budget, newest=True)
        out.reply(user.peer, p.Joined(room, state.store.last_seq(room), recent, forced))

    def _request_join(self, user: User, room: str, history: int, now: float) -> None:
        """``user`` may not enter ``room``: the Join waits for the admin."""
        state = self.state
        request = Request(now, history)
        state.access.requests.setdefault(room, {})[user.name] = request
        state.store.set_request(room, user.name, request)
        state.out.reply(user.peer, p.JoinRequested(room))
        state.out.log(
            now, "request", room, user.name, f"{user.name} asked to join {room} (private)"
        )

    def move(self, user: User, room: str, now: float) -> None:
        """Put a user in ``room`` on the admin's word (``out``)."""
        self.join(user, room, 0, now, forced=True)

    def fetch(self, user: User, msg: p.Fetch, now: float) -> None:
        """History is for members: only the user's own room can be read. What one client is
        answered is bounded: per turn of the loop (``ANSWER_BYTES``), by its rate budget, and
        not at all while its queue is full (it does not read)."""
        state = self.state
        if msg.room != user.room:
            if not p.valid_name(msg.room):
                reason = f"invalid room {msg.room!r}: use {p.NAME_RULE}"
                state.error(user.peer, p.Code.BAD_ROOM, reason)
            else:
                reason = f"you are not in {msg.room}: join it to read its history"
                state.error(user.peer, p.Code.NOT_MEMBER, reason)
            return
        budget = ANSWER_BYTES - state.out.answered.get(user.peer, 0)
        if (
            budget < ANSWER_BYTES // 2
            or user.peer in state.stalled
            or not self.posting.afford(user, now)
        ):
            reason = "history is asked faster than it is read: read the answers, then ask again"
            state.error(user.peer, p.Code.BUSY, reason)
            return
        messages, first = state.store.range(msg.room, msg.after, msg.upto, msg.limit)
        messages = self._answer(user, messages, budget, newest=False)
        state.counters.fetched += len(messages)
        state.out.reply(user.peer, p.Messages(msg.room, messages, first))

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
        answered = self.state.out.answered
        answered[user.peer] = answered.get(user.peer, 0) + total
        if self.state.settings.rate > 0:
            user.tokens -= total / FETCH_TOKEN_BYTES
        return messages

    def _new_room_refusal(self, user: User, now: float) -> tuple[p.Code, str] | None:
        """Rooms are free to create, within limits: the cap counts rooms someone is in, and
        each user may create ``new_rooms`` a minute."""
        limits = self.state.settings.limits
        if sum(1 for names in self.state.members.values() if names) >= limits.max_rooms:
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

    def drop_if_unused(self, room: str) -> None:
        """A room nobody is in and nothing was ever said in goes (the lobby stays)."""
        state = self.state
        if (
            room != p.LOBBY
            and not state.members.get(room, True)
            and not state.store.last_seq(room)
            and not state.access.is_private(room)
        ):
            del state.members[room]
            state.store.remove_room(room)

    def remove_room(self, room: str, now: float) -> list[str]:
        """The admin removes ``room`` and its history: its members are put in the lobby. Returns
        who was moved."""
        state = self.state
        moved = sorted(state.members.get(room, ()))
        for name in moved:
            state.out.publish(room, p.Presence(room, name, p.PresenceKind.OUT))
            self.join(state.users[name], p.LOBBY, 0, now, forced=True)
        state.store.remove_room(room)
        state.members.pop(room, None)
        self.forget_access(room)
        return moved

    def forget_access(self, room: str) -> None:
        """``room`` is gone (removed): so is what it allowed and who asked."""
        access = self.state.access
        access.private.pop(room, None)
        access.requests.pop(room, None)
        self.state.store.set_private(room, None)

    def prune(self, limit: int, now: float) -> int:
        """Retention: old messages go a few at a time, at each tick (bounded work in the loop)."""
        limits = self.state.settings.limits
        before = now - limits.keep_days * 86_400 if limits.keep_days > 0 else 0.0
        return self.state.store.prune(limits.keep_messages, before, limit)

    def room_list(self, allowed: bool = False) -> list[p.RoomInfo]:
        """Every room; with ``allowed`` (the admin's view), who may enter each private one."""
        state = self.state
        private = state.access.private
        return [
            p.RoomInfo(
                room,
                len(names),
                state.store.last_seq(room),
                room in private,
                sorted(private[room]) if allowed and room in private else [],
            )
            for room, names in sorted(state.members.items())
        ]
