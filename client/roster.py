"""Who is where: the users and rooms the session knows of, and who is blocked (this user too).

The status bar shows the members of the current room and completion offers user and room names,
so a session that ``track``\\ s keeps these fresh with quiet listings (``ListUsers``,
``ListRooms``) now and then; presence events keep the current room exact in between. Listings the
user asked for are shown as well as learnt from.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

from broker.wire.protocol import LOBBY, ListRooms, ListUsers, Presence, Rooms, UserInfo, Users
from client.effects import Effect, Line, Send
from client.lines import notice, plural, table
from client.link import Link

ROSTER_REFRESH: Final = 30.0
"""Seconds between quiet refreshes of who and which rooms exist, for a session that tracks them
(the terminal's status bar and completion); presence events keep the current room exact."""

BLOCKED_LINE: Final = "you are blocked: your messages reach only the server"


class Roster:
    """Known users, rooms and blocks, from listings, presence events and senders."""

    def __init__(self, link: Link, track: bool) -> None:
        self.link = link
        self.track = track
        """Keep ``users`` and ``rooms`` fresh with quiet listings (a terminal front end)."""
        self.users: dict[str, str] = {}
        """Known users and their rooms ("" when unknown): listings, presence, senders."""
        self.blocked_users: set[str] = set()
        self.accounts: dict[str, bool] = {}
        """Whether each user a listing named since it entered is logged in to an account
        (``UserInfo.account``); a user who entered since is not in it."""
        self.rooms: dict[str, int] = {}
        self.private: set[str] = set()
        """Rooms known to be private: from the listings, and from a request to join one."""
        self.requested: set[str] = set()
        """Rooms the user asked to join, until let in or a ``Notice`` naming the room answers."""
        """Known rooms and their member counts, from the last room listing."""
        self.asked: dict[type, deque[tuple[bool, str]]] = {Users: deque(), Rooms: deque()}
        """Per listing, each outstanding request: whether to show its answer (or keep it quiet,
        a refresh) and the room it asked about. The broker answers in order."""
        self.refresh_at: float | None = None
        self.is_blocked = False
        """Whether the user is blocked now, as far as the session knows (the status bar)."""
        self.told_blocked = False
        """Whether the user has been told they are blocked (told once, until unblocked)."""

    # ---- queries ------------------------------------------------------------------------------

    def members(self, room: str | None) -> list[str]:
        """Who is in ``room``, as far as listings and presence tell."""
        return sorted(name for name, where in self.users.items() if room and where == room)

    def room_names(self, room: str | None) -> list[str]:
        """Every room the session knows of, ``room`` (the current one) too."""
        return sorted({LOBBY, *self.rooms, *([room] if room else [])})

    def user_names(self) -> list[str]:
        """Every user the session knows of, but this one."""
        return sorted(name for name in self.users if name != self.link.name)

    # ---- listings -----------------------------------------------------------------------------

    def ask(self, msg: ListUsers | ListRooms, now: float, shown: bool = True) -> Send:
        if isinstance(msg, ListUsers):
            self.asked[Users].append((shown, msg.room))
        else:
            self.asked[Rooms].append((shown, ""))
        return self.link.send(msg, now)

    def forget_asked(self) -> None:
        """After a resume: answers to the old connection will not come."""
        for asked in self.asked.values():
            asked.clear()

    def listed_users(self, msg: Users) -> list[Line]:
        shown, where = self._answer(Users)
        self._learn_users(msg.users, where)
        if not shown:
            return []
        rows = [(u.name, u.room + _marks(u)) for u in msg.users]
        return table(rows) if rows else [notice("nobody is connected there")]

    def listed_rooms(self, msg: Rooms) -> list[Line]:
        self.rooms = {r.name: r.members for r in msg.rooms}
        self.private = {r.name for r in msg.rooms if r.private}
        if not self._answer(Rooms)[0]:
            return []
        rows = [(r.name, plural(r.members, "member")) for r in msg.rooms]
        return table(rows) if rows else [notice("there are no rooms")]

    def refresh(self, now: float) -> list[Effect]:
        """Quiet listings of every user and room, for a session that tracks them."""
        if not self.track:
            return []
        self.refresh_at = now + ROSTER_REFRESH
        return [self.ask(ListUsers(""), now, shown=False), self.ask(ListRooms(), now, False)]

    def refresh_due(self, now: float) -> list[Effect]:
        if self.refresh_at is not None and now >= self.refresh_at:
            return self.refresh(now)
        return []

    def _answer(self, kind: type) -> tuple[bool, str | None]:
        """Whether to show a listing that came, and the room it was about (None: not known)."""
        asked = self.asked[kind]
        return asked.popleft() if asked else (True, None)

    def _learn_users(self, users: list[UserInfo], where: str | None) -> None:
        listed = {u.name: u.room for u in users}
        if where == "":  # everyone: the whole truth
            self.users = listed
            self.blocked_users = {u.name for u in users if u.blocked}
            self.accounts = {u.name: u.account for u in users}
        else:
            if where:
                for name in [n for n, room in self.users.items() if room == where]:
                    if name not in listed:
                        self.users[name] = ""
            self.users.update(listed)
            self.accounts.update((u.name, u.account) for u in users)
            for u in users:
                (self.blocked_users.add if u.blocked else self.blocked_users.discard)(u.name)
        if self.link.name in self.blocked_users:
            self.is_blocked = True

    # ---- presence and senders -----------------------------------------------------------------

    def saw(self, *names: str) -> None:
        """Users who sent or received a message exist, wherever they are."""
        for name in names:
            self.users.setdefault(name, "")

    def presence(self, event: Presence) -> list[Line]:
        """A presence event of the current room: tracked, and told unless it is about us."""
        user, room, what = event.user, event.room, str(event.what)
        self._track_presence(user, room, what)
        if user == self.link.name:
            if what == "unblocked":
                self.told_blocked = False
                return [notice("you were unblocked", what, room=room, user=user)]
            if what == "blocked":
                return [notice("you were blocked by the admin", what, room=room, user=user)]
            return []  # our own entering, leaving, out and fired are told otherwise
        text = {
            "entered": f"{user} entered {room}",
            "left": f"{user} left {room}",
            "blocked": f"{user} was blocked",
            "unblocked": f"{user} was unblocked",
            "out": f"{user} was put out of {room}",
            "fired": f"{user} was disconnected by the admin",
        }.get(what, f"{user}: {what}")
        return [notice(text, what, room=room, user=user)]

    def _track_presence(self, user: str, room: str, what: str) -> None:
        match what:
            case "entered":
                self.users[user] = room
                self.accounts.pop(user, None)  # perhaps another session, logged in or not
            case "left" | "out":
                if self.users.get(user) == room:
                    self.users[user] = ""  # gone elsewhere, or away
            case "fired":
                self.users.pop(user, None)
                self.accounts.pop(user, None)
            case "blocked" | "unblocked":
                self.users.setdefault(user, room)
                (self.blocked_users.add if what == "blocked" else self.blocked_users.discard)(user)
                if user == self.link.name:
                    self.is_blocked = what == "blocked"

    # ---- this user blocked --------------------------------------------------------------------

    def note_blocked(self, blocked: bool) -> list[Line]:
        """The broker says whether this user is blocked: note it, and tell the user (once)."""
        self.is_blocked = blocked
        if not blocked or self.told_blocked:
            return []
        self.told_blocked = True
        return [notice(BLOCKED_LINE, "blocked", user=self.link.name)]

    def asked_to_join(self, room: str) -> None:
        """A ``JoinRequested``: the room is private, and the user waits for the admin."""
        self.private.add(room)
        self.requested.add(room)

    def entered(self, room: str) -> None:
        self.requested.discard(room)

    def told(self, text: str) -> None:
        """A ``Notice``: the admin's answer to a request (a deny) names its room."""
        self.requested = {room for room in self.requested if not _names(text, room)}


def _names(text: str, room: str) -> bool:
    """Whether ``text`` names ``room`` (as a word of its own)."""
    return re.search(rf"(?<![\w-]){re.escape(room)}(?![\w-])", text) is not None


def user_status(blocked: bool, account: bool) -> str:
    """``blocked``, ``logged in`` (to an account), both, or nothing: what ``/who`` and
    ``room-ctl who`` say of a user beside its room."""
    return ", ".join(w for w, on in (("blocked", blocked), ("logged in", account)) if on)


def _marks(user: UserInfo) -> str:
    status = user_status(user.blocked, user.account)
    return f"  ({status})" if status else ""
