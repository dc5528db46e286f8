"""Heartbeats and liveness, spread over the interval: each user has its own moment in it.

Every connected user is sent a ``Ping`` once per heartbeat interval and checked for liveness at
the same moment (dropped when silent for ``liveness`` intervals). Doing that for every user in one
turn of the loop made that turn grow with the users connected (at 5,000 users, every message that
waited over 100 ms waited in the same fifth of each second: issue 27). So the users take turns on
a wheel: the interval is cut into ``SLICES`` slots, each user stands in one (the emptiest when it
came, so the slots stay even however the users arrive: all at once after a restart too), and a
slot's users are handled when its time comes, at most ``BEATS_PER_TURN`` a call; the loop calls
again at once while some are left (``beat`` says when). So a user's beats are an interval apart,
and no call's work grows with the users connected.

A user removed (quit, timed out, fired, replaced) stays in its slot until its turn and is passed
over then: the slots hold ``User`` objects, and a user that came back is a new one. A user resumed
on a new connection is the same object and keeps its place. Uses the shared ``State`` and
``Sessions`` (to remove a silent user).
"""

from __future__ import annotations

from collections import deque
from typing import Final

from broker.chat.sessions import Sessions
from broker.chat.state import State
from broker.chat.users import User
from broker.wire import protocol as p

BEATS_PER_TURN: Final = 256
"""Users one call handles at most (a ping or a drop each): with 10,000 connected, a slot of 1,000
takes four short turns, with messages handled between them, instead of one long one."""
SLICES: Final = 10
"""Slots of the interval: a user's beat is at its slot's time, so with few users the broker wakes
at most ``SLICES`` times an interval for heartbeats."""


class Heartbeats:
    """The wheel of users, each pinged and checked once per interval."""

    def __init__(self, state: State, sessions: Sessions) -> None:
        self.state = state
        self.sessions = sessions
        self.slots: list[deque[User]] = [deque() for _ in range(SLICES)]
        """Every connected user in one slot (and users removed since, until their turn)."""
        self.slot = 0
        """The slot whose turn comes next."""
        self.due: float | None = None
        """When that turn comes (None: never called, so every slot's turn has come)."""
        self.turn: deque[User] = deque()
        """What is left of the slot whose turn it is (more than one call could handle)."""
        self.idle = False
        """Whether the wheel was empty at the last call (which then asked for none soon)."""

    def enter(self, user: User) -> None:
        """A user was welcomed (a new ``User``: a resumed one keeps its place): it joins the
        slot with the fewest users."""
        min(self.slots, key=len).append(user)

    def beat(self, now: float) -> float:
        """Ping and check the users whose turn has come, at most ``BEATS_PER_TURN``; returns when
        to call again (``now`` while some are left)."""
        interval = self.state.settings.heartbeat
        step = interval / SLICES
        if self.due is None:  # the first call: every slot's turn has come
            self.due = now - interval + step
        elif self.idle:  # users who came since stand in slots whose time is still to come
            self.due = max(self.due, now)
        elif self.due <= now - interval:  # the loop was held up for a whole round: one is owed
            self.due += (now - self.due) // interval * interval
        self.idle = False
        budget = BEATS_PER_TURN
        while True:
            budget = self._handle(now, budget)
            if self.turn:
                return now  # more than a call's share: again at the next turn of the loop
            if self.due > now:
                break
            slot = self.slots[self.slot]
            self.turn, self.slots[self.slot] = slot, deque()
            self.slot = (self.slot + 1) % SLICES
            self.due += step
        if not any(self.slots):
            self.idle = True
            return now + interval  # nobody to beat: the chores' interval is soon enough
        return self.due

    def _handle(self, now: float, budget: int) -> int:
        """Up to ``budget`` users of the turn, each pinged or dropped; returns what is left of
        the budget. A user stays in its slot, behind the turn."""
        state = self.state
        users, out, last_seq = state.users, state.out, state.store.last_seq
        deadline = now - self.state.settings.heartbeat * state.settings.liveness
        turn = self.turn
        back = self.slots[(self.slot - 1) % SLICES]
        while turn and budget > 0:
            budget -= 1
            user = turn.popleft()
            if users.get(user.name) is not user:
                continue  # removed since its last turn: passed over, and out of the wheel
            if user.last_seen < deadline:
                state.goodbye(user.peer, p.Bye.TIMEOUT, "no heartbeat from you")
                self.sessions.remove(user, now, "timed out")
                continue
            out.reply(user.peer, p.Ping(user.room, last_seq(user.room)))
            back.append(user)
        return budget
