"""What the chat hears from the other brokers on a backbone: answers to this broker's own writes,
direct messages, a session that moved, blocklist changes. Each is applied between batches
(``backbone.plugin``), so the chat changes only at a batch's edge. Messages other brokers stored
go to their rooms through ``Posting.delivered``, as this broker's own do; a broker on its own
calls only that and ``blocked_changed``. Uses the shared ``State``, ``Posting`` (to acknowledge)
and ``Sessions`` (to drop a replaced user).
"""

from __future__ import annotations

from broker.chat.posting import Posting
from broker.chat.sessions import Sessions
from broker.chat.state import State
from broker.wire import protocol as p


class FromOthers:
    """The backbone's events, applied to the chat."""

    def __init__(self, state: State, posting: Posting, sessions: Sessions) -> None:
        self.state = state
        self.posting = posting
        self.sessions = sessions

    def stored(self, name: str, ack: p.Ack) -> None:
        """The backbone stored the sender's message (``append`` said it would answer later)."""
        user = self.state.users.get(name)
        if user is None:  # gone meanwhile: a retry from its next session is acknowledged anyway
            self.state.counters.accepted += 1
            return
        self.posting.acknowledge(user, ack)

    def not_stored(self, name: str, mid: int, reason: str) -> None:
        """The backbone could not store the sender's message: refuse it, so it is retried."""
        state = self.state
        state.counters.refused += 1
        state.counters.refusals[p.Code.UNAVAILABLE] += 1
        user = state.users.get(name)
        if user is not None:
            state.out.reply(user.peer, p.Refused(mid, p.Code.UNAVAILABLE, reason))

    def forwarded(self, told: p.Told) -> None:
        """A direct message from a user on another broker, for a user here (if still here)."""
        target = self.state.users.get(told.to)
        if target is not None:
            self.state.out.reply(target.peer, told)

    def replaced(self, name: str, now: float) -> None:
        """Another broker resumed this user's session: close this connection, keep the name."""
        user = self.state.users.get(name)
        if user is not None:
            self.state.goodbye(user.peer, p.Bye.REPLACED, "this session resumed elsewhere")
            self.sessions.remove(user, now, "resumed on another broker", release=False)

    def blocked_changed(self, name: str, blocked: bool) -> None:
        """Tell a connected user's room (and the user, when unblocked) about a blocklist change."""
        state = self.state
        user = state.users.get(name)
        if user is None:
            return
        what = p.PresenceKind.BLOCKED if blocked else p.PresenceKind.UNBLOCKED
        state.out.publish(user.room, p.Presence(user.room, name, what))
        if not blocked:
            state.out.reply(
                user.peer, p.Notice("you are unblocked: your messages reach the room again")
            )
