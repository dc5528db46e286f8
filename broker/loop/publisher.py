"""The PUB in a thread of its own: the loop never owns the socket that faces subscribers.

libzmq does a subscriber's bookkeeping in the thread that owns the PUB: it stores every
subscription it is sent, and walks the whole subscription tree for each connection that closes
(seconds, for a flood of topics). So the loop hands each send to this thread over an inproc pipe,
and the thread only forwards, in C (``zmq.proxy_steerable``, which releases the GIL): a stall of
the PUB stalls only this thread. Its pipe is bounded; a send it cannot take is dropped and
counted, and subscribers repair the gap by sequence number, as after any loss.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Final

import zmq

from broker.loop.sockets import NOBLOCK, SNDMORE_NOBLOCK

FEED_HWM: Final = 2_000
"""PUB sends (each at most ``PUB_SEND_BYTES``) waiting for the publisher thread: a stall of that
long drops the rest, never the loop."""


class Publisher:
    """Owns the TCP-facing ``pub`` from ``start`` to ``stop``; ``send`` is the loop's side."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], pub: zmq.Socket[bytes]) -> None:
        self.pub = pub
        name = f"inproc://publisher-{id(self)}"
        self._feed: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self._feed.setsockopt(zmq.LINGER, 0)
        self._feed.setsockopt(zmq.SNDHWM, FEED_HWM)
        self._feed.bind(name)
        self._inlet: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self._inlet.setsockopt(zmq.LINGER, 0)
        self._inlet.setsockopt(zmq.RCVHWM, FEED_HWM)
        self._inlet.connect(name)
        self._control: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.bind(name + "-control")
        self._steer: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self._steer.setsockopt(zmq.LINGER, 0)
        self._steer.connect(name + "-control")
        self.dropped = 0
        """Sends the publisher's pipe could not take (it was that far behind)."""
        self._thread = threading.Thread(target=self._run, name="room-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, topic: bytes, body: bytes) -> bool:
        """Queue one PUB send; False (and counted) when the publisher is too far behind."""
        feed = self._feed
        try:
            feed.send(topic, SNDMORE_NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        feed.send(body, NOBLOCK)  # the second part of a message always goes once the first did
        return True

    def _run(self) -> None:
        with contextlib.suppress(zmq.ContextTerminated):
            zmq.proxy_steerable(self._inlet, self.pub, None, self._control)

    def stop(self) -> None:
        """Let the thread forward what it holds, then end it; the caller closes ``pub``."""
        if self._thread.is_alive():
            self._steer.send(b"TERMINATE")
            self._thread.join(5)
        for sock in (self._feed, self._inlet, self._control, self._steer):
            sock.close(linger=0)
