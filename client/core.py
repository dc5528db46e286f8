"""The client session as pure code: protocol messages and typed lines in, effects out.

Nothing here touches a socket or a clock. The I/O layer (``client.connection``) feeds the
session what arrives on the DEALER (``on_server``), what arrives on the SUB (``on_room``), what
the user types (``on_input``, ``end_of_input``) and the time (``tick``), each with ``now`` from a
monotonic clock, and carries out the effects returned: show a ``Line``, ``Send`` a message,
``Subscribe`` or ``Unsubscribe`` a topic, ``Reconnect`` with a new DEALER, or ``Stop`` with an exit
code.

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
from collections import deque
from dataclasses import dataclass
from typing import Final

from broker.config import HEARTBEAT, HISTORY, LIVENESS, Exit
from broker.protocol import (
    LOBBY,
    NAME_RULE,
    VERSION,
    Ack,
    Bye,
    ClientMsg,
    Code,
    Error,
    Fetch,
    Goodbye,
    Hello,
    Join,
    Joined,
    Leave,
    ListRooms,
    ListUsers,
    Messages,
    Notice,
    Ping,
    Posted,
    Presence,
    Quit,
    Refused,
    RoomEvent,
    Rooms,
    Say,
    ServerMsg,
    Sync,
    Synced,
    Tell,
    Told,
    UserInfo,
    Users,
    Welcome,
    topic,
    valid_name,
)

from .effects import Effect, Kind, Line, Reconnect, Send, Stop, Subscribe, Unsubscribe

PROG: Final = "room-client"

SYNC_RETRY: Final = 0.2
"""Seconds to wait for ``Synced`` before sending ``Sync`` again (the subscription may be slow)."""
RESEND_AFTER: Final = 3.0
"""Seconds before an unacknowledged ``Say`` is sent again with the same mid."""
FETCH_RETRY: Final = 2.0
"""Seconds before an unanswered gap ``Fetch`` is sent again."""
EXIT_WAIT: Final = 2.0
"""Seconds ``/exit`` and end of input wait for pending messages to be acknowledged."""
LOST_AFTER: Final = HEARTBEAT * LIVENESS
"""Seconds of silence from the broker before it is taken for lost (and again between retries),
until a ``Welcome`` gives the broker's own heartbeat interval (then LIVENESS intervals)."""
FETCH_LIMIT: Final = 1000
ROSTER_REFRESH: Final = 30.0
"""Seconds between quiet refreshes of who and which rooms exist, for a session that tracks them
(the terminal's status bar and completion); presence events keep the current room exact."""

BLOCKED_LINE: Final = "you are blocked: your messages reach only the server"
LOST_LINE: Final = "lost the broker; still trying"

HELP: Final = (
    ("/join ROOM", "move to ROOM (it is created if new)"),
    ("/leave", f"go back to {LOBBY}"),
    ("/rooms", "list the rooms and their member counts"),
    ("/who [ROOM]", "list who is connected, everywhere or in ROOM"),
    ("/msg USER TEXT", "send TEXT to USER alone (a direct message, not stored)"),
    ("/history [N]", f"show the last N messages of this room (default {HISTORY})"),
    ("/help", "show this list"),
    ("/exit", "leave the chat (also Ctrl-D)"),
    ("//text", "send a message that starts with /"),
)

_GOODBYE: Final = {
    Bye.FIRED: (Exit.FIRED, "you were disconnected by the admin (fired)"),
    Bye.RESET: (
        Exit.DISCONNECTED,
        "the broker was reset; run room-client join again to come back",
    ),
    Bye.CLOSED: (
        Exit.DISCONNECTED,
        "the broker was shut down; run room-client join again when it is back",
    ),
    Bye.TIMEOUT: (
        Exit.DISCONNECTED,
        "the broker dropped this session after hearing nothing from it; run room-client join again",
    ),
    Bye.REPLACED: (
        Exit.DISCONNECTED,
        "another room-client took over this session",
    ),
}


@dataclass(slots=True)
class _Pending:
    """A ``Say`` not yet acknowledged, and when it was last sent."""

    text: str
    sent_at: float


