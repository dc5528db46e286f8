"""What this user sends and waits to hear about: room messages (``Say``) and direct ones (``Tell``).

Each carries a message id (mid) and stays here until the broker answers it with ``Ack`` or
``Refused``. A ``Say`` is sent again under the same mid until then, which the broker uses to
drop duplicates, and also after a ``Refused`` that says it could not be stored (``unavailable``:
a backbone electing a leader, or away); a ``Tell`` is never sent again, because the broker does
not store it and a retry could deliver it twice.

Leaving (``/exit``, end of input) waits up to ``EXIT_WAIT`` for every message here to be
answered, then says ``Quit`` and stops the session.

A session made for a program (``answers``) also returns an ``Answered`` effect for each message
answered, so that the program's ``say`` and ``tell`` can wait for their own (``client.bot``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from broker.config import Exit
from broker.wire.protocol import Ack, Code, Quit, Refused, Say, Tell
from client.effects import Answered, Effect
from client.lines import failure, notice
from client.link import Link
from client.roster import Roster

RESEND_AFTER: Final = 3.0
"""Seconds before an unacknowledged ``Say`` is sent again with the same mid."""
RETRY_NOT_STORED: Final = 1.0
"""Seconds before a ``Say`` the broker could not store is sent again with the same mid."""
EXIT_WAIT: Final = 2.0
"""Seconds ``/exit`` and end of input wait for pending messages to be acknowledged."""


@dataclass(slots=True)
class Pending:
    """A ``Say`` not yet acknowledged, and when it was last sent."""

    text: str
    sent_at: float
    not_stored: bool = False  # refused ``unavailable`` at least once (said to the user)


class Outbox:
    """Sent messages by mid until the broker answers them, and leaving once all are answered."""

    def __init__(
        self, link: Link, roster: Roster, rng: random.Random, answers: bool = False
    ) -> None:
        self.link = link
        self.roster = roster
        self.answers = answers
        """Return an ``Answered`` effect for each message answered (a program waits for it)."""
        self.next_mid = rng.getrandbits(40) + 1  # room to grow below MAX_ID
        """Random start: a restarted client must not reuse the ids of its previous run."""
        self.pending: dict[int, Pending] = {}
        """Sent ``Say`` messages by mid, until ``Ack`` or ``Refused``."""
        self.telling: dict[int, tuple[str, str]] = {}
        """Sent ``Tell`` messages by mid (their recipient and text), until ``Ack`` or
        ``Refused``."""
        self.exit_at: float | None = None
        """When ``/exit`` gives up waiting for acknowledgements; None until the user leaves."""

    @property
    def waiting(self) -> bool:
        """Whether any message still waits for its answer."""
        return bool(self.pending or self.telling)

    def say(self, text: str, now: float) -> list[Effect]:
        return self.post(text, now)[1]

    def post(self, text: str, now: float) -> tuple[int, list[Effect]]:
        """``say``, with the mid its answer will name."""
        mid = self._mid()
        self.pending[mid] = Pending(text, now)
        if self.link.hello_pending:
            return mid, []  # sent again once the broker welcomes us back
        return mid, [self.link.send(Say(text, mid), now)]

    def tell(self, to: str, text: str, now: float) -> list[Effect]:
        return self.direct(to, text, now)[1]

    def direct(self, to: str, text: str, now: float) -> tuple[int, list[Effect]]:
        """``tell``, with the mid its answer will name."""
        mid = self._mid()
        if self.link.hello_pending:
            why = "the broker is not reachable; try again"
            line = failure(f"not delivered to {to}: {why}", "tell", Code.UNAVAILABLE)
            return mid, [line, *self._answer(mid, None, Code.UNAVAILABLE, why)]
        self.telling[mid] = (to, text)
        return mid, [self.link.send(Tell(to, text, mid), now)]

    def answered(self, mid: int) -> None:
        """The broker acknowledged or refused message ``mid``."""
        self.pending.pop(mid, None)
        self.telling.pop(mid, None)

    def acked(self, ack: Ack, now: float) -> list[Effect]:
        """The broker acknowledged message ``ack.mid``: leave if that was the last one waited
        for."""
        known = ack.mid in self.pending or ack.mid in self.telling
        self.answered(ack.mid)
        out = self._answer(ack.mid, ack) if known else []
        return out + self.maybe_quit(now)

    def refused(self, msg: Refused, now: float) -> list[Effect]:
        """The broker refused message ``msg.mid``: a ``Say`` it could not store goes again, any
        other refusal is told and answers the message. A blocked user's message is shown as not
        delivered, with its text (it would vanish otherwise: nobody else sees it), after the
        roster's one line on being blocked."""
        if msg.code is Code.UNAVAILABLE and msg.mid in self.pending:
            return self.not_stored(msg.mid, msg.reason, now)
        said = self.pending.get(msg.mid)
        told = self.telling.get(msg.mid)
        self.answered(msg.mid)
        what = "tell" if told is not None else "say"
        out: list[Effect] = []
        if msg.code is Code.BLOCKED:
            out += self.roster.note_blocked(True)
            if said is not None:
                out.append(failure(f"not delivered (you are blocked): {said.text}", what, msg.code))
            elif told is not None:
                text = f"not delivered to {told[0]} (you are blocked): {told[1]}"
                out.append(failure(text, what, msg.code))
        else:
            out.append(failure(f"not delivered: {msg.reason}", what, msg.code))
        if said is not None or told is not None:
            out += self._answer(msg.mid, None, msg.code, msg.reason)
        return out + self.maybe_quit(now)

    def not_stored(self, mid: int, reason: str, now: float) -> list[Effect]:
        """The broker could not store ``mid`` (``unavailable``): it stays, and goes again in a
        second under the same mid; the user hears of it once."""
        pending = self.pending.get(mid)
        if pending is None:
            return []
        said, pending.not_stored = pending.not_stored, True
        pending.sent_at = now - RESEND_AFTER + RETRY_NOT_STORED
        return [] if said else [notice(f"not stored yet: {reason}; sending it again")]

    def resend(self, now: float, *, all_of_them: bool = False) -> list[Effect]:
        """Every unacknowledged ``Say`` whose answer is overdue (or all of them, on a resume)."""
        out: list[Effect] = []
        for mid, pending in self.pending.items():
            if all_of_them or now - pending.sent_at >= RESEND_AFTER:
                pending.sent_at = now
                out.append(self.link.send(Say(pending.text, mid), now))
        return out

    def forget_tells(self) -> list[Effect]:
        """After a resume: the ``Tell`` messages the lost broker never answered, said lost."""
        why = "the broker was lost; send it again"
        out: list[Effect] = []
        for mid, (to, _) in self.telling.items():
            out.append(failure(f"not delivered to {to}: {why}", "tell", Code.UNAVAILABLE))
            out += self._answer(mid, None, Code.UNAVAILABLE, why)
        self.telling.clear()
        return out

    # ---- leaving ------------------------------------------------------------------------------

    def leave(self, now: float) -> list[Effect]:
        """``/exit`` or end of input: quit once every message is answered, or at ``exit_at``."""
        self.exit_at = now + EXIT_WAIT
        return self.maybe_quit(now)

    def maybe_quit(self, now: float) -> list[Effect]:
        if self.exit_at is None or self.waiting:
            return []
        return self.quit(now)

    def quit(self, now: float) -> list[Effect]:
        return [self.link.send(Quit(), now), self.link.stop(Exit.OK)]

    def _answer(
        self, mid: int, ack: Ack | None, code: Code | None = None, reason: str = ""
    ) -> list[Effect]:
        return [Answered(mid, ack, code, reason)] if self.answers else []

    def _mid(self) -> int:
        mid = self.next_mid
        self.next_mid += 1
        return mid
