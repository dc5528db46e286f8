"""What the backbone tells the broker's loop, and a room message as the stream stores it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p


class Record(msgspec.Struct, array_like=True, frozen=True):
    """A room message as the stream stores it: what ``Posted`` says, plus the sender's id."""

    room: str
    seq: int
    ts: float
    sender: str
    text: str
    mid: int = 0

    def posted(self) -> p.Posted:
        return p.Posted(self.room, self.seq, self.ts, self.sender, self.text)


encode_batch = msgspec.msgpack.Encoder().encode
decode_batch = msgspec.msgpack.Decoder(list[Record]).decode

BATCH_RECORDS: Final = 256
BATCH_BYTES: Final = 256 * 1024
"""A JetStream message carries the room's queued messages up to these bounds (NATS allows 1 MiB
by default): one round trip stores a burst, where one per message would cap a room at a few
thousand messages per second."""


# ---- what the backbone tells the broker's loop ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """A batch the stream stored (by any broker) and ``Order`` kept, in stream order: one event
    per batch, not per message: fewer objects and queue operations on the hot path."""

    records: list[Record]


@dataclass(frozen=True, slots=True)
class Stored:
    """This broker's message is stored: acknowledge it to its sender."""

    sender: str
    mid: int
    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class NotStored:
    sender: str
    mid: int
    reason: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """The answer to a name claim (``claim_later``): the session's secret, or why not."""

    name: str
    result: str | p.Code
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AccessChanged:
    """A private room's access as it is now, after a change by any broker: who may enter
    (None: the room is open) and who is waiting."""

    room: str
    allowed: set[str] | None
    waiting: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BlockChanged:
    name: str
    blocked: bool


@dataclass(frozen=True, slots=True)
class AccountBanned:
    """The account ``name`` was banned (through any broker): its user is disconnected here."""

    name: str


@dataclass(frozen=True, slots=True)
class Replaced:
    """Another broker resumed this user's session: drop the local connection, keep the name."""

    name: str


@dataclass(frozen=True, slots=True)
class TheirRequest:
    """An admin request from another broker (or this one, broadcast) to run here."""

    request: cp.CtlRequest
    reply_to: str


@dataclass(frozen=True, slots=True)
class TheirAnswers:
    """The answers to a routed or broadcast admin request (``token`` says which)."""

    token: int
    replies: list[cp.CtlReply]


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A direct message from a user on another broker to a user here."""

    told: p.Told


@dataclass(frozen=True, slots=True)
class TheirPresence:
    """Presence lines (entered, left, ...) from another broker's users, for the rooms here."""

    events: list[p.Presence]


@dataclass(frozen=True, slots=True)
class Reset:
    """Another broker reset the chat (a new epoch): drop every user and room here too."""

    epoch: int


@dataclass(frozen=True, slots=True)
class LogNote:
    """A line for the broker's log (the backbone was lost, or is back)."""

    text: str


Event = (
    Delivered
    | Stored
    | NotStored
    | Claimed
    | AccessChanged
    | BlockChanged
    | AccountBanned
    | Replaced
    | TheirRequest
    | TheirAnswers
    | Forwarded
    | TheirPresence
    | Reset
    | LogNote
)
