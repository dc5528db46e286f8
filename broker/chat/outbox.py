"""What one batch of input produced, for the I/O layer to send, and what the broker counts.

The chat fills an ``Outbox``; the loop drains it after each batch (``BatchFlush``): the store
commits first, then each room's events go out in one PUB send, each peer's replies in one ROUTER
send, and the log lines are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from broker.wire import protocol as p


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
    rekeyed: set[str] = field(default_factory=set)
    """Rooms whose key must change although their members' names did not: a connection that
    held the key was replaced (a resume), so the new key goes to the members' connections now."""
    key_wanted: list[tuple[bytes, str]] = field(default_factory=list)
    """(peer, room): a member asked to join the room it is in: send it the room's current key."""

    def reply(self, peer: bytes, msg: p.ServerMsg) -> None:
        self.replies.append((peer, msg))

    def publish(self, room: str, event: p.RoomEvent) -> None:
        events = self.rooms.get(room)
        if events is None:
            self.rooms[room] = [event]
        else:
            events.append(event)

    def rekey(self, room: str) -> None:
        self.rekeyed.add(room)

    def want_key(self, peer: bytes, room: str) -> None:
        self.key_wanted.append((peer, room))

    def log(self, ts: float, kind: str, room: str = "", user: str = "", text: str = "") -> None:
        self.logs.append(LogEvent(ts, kind, room, user, text))

    def take(self) -> Outbox:
        """Hand over everything collected so far and start empty."""
        taken = Outbox(
            self.replies, self.rooms, self.logs, self.forwards, {}, self.rekeyed, self.key_wanted
        )
        self.replies, self.rooms, self.logs, self.forwards = [], {}, [], []
        self.answered, self.rekeyed, self.key_wanted = {}, set(), []
        return taken


def _by_code() -> dict[p.Code, int]:
    return dict.fromkeys(p.Code, 0)


def _by_bye() -> dict[p.Bye, int]:
    return dict.fromkeys(p.Bye, 0)


@dataclass(slots=True)
class Counters:
    """What the broker has done since it started, for ``room-ctl stats`` and the metrics
    (``loop.metrics``, which read them from another thread: plain numbers, and dicts whose keys
    are all there from the start)."""

    accepted: int = 0  # room messages stored and published
    refused: int = 0  # room and direct messages refused (blocked, rate, too long, ...)
    refusals: dict[p.Code, int] = field(default_factory=_by_code)  # the refused, by reason
    errors: dict[p.Code, int] = field(default_factory=_by_code)  # Error replies, by code
    goodbyes: dict[p.Bye, int] = field(default_factory=_by_bye)  # connections sent away, by why
    failed_commits: int = 0  # batches the store could not commit (their messages refused)
    direct: int = 0  # direct messages delivered
    bad_frames: int = 0
    dropped_replies: int = 0  # replies a peer's full or gone queue could not take
    published: int = 0  # PUB sends (each one a batch of room events)
    sealing: float = 0.0  # CPU seconds spent sealing PUB sends with room keys (by the I/O layer)
    fetched: int = 0  # stored messages sent in answer to Fetch (gap repair, /history)
    connections: int = 0  # open connections to the ROUTER, users or not (set by the I/O layer)
    started: float = 0.0  # when the broker started (set by the I/O layer)
    rate: float = 0.0  # room messages accepted per second over the last heartbeat interval
    _mark: tuple[float, int] = (0.0, 0)  # (time, accepted) at the last tick
