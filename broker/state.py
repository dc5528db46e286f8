"""The chat itself: users, rooms, blocklist and the rules between them, with no sockets.

``Chat`` takes decoded messages (with the ROUTER peer id they came from and the time) and fills an
``Outbox``: replies to peers, events per room, and log records. The I/O layer drains the outbox
after each batch of input, so everything a batch produces for one room goes out in one PUB send,
after one store commit (an Ack always means "stored"). When that commit fails, ``commit_failed``
turns the batch's outbox into what may still go out: refusals instead of Acks, nothing published.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from . import protocol as p
from .config import ANSWER_BYTES, DEFAULT_LIMITS, FETCH_TOKEN_BYTES, HEARTBEAT, LIVENESS, Limits
from .store import ACKS_KEPT, Store, StoreError

PRUNED_PER_TICK: Final = 2_000
"""Old messages deleted at most per heartbeat tick: retention never holds the loop for long."""

STORE_FAILED: Final = "the broker could not store this message: try again"
"""The reason of the refusal a sender gets when the batch of its message could not be stored."""

CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_POSTED_OVERHEAD: Final = 32
"""About what a stored message adds to its text and names on the wire."""


def _size(message: p.Posted) -> int:
    """About the bytes of ``message`` on the wire (characters, not UTF-8 bytes: a bound for
    budgets, not an exact count)."""
    return len(message.text) + len(message.sender) + len(message.room) + _POSTED_OVERHEAD


"""Characters that would break the one-line-per-message log and client output."""


class LogEvent(NamedTuple):
    """One line of the broker's log; the I/O layer formats it (text or JSON)."""

    ts: float
    kind: str  # msg | blocked | enter | leave | connect | disconnect | admin | error
    room: str = ""
    user: str = ""
    text: str = ""


@dataclass(slots=True)
class Outbox:
    """What a batch of input produced, in order, for the I/O layer to send."""

    replies: list[tuple[bytes, p.ServerMsg]] = field(default_factory=list)
    rooms: dict[str, list[p.RoomEvent]] = field(default_factory=dict)
    logs: list[LogEvent] = field(default_factory=list)
    forwards: list[tuple[str, p.Told]] = field(default_factory=list)
    """Direct messages for users another broker holds (on a backbone), by that broker."""
    answered: dict[bytes, int] = field(default_factory=dict)
    """Bytes of history answered to each peer in this batch (at most about ANSWER_BYTES)."""

    def reply(self, peer: bytes, msg: p.ServerMsg) -> None:
        self.replies.append((peer, msg))

    def publish(self, room: str, event: p.RoomEvent) -> None:
        events = self.rooms.get(room)
        if events is None:
            self.rooms[room] = [event]
        else:
            events.append(event)

    def log(self, ts: float, kind: str, room: str = "", user: str = "", text: str = "") -> None:
        self.logs.append(LogEvent(ts, kind, room, user, text))

    def take(self) -> Outbox:
        """Hand over everything collected so far and start empty."""
        taken = Outbox(self.replies, self.rooms, self.logs, self.forwards)
        self.replies, self.rooms, self.logs, self.forwards = [], {}, [], []
        self.answered = {}
        return taken


@dataclass(slots=True)
class User:
    name: str
    peer: bytes
    room: str
    session: str
    last_seen: float
    tokens: float
    refilled: float
    mids: OrderedDict[int, p.Ack] = field(default_factory=OrderedDict)
    """The latest acknowledged message ids, to answer a recent retry without the store."""
    new_rooms: float = 0.0
    """Rooms the user may still create now (refilled at ``Limits.new_rooms`` per minute)."""
    new_rooms_at: float = 0.0
    """When ``new_rooms`` was last refilled."""
    mid_high: int = 0
    """The user's highest stored message id: an id above it is new, and one at or below it is
    looked up in the store (``Store.acked``), so no stall is long enough to store one twice."""


@dataclass(slots=True)
class Counters:
    """What the broker has done since it started, for ``room-ctl stats``."""

    accepted: int = 0  # room messages stored and published
    refused: int = 0  # room and direct messages refused (blocked, rate, too long, ...)
    direct: int = 0  # direct messages delivered
    bad_frames: int = 0
    dropped_replies: int = 0  # replies a peer's full or gone queue could not take
    published: int = 0  # PUB sends (each one a batch of room events)
    fetched: int = 0  # stored messages sent in answer to Fetch (gap repair, /history)
    connections: int = 0  # open connections to the ROUTER, users or not (set by the I/O layer)
    started: float = 0.0  # when the broker started (set by the I/O layer)
    rate: float = 0.0  # room messages accepted per second over the last heartbeat interval
    _mark: tuple[float, int] = (0.0, 0)  # (time, accepted) at the last tick


