"""Which broker the client talks to: the handshake down the ``--server`` list, the resume on the
next broker, and the SUB following the PUB of whichever broker welcomed it.

``--server`` may name several brokers. The handshake tries them in order and the first to answer
``Welcome`` wins; when the session later takes its broker for lost (``Reconnect``), the new DEALER
goes to the next broker in the list (round robin), and the ``Welcome`` from there says which PUB to
subscribe to: the SUB follows it, and gap repair (Sync, Fetch) does the rest. One broker in the list
behaves as before: every DEALER goes to it. The CURVE keys (``--server-key``) are the same for
every broker in the list, so the brokers of one list must share their key pair.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Final

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from broker.config import CTL_TIMEOUT, Exit
from broker.wire.protocol import (
    VERSION,
    Challenge,
    ClientMsg,
    Code,
    Error,
    Login,
    Prove,
    ServerMsg,
    Verified,
    Welcome,
)
from broker.wire.scram import Prover, ScramException
from client.control import HANDSHAKE_EVENTS, handshake_failure
from client.core import PROG, Session
from client.effects import Effect, Kind, Line, Stop
from client.sockets import Sockets, decode_replies, end_monitor

HANDSHAKE_MIN: Final = 2.0
"""The least time each broker of a list gets to answer Hello at start (see
``handshake_timeout``)."""
_SILENT: Final = Stop(Exit.UNREACHABLE)
"""What ``_await_welcome`` returns when the broker said nothing in time (compared by identity)."""
_ALIVE_CODES: Final = frozenset({Code.HELLO_FIRST, Code.NAME_TAKEN})
"""Errors by which a broker answers a Hello it did not welcome: it is alive, so the session's next
``Reconnect`` says Hello to it again instead of moving on to the next broker."""

NO_PASSWORD: Final = "run room-client on a terminal, or set ROOM_PASSWORD"
_LOGIN_REFUSED: Final = (Code.BAD_PASSWORD, Code.BANNED, Code.UNKNOWN_ACCOUNT, Code.RETRY_LATER)


def _refusal(msg: Error) -> str:
    """A refused start in one line: a login's says so, then the broker's reason."""
    return f"login refused: {msg.reason}" if msg.code in _LOGIN_REFUSED else msg.reason


_TCP: Final = re.compile(r"^tcp://(?P<host>.+):(?P<port>[^:\]]+)$")
_WILDCARD_HOSTS: Final = {"*", "0.0.0.0", "::", "[::]"}


def pub_endpoint(pub: str, server: str) -> str:
    """Where to subscribe: the broker's PUB endpoint, with a wildcard host replaced by the host we
    reached the broker at (a broker bound to ``*`` cannot tell us its address)."""
    m = _TCP.match(pub)
    if m is None or m["host"] not in _WILDCARD_HOSTS:
        return pub
    s = _TCP.match(server)
    host = s["host"] if s is not None and s["host"] not in _WILDCARD_HOSTS else "127.0.0.1"
    return f"tcp://{host}:{m['port']}"


def handshake_timeout(brokers: int) -> float:
    """Seconds each of ``brokers`` brokers gets to answer Hello at start: ``CTL_TIMEOUT`` shared
    between them, but at least ``HANDSHAKE_MIN`` each (a loaded broker still answers in time).
    One broker keeps the whole ``CTL_TIMEOUT`` as before; three dead ones cost 6 s, not 15."""
    return max(CTL_TIMEOUT / max(1, brokers), min(HANDSHAKE_MIN, CTL_TIMEOUT))


class Brokers:
    """The brokers of ``--server`` and the one the DEALER talks to; opens the sockets to it."""

    def __init__(
        self,
        servers: str | Sequence[str],
        sockets: Sockets,
        session: Session,
        show: Callable[[Line], None],
        password: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.password = password
        """Asked for the password when the name is registered (a prompt, or ROOM_PASSWORD)."""
        self.servers: tuple[str, ...] = (servers,) if isinstance(servers, str) else tuple(servers)
        """The brokers' ROUTER endpoints, in the order to try them."""
        if not self.servers:
            raise ValueError("no broker endpoint given")
        self.current = 0
        """The index in ``servers`` of the broker the DEALER talks to."""
        self.sockets = sockets
        self.session = session
        self.show = show
        self.welcome_effects: list[Effect] = []
        """What the session made of the handshake's ``Welcome``, for the loop to carry out."""
        self._welcomed_by: str | None = None
        """The broker whose ``Welcome`` the session took last."""
        self._answered = False
        """Whether the current DEALER's broker answered our Hello without welcoming us
        (``_ALIVE_CODES``): then the next ``Reconnect`` stays with it."""

    @property
    def server(self) -> str:
        """The ROUTER endpoint of the broker the DEALER talks to (or is trying)."""
        return self.servers[self.current]

    # ---- the start ----------------------------------------------------------------------------

    async def handshake(self) -> Stop | None:
        """Say Hello to each broker in turn until one says Welcome; a ``Stop`` says why the chat
        cannot start. Only silence (``handshake_timeout``) moves on to the next broker: any
        answer (an error, a refused CURVE handshake) is a real one, and the same from every
        broker of a list, so it ends the start at once. A monitor on the DEALER reports a failed
        CURVE handshake (no server key for a ``--curve`` broker, the wrong one, or a key for a
        plain broker) at once, instead of a timeout."""
        timeout = handshake_timeout(len(self.servers))
        for index in range(len(self.servers)):
            self.current = index
            try:
                # The monitor goes on before the connect: a side that detects a failed handshake
                # does not retry, so its one event must not be missed.
                dealer, monitor = self.sockets.new_dealer(self.server, HANDSHAKE_EVENTS)
            except zmq.ZMQError as exc:
                return Stop(Exit.ERROR, f"{PROG}: cannot connect to {self.server}: {exc.strerror}")
            assert monitor is not None
            try:
                stop = await self._await_welcome(dealer, monitor, timeout)
            finally:
                end_monitor(dealer, monitor)
            if stop is not _SILENT:
                return stop
            await self.sockets.drop_dealer()
        if len(self.servers) == 1:
            why = f"no answer from the broker at {self.server} within {timeout:g}s"
        else:
            where = ", ".join(self.servers)
            why = f"no answer from any of the brokers at {where} within {timeout:g}s each"
        return Stop(Exit.UNREACHABLE, f"{PROG}: {why}: is room-broker running?")

    async def _await_welcome(
        self, dealer: zmq.asyncio.Socket, monitor: zmq.asyncio.Socket, timeout: float
    ) -> Stop | None:
        await self.sockets.send(self.session.hello())
        prover: Prover | None = None
        verified = False
        poller = zmq.asyncio.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            ready = dict(await poller.poll(left * 1000))
            if monitor in ready:
                event = parse_monitor_message(await monitor.recv_multipart())
                why = handshake_failure(event, self.server, self.sockets.curve)
                return Stop(Exit.REFUSED, f"{PROG}: {why}")
            if dealer not in ready:
                continue
            batch = decode_replies(await dealer.recv_multipart())
            for i, msg in enumerate(batch):
                if isinstance(msg, Error) and msg.code is Code.LOGIN_FIRST and prover is None:
                    # A registered name: log in with its password (asked for now: a prompt may
                    # take a while, so the wait starts again after it).
                    got = await loop.run_in_executor(None, self.password)
                    if not got:
                        return Stop(Exit.ERROR, f"{PROG}: {msg.reason}: {NO_PASSWORD}", msg.code)
                    prover = Prover(self.session.name, got)
                    await self.sockets.send(Login(VERSION, self.session.name, prover.first()))
                    deadline = loop.time() + timeout
                    break
                if isinstance(msg, Error):
                    return Stop(Exit.ERROR, f"{PROG}: {_refusal(msg)}", msg.code)
                try:
                    if isinstance(msg, Challenge) and prover is not None:
                        # PBKDF2 of the account's rounds (50 ms by default, up to seconds): in a
                        # thread, so that the loop (room-web's other tabs) goes on meanwhile.
                        proof = await loop.run_in_executor(None, prover.final, msg.first)
                        await self.sockets.send(Prove(proof))
                    elif isinstance(msg, Verified) and prover is not None:
                        prover.check(msg.final)
                        verified = True
                except ScramException as exc:
                    why = f"the broker's login answer is not valid ({exc}): is it the real one?"
                    return Stop(Exit.ERROR, f"{PROG}: {why}")
                if isinstance(msg, Welcome):
                    if prover is not None and not verified:
                        return Stop(Exit.ERROR, f"{PROG}: the broker did not prove itself")
                    return self._welcomed(msg, batch[i + 1 :], loop.time())
        return _SILENT

    def _welcomed(self, welcome: Welcome, after: list[ServerMsg], now: float) -> Stop | None:
        """Subscribe where the broker publishes; the session takes the Welcome and what came
        after it in the same batch (the key of the room it lands in, on a sealing broker)."""
        endpoint = pub_endpoint(welcome.pub, self.server)
        try:
            self.sockets.new_sub(endpoint, welcome)
        except zmq.ZMQError as exc:
            return Stop(Exit.ERROR, f"{PROG}: cannot subscribe at {endpoint}: {exc.strerror}")
        self._welcomed_by = self.server
        self.welcome_effects = self.session.on_server(welcome, now)
        for msg in after:
            self.welcome_effects += self.session.on_server(msg, now)
        return None

    # ---- later: what the current broker says, and moving on -----------------------------------

    async def from_current(self, msg: ServerMsg) -> list[Effect]:
        """Note what the current DEALER's broker said, before the session sees it."""
        self._answered = isinstance(msg, Error) and msg.code in _ALIVE_CODES
        if isinstance(msg, Welcome) and not self.session.done:
            return await self._follow_pub(msg)
        return []

    def moved(self) -> list[Effect]:
        """A notice when a resume landed on another broker of the list than before."""
        if self._welcomed_by == self.server:
            return []
        self._welcomed_by = self.server
        return [Line(Kind.NOTICE, f"now on the broker at {self.server}")]

    async def _follow_pub(self, welcome: Welcome) -> list[Effect]:
        """After a resume, a new SUB where the welcoming broker publishes, with the session's
        topic: its subscribers log in with the session (a broker that restarted refused the old
        SUB's reconnection before the session was back, and another broker is another PUB);
        what the old SUB still held is dropped, and gap repair fetches anything missed."""
        endpoint = pub_endpoint(welcome.pub, self.server)
        await self.sockets.drop_sub()
        try:
            sub = self.sockets.new_sub(endpoint, welcome)
        except zmq.ZMQError as exc:
            return [Stop(Exit.ERROR, f"{PROG}: cannot subscribe at {endpoint}: {exc.strerror}")]
        if self.session.subscribed is not None:
            sub.setsockopt(zmq.SUBSCRIBE, self.session.subscribed)
        self.sockets.receive_sub()
        return []

    async def reconnect(self, hello: ClientMsg) -> None:
        """A new DEALER (a new identity at the broker) saying Hello with the session secret: to
        the next broker of the list (round robin), as the current one seems gone, unless it
        just answered our Hello without a Welcome (``_ALIVE_CODES``: it is alive, and the
        session only wants to say Hello again). With one broker, always to that one."""
        advance = not self._answered
        self._answered = False
        await self.sockets.drop_dealer()
        for attempt in range(len(self.servers)):
            if advance or attempt:
                self.current = (self.current + 1) % len(self.servers)
            try:
                self.sockets.new_dealer(self.server)
            except zmq.ZMQError as exc:  # a bad endpoint: say so, and try the next one
                self.show(Line(Kind.NOTICE, f"cannot connect to {self.server}: {exc.strerror}"))
                continue
            await self.sockets.send(hello)
            self.sockets.receive_dealer()
            return
        # None could be opened: sends are dropped until the session's next Reconnect.
