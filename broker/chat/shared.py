"""What the chat hears from the other brokers on a backbone: messages they stored, answers to
this broker's own writes, direct messages, a session that moved, blocklist changes. Each is
applied between batches (``backbone.plugin``), so the chat changes only at a batch's edge.
A broker on its own calls only ``delivered`` (for its own messages) and ``blocked_changed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.chat.chat import Chat

    _Base = Chat
else:
    _Base = object


class FromOthers(_Base):
    """The backbone's events for ``Chat`` (a mixin: it uses the chat's users and outbox)."""

    def delivered(self, posted: p.Posted, mid: int = 0) -> None:
        """A stored message goes to its room, and to the log. Its id (``mid``: stored by another
        broker, for a user who has moved here since) raises its sender's highest, so that a
        retry is looked up (``Store.acked``), not stored twice."""
        if mid:
            user = self.users.get(posted.sender)
            if user is not None:
                user.mid_high = max(user.mid_high, mid)
        if posted.room not in self.members:  # a room another broker's user made
            self.members[posted.room] = set()
        self.out.publish(posted.room, posted)
        self.out.log(posted.ts, "msg", posted.room, posted.sender, posted.text)

    def stored(self, name: str, ack: p.Ack) -> None:
        """The backbone stored the sender's message (``append`` said it would answer later)."""
        user = self.users.get(name)
        if user is None:  # gone meanwhile: a retry from its next session is acknowledged anyway
            self.counters.accepted += 1
            return
        self._acknowledge(user, ack)

    def not_stored(self, name: str, mid: int, reason: str) -> None:
        """The backbone could not store the sender's message: refuse it, so it is retried."""
        self.counters.refused += 1
        user = self.users.get(name)
        if user is not None:
            self.out.reply(user.peer, p.Refused(mid, p.Code.UNAVAILABLE, reason))

    def forwarded(self, told: p.Told) -> None:
        """A direct message from a user on another broker, for a user here (if still here)."""
        target = self.users.get(told.to)
        if target is not None:
            self.out.reply(target.peer, told)

    def replaced(self, name: str, now: float) -> None:
        """Another broker resumed this user's session: close this connection, keep the name."""
        user = self.users.get(name)
        if user is not None:
            self.out.reply(user.peer, p.Goodbye(p.Bye.REPLACED, "this session resumed elsewhere"))
            self.remove(user, now, "resumed on another broker", release=False)

    def blocked_changed(self, name: str, blocked: bool) -> None:
        """Tell a connected user's room (and the user, when unblocked) about a blocklist change."""
        user = self.users.get(name)
        if user is None:
            return
        what = p.PresenceKind.BLOCKED if blocked else p.PresenceKind.UNBLOCKED
        self.out.publish(user.room, p.Presence(user.room, name, what))
        if not blocked:
            self.out.reply(
                user.peer, p.Notice("you are unblocked: your messages reach the room again")
            )
