"""The current room's messages, each shown once and in order, with any hole fetched.

Gap repair (the Clone pattern): after ``Joined`` the session subscribes to the room and sends
``Sync``; the broker publishes ``Synced`` on the room topic, which proves the subscription is live
and says the room's newest sequence number. Room messages are delivered strictly in sequence:
duplicates are dropped, early ones are buffered, and any hole (seen from a later message, a
``Synced`` or a broker ``Ping``) is filled with one ``Fetch`` at a time. ``* joined ROOM`` is shown
only once the subscription is live and every message up to ``Synced.seq`` has been delivered, so
that from then on the user sees every later message of the room.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from broker.wire.protocol import (
    LOBBY,
    Code,
    Fetch,
    Join,
    Joined,
    JoinRequested,
    Leave,
    Messages,
    Posted,
    Sync,
    Synced,
    topic,
)
from client.effects import Effect, Kind, Line, Send, Subscribe, Unsubscribe
from client.lines import message, notice, plural
from client.link import Link
from client.roster import Roster

SYNC_RETRY: Final = 0.2
"""Seconds to wait for ``Synced`` before sending ``Sync`` the first time again (the
subscription may be slow); each later wait is twice the one before, up to ``SYNC_RETRY_MAX``."""
SYNC_RETRY_MAX: Final = 2.0
"""The longest wait between two ``Sync``s. Each ``Synced`` goes to the whole room: 5,000 users
let in at once, retrying every 0.2 s, sent 1.7 million ``Sync``s, and the last was in after
227 s (room-bench --chat-day); doubling, SEE_PERF."""


def sync_wait(retries: int) -> float:
    """Seconds to wait for ``Synced`` after a ``Sync`` sent ``retries`` times before."""
    return min(SYNC_RETRY * 2**retries, SYNC_RETRY_MAX)


FETCH_RETRY: Final = 2.0
"""Seconds before an unanswered gap ``Fetch`` is sent again."""
FETCH_LIMIT: Final = 1000
"""The most messages one ``Fetch`` asks for: the broker answers at most that many."""
JOIN_RETRY: Final = 2.0
"""Seconds before an unanswered ``Join`` (or ``Leave``) is sent again: a reply can be lost like
any (a full queue), and a lost ``Joined`` would leave the session waiting for good."""


@dataclass(slots=True)
class FetchRequest:
    """An outstanding ``Fetch``; ``history`` ones are shown, the others fill a gap."""

    room: str
    after: int
    upto: int
    sent_at: float
    history: bool = False


class Subscription:
    """The room topic of the SUB socket, and whether ``Synced`` proved it live."""

    def __init__(self, link: Link, rng: random.Random) -> None:
        self.link = link
        self.rng = rng
        self.topic: bytes | None = None
        """The room topic the SUB socket is subscribed to (a new SUB is given it too)."""
        self.sync_nonce: int | None = None
        """The nonce of the ``Sync`` whose ``Synced`` we wait for."""
        self.sync_sent_at = 0.0
        self.sync_retries = 0
        self.live = False
        """Whether ``Synced`` proved the subscription to the current room."""

    def follow(self, room: str) -> list[Effect]:
        """Subscribe to ``room``'s topic instead of the previous one, if another."""
        new_topic = topic(room)
        if self.topic == new_topic:
            return []
        out: list[Effect] = [] if self.topic is None else [Unsubscribe(self.topic)]
        self.topic = new_topic
        return [*out, Subscribe(new_topic)]

    def sync(self, now: float) -> Send:
        """Not live until the ``Synced`` of a new ``Sync``: it follows all published before."""
        self.live = False
        self.sync_nonce = self.rng.getrandbits(53)
        self.sync_sent_at = now
        self.sync_retries = 0
        return self.link.send(Sync(self.sync_nonce), now)

    def proves(self, msg: Synced, room: str | None) -> bool:
        """Whether ``msg`` answers our latest ``Sync`` about ``room``."""
        return msg.room == room and msg.nonce == self.sync_nonce

    def synced(self) -> None:
        self.sync_nonce = None
        self.live = True

    def resync(self, now: float) -> list[Effect]:
        """``Sync`` again while its ``Synced`` is overdue."""
        if self.sync_nonce is not None and now - self.sync_sent_at >= sync_wait(self.sync_retries):
            self.sync_sent_at = now
            self.sync_retries += 1
            return [self.link.send(Sync(self.sync_nonce), now)]
        return []


