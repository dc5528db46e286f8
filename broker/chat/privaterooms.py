"""Private rooms, as the chat applies them: a Join of one becomes a request unless the admin
allowed the user; the admin's ``private``, ``open``, ``allow`` and ``deny`` change who may enter,
and an ``allow`` moves a connected requester in at once. ``out`` from a private room and
``deny`` take the user off its list. Part of ``state.Chat`` (a mixin), apart because it is one
story; the state itself is ``access.Access``, written through to the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from broker.chat.users import User
from broker.store.access import Request
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.chat.chat import Chat

    _Base = Chat
else:
    _Base = object


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


class PrivateRooms(_Base):
    """The access rules of ``Chat``."""

    def _request_join(self, user: User, room: str, history: int, now: float) -> None:
        """``user`` may not enter ``room``: the Join waits for the admin."""
        request = Request(now, history)
        self.access.requests.setdefault(room, {})[user.name] = request
        self.store.set_request(room, user.name, request)
        self.out.reply(user.peer, p.JoinRequested(room))
        self.out.log(now, "request", room, user.name, f"{user.name} asked to join {room} (private)")

    def make_private(self, room: str, now: float) -> set[str]:
        """``room`` (made if needed) lets in only whom the admin allows: those in it now are
        allowed, so that making a room private puts nobody out. Returns who is allowed."""
        if room not in self.members:
            self.members[room] = set()
            self.store.add_room(room)
        allowed = self.access.private.setdefault(room, set())
        allowed.update(self.members[room])
        self.store.set_private(room, allowed)
        return allowed

    def make_open(self, room: str, now: float) -> list[str]:
        """Anyone may enter ``room`` again; whoever was waiting and is connected is moved in.
        Returns who was moved."""
        self.access.private.pop(room, None)
        waiting = self.access.requests.pop(room, {})
        self.store.set_private(room, None)
        return self._let_in(room, waiting, now)

    def allow(self, name: str, room: str, now: float) -> Allowed:
        """Put ``name`` on ``room``'s list; a connected requester goes in at once."""
        allowed = self.access.private[room]
        was_allowed = name in allowed
        allowed.add(name)
        self.store.set_allowed(room, name, True)
        request = self.access.requests.get(room, {}).pop(name, None)
        if request is None:
            return Allowed(was_allowed, asked=False, moved=False)
        self.store.set_request(room, name, None)
        return Allowed(
            was_allowed, asked=True, moved=bool(self._let_in(room, {name: request}, now))
        )

    def deny(self, name: str, room: str, now: float, tell: bool = True) -> Denied:
        """Take ``name`` off ``room``'s list (and its request); put it out if it is in there.
        With ``tell``, a connected user who had asked or was allowed hears of it (a ``Notice``)."""
        allowed = self.access.private[room]
        was_allowed = name in allowed
        allowed.discard(name)
        self.store.set_allowed(room, name, False)
        asked = self.access.requests.get(room, {}).pop(name, None) is not None
        if asked:
            self.store.set_request(room, name, None)
        user = self.users.get(name)
        put_out = user is not None and user.room == room
        if user is not None and tell and (asked or was_allowed or put_out):
            if put_out:
                text = f"the admin denied you access to {room}: you were moved to {p.LOBBY}"
            elif asked:
                text = f"the admin denied your request to join {room}"
            else:
                text = f"the admin denied you access to {room}"
            self.out.reply(user.peer, p.Notice(text))
        if user is not None and put_out:
            self.out.publish(room, p.Presence(room, name, p.PresenceKind.OUT))
            self.move(user, p.LOBBY, now)
        return Denied(was_allowed, asked, put_out)

    def access_changed(
        self, room: str, allowed: set[str] | None, waiting: dict[str, Request], now: float
    ) -> None:
        """Another broker (or this one, its change come back) changed ``room``'s access: take
        it as it is now, and let in a user connected here who was waiting and may enter now."""
        before = self.access.requests.get(room, {})
        let_in = {
            name: request
            for name, request in before.items()
            if name not in waiting and (allowed is None or name in allowed)
        }
        if allowed is None:
            self.access.private.pop(room, None)
        else:
            self.access.private[room] = set(allowed)
            self.members.setdefault(room, set())
        if waiting:
            self.access.requests[room] = dict(waiting)
        else:
            self.access.requests.pop(room, None)
        self._let_in(room, let_in, now)

    def forget_access(self, room: str) -> None:
        """``room`` is gone (removed): so is what it allowed and who asked."""
        self.access.private.pop(room, None)
        self.access.requests.pop(room, None)
        self.store.set_private(room, None)

    def _let_in(self, room: str, waiting: dict[str, Request], now: float) -> list[str]:
        """Move the connected ones of ``waiting`` into ``room``, with the history each asked
        for, as if their Join had been answered now."""
        moved = []
        for name, request in waiting.items():
            user = self.users.get(name)
            if user is not None and user.room != room:
                self._join(user, room, request.history, now)
                moved.append(name)
        return moved
