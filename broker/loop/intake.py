"""What arrives on the ROUTER: frames checked and decoded, handed to the chat; a bad frame or a
bug answered to its sender alone; connections counted as they come and go.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Final

import zmq

from broker.chat.chat import Chat
from broker.config import BATCH
from broker.loop.sockets import NOBLOCK, RCVMORE
from broker.security.guard import Guard, user_id
from broker.security.throttle import Throttle
from broker.wire import protocol as p

BAD_FRAMES_LOGGED: Final = 20
"""Bad frames logged one by one per heartbeat interval; the rest are counted in one line."""


class ClientIntake:
    """The ROUTER side of the broker: what clients send, into the chat."""

    def __init__(
        self,
        router: zmq.Socket[bytes],
        chat: Chat,
        guard: Guard,
        clock: Callable[[], float],
        curve: bool,
    ) -> None:
        self.router = router
        self.chat = chat
        self.guard = guard
        self.clock = clock
        self.curve = curve
        self.bad_frames = Throttle(BAD_FRAMES_LOGGED, "{} more bad frames not logged")

    def drain(self) -> None:
        """Read up to ``BATCH`` client messages and hand each to the chat."""
        router, chat, clock = self.router, self.chat, self.clock
        recv, more, decode = router.recv, router.getsockopt, p.decode_client
        curve, known = self.curve, chat.by_peer
        for _ in range(BATCH):
            try:
                peer = recv(NOBLOCK)
            except zmq.Again:
                return
            address = ""
            if curve or peer not in known:  # the body's metadata: its CURVE key, its address
                frame = recv(NOBLOCK, copy=False)
                body = frame.bytes
                if curve and self.guard.key_taken(peer, user_id(frame)):
                    self._drop_taken(peer)
                if peer not in known:  # a stranger's hello or login: guesses count by address
                    address = frame.get("Peer-Address") or ""
            else:
                body = recv(NOBLOCK)  # a ROUTER message is [peer id, body...] and arrives whole
            if more(RCVMORE):
                frames = 2  # the body and the one that is still to come
                recv(NOBLOCK)
                while more(RCVMORE):
                    recv(NOBLOCK)
                    frames += 1
                self._bad_frame(peer, f"expected 1 frame (the body), got {frames}")
                continue
            try:
                msg = decode(body)
            except p.ProtocolError as exc:
                self._bad_frame(peer, exc.reason)
                continue
            try:
                chat.handle(peer, msg, clock(), address)
            except Exception as exc:  # a bug must cost one request, never the broker
                report_bug(chat, clock(), peer, msg, exc)

    def _bad_frame(self, peer: bytes, reason: str) -> None:
        self.chat.counters.bad_frames += 1
        self.chat.error(peer, p.Code.BAD_FRAME, reason, request="")
        if self.bad_frames.allow():
            text = f"bad frame from peer {peer.hex()}: {reason}"
            self.chat.out.log(self.clock(), "error", text=text)

    def _drop_taken(self, peer: bytes) -> None:
        """A new connection (another CURVE key) took a dead connection's peer id: the old
        connection's user is dropped, not handed over."""
        user = self.chat.by_peer.get(peer)
        if user is not None:
            self.chat.remove(user, self.clock(), "its connection id was taken by another key")


def report_bug(chat: Chat, now: float, peer: bytes | None, msg: object, exc: Exception) -> None:
    """A bug met one request (a client's, or an admin's with no ``peer``): answer ``internal``
    and log one line with the traceback. It costs that request only, never the broker."""
    if peer is not None:
        chat.error(peer, p.Code.INTERNAL, "the broker failed on this request; see its log")
    lines = (line.strip() for item in traceback.format_exception(exc) for line in item.split("\n"))
    trace = " | ".join(line for line in lines if line)
    what = f"{type(msg).__name__}: {type(exc).__name__}: {exc}"
    chat.out.log(now, "error", text=f"internal error on {what}; {trace}")
