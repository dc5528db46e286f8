"""The chat itself: users, rooms, blocklist and the rules between them, with no sockets.

``Chat`` takes decoded messages (with the ROUTER peer id they came from and the time) and fills an
``Outbox``: replies to peers, events per room, and log records. The I/O layer drains the outbox
after each batch of input, so everything a batch produces for one room goes out in one PUB send,
after one store commit (an Ack always means "stored"). When that commit fails, ``commit_failed``
turns the batch's outbox into what may still go out: refusals instead of Acks, nothing published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from broker.chat.outbox import Counters, Outbox
from broker.chat.privaterooms import PrivateRooms
from broker.chat.rooms import Rooms
from broker.chat.sessions import Sessions
from broker.chat.shared import FromOthers
from broker.chat.users import User
from broker.config import DEFAULT_LIMITS, HEARTBEAT, LIVENESS, Limits
from broker.store.base import Store
from broker.wire import protocol as p

PRUNED_PER_TICK: Final = 2_000
"""Old messages deleted at most per heartbeat tick: retention never holds the loop for long."""

STORE_FAILED: Final = "the broker could not store this message: try again"
"""The reason of the refusal a sender gets when the batch of its message could not be stored."""

CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""Characters that would break the one-line-per-message log and client output."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the chat needs to know about its broker."""

    pub_endpoint: str
    limits: Limits = DEFAULT_LIMITS
    rate: float = 10.0  # room messages per second per user; 0 turns the limit off
    burst: int = 30
    heartbeat: float = HEARTBEAT
    liveness: int = LIVENESS
    sealed: bool = False  # room events on the PUB are sealed with room keys


class Chat(Sessions, Rooms, PrivateRooms, FromOthers):
    """Users, rooms and the blocklist; every decision about who may do what is made here."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.out = Outbox()
        self.users: dict[str, User] = {}
        self.by_peer: dict[bytes, User] = {}
        self.members: dict[str, set[str]] = {room: set() for room in store.rooms()}
        self.members.setdefault(p.LOBBY, set())
        self.access = store.access()
        """Private rooms, who may enter them, and who asked (see ``privaterooms``)."""
        self.closing = False
        self.counters = Counters()
        self.request = ""
        """The tag of the client message being handled: an ``Error`` names it."""
        self.claiming: dict[str, bytes] = {}
        """Names whose claim the backbone answers later, with the peer that said hello."""
        self.stalled: set[bytes] = set()
        """Peers whose queue was full at the last send: they get no history until they read."""

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
                self._post(user, msg, now)
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
        retry is stored (the store rolled them back); nothing of the batch is published, and
        its chat lines are not logged.
        Replies that read the lost messages (Joined, Messages, Ping, Rooms) are cut back to
        what is stored: no client may learn a sequence number that will be used again. Returns
        how many messages were refused."""
        last = self.store.last_seq
        self.access = self.store.access()  # as last committed: the batch's changes are gone
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

    def _post(self, user: User, msg: p.Say, now: float) -> None:
        """A room message: stored, published and acknowledged, unless it is a retry or refused."""
        if msg.mid and msg.mid <= user.mid_high:  # perhaps a retry of a stored message
            seen = self.store.acked(user.name, msg.mid)
            if seen is not None:  # acknowledged again, never stored twice
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

    def _acknowledge(self, user: User, ack: p.Ack) -> None:
        """The sender's message is stored: acknowledge it (its id is the highest so far)."""
        self.counters.accepted += 1
        user.mid_high = max(user.mid_high, ack.mid)
        self.out.reply(user.peer, ack)

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

    def reset(self, now: float) -> None:
        """Every client is told and dropped; every room but the lobby goes, with all history."""
        self.goodbye_all(p.Bye.RESET, "the admin reset the broker", now)
        self.store.reset()
        self.members = {p.LOBBY: set()}
        self.access = self.store.access()
