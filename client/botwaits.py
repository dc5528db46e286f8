"""What a program's calls wait for (``client.bot``): the broker's answer to each message it sent,
and the end of its join.

``say`` and ``tell`` wait for the ``Answered`` effect that names their message's mid; ``join``
and ``leave`` for the session's ``joined`` line of the room asked for, its ``requested`` line
(a private room), or an error that answers a ``join``. When the session ends, whatever still
waits is given the error that says why.
"""

from __future__ import annotations

import asyncio

from broker.wire.protocol import Ack, Code
from client.botevents import ChatError, Error, Event, Joined, JoinRequested, Refused
from client.effects import Answered, Line


class Waits:
    """The calls waiting: messages by mid until answered, and at most one join."""

    def __init__(self) -> None:
        self.answers: dict[int, asyncio.Future[Ack]] = {}
        """Messages sent, by mid, until the broker answers them."""
        self.joining: tuple[str, asyncio.Future[Joined]] | None = None
        """The room of the join under way, and its end (joins are made one at a time)."""

    def answered(self, answer: Answered) -> None:
        """The broker answered a message: its ``Ack``, or ``Refused`` with the code."""
        future = self.answers.pop(answer.mid, None)
        if future is None or future.done():
            return  # nobody waits any more (the caller was cancelled)
        if answer.ack is not None:
            future.set_result(answer.ack)
        else:
            future.set_exception(Refused(answer.code or Code.UNAVAILABLE, answer.reason))

    def join(self, room: str) -> asyncio.Future[Joined]:
        """Wait for the end of a join of ``room``, which the caller asks of the session next."""
        future: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        self.joining = (room, future)
        return future

    def line(self, line: Line, event: Event | None) -> bool:
        """A line of the session (and the event made of it) may end the join: whether it is the
        join's error, which ``join`` raises and so is not read as an event too."""
        if self.joining is None or self.joining[1].done():
            return False
        room, joined = self.joining
        if isinstance(event, Joined) and event.room == room:
            joined.set_result(event)
        elif line.what == "requested" and line.room == room:
            joined.set_exception(JoinRequested(room))
        elif isinstance(event, Error) and event.request == "join":
            joined.set_exception(Refused(event.code, event.text))
            return True
        return False

    def fail(self, error: ChatError) -> None:
        """The session is over: every call still waiting raises ``error``."""
        waiting = [*self.answers.values(), *([self.joining[1]] if self.joining else [])]
        self.answers.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
