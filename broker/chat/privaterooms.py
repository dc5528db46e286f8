"""Private rooms, as the chat applies them: the admin's ``private``, ``open``, ``allow`` and
``deny`` change who may enter, an ``allow`` moves a connected requester in at once, and ``deny``
takes the user off the room's list (and out of the room). The Join that becomes a request is
``Rooms``'s; the state itself is ``access.Access`` (in the shared ``State``), written through to
the store. Uses the shared ``State`` and ``Rooms`` (to move people).
"""

from __future__ import annotations

from typing import NamedTuple

from broker.chat.rooms import Rooms
from broker.chat.state import State
from broker.store.access import Request
from broker.wire import protocol as p


class Allowed(NamedTuple):
    """What an ``allow`` found and did."""

    was_allowed: bool
    """The user was on the room's list already."""
    asked: bool
    """The user had asked to join (the request is answered)."""
    moved: bool
    """The user had asked, is connected, and went in."""


class Denied(NamedTuple):
    """What a ``deny`` found and did."""

    was_allowed: bool
    """The user was on the room's list."""
    asked: bool
    """The user had asked to join (the request is dropped)."""
    put_out: bool
    """The user was in the room, and is in the lobby now."""


class PrivateRooms:
    """The access rules: who may enter a private room, on the admin's word."""

    def __init__(self, state: State, rooms: Rooms) -> None:
        self.state = state
        self.rooms = rooms

    def make_private(self, room: str, now: float) -> set[str]:
        """``room`` (made if needed) lets in only whom the admin allows: those in it now are
        allowed, so that making a room private puts nobody out. Returns who is allowed."""
        state = self.state
        if room not in state.members:
            state.members[room] = set()
            state.store.add_room(room)
        allowed = state.access.private.setdefault(room, set())
        allowed.update(state.members[room])
        state.store.set_private(room, allowed)
        return allowed

    def make_open(self, room: str, now: float) -> list[str]:
        """Anyone may enter ``room`` again; whoever was waiting and is connected is moved in.
        Returns who was moved."""
        state = self.state
        state.access.private.pop(room, None)
        waiting = state.access.requests.pop(room, {})
        state.store.set_private(room, None)
        return self._let_in(room, waiting, now)

    def allow(self, name: str, room: str, now: float) -> Allowed:
        """Put ``name`` on ``room``'s list; a connected requester goes in at once."""
        state = self.state
        allowed = state.access.private[room]
        was_allowed = name in allowed
        allowed.add(name)
        state.store.set_allowed(room, name, True)
        request = state.access.requests.get(room, {}).pop(name, None)
        if request is None:
            return Allowed(was_allowed, asked=False, moved=False)
        state.store.set_request(room, name, None)
        return Allowed(
            was_allowed, asked=True, moved=bool(self._let_in(room, {name: request}, now))
        )

    def deny(self, name: str, room: str, now: float, tell: bool = True) -> Denied:
        """Take ``name`` off ``room``'s list (and its request); put it out if it is in there.
        With ``tell``, a connected user who had asked or was allowed hears of it (a ``Notice``)."""
        state = self.state
        allowed = state.access.private[room]
        was_allowed = name in allowed
        allowed.discard(name)
        state.store.set_allowed(room, name, False)
        asked = state.access.requests.get(room, {}).pop(name, None) is not None
        if asked:
            state.store.set_request(room, name, None)
        user = state.users.get(name)
        put_out = user is not None and user.room == room
        if user is not None and tell and (asked or was_allowed or put_out):
            if put_out:
                text = f"the admin denied you access to {room}: you were moved to {p.LOBBY}"
            elif asked:
                text = f"the admin denied your request to join {room}"
            else:
                text = f"the admin denied you access to {room}"
            state.out.reply(user.peer, p.Notice(text))
        if user is not None and put_out:
            state.out.publish(room, p.Presence(room, name, p.PresenceKind.OUT))
            self.rooms.move(user, p.LOBBY, now)
        return Denied(was_allowed, asked, put_out)

    def access_changed(
        self, room: str, allowed: set[str] | None, waiting: dict[str, Request], now: float
    ) -> None:
        """Another broker (or this one, its change come back) changed ``room``'s access: take
        it as it is now, and let in a user connected here who was waiting and may enter now."""
        state = self.state
        access = state.access
        before = access.requests.get(room, {})
        let_in = {
            name: request
            for name, request in before.items()
            if name not in waiting and (allowed is None or name in allowed)
        }
        if allowed is None:
            access.private.pop(room, None)
        else:
            access.private[room] = set(allowed)
            state.members.setdefault(room, set())
        if waiting:
            access.requests[room] = dict(waiting)
        else:
            access.requests.pop(room, None)
        self._let_in(room, let_in, now)

    def _let_in(self, room: str, waiting: dict[str, Request], now: float) -> list[str]:
        """Move the connected ones of ``waiting`` into ``room``, with the history each asked
        for, as if their Join had been answered now."""
        users = self.state.users
        moved = []
        for name, request in waiting.items():
            user = users.get(name)
            if user is not None and user.room != room:
                self.rooms.join(user, room, request.history, now)
                moved.append(name)
        return moved
