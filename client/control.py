"""Talk to the broker's control socket: one request, one reply, or a clear refusal or timeout.

The control socket is a CURVE server that accepts only the admins' keys, so every request goes
over a CURVE connection made with the admin's key pair and the broker's public key. A monitor on
the REQ socket reports a refused handshake at once (``Refused``), instead of waiting for the
timeout.

REQ is lock-step: a broker that never answers would block it forever. So each request polls with a
timeout and, on timeout, drops the socket with linger 0 (the Lazy Pirate pattern) rather than wait.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from broker import config
from broker.security.keys import KeyDir, key_or_file, load_public
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def frames_until(
    sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes], timeout: float
) -> Iterator[bytes | dict[str, Any]]:
    """What ``sock`` receives within ``timeout`` seconds, each frame as it comes, or the first
    event its handshake monitor reports (a failed handshake: the caller says why and stops)."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(left * 1000))
        if monitor in ready:
            yield dict(parse_monitor_message(monitor.recv_multipart()))
        elif sock in ready:
            yield sock.recv()


class Unreachable(Exception):
    """No reply within the timeout."""


class Refused(Exception):
    """The broker refused the CURVE handshake; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CURVE client's key pair, the server's public key, and where each came from (for
    messages)."""

    public: bytes
    secret: bytes
    server: bytes
    key_source: str = "this key"
    server_source: str = "the server key"
    refused_hint: str = "use a key on the broker's allow-list"
    failed_hint: str = ""

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)


def client_keys(server_key: str | None, data_dir: str | None) -> CurveKeys | None:
    """room-client's CURVE keys, or None for plain sockets: a fresh key pair, and the broker's
    public key from ``server_key`` (a key or a file) or, when a broker on this host encrypts its
    chat (``--curve``), from its data dir. Raises ``KeyFileError``."""
    if server_key:
        server, source = key_or_file(server_key), "--server-key"
    else:
        path = KeyDir.of(config.data_dir(data_dir)).chat_public
        if not path.exists():
            return None
        server, source = load_public(path), str(path)
    public, secret = zmq.curve_keypair()
    hint = ", and was it started with --curve"
    return CurveKeys(public, secret, server, "this client", source, failed_hint=hint)


def handshake_failure(event: dict[str, object], endpoint: str, keys: CurveKeys | None) -> str:
    """Why a handshake failed, from the monitor event of a client socket, for a person."""
    kind, value = event["event"], event["value"]
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if keys is None:
            return f"the broker at {endpoint} refused this client (ZAP {value})"
        return (
            f"the broker at {endpoint} refused {keys.key_source} (ZAP {value}): {keys.refused_hint}"
        )
    mismatch = value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    if keys is None:  # a plain socket; the server usually hangs up before saying why
        how = "encrypts its traffic" if mismatch else "refused a plain connection: it may encrypt"
        return (
            f"the broker at {endpoint} {how} (CURVE) and this client has no server key: "
            "pass --server-key (keys/broker.key in the broker's data dir)"
        )
    if mismatch:
        return f"the endpoint {endpoint} does not use CURVE: is it the right endpoint?"
    return (
        f"the encrypted handshake with {endpoint} failed: is {keys.server_source} the public key "
        f"of this broker{keys.failed_hint}?"
    )


_ids = itertools.count(int.from_bytes(os.urandom(3), "big"))


def request(
    endpoint: str, command: str, args: list[str], timeout: float, keys: CurveKeys
) -> cp.CtlReply:
    """Send one admin command and wait at most ``timeout`` seconds for its reply."""
    ctx = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    keys.apply(sock)
    monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
    rid = next(_ids)
    try:
        sock.connect(endpoint)
        # Never block: a handshake this side found failing leaves no peer to queue for, and the
        # monitor then says why.
        with contextlib.suppress(zmq.Again):
            sock.send(p.encode(cp.CtlRequest(rid, command, args)), zmq.NOBLOCK)
        for frame in frames_until(sock, monitor, timeout):
            if isinstance(frame, dict):
                raise Refused(handshake_failure(frame, endpoint, keys))
            reply = cp.decode_ctl_reply(frame)
            if reply.id in (rid, 0):  # 0: the broker could not read our id
                return reply
        raise Unreachable(f"no answer from the broker at {endpoint} within {timeout:g}s")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
