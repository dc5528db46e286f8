"""The client session as pure code: protocol messages and typed lines in, effects out.

Nothing here touches a socket or a clock. The I/O layer (``client.connection``) feeds the
session what arrives on the DEALER (``on_server``), what arrives on the SUB (``on_room``), what
the user types (``on_input``, ``end_of_input``) and the time (``tick``), each with ``now`` from a
monotonic clock, and carries out the effects returned: show a ``Line``, ``Send`` a message,
``Subscribe`` or ``Unsubscribe`` a topic, ``Reconnect`` with a new DEALER, or ``Stop`` with an exit
code.

``Session`` is the one object front ends use. It hands each input to the part whose story it is,
and does only what spans parts (a ``Welcome``, an ``Error``, the commands):

- ``link.Link``: Hello and Welcome, resuming after the broker is lost, heartbeats, Goodbye;
- ``delivery.Delivery``: the current room's messages in order, gaps fetched, and its
  ``Subscription`` proved live by ``Sync``;
- ``outbox.Outbox``: ``Say`` and ``Tell`` until acknowledged or refused, ``Say`` retried, and
  leaving (``/exit``) once all are answered;
- ``roster.Roster``: who is where and who is blocked, for listings, status bar and completion;
- ``feed.Feed``: what comes on the SUB, opened with the room keys (``keyring.Keyring``) and
  handed on in order;
- ``commands.Commands``: what a typed ``/command`` asks of these parts.

A program (``client.bot``) asks with ``say``, ``tell``, ``join`` and ``leave`` instead of typed
lines, and a session made with ``answers`` tells it how each of its messages was answered.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Final

from broker.config import HISTORY
from broker.wire.protocol import (
    LOBBY,
    Ack,
    Error,
    Goodbye,
    Hello,
    Joined,
    JoinRequested,
    Messages,
    Notice,
    Ping,
    Posted,
    Refused,
    Register,
    Registered,
    RoomEvent,
    RoomKey,
    Rooms,
    ServerMsg,
    Told,
    Users,
    Welcome,
)
from client.commands import Commands
from client.delivery import SYNC_RETRY, Delivery, FetchRequest
from client.effects import Effect, Kind, Line
from client.feed import Feed
from client.lines import PROG, failure, notice
from client.link import LOST_LINE, Link
from client.outbox import RESEND_AFTER, Outbox, Pending
from client.roster import BLOCKED_LINE, Roster

ROOM_NEWS: Final = (Joined, Messages, Posted, Ping, RoomKey)
"""Messages from the broker whose notices are the current room's (joined, its history, messages
lost), as are the notices of the room's own events (who entered, left, was blocked): those that
come on the SUB, and those a room key opens when it comes after them."""

__all__ = ["BLOCKED_LINE", "LOST_LINE", "PROG", "RESEND_AFTER", "SYNC_RETRY", "Session"]


PASSWORD_CHANGED: Final = "your password is changed: log in with the new one from now on"


class Session:
    """One user's chat session, as a state machine without I/O: the façade over its parts."""

    def __init__(
        self,
        name: str,
        room: str = LOBBY,
        history: int = HISTORY,
        *,
        rng: random.Random | None = None,
        track: bool = False,
        answers: bool = False,
    ) -> None:
        """``track``: keep who and which rooms fresh (a terminal's status bar); ``answers``:
        return an ``Answered`` effect for each message the broker answers (a program)."""
        rng = rng or random.Random()
        self.link = Link(name)
        self.roster = Roster(self.link, track)
        # first to draw from rng: the first mid
        self.outbox = Outbox(self.link, self.roster, rng, answers)
        self.delivery = Delivery(self.link, self.roster, rng, room, history)
        self.feed = Feed(self.link, self.delivery, self.roster)
        self.commands = Commands(self.delivery, self.roster, self.outbox, self.outbox.leave)

    # ---- what front ends and tests read, each held by one part --------------------------------

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def done(self) -> bool:
        return self.link.done

    @property
    def state(self) -> str:
        return self.link.state

    @property
    def lost_after(self) -> float:
        return self.link.lost_after

    @property
    def want_room(self) -> str:
        return self.delivery.want_room

    @property
    def room(self) -> str | None:
        return self.delivery.room

    @property
    def subscribed(self) -> bytes | None:
        return self.delivery.subscription.topic

    @property
    def last(self) -> dict[str, int]:
        return self.delivery.last

    @property
    def sync_nonce(self) -> int | None:
        return self.delivery.subscription.sync_nonce

    @property
    def fetches(self) -> list[FetchRequest]:
        return self.delivery.fetches

    @property
    def pending(self) -> dict[int, Pending]:
        return self.outbox.pending

    @property
    def is_blocked(self) -> bool:
        return self.roster.is_blocked

    @property
    def blocked_users(self) -> set[str]:
        return self.roster.blocked_users

    def hello(self) -> Hello:
        return self.link.hello()

    def carry_on(self, secret: str, last: int) -> None:
        """Continue a session that another process ran (``room-web`` after a restart), before
        the handshake: say ``Hello`` with its ``secret``, so that the broker resumes it while it
        still holds it, and take the starting room as delivered up to ``last`` (0: nothing), so
        that what came meanwhile is fetched as a gap, once and in order, not shown as history."""
        self.link.session_secret = secret
        if last > 0:
            room = self.delivery.want_room
            self.delivery.room = room
            self.delivery.last[room] = last
            self.delivery.check_numbering = True  # a broker that started over: Joined tells

    @property
    def settled(self) -> bool:
        """Nothing in flight: joined, every sent message acknowledged and seen, no fetch owed.

        The piped front end waits for this before the next line, so scripted input gives a
        deterministic transcript.
        """
        return self.delivery.settled and not self.outbox.waiting

    def members(self) -> list[str]:
        """Who is in the current room (the status bar)."""
        return self.roster.members(self.delivery.room)

    def room_names(self) -> list[str]:
        """Every room the session knows of (completion)."""
        return self.roster.room_names(self.delivery.room)

    def user_names(self) -> list[str]:
        """Every user the session knows of, but this one (completion)."""
        return self.roster.user_names()

    # ---- inputs -------------------------------------------------------------------------------

    def on_server(self, msg: ServerMsg, now: float) -> list[Effect]:
        """A message that arrived on the DEALER."""
        if self.link.done:
            return []
        self.link.last_recv = now
        out: list[Effect] = []
        match msg:
            case Welcome():
                out += self._welcome(msg, now)
            case Joined():
                self.roster.entered(msg.room)
                out += self.delivery.joined(msg, now)
            case JoinRequested():
                self.roster.asked_to_join(msg.room)
                out += self.delivery.requested(msg, now)
            case RoomKey():
                out += self.feed.key(msg, now)
            case Posted():
                out += self.delivery.posted(msg, now)
            case Messages():
                out += self.delivery.messages(msg, now)
            case Ping(room=room, seq=seq):
                out += self.delivery.ping(room, seq, now)
            case Ack(room=room, seq=seq):
                self.delivery.acked(room, seq)
                out += self.outbox.acked(msg, now)
            case Refused():
                out += self.outbox.refused(msg, now)
            case Error():
                out += self._error(msg, now)
            case Notice(text=text):
                self.roster.told(text)
                out.append(notice(text))
            case Users():
                out += self.roster.listed_users(msg)
            case Rooms():
                out += self.roster.listed_rooms(msg)
            case Told(sender=sender, to=to, text=text, ts=ts):
                self.roster.saw(sender, to)
                own = sender == self.link.name
                out.append(Line(Kind.DIRECT, text, sender=sender, ts=ts, own=own, to=to))
            case Registered():
                out.append(notice(PASSWORD_CHANGED))
            case Goodbye():
                out += self.link.goodbye(msg, now)
        return self._tied(out) if isinstance(msg, ROOM_NEWS) else out

    def on_room_frame(self, topic: bytes, body: bytes, now: float) -> list[Effect]:
        """A PUB send as it came on the SUB: opened (with a room key, on a sealing broker)."""
        return self._tied(self.feed.frame(topic, body, now))

    def on_room(self, events: list[RoomEvent], now: float) -> list[Effect]:
        """A batch of events that arrived on the SUB, handled in order."""
        return self._tied(self.feed.events(events, now))

    def on_input(self, line: str, now: float) -> list[Effect]:
        """One line the user typed (without or with its line break)."""
        line = line.rstrip("\r\n")
        if self.link.done or self.outbox.exit_at is not None or not line.strip():
            return []
        if line.startswith("//"):
            return self.outbox.say(line[1:], now)
        if line.startswith("/"):
            return self.commands.run(line, now)
        return self.outbox.say(line, now)

    def end_of_input(self, now: float) -> list[Effect]:
        """Input is over (end of file, Ctrl-D, a signal): leave as ``/exit`` does."""
        if self.link.done or self.outbox.exit_at is not None:
            return []
        return self.outbox.leave(now)

    # ---- a program's requests (client.bot), instead of typed lines ---------------------------

    def say(self, text: str, now: float) -> tuple[int, list[Effect]]:
        """A message to the current room, as it is (no command); the mid its answer names."""
        if self._over():
            return 0, []
        return self.outbox.post(text, now)

    def tell(self, to: str, text: str, now: float) -> tuple[int, list[Effect]]:
        """A direct message to ``to``; the mid its answer names."""
        if self._over():
            return 0, []
        return self.outbox.direct(to, text, now)

    def change_password(self, register: Register, now: float) -> list[Effect]:
        """``/passwd``: the new password's verifier (the front end asked for the password and
        derived it), for the logged-in account; ``Registered`` or an ``Error`` answers."""
        if self.link.state != "connected":
            return [failure("not connected: change the password once reconnected")]
        return [self.link.send(register, now)]

    def join(self, room: str, now: float) -> list[Effect]:
        """Move to ``room`` (``/join``), with the session's history."""
        return [] if self._over() else [self.delivery.join(room, now)]

    def leave(self, now: float) -> list[Effect]:
        """Back to the lobby (``/leave``)."""
        return [] if self._over() else [self.delivery.leave(now)]

    def _over(self) -> bool:
        """The session has ended or is leaving: nothing more is sent."""
        return self.link.done or self.outbox.exit_at is not None

    def tick(self, now: float) -> list[Effect]:
        """Called often (every ~50 ms): retries, heartbeats and liveness, all by ``now``."""
        if self.link.done or not self.link.started:
            return []
        if self.outbox.exit_at is not None and now >= self.outbox.exit_at:
            return self.outbox.quit(now)
        self.feed.keyring.expire(now)
        lost = self.link.check(now)
        if lost is not None:
            return lost
        out = self.delivery.subscription.resync(now)
        out += self.delivery.rejoin_due(now)
        out += self.outbox.resend(now)
        out += self.delivery.refetch(now)
        out += self.roster.refresh_due(now)
        return out + self.link.keepalive(now)  # last: only if nothing else was sent

    # ---- what spans parts ---------------------------------------------------------------------

    def _tied(self, effects: list[Effect]) -> list[Effect]:
        """Each notice of ``effects`` tied to the current room (``Line.room``): those that come
        with the room's own news are about it (who entered or left, joined, its history, messages
        lost), and a front end that shows rooms apart (room-web) shows them only there."""
        room = self.delivery.room
        if room is None:
            return effects
        return [
            replace(e, room=room) if isinstance(e, Line) and e.kind is Kind.NOTICE else e
            for e in effects
        ]

    def _welcome(self, msg: Welcome, now: float) -> list[Effect]:
        self.feed.keyring.sealed = msg.sealed
        resuming = self.link.welcome(msg, now)
        out: list[Effect] = []
        out += self.roster.note_blocked(msg.blocked)
        if not resuming:
            out.append(self.delivery.join(self.delivery.want_room, now))
            return out
        # Back after losing the broker: every unacknowledged message again (the broker drops
        # those it has); answers to the old connection will not come.
        out.append(notice("reconnected to the broker", "reconnected"))
        out += self.outbox.forget_tells()
        self.roster.forget_asked()
        out.append(self.delivery.rejoin(now))
        return out + self.outbox.resend(now, all_of_them=True)

    def _error(self, msg: Error, now: float) -> list[Effect]:
        """Checked in this order: the broker lost the session, a refused fetch, a refused
        resuming Hello; anything else is shown (and may be a failed Join)."""
        out = self.link.session_lost(msg, now)
        if out is not None:
            return out
        if msg.request == "fetch" and self.delivery.fetch_failed():
            return []
        out = self.link.hello_refused(msg, now)
        if out is not None:
            return out
        line = Line(Kind.ERROR, f"error: {msg.reason}", what=msg.request, code=msg.code)
        return [line, *self.delivery.join_failed(msg.code, now)]
