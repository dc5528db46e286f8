"""Where room messages, rooms and the blocklist live, behind one small interface.

The chat only talks to a ``Store``; the broker picks the implementation: ``memory.MemoryStore``
keeps everything in process (tests, benchmarks without durability), ``sqlstore.SQLiteStore`` in
a file, and ``backbone.store.BackboneStore`` in NATS JetStream, shared by several brokers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from broker.store.access import Access, Request
from broker.wire.protocol import Ack, Code, Posted
from broker.wire.scram import Verifier


class StoreError(Exception):
    """The database cannot be used, or could not store a batch; the message is one line for the
    operator."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin request: when, by whom (allow-list name and public key), what, and its result."""

    ts: float
    admin: str
    key: str
    command: str
    args: tuple[str, ...]
    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class Account:
    """A registered name: its SCRAM verifier (never the password), when it was made and last
    logged in to (0: never), and whether the admin banned it."""

    name: str
    verifier: Verifier
    created: float
    last_login: float = 0.0
    banned: bool = False


class AccountStore(Protocol):
    """The accounts and invite codes of a broker on its own; written in the store's batch."""

    def account(self, name: str) -> Account | None: ...
    def accounts(self) -> list[Account]:
        """Every account, by name."""
        ...

    def put_account(self, account: Account) -> None:
        """Make ``account``, or replace one of the same name (a new password, a ban)."""
        ...

    def add_invite(self, digest: str, expires: float) -> None:
        """Keep an invite code, as the SHA-256 of it (hex) only, until ``expires``."""
        ...

    def use_invite(self, digest: str, now: float) -> bool:
        """Spend the invite with this digest: False when unknown, used or expired."""
        ...


class Store(Protocol):
    """Messages get their per-room sequence number here; ``commit`` makes the batch durable."""

    def append(self, room: str, sender: str, text: str, ts: float, mid: int = 0) -> Posted | None:
        """The stored message with its sequence number; None when the store answers later (a
        shared backbone): the broker then acknowledges and publishes what it reports."""
        ...

    def last_seq(self, room: str) -> int: ...
    def recent(self, room: str, count: int) -> list[Posted]: ...
    def range(self, room: str, after: int, upto: int, limit: int) -> tuple[list[Posted], int]:
        """Messages with ``after < seq <= upto`` (``upto`` 0: newest) and the oldest seq kept."""
        ...

    def acked(self, sender: str, mid: int) -> Ack | None:
        """The Ack of the sender's stored message with id ``mid``, if there is one: a retry,
        however late (after a stall, a reconnect or a restart), is acknowledged again instead of
        stored twice."""
        ...

    def highest_mid(self, sender: str) -> int:
        """The sender's highest stored message id: a larger one is new without asking ``acked``."""
        ...

    def rooms(self) -> list[str]: ...
    def add_room(self, room: str) -> None: ...
    def remove_room(self, room: str) -> None:
        """Forget ``room`` and its history (its numbering starts over if it comes back)."""
        ...

    def prune(self, keep: int, before: float, limit: int) -> int:
        """Delete at most ``limit`` messages that are past the newest ``keep`` of their room or
        older than ``before`` (a time; 0: none is too old), a few rooms per call; how many."""
        ...

    def reset(self) -> None:
        """Remove every room but the lobby, and all history; the blocklist stays."""
        ...

    def blocked(self) -> set[str]: ...
    def block(self, name: str) -> bool: ...
    def unblock(self, name: str) -> bool: ...
    def claim(self, name: str, session: str, resume: str) -> str | Code | None:
        """Take a user name for a new ``session``, or resume the session whose secret is
        ``resume``: the secret to use, ``Code.NAME_TAKEN`` when another broker holds the name,
        or ``Code.BAD_SESSION`` when there is no such session (it ended). None: a store shared
        with other brokers answers later (the chat's ``claimed``). The chat has already checked
        its own connected users."""
        ...

    def release(self, name: str, end_session: bool) -> None:
        """The name is free; its session may still be resumed unless ``end_session``."""
        ...

    def holder(self, name: str) -> str:
        """The other broker holding ``name`` ('' when none: the chat's own users are its own)."""
        ...

    def access(self) -> Access:
        """Private rooms, who is allowed in, pending requests, as last committed."""
        ...

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        """Make ``room`` private with ``allowed`` in it, or open (None: its requests go too)."""
        ...

    def set_allowed(self, room: str, user: str, allowed: bool) -> None: ...
    def set_request(self, room: str, user: str, request: Request | None) -> None: ...

    def audit(self, entry: AuditEntry) -> None:
        """Record an admin request; kept across restarts and ``reset``."""
        ...

    def audit_log(self, limit: int) -> list[AuditEntry]:
        """The latest ``limit`` audit entries, oldest first."""
        ...

    def commit(self) -> None:
        """Make the batch durable, or raise ``StoreError``: then nothing of the batch is stored,
        and ``last_seq``, ``rooms`` and ``blocked`` are back where the last commit left them."""
        ...

    def account_store(self) -> AccountStore:
        """The accounts (on a backbone, every broker's)."""
        ...

    def close(self) -> None: ...
    def size(self) -> int:
        """Bytes the store holds on disk (0 in memory)."""
        ...
