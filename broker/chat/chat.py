"""The chat itself: users, rooms, blocklist and the rules between them, with no sockets.

``Chat`` takes decoded messages (with the ROUTER peer id they came from and the time) and fills an
``Outbox``: replies to peers, events per room, and log records. The I/O layer drains the outbox
after each batch of input, so everything a batch produces for one room goes out in one PUB send,
after one store commit (an Ack always means "stored"). When that commit fails, ``commit_failed``
turns the batch's outbox into what may still go out: refusals instead of Acks, nothing published.

``Chat`` is the façade: it dispatches each message to the part whose story it is, and holds what
concerns them all (the heartbeat tick, a failed commit, a reset, goodbyes). Its parts share one
``State`` (settings, store, outbox, users, rooms' members, access, ...), each given the parts it
calls, never the chat: ``posting`` (Say, Tell, the rate budget, a stored message delivered);
``rooms`` (Join, Fetch, rooms that come and go; calls ``posting`` for the rate budget);
``sessions`` (Hello, removing a user; calls ``rooms``); ``logins`` (accounts: the policy at
Hello, Login and Prove, Register; calls ``sessions``); ``private`` (the admin's access verbs;
calls ``rooms`` to move people); ``others`` (the backbone's events; calls ``posting`` and
``sessions``); ``heartbeats`` (each user's Ping and liveness check, spread over the interval;
calls ``sessions`` to drop a silent user). The chat's attributes that are the state's
(``users``, ``members``, ``access``, ``settings``, ...) are read and set there, so every part
sees the same.
"""

from __future__ import annotations

from typing import Final, Generic, Self, TypeVar, overload

from msgspec.structs import replace

from broker.chat.accounts import Logins
from broker.chat.heartbeats import Heartbeats
from broker.chat.outbox import Counters, Outbox
from broker.chat.posting import Posting
from broker.chat.privaterooms import Allowed, Denied, PrivateRooms
from broker.chat.rooms import Rooms
from broker.chat.sessions import Sessions
from broker.chat.shared import FromOthers
from broker.chat.state import Settings, State
from broker.chat.users import User
from broker.store.access import Access, Request
from broker.store.base import Store
from broker.wire import protocol as p

__all__ = [
    "PRUNED_PER_TICK",
    "STORE_FAILED",
    "Allowed",
    "Chat",
    "Denied",
    "Outbox",
    "Settings",
    "User",
]

PRUNED_PER_TICK: Final = 2_000
"""Old messages deleted at most per heartbeat interval: retention never holds the loop for long."""

STORE_FAILED: Final = "the broker could not store this message: try again"
"""The reason of the refusal a sender gets when the batch of its message could not be stored."""

T = TypeVar("T")


class _Shared(Generic[T]):
    """An attribute of ``Chat`` that is its ``State``'s: read and set there, so that every
    part sees the one the chat has."""

    __slots__ = ("name",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, chat: None, owner: type | None = None) -> Self: ...
    @overload
    def __get__(self, chat: Chat, owner: type | None = None) -> T: ...
    def __get__(self, chat: Chat | None, owner: type | None = None) -> T | Self:
        if chat is None:
            return self
        value: T = getattr(chat.state, self.name)
        return value

    def __set__(self, chat: Chat, value: T) -> None:
        setattr(chat.state, self.name, value)


