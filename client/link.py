"""The session's hold on its broker: Hello and Welcome, resuming after a loss, heartbeats, the end.

A session is welcomed once and then resumed as often as the broker is lost: after ``lost_after``
seconds of silence the session asks for a new DEALER (``Reconnect``) and says ``Hello`` with the
secret of its ``Welcome`` until a ``Welcome`` comes again. Everything else the session sends goes
through ``Link.send``, which notes the time so that a ``Ping`` is sent only when otherwise silent.
"""

from __future__ import annotations

from typing import Final

from broker.config import HEARTBEAT, LIVENESS, Exit
from broker.wire.protocol import VERSION, Bye, ClientMsg, Code, Error, Goodbye, Hello, Ping, Welcome
from client.effects import Effect, Reconnect, Send, Stop
from client.lines import PROG, notice

LOST_AFTER: Final = HEARTBEAT * LIVENESS
"""Seconds of silence from the broker before it is taken for lost (and again between retries),
until a ``Welcome`` gives the broker's own heartbeat interval (then LIVENESS intervals)."""

LOST_LINE: Final = "lost the broker; still trying"
RESTART_LINE: Final = "the broker is restarting; still trying"

_GOODBYE: Final = {
    Bye.FIRED: (Exit.FIRED, "you were disconnected by the admin (fired)"),
    Bye.RESET: (
        Exit.DISCONNECTED,
        "the broker was reset; run room-client join again to come back",
    ),
    Bye.CLOSED: (
        Exit.DISCONNECTED,
        "the broker was shut down; run room-client join again when it is back",
    ),
    Bye.TIMEOUT: (
        Exit.DISCONNECTED,
        "the broker dropped this session after hearing nothing from it; run room-client join again",
    ),
    Bye.REPLACED: (
        Exit.DISCONNECTED,
        "another room-client took over this session",
    ),
}

_REJOIN_REFUSED: Final = (
    Code.NAME_TAKEN,
    Code.BAD_NAME,
    Code.BAD_VERSION,
    Code.FULL,
    Code.LOGIN_FIRST,
    Code.BANNED,
    Code.UNKNOWN_ACCOUNT,
)
"""Answers to a resuming ``Hello`` that end the session."""


