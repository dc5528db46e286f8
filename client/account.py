"""``room-client register``'s side of the protocol, and where a password comes from.

Registering sends the broker the SCRAM verifier of the password (``broker.wire.scram``), derived
here, so the password never leaves the client; the broker answers ``Registered`` or an ``Error``.
A password comes from a prompt on a terminal, and from ``ROOM_PASSWORD`` otherwise.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Final

import zmq

from broker.config import CTL_TIMEOUT
from broker.wire import protocol as p
from broker.wire.scram import verifier
from client.control import HANDSHAKE_EVENTS, CurveKeys, frames_until, handshake_failure

PASSWORD_ENV: Final = "ROOM_PASSWORD"


def password_source(name: str, confirm: bool = False) -> str | None:
    """The password of ``name``: asked for on a terminal (twice, to ``confirm`` a new one), else
    ``ROOM_PASSWORD``; None when there is neither."""
    if sys.stdin.isatty():
        got = getpass.getpass(f"Password for {name}: ")
        if confirm and getpass.getpass("Again: ") != got:
            return None
        return got or None
    return os.environ.get(PASSWORD_ENV) or None


class Failed(Exception):
    """Registration did not happen; the message is one line for a person."""


def register(
    server: str, name: str, invite: str, password: str, curve: CurveKeys | None
) -> p.Registered:
    """Ask the broker at ``server`` for the account ``name``; ``Failed`` says why not."""
    v = verifier(password)
    msg = p.Register(p.VERSION, name, invite, v.salt, v.iterations, v.stored_key, v.server_key)
    ctx = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    try:
        sock.connect(server)
        sock.send(p.encode(msg))
        for frame in frames_until(sock, monitor, CTL_TIMEOUT):
            if isinstance(frame, dict):
                raise Failed(handshake_failure(frame, server, curve))
            try:
                batch = p.decode_server(frame)
            except p.ProtocolError:
                continue
            for answer in batch:
                if isinstance(answer, p.Registered):
                    return answer
                if isinstance(answer, p.Error):
                    raise Failed(answer.reason)
        raise Failed(f"no answer from the broker at {server} within {CTL_TIMEOUT:g}s")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