class Chat:
    """Users, rooms and the blocklist; every decision about who may do what is made here."""

    store: _Shared[Store] = _Shared()
    settings: _Shared[Settings] = _Shared()
    out: _Shared[Outbox] = _Shared()
    counters: _Shared[Counters] = _Shared()
    users: _Shared[dict[str, User]] = _Shared()
    by_peer: _Shared[dict[bytes, User]] = _Shared()
    members: _Shared[dict[str, set[str]]] = _Shared()
    access: _Shared[Access] = _Shared()
    """Private rooms, who may enter them, and who asked (see ``privaterooms``)."""
    stalled: _Shared[set[bytes]] = _Shared()
    """Peers whose queue was full at the last send: they get no history until they read."""
    request: _Shared[str] = _Shared()
    """The tag of the client message being handled: an ``Error`` names it."""

    def __init__(self, store: Store, settings: Settings) -> None:
        members: dict[str, set[str]] = {room: set() for room in store.rooms()}
        members.setdefault(p.LOBBY, set())
        self.state = State(store, settings, members, store.access())
        self.closing = False
        self.posting = Posting(self.state)
        self.rooms = Rooms(self.state, self.posting)
        self.sessions = Sessions(self.state, self.rooms)
        self.private = PrivateRooms(self.state, self.rooms)
        self.others = FromOthers(self.state, self.posting, self.sessions)
        self.logins = Logins(self.state, self.sessions)
        self.heartbeats = Heartbeats(self.state, self.sessions)
        self._chores_at: float | None = None
        """When ``tick`` next does what is done once per interval (the rate, retention)."""

    @property
    def claiming(self) -> dict[str, bytes]:
        """Names whose claim the backbone answers later, with the peer that said hello."""
        return self.sessions.claiming

    def handle(self, peer: bytes, msg: p.ClientMsg, now: float, address: str = "") -> None:
        """Act on one decoded client message (``address``: the peer's, for a stranger's)."""
        state = self.state
        state.request = type(msg).__struct_config__.tag
        user = state.by_peer.get(peer)
        if user is None:
            if isinstance(msg, p.Hello | p.Login | p.Prove | p.Register):
                name = msg.name if isinstance(msg, p.Hello) else self.logins.pending_name(peer)
                known = state.users.get(name) if name else None
                self.logins.first(peer, msg, now, address)
                self._entered(state.by_peer.get(peer), known)
            elif not isinstance(msg, p.Quit | p.Ping):
                state.error(
                    peer, p.Code.HELLO_FIRST, "send hello first: the broker does not know you"
                )
            return
        user.last_seen = now
        match msg:
            case p.Say():
                self.posting.post(user, msg, now)
            case p.Tell():
                self.posting.tell(user, msg, now)
            case p.Ping():
                pass
            case p.Sync():
                room = user.room
                state.out.publish(room, p.Synced(room, msg.nonce, state.store.last_seq(room)))
            case p.Fetch():
                self.rooms.fetch(user, msg, now)
            case p.Join():
                self.rooms.join(user, msg.room, msg.history, now)
            case p.Leave():
                self.rooms.join(user, p.LOBBY, 0, now)
            case p.ListUsers():
                state.out.reply(peer, p.Users(self.sessions.user_list(msg.room)))
            case p.ListRooms():
                state.out.reply(peer, p.Rooms(self.rooms.room_list()))
            case p.Quit():
                self.sessions.remove(user, now, "left the chat", end_session=True)
            case p.Register():
                self.logins.passwd(user, msg, now)
            case p.Hello() | p.Login() | p.Prove():
                state.error(peer, p.Code.ALREADY, f"already connected as {user.name}")

    def commit_failed(self, out: Outbox) -> int:
        """The store could not commit the batch that filled ``out`` and rolled it back, so its
        ``last_seq`` is the last committed again. Nothing the batch stored exists: its messages
        are refused (UNAVAILABLE) instead of acknowledged, and forgotten as sent ids so that a
        retry is stored (the store rolled them back); nothing of the batch is published, and
        its chat lines are not logged.
        Replies that read the lost messages (Joined, Messages, Ping, Rooms) are cut back to
        what is stored: no client may learn a sequence number that will be used again. Returns
        how many messages were refused."""
        state = self.state
        last = state.store.last_seq
        state.access = state.store.access()  # as last committed: the batch's changes are gone
        lost: set[tuple[str, int]] = set()  # a retry in the same batch is the same message
        for i, (peer, msg) in enumerate(out.replies):
            match msg:
                case p.Ack(mid=mid, room=room, seq=seq) if room and seq > last(room):
                    lost.add((room, seq))
                    out.replies[i] = (peer, p.Refused(mid, p.Code.UNAVAILABLE, STORE_FAILED))
                case p.Joined(room=room, seq=seq) if seq > last(room):
                    kept = [m for m in msg.history if m.seq <= last(room)]
                    out.replies[i] = (peer, p.Joined(room, last(room), kept, msg.forced))
                case p.Messages(room=room, messages=messages, first=first):
                    kept = [m for m in messages if m.seq <= last(room)]
                    first = min(first, last(room) + 1)
                    out.replies[i] = (peer, p.Messages(room, kept, first))
                case p.Ping(room=room, seq=seq) if room and seq > last(room):
                    out.replies[i] = (peer, p.Ping(room, last(room)))
                case p.Rooms(rooms=rooms):
                    infos = [replace(r, seq=min(r.seq, last(r.name))) for r in rooms]
                    out.replies[i] = (peer, p.Rooms(infos))
        out.rooms.clear()
        out.logs = [e for e in out.logs if e.kind != "msg"]
        c = state.counters
        c.accepted -= len(lost)
        c.refused += len(lost)
        c.refusals[p.Code.UNAVAILABLE] += len(lost)
        c.failed_commits += 1
        return len(lost)

    def tick(self, now: float) -> float:
        """The users whose turn has come are sent a heartbeat, or dropped if silent for too long
        (``heartbeats``: each user once per interval, a bounded share per call); once per
        interval, the message rate and retention. Returns when to call again (``now`` while
        the heartbeats are behind): no call does work that grows with the users connected."""
        state = self.state
        if self._chores_at is None or now >= self._chores_at:
            self._chores_at = now + state.settings.heartbeat
            c = state.counters
            if c._mark[0]:
                c.rate = (c.accepted - c._mark[1]) / max(now - c._mark[0], 1e-9)
            c._mark = (now, c.accepted)
            self.rooms.prune(PRUNED_PER_TICK, now)
        return min(self.heartbeats.beat(now), self._chores_at)

    def _entered(self, user: User | None, known: User | None) -> None:
        """After a hello (or the backbone's answer to a claim): a user that is new takes its
        place on the heartbeats' wheel (a resumed one keeps its own)."""
        if user is not None and user is not known:
            self.heartbeats.enter(user)

    def goodbye_all(self, reason: p.Bye, text: str, now: float) -> None:
        """Drop every connection (reset, close): each client is told why. A reset ends the
        sessions too; after a close they can be resumed when the broker is back."""
        state = self.state
        for user in list(state.users.values()):
            state.goodbye(user.peer, reason, text)
            self.sessions.remove(user, now, reason.value, end_session=reason is p.Bye.RESET)

    def reset(self, now: float) -> None:
        """Every client is told and dropped; every room but the lobby goes, with all history."""
        state = self.state
        self.goodbye_all(p.Bye.RESET, "the admin reset the broker", now)
        state.store.reset()
        state.members = {p.LOBBY: set()}
        state.access = state.store.access()

    # ---- what the loop, the admin and the backbone call, in the parts ----------------------------

    def error(self, peer: bytes, code: p.Code, reason: str, request: str | None = None) -> None:
        """Tell a peer its request failed (also used by the I/O layer for bad frames); the Error
        names the request (by default the one being handled)."""
        self.state.error(peer, code, reason, request)

    def goodbye(self, peer: bytes, reason: p.Bye, text: str) -> None:
        """Tell a connection the broker sends it away (counted by ``reason``)."""
        self.state.goodbye(peer, reason, text)

    def remove(
        self,
        user: User,
        now: float,
        why: str,
        what: p.PresenceKind = p.PresenceKind.LEFT,
        release: bool = True,
        end_session: bool = False,
    ) -> None:
        """``Sessions.remove``: forget a user."""
        self.sessions.remove(user, now, why, what, release, end_session)

    def claimed(self, name: str, result: str | p.Code, reason: str, now: float) -> None:
        """``Sessions.claimed``: the backbone's answer to a claim."""
        known = self.state.users.get(name)
        self.sessions.claimed(name, result, reason, now)
        self._entered(self.state.users.get(name), known)

    def user_list(self, room: str = "") -> list[p.UserInfo]:
        """``Sessions.user_list``."""
        return self.sessions.user_list(room)

    def room_list(self, allowed: bool = False) -> list[p.RoomInfo]:
        """``Rooms.room_list``."""
        return self.rooms.room_list(allowed)

    def move(self, user: User, room: str, now: float) -> None:
        """``Rooms.move``: put a user in ``room`` on the admin's word."""
        self.rooms.move(user, room, now)

    def remove_room(self, room: str, now: float) -> list[str]:
        """``Rooms.remove_room``: the admin removes a room and its history."""
        return self.rooms.remove_room(room, now)

    def forget_access(self, room: str) -> None:
        """``Rooms.forget_access``."""
        self.rooms.forget_access(room)

    def prune(self, limit: int, now: float) -> int:
        """``Rooms.prune``: retention."""
        return self.rooms.prune(limit, now)

    def make_private(self, room: str, now: float) -> set[str]:
        """``PrivateRooms.make_private``."""
        return self.private.make_private(room, now)

    def make_open(self, room: str, now: float) -> list[str]:
        """``PrivateRooms.make_open``."""
        return self.private.make_open(room, now)

    def allow(self, name: str, room: str, now: float) -> Allowed:
        """``PrivateRooms.allow``."""
        return self.private.allow(name, room, now)

    def deny(self, name: str, room: str, now: float, tell: bool = True) -> Denied:
        """``PrivateRooms.deny``."""
        return self.private.deny(name, room, now, tell)

    def access_changed(
        self, room: str, allowed: set[str] | None, waiting: dict[str, Request], now: float
    ) -> None:
        """``PrivateRooms.access_changed``: another broker changed a room's access."""
        self.private.access_changed(room, allowed, waiting, now)

    def delivered(self, posted: p.Posted, mid: int = 0) -> None:
        """``Posting.delivered``: a stored message goes to its room."""
        self.posting.delivered(posted, mid)

    def stored(self, name: str, ack: p.Ack) -> None:
        """``FromOthers.stored``."""
        self.others.stored(name, ack)

    def not_stored(self, name: str, mid: int, reason: str) -> None:
        """``FromOthers.not_stored``."""
        self.others.not_stored(name, mid, reason)

    def forwarded(self, told: p.Told) -> None:
        """``FromOthers.forwarded``."""
        self.others.forwarded(told)

    def replaced(self, name: str, now: float) -> None:
        """``FromOthers.replaced``."""
        self.others.replaced(name, now)

    def account_banned(self, name: str, now: float) -> bool:
        """The account ``name`` was banned (here or, on a backbone, through another broker):
        its user, if connected here, is disconnected and its session ended. Whether it was."""
        user = self.state.users.get(name)
        if user is None:
            return False
        self.goodbye(user.peer, p.Bye.FIRED, "the admin banned your account")
        self.remove(user, now, "banned by the admin", what=p.PresenceKind.FIRED, end_session=True)
        return True

    def blocked_changed(self, name: str, blocked: bool) -> None:
        """``FromOthers.blocked_changed``."""
        self.others.blocked_changed(name, blocked)