class Delivery:
    """The current room and how far its messages were shown: joins, gaps and their fetches."""

    def __init__(
        self, link: Link, roster: Roster, rng: random.Random, want_room: str, join_history: int
    ) -> None:
        self.link = link
        self.roster = roster
        self.subscription = Subscription(link, rng)
        self.want_room = want_room
        """The room the user asked for when starting (joined once welcomed)."""
        self.join_history = join_history
        """How many older messages to show on joining a room."""
        self.room: str | None = None
        """The current room, known from ``Joined``; None until the first one."""
        self.joins = 0
        """``Join``/``Leave`` requests not yet answered."""
        self.join_sent: Join | Leave | None = None
        """The latest ``Join``/``Leave`` sent, to send again while ``joins`` are unanswered."""
        self.join_sent_at = 0.0
        self.check_numbering = False
        """From a resumed Welcome to its Joined: room messages are only buffered, because the
        broker may have started over on empty storage, and only Joined can tell."""
        self.last: dict[str, int] = {}
        """Per room, the sequence number of the newest message delivered in order."""
        self.own_seq = 0
        """The newest acknowledged sequence number of our own messages in the current room."""
        self.announce = False
        """Whether ``* joined ROOM`` is still owed for the current room."""
        self.target = 0
        """The sequence number to reach before announcing (``Synced.seq``)."""
        self.known = 0
        """The newest sequence number of the current room known to exist."""
        self.buffer: dict[int, Posted] = {}
        """Messages of the current room that came early, by sequence number."""
        self.fetches: list[FetchRequest] = []
        """Outstanding ``Fetch`` requests in send order (answers come back in that order)."""

    @property
    def settled(self) -> bool:
        """Joined and announced, no join or fetch owed, our own messages seen."""
        if self.room is None or self.announce or self.joins or self.fetches:
            return False
        return self.own_seq <= self.last.get(self.room, 0)

    # ---- joining ------------------------------------------------------------------------------

    def join(self, room: str, now: float, history: int | None = None) -> Send:
        """``Join`` with ``join_history`` older messages unless told otherwise."""
        history = self.join_history if history is None else history
        return self._ask(Join(room, history), now)

    def leave(self, now: float) -> Send:
        return self._ask(Leave(), now)

    def _ask(self, msg: Join | Leave, now: float) -> Send:
        self.joins += 1
        self.join_sent, self.join_sent_at = msg, now
        return self.link.send(msg, now)

    def rejoin_due(self, now: float) -> list[Effect]:
        """The latest ``Join``/``Leave`` again while an answer is overdue (``JOIN_RETRY``). The
        broker answers a ``Join`` of the room the user is in with ``Joined`` again, so a retry
        whose first answer was only slow costs a duplicate, which ``joined`` passes over."""
        if self.joins and self.join_sent is not None and now - self.join_sent_at >= JOIN_RETRY:
            self.join_sent_at = now
            return [self.link.send(self.join_sent, now)]
        return []

    def rejoin(self, now: float) -> Send:
        """Back after losing the broker: the same room without history (the gap is fetched
        instead), and no fetch of the old connection is answered any more."""
        self.check_numbering = True
        self.fetches.clear()
        self.joins = 0  # nor is any join: this one stands for them
        return self.join(self.room or self.want_room, now, history=0)

    def join_failed(self, code: Code, now: float) -> list[Effect]:
        if not self.joins or code not in (Code.BAD_ROOM, Code.FULL):
            return []
        self.joins -= 1
        self.check_numbering = False  # no Joined is coming to settle it
        if self.room is None:
            # The first Join failed, but the broker put us in the lobby at Hello.
            return [self.join(LOBBY, now)]
        return []

    def requested(self, msg: JoinRequested, now: float) -> list[Effect]:
        """The room is private: the Join waits for the admin (a Joined comes if allowed)."""
        out: list[Effect] = [
            notice(
                f"{msg.room} is private: your request to join was sent to the admin",
                "requested",
                room=msg.room,
            )
        ]
        if not self.joins:
            return []  # a retried Join's second answer: the first was told already
        self.joins -= 1
        self.check_numbering = False
        if self.room is None:  # the first Join: the broker put us in the lobby at Hello
            out.append(self.join(LOBBY, now))
        return out

    def joined(self, msg: Joined, now: float) -> list[Effect]:
        if not self.joins and not msg.forced and msg.room == self.room:
            return []  # a retried Join's second answer (or one asking nothing new): passed over
        out: list[Effect] = []
        self.joins = max(0, self.joins - 1)
        old = self.room
        if msg.forced and old is not None:
            out.append(notice(f"you were put out of {old}", "out", room=old))
        if msg.history:
            out += self._history(msg.room, msg.history)
        out += self.subscription.follow(msg.room)
        if msg.room != old:
            self.own_seq = 0
            self.buffer.clear()
        self.room = msg.room
        if msg.room != old:
            self.last[msg.room] = msg.seq  # start at its newest; older ones are history
        elif self.check_numbering and msg.seq < self.last[msg.room]:
            # A resumed session whose broker is behind us: it started over on empty storage.
            out.append(notice(f"the broker lost the history of {msg.room}"))
            self.last[msg.room] = msg.seq
        self.check_numbering = False
        # In the same room we stayed subscribed: keep what was delivered (the SUB may even be
        # ahead of msg.seq) and fetch anything missed (after a resume) once Synced comes.
        last = self.last[msg.room]
        self.buffer = {seq: m for seq, m in self.buffer.items() if seq > last}
        self.fetches = [f for f in self.fetches if f.history and f.room == msg.room]
        self.known = self.target = max(last, msg.seq)
        self.announce = True
        out.append(self.subscription.sync(now))
        return out

    def synced(self, msg: Synced, now: float) -> list[Effect]:
        """The subscription is live: catch up to ``msg.seq``, then announce."""
        self.subscription.synced()
        self.target = max(self.target, msg.seq)
        self.known = max(self.known, msg.seq)
        return self._drain(now)

    # ---- room messages ------------------------------------------------------------------------

    def posted(self, msg: Posted, now: float) -> list[Effect]:
        if self.room is None or msg.room != self.room:
            return []
        self.known = max(self.known, msg.seq)
        if self.check_numbering:
            self.buffer[msg.seq] = msg  # which numbering? Joined will tell
            return []
        if msg.seq <= self.last[msg.room]:
            return []  # a duplicate
        self.buffer[msg.seq] = msg
        return self._drain(now)

    def ping(self, room: str, seq: int, now: float) -> list[Effect]:
        """The broker's heartbeat says the newest sequence number of our room."""
        if room and room == self.room and seq > self.known:
            self.known = seq
            return self._drain(now)
        return []

    def acked(self, room: str, seq: int) -> None:
        """One of our own messages got ``seq`` in ``room``."""
        if room == self.room:
            self.own_seq = max(self.own_seq, seq)

    def messages(self, msg: Messages, now: float) -> list[Effect]:
        request = next((f for f in self.fetches if f.room == msg.room), None)
        if request is not None:
            self.fetches.remove(request)
        if request is not None and request.history:
            if not msg.messages:
                return [notice(f"no history in {msg.room}")]
            return self._history(msg.room, msg.messages)
        if msg.room != self.room:
            return []
        last = self.last[msg.room]
        for m in msg.messages:
            if m.room == msg.room and m.seq > last:
                self.buffer[m.seq] = m
        # Gone for good: anything older than the oldest stored, and any hole below the newest
        # message returned (all of the range when none is). The rest of an answer cut short by a
        # limit is fetched again by _drain, so every round makes progress.
        gone = msg.first - 1
        if request is not None:
            returned = [m.seq for m in msg.messages if m.room == msg.room]
            gone = max(gone, max(returned) if returned else request.upto)
        out: list[Effect] = []
        if gone > last:
            out += self._skip_to(gone)
        return out + self._drain(now)

    def _skip_to(self, upto: int) -> list[Effect]:
        """Deliver what is buffered up to ``upto`` and give up on the rest of that range."""
        room = self.room
        assert room is not None
        last = self.last[room]
        have = sorted(seq for seq in self.buffer if last < seq <= upto)
        out: list[Effect] = []
        lost = upto - last - len(have)
        if lost > 0:
            lines = f"{plural(lost, 'message')} {'was' if lost == 1 else 'were'} lost"
            out.append(notice(lines, "lost", room=room))
        for seq in have:
            out.append(self._show(self.buffer.pop(seq), Kind.MESSAGE))
        self.last[room] = upto
        return out

    def _drain(self, now: float) -> list[Effect]:
        """Deliver buffered messages in order, announce the join when due, fetch any gap."""
        room = self.room
        if room is None:
            return []
        out: list[Effect] = []
        last = self.last[room]
        for seq in [seq for seq in self.buffer if seq <= last]:
            del self.buffer[seq]
        while last + 1 in self.buffer:
            last += 1
            out.append(self._show(self.buffer.pop(last), Kind.MESSAGE))
        self.last[room] = last
        if self.announce and self.subscription.live and last >= self.target:
            self.announce = False
            out.append(notice(f"joined {room}", "joined", room=room))
        need = min(self.buffer) - 1 if self.buffer else self.known
        if need > last and not any(not f.history and f.room == room for f in self.fetches):
            self.fetches.append(FetchRequest(room, last, need, now))
            out.append(self.link.send(Fetch(room, after=last, upto=need, limit=FETCH_LIMIT), now))
        return out

    def _show(self, msg: Posted, kind: Kind) -> Line:
        self.roster.saw(msg.sender)
        return message(msg, kind, self.link.name)

    def _history(self, room: str, messages: list[Posted]) -> list[Effect]:
        head = notice(f"history {room} ({plural(len(messages), 'message')})", "history", room=room)
        return [head, *(self._show(m, Kind.HISTORY) for m in messages)]

    # ---- fetches ------------------------------------------------------------------------------

    def fetch_history(self, count: int, now: float) -> list[Effect]:
        """``/history``: the last ``count`` messages of the current room, shown as history."""
        count = min(count, FETCH_LIMIT)  # the broker answers at most that many, oldest first
        room = self.room
        if room is None or self.last.get(room, 0) == 0:
            return [notice(f"no history in {room or self.want_room}")]
        last = self.last[room]
        after = max(0, last - count)
        self.fetches.append(FetchRequest(room, after, last, now, history=True))
        return [self.link.send(Fetch(room, after=after, upto=last, limit=count), now)]

    def refetch(self, now: float) -> list[Effect]:
        """Every gap ``Fetch`` whose answer is overdue, again."""
        out: list[Effect] = []
        for fetch in self.fetches:
            if not fetch.history and now - fetch.sent_at >= FETCH_RETRY:
                fetch.sent_at = now
                out.append(self.link.send(Fetch(fetch.room, fetch.after, fetch.upto), now))
        return out

    def fetch_failed(self) -> bool:
        """The broker refused a ``Fetch``: whether it was one to forget quietly (a gap of a room
        we have left since: nothing to repair) rather than a ``/history`` to report."""
        if not self.fetches:
            return False
        # Answers come in order: this one is for the oldest Fetch still unanswered.
        return not self.fetches.pop(0).history