@dataclass(frozen=True, slots=True)
class Settings:
    """What the chat needs to know about its broker."""

    pub_endpoint: str
    limits: Limits = DEFAULT_LIMITS
    rate: float = 10.0  # room messages per second per user; 0 turns the limit off
    burst: int = 30
    heartbeat: float = HEARTBEAT
    liveness: int = LIVENESS


class Chat:
    """Users, rooms and the blocklist; every decision about who may do what is made here."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.out = Outbox()
        self.users: dict[str, User] = {}
        self.by_peer: dict[bytes, User] = {}
        self.members: dict[str, set[str]] = {room: set() for room in store.rooms()}
        self.members.setdefault(p.LOBBY, set())
        self.closing = False
        self.counters = Counters()
        self.request = ""
        """The tag of the client message being handled: an ``Error`` names it."""
        self.claiming: dict[str, bytes] = {}
        """Names whose claim the backbone answers later, with the peer that said hello."""
        self.stalled: set[bytes] = set()
        """Peers whose queue was full at the last send: they get no history until they read."""

    # ---- client messages ----------------------------------------------------------------------

    def handle(self, peer: bytes, msg: p.ClientMsg, now: float) -> None:
        """Act on one decoded client message."""
        self.request = type(msg).__struct_config__.tag
        user = self.by_peer.get(peer)
        if user is None:
            if isinstance(msg, p.Hello):
                self._hello(peer, msg, now)
            elif not isinstance(msg, p.Quit | p.Ping):
                self.error(
                    peer, p.Code.HELLO_FIRST, "send hello first: the broker does not know you"
                )
            return
        user.last_seen = now
        match msg:
            case p.Say():
                self._say(user, msg, now)
            case p.Tell():
                self._tell(user, msg, now)
            case p.Ping():
                pass
            case p.Sync():
                room = user.room
                self.out.publish(room, p.Synced(room, msg.nonce, self.store.last_seq(room)))
            case p.Fetch():
                self._fetch(user, msg, now)
            case p.Join():
                self._join(user, msg.room, msg.history, now)
            case p.Leave():
                self._join(user, p.LOBBY, 0, now)
            case p.ListUsers():
                self.out.reply(peer, p.Users(self.user_list(msg.room)))
            case p.ListRooms():
                self.out.reply(peer, p.Rooms(self.room_list()))
            case p.Quit():
                self.remove(user, now, "left the chat", end_session=True)
            case p.Hello():
                self.error(peer, p.Code.ALREADY, f"already connected as {user.name}")

    def commit_failed(self, out: Outbox) -> int:
        """The store could not commit the batch that filled ``out`` and rolled it back, so its
        ``last_seq`` is the last committed again. Nothing the batch stored exists: its messages
        are refused (UNAVAILABLE) instead of acknowledged, and forgotten as sent ids so that a
        retry is stored; nothing of the batch is published, and its chat lines are not logged.
        Replies that read the lost messages (Joined, Messages, Ping, Rooms) are cut back to
        what is stored: no client may learn a sequence number that will be used again. Returns
        how many messages were refused."""
        last = self.store.last_seq
        lost: set[tuple[str, int]] = set()  # a retry in the same batch is the same message
        for i, (peer, msg) in enumerate(out.replies):
            match msg:
                case p.Ack(mid=mid, room=room, seq=seq) if room and seq > last(room):
                    lost.add((room, seq))
                    out.replies[i] = (peer, p.Refused(mid, p.Code.UNAVAILABLE, STORE_FAILED))
                    user = self.by_peer.get(peer)
                    if user is not None and user.mids.get(mid) == msg:
                        del user.mids[mid]
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
                    infos = [p.RoomInfo(r.name, r.members, min(r.seq, last(r.name))) for r in rooms]
                    out.replies[i] = (peer, p.Rooms(infos))
        out.rooms.clear()
        out.logs = [e for e in out.logs if e.kind != "msg"]
        self.counters.accepted -= len(lost)
        self.counters.refused += len(lost)
        return len(lost)

    def error(self, peer: bytes, code: p.Code, reason: str, request: str | None = None) -> None:
        """Tell a peer its request failed (also used by the I/O layer for bad frames); the Error
        names the request (by default the one being handled)."""
        self.out.reply(peer, p.Error(code, reason, self.request if request is None else request))

    def _hello(self, peer: bytes, msg: p.Hello, now: float) -> None:
        if msg.version != p.VERSION:
            reason = (
                f"protocol version {msg.version} is not supported (the broker speaks {p.VERSION})"
            )
            self.error(peer, p.Code.BAD_VERSION, reason + ": use a matching room-client")
            return
        name = msg.name
        if not p.valid_name(name):
            self.error(peer, p.Code.BAD_NAME, f"invalid name {name!r}: use {p.NAME_RULE}")
            return
        old = self.users.get(name)
        if old is not None:
            if not msg.session or not secrets.compare_digest(
                msg.session.encode(), old.session.encode()
            ):
                self.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
                return
            # The same session on a new connection: the old connection is dead or stale.
            self.out.reply(old.peer, p.Goodbye(p.Bye.REPLACED, "this session resumed elsewhere"))
            del self.by_peer[old.peer]
            old.peer, old.last_seen = peer, now
            self.by_peer[peer] = old
            self._welcome(old)
            self.out.log(now, "connect", old.room, name, "resumed")
            return
        if name in self.claiming:  # someone's hello for it is being answered
            self.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
            return
        if len(self.users) >= self.settings.limits.max_clients:
            self.error(peer, p.Code.FULL, "the broker is at its client limit: try again later")
            return
        try:
            session = self.store.claim(name, secrets.token_hex(16), msg.session)
        except StoreError as exc:
            self.error(peer, p.Code.UNAVAILABLE, str(exc))
            return
        if session is None:  # a shared store answers later: ``claimed`` ends this hello
            self.claiming[name] = peer
            return
        self._enter(name, peer, session, now)

    def claimed(self, name: str, result: str | p.Code, reason: str, now: float) -> None:
        """The backbone's answer to the claim of ``name`` (see ``_hello``)."""
        peer = self.claiming.pop(name, None)
        if peer is None or peer in self.by_peer or name in self.users:
            if isinstance(result, str):  # nobody waits for it (any more): let it go
                self.store.release(name, end_session=False)
            return
        self.request = "hello"
        if result is p.Code.UNAVAILABLE:
            self.error(peer, result, reason)
        else:
            self._enter(name, peer, result, now)

    def _enter(self, name: str, peer: bytes, session: str | p.Code, now: float) -> None:
        """Welcome ``name`` on ``peer`` with its session's secret, or refuse the claim."""
        if session is p.Code.BAD_SESSION:
            reason = "this session has ended (left, fired, reset, or its name taken since)"
            self.error(peer, session, reason + ": say hello without it to start a new one")
            return
        if session is p.Code.NAME_TAKEN or not isinstance(session, str):
            self.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
            return
        user = User(name, peer, p.LOBBY, session, now, self.settings.burst, now)
        user.new_rooms, user.new_rooms_at = self.settings.limits.new_rooms, now
        user.mid_high = self.store.highest_mid(name)
        self.users[name] = user
        self.by_peer[peer] = user
        self.members[p.LOBBY].add(name)
        self._welcome(user)
        self.out.publish(p.LOBBY, p.Presence(p.LOBBY, name, p.PresenceKind.ENTERED))
        self.out.log(now, "connect", p.LOBBY, name)

    def _welcome(self, user: User) -> None:
        s = self.settings
        blocked = user.name in self.store.blocked()
        welcome = p.Welcome(
            p.VERSION, user.name, user.room, s.pub_endpoint, user.session, s.heartbeat, blocked
        )
        self.out.reply(user.peer, welcome)

    def _say(self, user: User, msg: p.Say, now: float) -> None:
        if msg.mid:  # a retry of a stored message is acknowledged again, never stored twice
            seen = user.mids.get(msg.mid)
            if seen is None and msg.mid <= user.mid_high:
                seen = self.store.acked(user.name, msg.mid)
            if seen is not None:
                self.out.reply(user.peer, seen)
                return
        refusal = self._refusal(user, msg.text, now)
        if refusal is not None:
            self._refuse(user, msg.mid, refusal, user.room, msg.text, now)
            return
        posted = self.store.append(user.room, user.name, msg.text, now, msg.mid)
        if posted is None:  # stored elsewhere: ``stored`` acknowledges, ``delivered`` publishes
            return
        self.delivered(posted)
        self._acknowledge(user, p.Ack(msg.mid, posted.room, posted.seq))

    def delivered(self, posted: p.Posted, mid: int = 0) -> None:
        """A stored message goes to its room, and to the log. Its id (``mid``: stored by another
        broker, for a user who has moved here since) is remembered, so a retry is not stored
        twice."""
        if mid:
            user = self.users.get(posted.sender)
            if user is not None and mid not in user.mids:
                self._remember(user, p.Ack(mid, posted.room, posted.seq))
        if posted.room not in self.members:  # a room another broker's user made
            self.members[posted.room] = set()
        self.out.publish(posted.room, posted)
        self.out.log(posted.ts, "msg", posted.room, posted.sender, posted.text)

    def stored(self, name: str, ack: p.Ack) -> None:
        """The backbone stored the sender's message (``append`` said it would answer later)."""
        user = self.users.get(name)
        if user is None:  # gone meanwhile: a retry from its next session is acknowledged anyway
            self.counters.accepted += 1
            return
        self._acknowledge(user, ack)

    def _acknowledge(self, user: User, ack: p.Ack) -> None:
        """The sender's message is stored: acknowledge it, and remember its id for retries."""
        self.counters.accepted += 1
        if ack.mid:
            self._remember(user, ack)
        self.out.reply(user.peer, ack)

    @staticmethod
    def _remember(user: User, ack: p.Ack) -> None:
        user.mids[ack.mid] = ack
        user.mid_high = max(user.mid_high, ack.mid)
        if len(user.mids) > ACKS_KEPT:
            user.mids.popitem(last=False)

    def not_stored(self, name: str, mid: int, reason: str) -> None:
        """The backbone could not store the sender's message: refuse it, so it is retried."""
        self.counters.refused += 1
        user = self.users.get(name)
        if user is not None:
            self.out.reply(user.peer, p.Refused(mid, p.Code.UNAVAILABLE, reason))

    def _refuse(
        self, user: User, mid: int, refusal: tuple[p.Code, str], where: str, text: str, now: float
    ) -> None:
        code, reason = refusal
        self.counters.refused += 1
        if code is p.Code.BLOCKED:
            self.out.log(now, "blocked", where, user.name, text)
        self.out.reply(user.peer, p.Refused(mid, code, reason))

    def _tell(self, user: User, msg: p.Tell, now: float) -> None:
        target = self.users.get(msg.to)
        elsewhere = "" if target is not None else self.store.holder(msg.to)
        refusal = self._refusal(user, msg.text, now)
        if refusal is None and target is None and not elsewhere:
            refusal = p.Code.NOT_CONNECTED, f"{msg.to} is not connected: see /who"
        if refusal is not None:
            self._refuse(user, msg.mid, refusal, f"@{msg.to}", msg.text, now)
            return
        self.counters.direct += 1
        told = p.Told(user.name, msg.to, msg.text, now)
        if target is not None:
            self.out.reply(target.peer, told)
        else:
            self.out.forwards.append((elsewhere, told))
        if target is not user:
            self.out.reply(user.peer, told)
        self.out.reply(user.peer, p.Ack(msg.mid, "", 0))
        self.out.log(now, "direct", f"@{msg.to}", user.name, msg.text)

    def forwarded(self, told: p.Told) -> None:
        """A direct message from a user on another broker, for a user here (if still here)."""
        target = self.users.get(told.to)
        if target is not None:
            self.out.reply(target.peer, told)

    def _refusal(self, user: User, text: str, now: float) -> tuple[p.Code, str] | None:
        if user.name in self.store.blocked():
            return p.Code.BLOCKED, "you are blocked: your messages reach only the server"
        size = len(text.encode())
        limit = self.settings.limits.max_message
        if size > limit:
            return p.Code.TOO_LONG, f"message is {size} bytes; the limit is {limit}"
        if not text or CONTROL_CHARS.search(text):
            return p.Code.BAD_TEXT, "a message must be non-empty printable text on one line"
        if not self._afford(user, now):
            rate = self.settings.rate
            return p.Code.RATE_LIMITED, f"slow down: at most {rate:g} messages per second"
        user.tokens -= 1
        return None

    def _afford(self, user: User, now: float) -> bool:
        """Refill the user's rate budget; whether a message's worth is left (always, with the
        limit off). The caller spends what its request costs."""
        rate = self.settings.rate
        if rate <= 0:
            return True
        user.tokens = min(self.settings.burst, user.tokens + (now - user.refilled) * rate)
        user.refilled = now
        return user.tokens >= 1

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

    def _join(self, user: User, room: str, history: int, now: float, forced: bool = False) -> None:
        if not p.valid_name(room):
            self.error(user.peer, p.Code.BAD_ROOM, f"invalid room {room!r}: use {p.NAME_RULE}")
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
        recent = self.store.recent(room, history)
        if recent:
            budget = max(0, ANSWER_BYTES - self.out.answered.get(user.peer, 0))
            recent = self._answer(user, recent, budget, newest=True)
        self.out.reply(user.peer, p.Joined(room, self.store.last_seq(room), recent, forced))

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
        if room != p.LOBBY and not self.members.get(room, True) and not self.store.last_seq(room):
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
        return moved

    def prune(self, limit: int, now: float) -> int:
        """Retention: old messages go a few at a time, at each tick (bounded work in the loop)."""
        limits = self.settings.limits
        before = now - limits.keep_days * 86_400 if limits.keep_days > 0 else 0.0
        return self.store.prune(limits.keep_messages, before, limit)

    # ---- the broker's own actions -------------------------------------------------------------

    def remove(
        self,
        user: User,
        now: float,
        why: str,
        what: p.PresenceKind = p.PresenceKind.LEFT,
        release: bool = True,
        end_session: bool = False,
    ) -> None:
        """Forget a user: the name is free again (unless ``release`` is off: another broker holds
        it now) and the room is told. The session can still be resumed, unless ``end_session``
        (/exit, fire, reset)."""
        if release:
            self.store.release(user.name, end_session)
        del self.users[user.name]
        self.by_peer.pop(user.peer, None)
        self.stalled.discard(user.peer)
        self.members[user.room].discard(user.name)
        self.out.publish(user.room, p.Presence(user.room, user.name, what))
        self._drop_if_unused(user.room)
        self.out.log(now, "disconnect", user.room, user.name, why)

    def tick(self, now: float) -> None:
        """Drop users silent for too long and send every other user a heartbeat."""
        s = self.settings
        c = self.counters
        if c._mark[0]:
            c.rate = (c.accepted - c._mark[1]) / max(now - c._mark[0], 1e-9)
        c._mark = (now, c.accepted)
        self.prune(PRUNED_PER_TICK, now)
        deadline = now - s.heartbeat * s.liveness
        for user in list(self.users.values()):
            if user.last_seen < deadline:
                self.out.reply(user.peer, p.Goodbye(p.Bye.TIMEOUT, "no heartbeat from you"))
                self.remove(user, now, "timed out")
            else:
                self.out.reply(user.peer, p.Ping(user.room, self.store.last_seq(user.room)))

    def replaced(self, name: str, now: float) -> None:
        """Another broker resumed this user's session: close this connection, keep the name."""
        user = self.users.get(name)
        if user is not None:
            self.out.reply(user.peer, p.Goodbye(p.Bye.REPLACED, "this session resumed elsewhere"))
            self.remove(user, now, "resumed on another broker", release=False)

    def blocked_changed(self, name: str, blocked: bool) -> None:
        """Tell a connected user's room (and the user, when unblocked) about a blocklist change."""
        user = self.users.get(name)
        if user is None:
            return
        what = p.PresenceKind.BLOCKED if blocked else p.PresenceKind.UNBLOCKED
        self.out.publish(user.room, p.Presence(user.room, name, what))
        if not blocked:
            self.out.reply(
                user.peer, p.Notice("you are unblocked: your messages reach the room again")
            )

    def move(self, user: User, room: str, now: float) -> None:
        """Put a user in ``room`` on the admin's word (``out``)."""
        self._join(user, room, 0, now, forced=True)

    def goodbye_all(self, reason: p.Bye, text: str, now: float) -> None:
        """Drop every connection (reset, close): each client is told why. A reset ends the
        sessions too; after a close they can be resumed when the broker is back."""
        for user in list(self.users.values()):
            self.out.reply(user.peer, p.Goodbye(reason, text))
            self.remove(user, now, reason.value, end_session=reason is p.Bye.RESET)

    def user_list(self, room: str = "") -> list[p.UserInfo]:
        blocked = self.store.blocked()
        return [
            p.UserInfo(u.name, u.room, u.name in blocked)
            for u in sorted(self.users.values(), key=lambda u: u.name)
            if not room or u.room == room
        ]

    def room_list(self) -> list[p.RoomInfo]:
        return [
            p.RoomInfo(room, len(names), self.store.last_seq(room))
            for room, names in sorted(self.members.items())
        ]

    def reset(self, now: float) -> None:
        """Every client is told and dropped; every room but the lobby goes, with all history."""
        self.goodbye_all(p.Bye.RESET, "the admin reset the broker", now)
        self.store.reset()
        self.members = {p.LOBBY: set()}
