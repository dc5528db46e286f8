"""Room access: which rooms are private, who may enter each, and who asked to.

A private room lets in only the users the admin allowed; a ``Join`` from anyone else becomes a
request that waits for the admin (``room-ctl allow`` moves a connected requester in at once). The
lobby is always open. Pure state, kept by the chat and written through by the store, which keeps
it across restarts; the chat reloads it from the store when a batch could not be committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Request(NamedTuple):
    """A join request: when, and how much history the Join asked for."""

    ts: float
    history: int


@dataclass(slots=True)
class Access:
    private: dict[str, set[str]] = field(default_factory=dict)
    """Private rooms, each with the users allowed in."""
    requests: dict[str, dict[str, Request]] = field(default_factory=dict)
    """Per private room, the users waiting for the admin, oldest first."""

    def may_enter(self, user: str, room: str) -> bool:
        allowed = self.private.get(room)
        return allowed is None or user in allowed

    def is_private(self, room: str) -> bool:
        return room in self.private

    def waiting(self) -> list[tuple[str, str, Request]]:
        """Every request, oldest first: (room, user, request)."""
        rows = [
            (room, user, r) for room, users in self.requests.items() for user, r in users.items()
        ]
        return sorted(rows, key=lambda row: row[2].ts)
