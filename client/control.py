"""Talk to the broker's control socket: one request, one reply, or a clear timeout.

REQ is lock-step: a broker that never answers would block it forever. So each request polls with a
timeout and, on timeout, drops the socket with linger 0 (the Lazy Pirate pattern) rather than wait.
"""

from __future__ import annotations

import itertools
import os

import zmq

from broker import protocol as p


class Unreachable(Exception):
    """No reply within the timeout."""


_ids = itertools.count(int.from_bytes(os.urandom(3), "big"))


def request(endpoint: str, command: str, args: list[str], timeout: float) -> p.CtlReply:
    """Send one admin command and wait at most ``timeout`` seconds for its reply."""
    ctx = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    rid = next(_ids)
    try:
        sock.connect(endpoint)
        sock.send(p.encode(p.CtlRequest(rid, command, args)))
        deadline = timeout * 1000
        while sock.poll(deadline):
            reply = p.decode_ctl_reply(sock.recv())
            if reply.id in (rid, 0):  # 0: the broker could not read our id
                return reply
        raise Unreachable(f"no answer from the broker at {endpoint} within {timeout:g}s")
    finally:
        sock.close(linger=0)