@dataclass(slots=True)
class _Fetch:
    """An outstanding ``Fetch``; ``history`` ones are shown, the others fill a gap."""

    room: str
    after: int
    upto: int
    sent_at: float
    history: bool = False


def _notice(text: str) -> Line:
    return Line(Kind.NOTICE, text)


def _members(n: int) -> str:
    return f"{n} member{'' if n == 1 else 's'}"


def _table(rows: list[tuple[str, str]]) -> list[Line]:
    """Two aligned columns, one notice line per row."""
    width = max(len(left) for left, _ in rows)
    return [_notice(f"{left.ljust(width)}  {right}".rstrip()) for left, right in rows]


class Session:
    """One user's chat session, as a state machine without I/O."""

    def __init__(
        self,
        name: str,
        room: str = LOBBY,
        history: int = HISTORY,
        *,
        rng: random.Random | None = None,
        track: bool = False,
    ) -> None:
        self.name = name
        self.want_room = room
        self.history = history
        self.rng = rng or random.Random()
        self.room: str | None = None
        """The current room, known from ``Joined``; None until the first one."""
        self.last: dict[str, int] = {}
        """Per room, the sequence number of the newest message delivered in order."""
        self.pending: dict[int, _Pending] = {}
        """Sent ``Say`` messages by mid, until ``Ack`` or ``Refused``."""
        self.next_mid = self.rng.getrandbits(40) + 1  # room to grow below MAX_ID
        """Random start: a restarted client must not reuse the ids of its previous run."""
        self.sync_nonce: int | None = None
        """The nonce of the ``Sync`` whose ``Synced`` we wait for."""
        self.sync_sent_at = 0.0
        self.blocked = False
        """Whether the user has been told they are blocked (told once)."""
        self.session_secret = ""
        self.live = False
        """Whether ``Synced`` proved the subscription to the current room."""
        self.announce = False
        """Whether ``* joined ROOM`` is still owed for the current room."""
        self.target = 0
        """The sequence number to reach before announcing (``Synced.seq``)."""
        self.known = 0
        """The newest sequence number of the current room known to exist."""
        self.buffer: dict[int, Posted] = {}
        """Messages of the current room that came early, by sequence number."""
        self.fetches: list[_Fetch] = []
        """Outstanding ``Fetch`` requests in send order (answers come back in that order)."""
        self.joins = 0
        """``Join``/``Leave`` requests not yet answered."""
        self.own_seq = 0
        """The newest acknowledged sequence number of our own messages in the current room."""
        self.subscribed: bytes | None = None
        self.started = False
        self.check_numbering = False
        """From a resumed Welcome to its Joined: room messages are only buffered, because the
        broker may have started over on empty storage, and only Joined can tell."""
        self.hello_pending = False
        """Whether a new DEALER sent ``Hello`` and waits for ``Welcome`` (the broker was lost)."""
        self.taken_since: float | None = None
        """While resuming: when the broker first said our name is taken (see ``_error``)."""
        self.heartbeat = HEARTBEAT
        """Seconds between our pings when otherwise silent: the broker's, from ``Welcome``."""
        self.lost_after = LOST_AFTER
        """Seconds of silence before the broker is taken for lost: LIVENESS of its intervals."""
        self.retry_at = 0.0
        self.last_sent = 0.0
        self.last_recv = 0.0
        self.exit_at: float | None = None
        self.done = False
        self.telling: dict[int, str] = {}
        """Sent ``Tell`` messages by mid (their recipient), until ``Ack`` or ``Refused``. Never
        sent again: the broker does not store them, so a retry could deliver one twice."""
        self.is_blocked = False
        """Whether the user is blocked now, as far as the session knows (the status bar)."""
        self.track = track
        """Keep ``users`` and ``rooms`` fresh with quiet listings (a terminal front end)."""
        self.users: dict[str, str] = {}
        """Known users and their rooms ("" when unknown): listings, presence, senders."""
        self.blocked_users: set[str] = set()
        self.rooms: dict[str, int] = {}
        """Known rooms and their member counts, from the last room listing."""
        self.asked: dict[type, deque[tuple[bool, str]]] = {Users: deque(), Rooms: deque()}
        """Per listing, each outstanding request: whether to show its answer (or keep it quiet,
        a refresh) and the room it asked about. The broker answers in order."""
        self.refresh_at: float | None = None

    # ---- queries ------------------------------------------------------------------------------

    def hello(self) -> Hello:
        """The ``Hello`` to open (or, with the secret from ``Welcome``, resume) the session."""
        return Hello(VERSION, self.name, self.session_secret)

    @property
    def settled(self) -> bool:
        """Nothing in flight: joined, every sent message acknowledged and seen, no fetch owed.

        The piped front end waits for this before the next line, so scripted input gives a
        deterministic transcript.
        """
        if self.room is None or self.announce or self.joins or self.pending or self.fetches:
            return False
        if self.telling:
            return False
        return self.own_seq <= self.last.get(self.room, 0)

    @property
    def state(self) -> str:
        """The connection as a word for the status bar."""
        if self.done:
            return "disconnected"
        if not self.started:
            return "connecting"
        return "reconnecting" if self.hello_pending else "connected"

    def members(self) -> list[str]:
        """Who is in the current room, as far as listings and presence tell."""
        room = self.room
        return sorted(name for name, where in self.users.items() if room and where == room)

    def room_names(self) -> list[str]:
        """Every room the session knows of (completion)."""
        return sorted({LOBBY, *self.rooms, *([self.room] if self.room else [])})

    def user_names(self) -> list[str]:
        """Every user the session knows of, but this one (completion)."""
        return sorted(name for name in self.users if name != self.name)

    # ---- inputs -------------------------------------------------------------------------------

    def on_server(self, msg: ServerMsg, now: float) -> list[Effect]:
        """A message that arrived on the DEALER."""
        if self.done:
            return []
        self.last_recv = now
        out: list[Effect] = []
        match msg:
            case Welcome():
                out += self._welcome(msg, now)
            case Joined():
                out += self._joined(msg, now)
            case Posted():
                out += self._posted(msg, now)
            case Messages():
                out += self._messages(msg, now)
            case Ping(room=room, seq=seq):
                if room and room == self.room and seq > self.known:
                    self.known = seq
                    out += self._drain(now)
            case Ack(mid=mid, room=room, seq=seq):
                self.pending.pop(mid, None)
                self.telling.pop(mid, None)
                if room == self.room:
                    self.own_seq = max(self.own_seq, seq)
                out += self._maybe_quit(now)
            case Refused(mid=mid, code=code, reason=reason):
                self.pending.pop(mid, None)
                self.telling.pop(mid, None)
                if code is Code.BLOCKED:
                    self.is_blocked = True
                    out += self._tell_blocked()
                else:
                    out.append(_notice(f"not delivered: {reason}"))
                out += self._maybe_quit(now)
            case Error():
                out += self._error(msg, now)
            case Notice(text=text):
                out.append(_notice(text))
            case Users(users=users):
                shown, where = self._answer(Users)
                self._learn_users(users, where)
                if shown:
                    rows = [(u.name, u.room + ("  (blocked)" if u.blocked else "")) for u in users]
                    out += _table(rows) if rows else [_notice("nobody is connected there")]
            case Rooms(rooms=rooms):
                self.rooms = {r.name: r.members for r in rooms}
                if self._answer(Rooms)[0]:
                    rows = [(r.name, _members(r.members)) for r in rooms]
                    out += _table(rows) if rows else [_notice("there are no rooms")]
            case Told(sender=sender, to=to, text=text, ts=ts):
                for name in (sender, to):
                    self.users.setdefault(name, "")
                own = sender == self.name
                out.append(Line(Kind.DIRECT, text, sender=sender, ts=ts, own=own, to=to))
            case Goodbye(reason=reason, text=text):
                code, line = _GOODBYE.get(reason, (Exit.DISCONNECTED, text or str(reason)))
                out.append(self._stop(code, f"{PROG}: {line}"))
        return out

    def on_room(self, events: list[RoomEvent], now: float) -> list[Effect]:
        """A batch of events that arrived on the SUB, handled in order."""
        if self.done:
            return []
        self.last_recv = now
        out: list[Effect] = []
        for event in events:
            match event:
                case Posted():
                    out += self._posted(event, now)
                case Synced(room=room, nonce=nonce):
                    if room == self.room and nonce == self.sync_nonce:
                        out += self._synced(event, now)
                case Presence():
                    out += self._presence(event)
        return out

    def on_input(self, line: str, now: float) -> list[Effect]:
        """One line the user typed (without or with its line break)."""
        line = line.rstrip("\r\n")
        if self.done or self.exit_at is not None or not line.strip():
            return []
        if line.startswith("//"):
            return self._say(line[1:], now)
        if line.startswith("/"):
            return self._command(line, now)
        return self._say(line, now)

    def end_of_input(self, now: float) -> list[Effect]:
        """Input is over (end of file, Ctrl-D, a signal): leave as ``/exit`` does."""
        if self.done or self.exit_at is not None:
            return []
        return self._begin_exit(now)

    def tick(self, now: float) -> list[Effect]:
        """Called often (every ~50 ms): retries, heartbeats and liveness, all by ``now``."""
        if self.done or not self.started:
            return []
        out: list[Effect] = []
        if self.exit_at is not None and now >= self.exit_at:
            return self._quit(now)
        if self.hello_pending:
            # Anything but Hello would only earn a hello_first error: wait, and retry Hello.
            if now >= self.retry_at:
                self.retry_at = now + self.lost_after
                out.append(Reconnect(self.hello()))
            return out
        if now - self.last_recv >= self.lost_after:
            self.hello_pending = True
            self.retry_at = now + self.lost_after
            return [_notice(LOST_LINE), Reconnect(self.hello())]
        if self.sync_nonce is not None and now - self.sync_sent_at >= SYNC_RETRY:
            self.sync_sent_at = now
            out.append(self._send(Sync(self.sync_nonce), now))
        for mid, pending in self.pending.items():
            if now - pending.sent_at >= RESEND_AFTER:
                pending.sent_at = now
                out.append(self._send(Say(pending.text, mid), now))
        for fetch in self.fetches:
            if not fetch.history and now - fetch.sent_at >= FETCH_RETRY:
                fetch.sent_at = now
                out.append(self._send(Fetch(fetch.room, fetch.after, fetch.upto), now))
        if self.refresh_at is not None and now >= self.refresh_at:
            out += self._refresh(now)
        if now - self.last_sent >= self.heartbeat:
            out.append(self._send(Ping(), now))
        return out

    # ---- handshake and rooms ------------------------------------------------------------------

    def _welcome(self, msg: Welcome, now: float) -> list[Effect]:
        out: list[Effect] = []
        self.session_secret = msg.session
        self.name = msg.name
        self.hello_pending = False
        self.taken_since = None
        self.last_sent = now
        if msg.heartbeat > 0:  # follow the broker's liveness, whatever its --heartbeat
            self.heartbeat = msg.heartbeat
            self.lost_after = msg.heartbeat * LIVENESS
        self.is_blocked = msg.blocked
        if msg.blocked:
            out += self._tell_blocked()
        resuming = self.started
        self.started = True
        self.joins += 1
        if not resuming:
            out.append(self._send(Join(self.want_room, self.history), now))
            return out
        # Back after losing the broker: the same room without history (the gap is fetched
        # instead), and every unacknowledged message again (the broker drops those it has).
        out.append(_notice("reconnected to the broker"))
        for to in self.telling.values():  # not stored, so not sent again: say so
            out.append(_notice(f"not delivered to {to}: the broker was lost; send it again"))
        self.telling.clear()
        for asked in self.asked.values():  # answers to the old connection will not come
            asked.clear()
        self.check_numbering = True
        self.fetches.clear()
        out.append(self._send(Join(self.room or self.want_room, 0), now))
        for mid, pending in self.pending.items():
            pending.sent_at = now
            out.append(self._send(Say(pending.text, mid), now))
        return out

    def _joined(self, msg: Joined, now: float) -> list[Effect]:
        out: list[Effect] = []
        self.joins = max(0, self.joins - 1)
        old = self.room
        if msg.forced and old is not None:
            out.append(_notice(f"you were put out of {old}"))
        if msg.history:
            n = len(msg.history)
            out.append(_notice(f"history {msg.room} ({n} message{'' if n == 1 else 's'})"))
            out += [self._message(m, Kind.HISTORY) for m in msg.history]
        new_topic = topic(msg.room)
        if self.subscribed != new_topic:
            if self.subscribed is not None:
                out.append(Unsubscribe(self.subscribed))
            out.append(Subscribe(new_topic))
            self.subscribed = new_topic
        if msg.room != old:
            self.own_seq = 0
            self.buffer.clear()
        self.room = msg.room
        if msg.room != old:
            self.last[msg.room] = msg.seq  # start at its newest; older ones are history
        elif self.check_numbering and msg.seq < self.last[msg.room]:
            # A resumed session whose broker is behind us: it started over on empty storage.
            out.append(_notice(f"the broker lost the history of {msg.room}"))
            self.last[msg.room] = msg.seq
        self.check_numbering = False
        # In the same room we stayed subscribed: keep what was delivered (the SUB may even be
        # ahead of msg.seq) and fetch anything missed (after a resume) once Synced comes.
        last = self.last[msg.room]
        self.buffer = {seq: m for seq, m in self.buffer.items() if seq > last}
        self.fetches = [f for f in self.fetches if f.history and f.room == msg.room]
        self.known = self.target = max(last, msg.seq)
        self.live = False
        self.announce = True
        self.sync_nonce = self.rng.getrandbits(53)
        self.sync_sent_at = now
        out.append(self._send(Sync(self.sync_nonce), now))
        return out

    def _synced(self, msg: Synced, now: float) -> list[Effect]:
        """The subscription is live: catch up to ``msg.seq``, then announce."""
        self.sync_nonce = None
        self.live = True
        self.target = max(self.target, msg.seq)
        self.known = max(self.known, msg.seq)
        return self._drain(now) + self._refresh(now)

    def _error(self, msg: Error, now: float) -> list[Effect]:
        if msg.code is Code.HELLO_FIRST:
            if self.hello_pending:
                return []  # an answer to something sent before our new Hello
            self.hello_pending = True
            self.retry_at = now + self.lost_after
            return [_notice("the broker forgot this session; rejoining"), Reconnect(self.hello())]
        if msg.code is Code.BAD_SESSION and self.hello_pending and self.session_secret:
            # The session ended while we were away: start a new one under the same name. What
            # is unacknowledged is sent again after Welcome, as on any resume.
            self.session_secret = ""
            self.retry_at = now + self.lost_after
            line = _notice("the broker ended this session; starting a new one")
            return [line, self._send(self.hello(), now)]
        if msg.request == "fetch" and self.fetches:
            # Answers come in order: this one is for the oldest Fetch still unanswered.
            failed = self.fetches.pop(0)
            if not failed.history:
                return []  # a gap of a room we have left since: nothing to repair
        if self.hello_pending and msg.code is Code.NAME_TAKEN:
            # Perhaps by ourselves: a broker that forgot us welcomed an earlier Hello as a new
            # session (new secret) on a connection we have replaced since. The broker drops that
            # stale session after LIVENESS silent intervals, at its next tick: until then, say
            # Hello again every interval; only a name still taken after that is someone else's.
            if self.taken_since is None:
                self.taken_since = now
            if now - self.taken_since < self.lost_after + self.heartbeat:
                self.retry_at = now + self.heartbeat
                return []
        if self.hello_pending and msg.code in (
            Code.NAME_TAKEN,
            Code.BAD_NAME,
            Code.BAD_VERSION,
            Code.FULL,
        ):
            return [self._stop(Exit.DISCONNECTED, f"{PROG}: could not rejoin: {msg.reason}")]
        out: list[Effect] = [Line(Kind.ERROR, f"error: {msg.reason}")]
        if self.joins and msg.code in (Code.BAD_ROOM, Code.FULL):
            self.joins -= 1
            self.check_numbering = False  # no Joined is coming to settle it
            if self.room is None:
                # The first Join failed, but the broker put us in the lobby at Hello.
                self.joins += 1
                out.append(self._send(Join(LOBBY, self.history), now))
        return out

    # ---- room messages ------------------------------------------------------------------------

    def _posted(self, msg: Posted, now: float) -> list[Effect]:
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

    def _messages(self, msg: Messages, now: float) -> list[Effect]:
        request = next((f for f in self.fetches if f.room == msg.room), None)
        if request is not None:
            self.fetches.remove(request)
        if request is not None and request.history:
            n = len(msg.messages)
            if not n:
                return [_notice(f"no history in {msg.room}")]
            head = _notice(f"history {msg.room} ({n} message{'' if n == 1 else 's'})")
            return [head, *(self._message(m, Kind.HISTORY) for m in msg.messages)]
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
            out.append(_notice(f"{lost} messages were lost"))
        for seq in have:
            out.append(self._message(self.buffer.pop(seq), Kind.MESSAGE))
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
            out.append(self._message(self.buffer.pop(last), Kind.MESSAGE))
        self.last[room] = last
        if self.announce and self.live and last >= self.target:
            self.announce = False
            out.append(_notice(f"joined {room}"))
        need = min(self.buffer) - 1 if self.buffer else self.known
        if need > last and not any(not f.history and f.room == room for f in self.fetches):
            self.fetches.append(_Fetch(room, last, need, now))
            out.append(self._send(Fetch(room, after=last, upto=need, limit=FETCH_LIMIT), now))
        return out

    def _message(self, msg: Posted, kind: Kind) -> Line:
        own = msg.sender == self.name
        self.users.setdefault(msg.sender, "")
        return Line(kind, msg.text, room=msg.room, sender=msg.sender, ts=msg.ts, own=own)

    def _track_presence(self, user: str, room: str, what: str) -> None:
        match what:
            case "entered":
                self.users[user] = room
            case "left" | "out":
                if self.users.get(user) == room:
                    self.users[user] = ""  # gone elsewhere, or away
            case "fired":
                self.users.pop(user, None)
            case "blocked" | "unblocked":
                self.users.setdefault(user, room)
                (self.blocked_users.add if what == "blocked" else self.blocked_users.discard)(user)
                if user == self.name:
                    self.is_blocked = what == "blocked"

    def _presence(self, event: Presence) -> list[Effect]:
        if event.room != self.room:
            return []
        user, room, what = event.user, event.room, event.what
        self._track_presence(user, room, what)
        if user == self.name:
            if what == "unblocked":
                self.blocked = False
                return [_notice("you were unblocked")]
            if what == "blocked":
                return [_notice("you were blocked by the admin")]
            return []  # our own entering, leaving, out and fired are told otherwise
        text = {
            "entered": f"{user} entered {room}",
            "left": f"{user} left {room}",
            "blocked": f"{user} was blocked",
            "unblocked": f"{user} was unblocked",
            "out": f"{user} was put out of {room}",
            "fired": f"{user} was disconnected by the admin",
        }.get(what, f"{user}: {what}")
        return [_notice(text)]

    # ---- who is where -------------------------------------------------------------------------

    def _ask(self, msg: ListUsers | ListRooms, now: float, shown: bool = True) -> Send:
        if isinstance(msg, ListUsers):
            self.asked[Users].append((shown, msg.room))
        else:
            self.asked[Rooms].append((shown, ""))
        return self._send(msg, now)

    def _answer(self, kind: type) -> tuple[bool, str | None]:
        """Whether to show a listing that came, and the room it was about (None: not known)."""
        asked = self.asked[kind]
        return asked.popleft() if asked else (True, None)

    def _learn_users(self, users: list[UserInfo], where: str | None) -> None:
        listed = {u.name: u.room for u in users}
        if where == "":  # everyone: the whole truth
            self.users = listed
            self.blocked_users = {u.name for u in users if u.blocked}
        else:
            if where:
                for name in [n for n, room in self.users.items() if room == where]:
                    if name not in listed:
                        self.users[name] = ""
            self.users.update(listed)
            for u in users:
                (self.blocked_users.add if u.blocked else self.blocked_users.discard)(u.name)
        if self.name in self.blocked_users:
            self.is_blocked = True

    def _refresh(self, now: float) -> list[Effect]:
        """Quiet listings of every user and room, for a session that tracks them."""
        if not self.track:
            return []
        self.refresh_at = now + ROSTER_REFRESH
        return [self._ask(ListUsers(""), now, shown=False), self._ask(ListRooms(), now, False)]

    # ---- user input ---------------------------------------------------------------------------

    def _say(self, text: str, now: float) -> list[Effect]:
        mid = self.next_mid
        self.next_mid += 1
        self.pending[mid] = _Pending(text, now)
        if self.hello_pending:
            return []  # sent again once the broker welcomes us back
        return [self._send(Say(text, mid), now)]

    def _command(self, line: str, now: float) -> list[Effect]:
        command, *args = line.split()
        match command, args:
            case "/join", [room]:
                if not valid_name(room):
                    return [_notice(f"not a room name: {room!r} (a name is {NAME_RULE})")]
                self.joins += 1
                return [self._send(Join(room, self.history), now)]
            case "/join", _:
                return [_notice("usage: /join ROOM")]
            case "/leave", []:
                self.joins += 1
                return [self._send(Leave(), now)]
            case "/rooms", []:
                return [self._ask(ListRooms(), now)]
            case "/who", []:
                return [self._ask(ListUsers(room=""), now)]
            case "/who", [room]:
                if not valid_name(room):
                    return [_notice(f"not a room name: {room!r} (a name is {NAME_RULE})")]
                return [self._ask(ListUsers(room=room), now)]
            case "/msg", _:
                return self._tell(line, now)
            case "/history", [] | [_]:
                return self._history(args, now)
            case "/help", []:
                return _table(list(HELP))
            case "/exit" | "/quit", []:
                return self._begin_exit(now)
            case (("/leave" | "/rooms" | "/who" | "/help" | "/exit" | "/quit" | "/history"), _):
                usage = next((u for u, _ in HELP if u.split()[0] == command), command)
                return [_notice(f"usage: {usage}")]
        return [_notice(f"unknown command {command}: try /help")]

    def _tell(self, line: str, now: float) -> list[Effect]:
        """``/msg USER TEXT``: the text keeps its own spacing."""
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[2].strip():
            return [_notice("usage: /msg USER TEXT")]
        to, text = parts[1].removeprefix("@"), parts[2]
        if not valid_name(to):
            return [_notice(f"not a user name: {to!r} (a name is {NAME_RULE})")]
        if self.hello_pending:
            return [_notice(f"not delivered to {to}: the broker is not reachable; try again")]
        mid = self.next_mid
        self.next_mid += 1
        self.telling[mid] = to
        return [self._send(Tell(to, text, mid), now)]

    def _history(self, args: list[str], now: float) -> list[Effect]:
        try:
            count = int(args[0]) if args else HISTORY
        except ValueError:
            count = 0
        if count <= 0:
            return [_notice("usage: /history [N] with N a positive number")]
        count = min(count, FETCH_LIMIT)  # the broker answers at most that many, oldest first
        room = self.room
        if room is None or self.last.get(room, 0) == 0:
            return [_notice(f"no history in {room or self.want_room}")]
        last = self.last[room]
        after = max(0, last - count)
        self.fetches.append(_Fetch(room, after, last, now, history=True))
        return [self._send(Fetch(room, after=after, upto=last, limit=count), now)]

    def _tell_blocked(self) -> list[Effect]:
        if self.blocked:
            return []
        self.blocked = True
        return [_notice(BLOCKED_LINE)]

    # ---- leaving ------------------------------------------------------------------------------

    def _begin_exit(self, now: float) -> list[Effect]:
        self.exit_at = now + EXIT_WAIT
        return self._maybe_quit(now)

    def _maybe_quit(self, now: float) -> list[Effect]:
        if self.exit_at is None or self.pending or self.telling:
            return []
        return self._quit(now)

    def _quit(self, now: float) -> list[Effect]:
        return [self._send(Quit(), now), self._stop(Exit.OK)]

    def _stop(self, code: Exit, error: str = "") -> Stop:
        self.done = True
        return Stop(code, error)

    def _send(self, msg: ClientMsg, now: float) -> Send:
        self.last_sent = now
        return Send(msg)
