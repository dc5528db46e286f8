"""Driving the sans-IO chat in tests: a chat, a connected user, one message at a time."""

from __future__ import annotations

from typing import Any

from broker.chat.chat import Chat, Outbox, Settings, User
from broker.store.memory import MemoryStore
from broker.wire import protocol as p

PUB = "tcp://127.0.0.1:1"
T0 = 1_000.0
"""A clock that starts away from the epoch's float precision limits."""


def chat(store: MemoryStore | None = None, **settings: Any) -> Chat:
    store = MemoryStore() if store is None else store
    return Chat(store, Settings(pub_endpoint=PUB, **settings))


def hello(c: Chat, name: str, peer: bytes | None = None, now: float = T0) -> User:
    """Connect ``name`` and clear the outbox, so the test sees only what follows."""
    peer = name.encode() if peer is None else peer
    c.handle(peer, p.Hello(p.VERSION, name), now)
    out = c.out.take()
    assert isinstance(out.replies[-1][1], p.Welcome), out.replies
    return c.users[name]


def send(c: Chat, who: User | bytes, msg: Any, now: float = T0) -> Outbox:
    """Hand one message to the chat and return everything it produced."""
    peer = who.peer if isinstance(who, User) else who
    c.handle(peer, msg, now)
    return c.out.take()
