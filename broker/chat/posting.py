"""What a user says: a room message (``Say``) stored, published and acknowledged, or a direct
message (``Tell``) delivered here or forwarded to the broker that holds its recipient; each
refused when its sender is blocked, its text is too long or not one printable line (the wire's
text rule, ``CONTROL_CHARS``), or its sender is over the rate budget (which history answers also
draw on: ``afford``).

Also where a stored message goes to its room (``delivered``: the sender's own, or one another
broker stored) and how a stored one is acknowledged. Uses the shared ``State`` only.
"""

from __future__ import annotations

from broker.chat.state import State
from broker.chat.users import User
from broker.wire import protocol as p


class Posting:
    """The rules of saying something, and what becomes of a stored message."""

    def __init__(self, state: State) -> None:
        self.state = state

    def post(self, user: User, msg: p.Say, now: float) -> None:
        """A room message: stored, published and acknowledged, unless it is a retry or refused."""
        state = self.state
        if msg.mid and msg.mid <= user.mid_high:  # perhaps a retry of a stored message
            seen = state.store.acked(user.name, msg.mid)
            if seen is not None:  # acknowledged again, never stored twice
                state.out.reply(user.peer, seen)
                return
        refusal = self._refusal(user, msg.text, now)
        if refusal is not None:
            self._refuse(user, msg.mid, refusal, user.room, msg.text, now)
            return
        posted = state.store.append(user.room, user.name, msg.text, now, msg.mid)
        if posted is None:  # stored elsewhere: ``stored`` acknowledges, ``delivered`` publishes
            return
        self.delivered(posted)
        self.acknowledge(user, p.Ack(msg.mid, posted.room, posted.seq))

    def delivered(self, posted: p.Posted, mid: int = 0) -> None:
        """A stored message goes to its room, and to the log. Its id (``mid``: stored by another
        broker, for a user who has moved here since) raises its sender's highest, so that a
        retry is looked up (``Store.acked``), not stored twice."""
        state = self.state
        if mid:
            user = state.users.get(posted.sender)
            if user is not None:
                user.mid_high = max(user.mid_high, mid)
        if posted.room not in state.members:  # a room another broker's user made
            state.members[posted.room] = set()
        state.out.publish(posted.room, posted)
        state.out.log(posted.ts, "msg", posted.room, posted.sender, posted.text)

    def acknowledge(self, user: User, ack: p.Ack) -> None:
        """The sender's message is stored: acknowledge it (its id is the highest so far)."""
        state = self.state
        state.counters.accepted += 1
        user.mid_high = max(user.mid_high, ack.mid)
        state.out.reply(user.peer, ack)

    def tell(self, user: User, msg: p.Tell, now: float) -> None:
        """A direct message: to its recipient here, or forwarded to the broker that holds it."""
        state = self.state
        target = state.users.get(msg.to)
        elsewhere = "" if target is not None else state.store.holder(msg.to)
        refusal = self._refusal(user, msg.text, now)
        if refusal is None and target is None and not elsewhere:
            refusal = p.Code.NOT_CONNECTED, f"{msg.to} is not connected: see /who"
        if refusal is not None:
            self._refuse(user, msg.mid, refusal, f"@{msg.to}", msg.text, now)
            return
        state.counters.direct += 1
        told = p.Told(user.name, msg.to, msg.text, now)
        out = state.out
        if target is not None:
            out.reply(target.peer, told)
        else:
            out.forwards.append((elsewhere, told))
        if target is not user:
            out.reply(user.peer, told)
        out.reply(user.peer, p.Ack(msg.mid, "", 0))
        out.log(now, "direct", f"@{msg.to}", user.name, msg.text)

    def afford(self, user: User, now: float) -> bool:
        """Refill the user's rate budget; whether a message's worth is left (always, with the
        limit off). The caller spends what its request costs."""
        settings = self.state.settings
        rate = settings.rate
        if rate <= 0:
            return True
        user.tokens = min(settings.burst, user.tokens + (now - user.refilled) * rate)
        user.refilled = now
        return user.tokens >= 1

    def _refuse(
        self, user: User, mid: int, refusal: tuple[p.Code, str], where: str, text: str, now: float
    ) -> None:
        code, reason = refusal
        state = self.state
        state.counters.refused += 1
        state.counters.refusals[code] += 1
        if code is p.Code.BLOCKED:
            state.out.log(now, "blocked", where, user.name, text)
        state.out.reply(user.peer, p.Refused(mid, code, reason))

    def _refusal(self, user: User, text: str, now: float) -> tuple[p.Code, str] | None:
        state = self.state
        if user.name in state.store.blocked():
            return p.Code.BLOCKED, "you are blocked: your messages reach only the server"
        size = len(text.encode())
        limit = state.settings.limits.max_message
        if size > limit:
            return p.Code.TOO_LONG, f"message is {size} bytes; the limit is {limit}"
        if not text or p.CONTROL_CHARS.search(text):
            return p.Code.BAD_TEXT, "a message must be non-empty printable text on one line"
        if not self.afford(user, now):
            rate = state.settings.rate
            return p.Code.RATE_LIMITED, f"slow down: at most {rate:g} messages per second"
        user.tokens -= 1
        return None
