"""What every part of the chat shares: its settings, its store, the outbox of the batch, the
counters, who is connected, who is in which room, the rooms' access, the stalled peers, and the
tag of the request being handled.

``Chat`` makes one ``State`` and gives it to each of its parts (sessions, rooms, private rooms,
posting, what comes from other brokers), so that an attribute the chat replaces (``access``
after a failed commit, ``members`` and ``access`` after a reset, ``settings`` in a test) is the
new one for every part at once. A part reads it here at each use and never keeps a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.chat.outbox import Counters, Outbox
from broker.chat.users import User
from broker.config import DEFAULT_LIMITS, HEARTBEAT, LIVENESS, Limits
from broker.store.access import Access
from broker.store.base import Store
from broker.wire import protocol as p


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
    accounts: str = "optional"  # "required": only registered names may chat
    registration: str = "open"  # or "invite", "closed"


@dataclass(slots=True, eq=False)
class State:
    """The chat's state, shared by its parts."""

    store: Store
    settings: Settings
    members: dict[str, set[str]]
    """Who is in each room (every room the chat knows, with or without members)."""
    access: Access
    """Private rooms, who may enter them, and who asked (see ``privaterooms``)."""
    out: Outbox = field(default_factory=Outbox)
    counters: Counters = field(default_factory=Counters)
    users: dict[str, User] = field(default_factory=dict)
    by_peer: dict[bytes, User] = field(default_factory=dict)
    stalled: set[bytes] = field(default_factory=set)
    """Peers whose queue was full at the last send: they get no history until they read."""
    request: str = ""
    """The tag of the client message being handled: an ``Error`` names it."""

    def error(self, peer: bytes, code: p.Code, reason: str, request: str | None = None) -> None:
        """Tell a peer its request failed; the Error names the request (by default the one
        being handled)."""
        self.counters.errors[code] += 1
        self.out.reply(peer, p.Error(code, reason, self.request if request is None else request))

    def goodbye(self, peer: bytes, reason: p.Bye, text: str) -> None:
        """Tell a connection the broker sends it away (``Goodbye``), counted by ``reason``."""
        self.counters.goodbyes[reason] += 1
        self.out.reply(peer, p.Goodbye(reason, text))
