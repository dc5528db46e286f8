"""The lean sender (see ``lean``): pre-encoded messages, a bounded window, Acks by batch."""

from __future__ import annotations

import socket
import time
from array import array
from multiprocessing.queues import Queue
from typing import Any

import zmq

from bench.lean import (
    HEARTBEAT,
    NOBLOCK,
    WINDOW,
    body,
    handshake,
    pack,
    redis_address,
    text,
)
from broker.wire import protocol as p
from client.keyring import Keyring

FLUSH_MS = 60_000
"""How long a relay's sender waits, at most, for its queued messages to leave."""

# ---- the sender ---------------------------------------------------------------------------------


def sender(
    results: Queue,
    kind: str,
    router: str,
    rooms: list[str],
    count: int,
    size: int,
    rate: float,
    sample: bool,
    window: int = WINDOW,
) -> None:
    """Send ``count`` messages over ``rooms`` in turn (one user per room), as fast as the window
    allows (``rate`` 0) or paced at ``rate`` per second; ``kind``: room, relay, batch or redis."""
    n = len(rooms)
    per_room = count // n
    topics = [p.topic(r) for r in rooms]
    ctx = zmq.Context()
    socks: list[Any] = []
    if kind == "redis":
        for _ in rooms:
            s = socket.create_connection(redis_address(router))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        msgs = [pack(b"PUBLISH", topics[i % n], body(i // n, size)) for i in range(count)]
    else:
        for k, room in enumerate(rooms):
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.SNDHWM, 100_000)
            dealer.setsockopt(zmq.RCVHWM, 100_000)  # Acks: never a reason to drop one
            dealer.connect(router)
            if kind == "room":
                handshake(dealer, f"sender{k}", room, Keyring())
            socks.append(dealer)
        if kind == "room":
            say = text(size)
            msgs = [p.encode(p.Say(say, i // n + 1)) for i in range(count)]
        else:
            msgs = [body(i // n, size) for i in range(count)]
    sent_ns = array("q", bytes(8 * count)) if sample else None
    counter = _Acks(len(socks))
    cpu0, start = time.process_time(), time.monotonic()
    if kind == "redis":
        _send_redis(socks, msgs, counter, rate, window, sent_ns, start)
    else:
        _send_zmq(kind, socks, topics, msgs, counter, rate, window, sent_ns, start)
    sent_done = time.monotonic()
    if kind in ("room", "redis"):
        counter.wait_all(count, socks, kind)
    results.put({"role": "sender", "sent": count, "acked": counter.acked,
                 "refused": counter.refused, "start": start, "sent_done": sent_done,
                 "cpu": time.process_time() - cpu0, "per_room": per_room,
                 "sent_ns": list(sent_ns) if sent_ns is not None else []})  # fmt: skip
    for s in socks:
        if kind == "redis":
            s.close()
    # A relay acknowledges nothing: what the DEALERs still queue must leave before they close
    # (linger 0 would drop it, and the subscribers would count it lost).
    ctx.destroy(linger=FLUSH_MS if kind in ("relay", "batch") else 0)


class _Acks:
    """Acknowledgements counted a received batch at a time."""

    def __init__(self, connections: int) -> None:
        self.acked = self.refused = 0
        self.per_sock = [0] * connections

    def drain_zmq(self, k: int, dealer: zmq.Socket[bytes]) -> None:
        ack, refused = p.Ack, p.Refused
        while True:
            try:
                batch = p.decode_server(dealer.recv(NOBLOCK))
            except zmq.Again:
                return
            got = 0
            for m in batch:
                t = type(m)
                if t is ack:
                    got += 1
                elif t is refused:
                    got += 1
                    self.refused += 1
            self.acked += got
            self.per_sock[k] += got

    def drain_redis(self, k: int, s: socket.socket, timeout: float | None) -> None:
        """Each ``PUBLISH`` reply is one ``:N\\r\\n`` line. ``timeout`` 0: only what is there;
        None: wait for some."""
        s.settimeout(timeout)
        try:
            data = s.recv(1 << 20)
        except (BlockingIOError, TimeoutError):
            return
        if not data:
            raise RuntimeError("redis-server closed the connection")
        got = data.count(b"\n")
        self.acked += got
        self.per_sock[k] += got

    def wait_all(self, count: int, socks: list[Any], kind: str, wait: float = 60.0) -> None:
        """Until every message is acknowledged, heartbeating the broker meanwhile."""
        deadline = time.monotonic() + wait
        next_beat = time.monotonic() + HEARTBEAT
        ping = p.encode(p.Ping())
        while self.acked < count and time.monotonic() < deadline:
            readable, _, _ = zmq.select(socks, [], [], 0.05)
            if kind == "redis":
                for k, s in enumerate(socks):
                    if s in readable or s.fileno() in readable:
                        self.drain_redis(k, s, 0)
                continue
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT
                for dealer in socks:
                    dealer.send(ping, NOBLOCK)
            for k, dealer in enumerate(socks):
                self.drain_zmq(k, dealer)


def _pace(start: float, i: int, rate: float) -> None:
    """Sleep until message ``i`` is due: no spinning, which would take a core from the target
    (the send time is read after it, so a late wake-up costs no accuracy)."""
    wait = start + i / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def _send_zmq(
    kind: str,
    dealers: list[zmq.Socket[bytes]],
    topics: list[bytes],
    msgs: list[bytes],
    acks: _Acks,
    rate: float,
    window: int,
    sent_ns: array | None,
    start: float,
) -> None:
    n = len(dealers)
    is_room = kind == "room"
    sent = [0] * n
    per_sock = acks.per_sock
    now_ns = time.monotonic_ns
    snd_more = int(zmq.SNDMORE | zmq.NOBLOCK)
    for i, msg in enumerate(msgs):
        if rate:
            _pace(start, i, rate)
        k = i % n if n > 1 else 0
        dealer = dealers[k]
        if is_room and (sent[k] - per_sock[k] >= window or not i & 63):
            for j, other in enumerate(dealers):
                acks.drain_zmq(j, other)
            while sent[k] - per_sock[k] >= window:
                dealer.poll(100)
                acks.drain_zmq(k, dealer)
        if sent_ns is not None:
            sent_ns[i] = now_ns()
        while True:
            try:
                if is_room:
                    dealer.send(msg, NOBLOCK)
                else:
                    dealer.send(topics[k], snd_more)
                    dealer.send(msg)
                break
            except zmq.Again:
                if is_room:
                    acks.drain_zmq(k, dealer)
                dealer.poll(10, zmq.POLLOUT)
        sent[k] += 1


def _send_redis(
    socks: list[socket.socket],
    msgs: list[bytes],
    acks: _Acks,
    rate: float,
    window: int,
    sent_ns: array | None,
    start: float,
) -> None:
    """Pipelined: each connection's next messages in one send, as many as its window lets go.
    Paced: one at a time."""
    n = len(socks)
    per_sock = acks.per_sock
    sent = [0] * n
    now_ns = time.monotonic_ns
    if rate:
        for i, msg in enumerate(msgs):
            _pace(start, i, rate)
            k = i % n
            while sent[k] - per_sock[k] >= window:
                acks.drain_redis(k, socks[k], None)
            if sent_ns is not None:
                sent_ns[i] = now_ns()
            socks[k].settimeout(None)
            socks[k].sendall(msg)
            sent[k] += 1
            if not i & 63:
                for j, other in enumerate(socks):
                    acks.drain_redis(j, other, 0)
        return
    step = max(1, window // 2)
    for at in range(0, len(msgs), n * step):
        block = msgs[at : at + n * step]  # message i goes to connection i % n: n divides at
        for k, s in enumerate(socks):
            mine = block[k::n]
            while mine and sent[k] + len(mine) - per_sock[k] > window:
                acks.drain_redis(k, s, None)
            s.settimeout(None)
            s.sendall(b"".join(mine))
            sent[k] += len(mine)
        for k, s in enumerate(socks):
            acks.drain_redis(k, s, 0)