class Link:
    """Whether and how the broker hears this session: the handshake, liveness and its end."""

    def __init__(self, name: str) -> None:
        self.name = name
        """This user's name: as asked for, then as the broker welcomed it."""
        self.session_secret = ""
        """From ``Welcome``: proves a resuming ``Hello`` is this session's."""
        self.started = False
        """Whether a ``Welcome`` came (the first one joins, later ones resume)."""
        self.hello_pending = False
        """Whether a new DEALER sent ``Hello`` and waits for ``Welcome`` (the broker was lost)."""
        self.taken_since: float | None = None
        """While resuming: when the broker first said our name is taken (see ``hello_refused``)."""
        self.heartbeat = HEARTBEAT
        """Seconds between our pings when otherwise silent: the broker's, from ``Welcome``."""
        self.lost_after = LOST_AFTER
        """Seconds of silence before the broker is taken for lost: LIVENESS of its intervals."""
        self.retry_at = 0.0
        """While the broker is lost: when to say ``Hello`` again."""
        self.last_sent = 0.0
        self.last_recv = 0.0
        self.done = False
        """Whether the session has ended (a ``Stop`` was returned): nothing more happens."""

    def hello(self) -> Hello:
        """The ``Hello`` to open (or, with the secret from ``Welcome``, resume) the session."""
        return Hello(VERSION, self.name, self.session_secret)

    @property
    def state(self) -> str:
        """The connection as a word for the status bar."""
        if self.done:
            return "disconnected"
        if not self.started:
            return "connecting"
        return "reconnecting" if self.hello_pending else "connected"

    def send(self, msg: ClientMsg, now: float) -> Send:
        self.last_sent = now
        return Send(msg)

    def stop(self, code: Exit, error: str = "") -> Stop:
        self.done = True
        return Stop(code, error)

    def welcome(self, msg: Welcome, now: float) -> bool:
        """Take the broker's ``Welcome``; whether it resumes a session welcomed before."""
        self.session_secret = msg.session
        self.name = msg.name
        self.hello_pending = False
        self.taken_since = None
        self.last_sent = now
        if msg.heartbeat > 0:  # follow the broker's liveness, whatever its --heartbeat
            self.heartbeat = msg.heartbeat
            self.lost_after = msg.heartbeat * LIVENESS
        resuming = self.started
        self.started = True
        return resuming

    def goodbye(self, msg: Goodbye, now: float) -> list[Effect]:
        """The end of the session, or, when the broker restarts, a loss like any other: keep
        saying ``Hello`` until it is back."""
        if msg.reason is Bye.RESTART:
            return self._rejoin(RESTART_LINE, now)
        code, line = _GOODBYE.get(msg.reason, (Exit.DISCONNECTED, msg.text or str(msg.reason)))
        return [self.stop(code, f"{PROG}: {line}")]

    def session_lost(self, msg: Error, now: float) -> list[Effect] | None:
        """An error that says the broker no longer knows this session: say ``Hello`` again.
        None for any other error."""
        if msg.code is Code.HELLO_FIRST:
            if self.hello_pending:
                return []  # an answer to something sent before our new Hello
            return self._rejoin("the broker forgot this session; rejoining", now)
        if msg.code is Code.BAD_SESSION and self.hello_pending and self.session_secret:
            # The session ended while we were away: start a new one under the same name. What
            # is unacknowledged is sent again after Welcome, as on any resume.
            self.session_secret = ""
            self.retry_at = now + self.lost_after
            line = notice("the broker ended this session; starting a new one", "reconnecting")
            return [line, self.send(self.hello(), now)]
        return None

    def hello_refused(self, msg: Error, now: float) -> list[Effect] | None:
        """An error that answers a resuming ``Hello``: wait for the name, or give up. None for
        any other error."""
        if not self.hello_pending:
            return None
        if msg.code is Code.NAME_TAKEN:
            # Perhaps by ourselves: a broker that forgot us welcomed an earlier Hello as a new
            # session (new secret) on a connection we have replaced since. The broker drops that
            # stale session after LIVENESS silent intervals, at its next tick: until then, say
            # Hello again every interval; only a name still taken after that is someone else's.
            if self.taken_since is None:
                self.taken_since = now
            if now - self.taken_since < self.lost_after + self.heartbeat:
                self.retry_at = now + self.heartbeat
                return []
        if msg.code in _REJOIN_REFUSED:
            return [self.stop(Exit.DISCONNECTED, f"{PROG}: could not rejoin: {msg.reason}")]
        return None

    def check(self, now: float) -> list[Effect] | None:
        """Liveness, on every tick: while the broker is lost, what to do now (say ``Hello`` again
        when due); None while it is heard from."""
        if self.hello_pending:
            # Anything but Hello would only earn a hello_first error: wait, and retry Hello.
            if now < self.retry_at:
                return []
            self.retry_at = now + self.lost_after
            return [Reconnect(self.hello())]
        if now - self.last_recv >= self.lost_after:
            return self._rejoin(LOST_LINE, now)
        return None

    def keepalive(self, now: float) -> list[Effect]:
        """A ``Ping`` when nothing else was sent for a heartbeat interval."""
        if now - self.last_sent >= self.heartbeat:
            return [self.send(Ping(), now)]
        return []

    def _rejoin(self, why: str, now: float) -> list[Effect]:
        """The broker is lost or forgot us: a new DEALER, and ``Hello`` on it."""
        self.hello_pending = True
        self.retry_at = now + self.lost_after
        return [notice(why, "reconnecting"), Reconnect(self.hello())]
