"""A connected user, as the chat keeps it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class User:
    name: str
    peer: bytes
    room: str
    session: str
    last_seen: float
    tokens: float
    refilled: float
    new_rooms: float = 0.0
    """Rooms the user may still create now (refilled at ``Limits.new_rooms`` per minute)."""
    new_rooms_at: float = 0.0
    """When ``new_rooms`` was last refilled."""
    mid_high: int = 0
    """The user's highest stored message id: an id above it is new, and one at or below it is
    looked up in the store (``Store.acked``), so no stall is long enough to store one twice."""
    account: bool = False
    """Logged in to a registered account (a login with its password, or a resume of one)."""
    moves: int = 0
    """Rooms the user moved into (a subscription and an unsubscription each): what its
    subscribers may send the PUB, for the guard (``loop.watch``)."""
