"""The ZAP handler: one thread that answers every handshake of the broker's sockets (RFC 27).

libzmq asks ``inproc://zeromq.zap.01`` about each new connection of a socket with a ZAP domain,
and holds the connection until the answer comes. ``zmq.auth``'s ThreadAuthenticator runs an
asyncio loop for this and wraps its socket anew at every poll: with 8,000 users let in at once,
that thread took a quarter of the broker's samples, four fifths of them in asyncio, while the
crowd's handshakes waited (py-spy, room-bench --chat-day). This one blocks on its socket and
answers from plain functions, one per domain.

The thread also reads what it is given to read beside (``also_read``): the broker's connection
monitors, so that a connection's arrival is counted before its handshake is judged.

A domain's function gets (address, mechanism, credentials) and returns the User-Id to let the
connection in with, or None and why not. CURVE's credential is the client's binary public key;
``curve_user`` is what a CURVE client's User-Id is (its z85 key, as ``zmq.auth`` gave it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import zmq
from zmq.utils import z85

from broker.stoppipe import StopPipe

ENDPOINT: Final = "inproc://zeromq.zap.01"
VERSION: Final = b"1.0"

Verdict = tuple[str | None, str]
"""(the User-Id to let the connection in with, or None; why not)."""
Check = Callable[[str, str, list[bytes]], Verdict]
"""(address, mechanism, credentials) -> a verdict."""


def curve_user(key: bytes) -> str:
    """A CURVE client's User-Id: its public key in z85."""
    return z85.encode(key).decode("ascii")


class ZapHandler:
    """Answers the handshakes of the domains it is given (``domains``: name -> check); any other
    domain is refused. Create it before a socket with a ZAP domain is bound (libzmq then queues
    each handshake's question for it), and ``start`` it once everything it reads is there."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.domains: dict[bytes, Check] = {}
        self._also: list[tuple[zmq.Socket[bytes], Callable[[], None]]] = []
        self._socket: zmq.Socket[bytes] = ctx.socket(zmq.REP)
        self._socket.linger = 0
        self._socket.bind(ENDPOINT)
        self._stop = StopPipe(ctx)
        self._thread = threading.Thread(target=self._run, name="room-zap", daemon=True)

    def serve(self, domain: str, check: Check) -> None:
        self.domains[domain.encode()] = check

    def also_read(self, sock: zmq.Socket[bytes], read: Callable[[], None]) -> None:
        """Have the thread call ``read`` (which takes all ``sock`` holds, never waiting) when
        ``sock`` is readable, and before each answer. Before ``start``; ``sock`` is the thread's
        alone from then on."""
        self._also.append((sock, read))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.halt(self._thread)
        self._socket.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._stop.reader, zmq.POLLIN)
        reads = [read for sock, read in self._also]
        for sock, _ in self._also:
            poller.register(sock, zmq.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop.reader in ready:
                return
            for read in reads:
                read()
            while True:  # a REP answers one request at a time: every waiting one, in turn
                try:
                    request = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for read in reads:  # what came before this handshake's question, first
                    read()
                self._socket.send_multipart(self.answer(request))

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request: version, request id, status, text, User-Id, metadata."""
        if len(request) < 6 or request[0] != VERSION:
            request_id = request[1] if len(request) > 1 else b""
            return [VERSION, request_id, b"400", b"not a ZAP 1.0 request", b"", b""]
        request_id, domain, address = request[1], request[2], request[3]
        check = self.domains.get(domain)
        if check is None:
            return [VERSION, request_id, b"400", b"unknown domain", b"", b""]
        mechanism = request[5].decode("ascii", "replace")
        try:
            user, why = check(address.decode("utf-8", "replace"), mechanism, request[6:])
        except Exception as exc:  # a bug refuses one handshake, never the handler
            user, why = None, f"the broker failed on this handshake: {exc!r}"
        if user is None:
            return [VERSION, request_id, b"400", why.encode(), b"", b""]
        return [VERSION, request_id, b"200", b"OK", user.encode(), b""]
