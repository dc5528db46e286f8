"""The cluster bench's load generator (``room-bench --cluster``: several senders in one room,
counted by the counter in each text), and idle clients for every bench. The single-broker
scenarios use the lean generator (``lean``, ``sender``, ``subscriber``).

Each role runs in its own process (``multiprocessing`` with spawn) and reports a dict on a queue.
A message's text carries its counter and its send time (``time.monotonic_ns``, one clock for every
process on the machine), so a subscriber measures loss and latency the same way on both sides.
The room subscriber also repairs gaps the way the client does (``Fetch`` by sequence number), and
counts what it repaired, and what was gone (no longer stored) when it asked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any, Final

import zmq

from broker.wire import protocol as p
from client.keyring import Keyring
from client.sockets import log_in

SETTLE: Final = 0.5
"""Seconds a subscriber waits after subscribing, so the subscription reaches the publisher."""
IDLE_END: Final = 3.0
"""A subscriber stops after this long with nothing new, once messages have started to arrive."""
FIRST_WAIT: Final = 60.0
"""How long a subscriber waits for the first message (the sender process is still starting)."""
HEARTBEAT: Final = 1.0


def payload(i: int, size: int) -> str:
    """Counter and send time, padded to ``size`` characters."""
    head = f"{i} {time.monotonic_ns()} "
    return head + "x" * max(0, size - len(head))


def _parse(text: str | bytes) -> tuple[int, int]:
    parts = text.split(maxsplit=2)
    return int(parts[0]), int(parts[1])


def _handshake(
    dealer: zmq.Socket[bytes],
    name: str,
    room: str,
    timeout: float = 10.0,
    ring: Keyring | None = None,
) -> p.Welcome:
    """Hello, then Join ``room``; the room keys that come meanwhile go on ``ring``."""
    dealer.send(p.encode(p.Hello(p.VERSION, name)))
    welcome = _await(dealer, p.Welcome, timeout, ring)
    if ring is not None:
        ring.sealed = welcome.sealed
    dealer.send(p.encode(p.Join(room)))
    _await(dealer, p.Joined, timeout, ring)
    return welcome


def _await(
    dealer: zmq.Socket[bytes], kind: type, timeout: float, ring: Keyring | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not dealer.poll(left * 1000):
            break
        batch = p.decode_server(dealer.recv())
        for msg in batch:  # the whole batch: a room key may follow what we wait for
            if ring is not None and isinstance(msg, p.RoomKey):
                ring.add(msg, time.monotonic())
            if isinstance(msg, p.Error):
                raise RuntimeError(msg.reason)
        found = [msg for msg in batch if isinstance(msg, kind)]
        if found:
            return found[0]
    raise TimeoutError(f"no {kind.__name__} from the broker")


# ---- sender -------------------------------------------------------------------------------------


def sender(
    results: Queue,
    proto: str,
    router: str,
    rooms: list[str],
    count: int,
    size: int,
    rate: float,
    name: str = "sender",
    first: int = 0,
    ack_wait: float = 10.0,
) -> None:
    """Send ``count`` messages over ``rooms`` in turn (one user per room), as fast as possible
    (rate 0) or paced at ``rate`` per second. A text's counter is its index within its room,
    from ``first`` (several senders in one room count in ranges of their own). Users are named
    ``name`` + room number: names are unique across a cluster. Waits up to ``ack_wait`` seconds
    for the last acknowledgement, heartbeating meanwhile (a cluster acknowledges late)."""
    ctx = zmq.Context()
    dealers = []
    for k, room in enumerate(rooms):
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 100_000)
        dealer.setsockopt(zmq.RCVHWM, 100_000)
        dealer.connect(router)
        if proto == "room":
            _handshake(dealer, f"{name}{k}", room)
        dealers.append(dealer)
    is_room = proto == "room"
    acked = refused = 0

    def drain_acks(dealer: zmq.Socket[bytes]) -> None:
        nonlocal acked, refused
        while True:
            try:
                body = dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            for msg in p.decode_server(body):
                if type(msg) is p.Ack:
                    acked += 1
                elif type(msg) is p.Refused:
                    refused += 1

    topics = [p.topic(room) for room in rooms]
    n = len(rooms)
    start = time.monotonic()
    encode, say = p.encode, p.Say
    for i in range(count):
        if rate:
            due = start + i / rate
            while (wait := due - time.monotonic()) > 0:
                if wait > 0.0005:
                    time.sleep(wait - 0.0003)
        k = i % n
        dealer = dealers[k]
        text = payload(first + i // n, size)
        frames = [encode(say(text, i + 1))] if is_room else [topics[k], text.encode()]
        while True:
            try:
                dealer.send_multipart(frames, zmq.NOBLOCK)
                break
            except zmq.Again:
                if is_room:
                    drain_acks(dealer)
                dealer.poll(10, zmq.POLLOUT)
        if is_room and i % 256 < n:
            drain_acks(dealer)
    sent_done = time.monotonic()
    if is_room:
        deadline = time.monotonic() + ack_wait
        next_beat = time.monotonic() + HEARTBEAT
        while acked + refused < count and time.monotonic() < deadline:
            time.sleep(0.01)
            beat = time.monotonic() >= next_beat
            if beat:
                next_beat = time.monotonic() + HEARTBEAT
            for dealer in dealers:
                if beat:  # silent for LIVENESS heartbeats, the sender would be dropped
                    dealer.send(p.encode(p.Ping()), zmq.NOBLOCK)
                drain_acks(dealer)
    results.put({"role": "sender", "sent": count, "acked": acked, "refused": refused,
                 "start": start, "sent_done": sent_done})  # fmt: skip
    ctx.destroy(linger=0)


# ---- subscribers --------------------------------------------------------------------------------


@dataclass
class _Sub:
    room: str
    sub: zmq.Socket[bytes]
    dealer: zmq.Socket[bytes] | None
    seen: bytearray  # by message counter
    seqs: bytearray  # by sequence number (the relay has none: counter + 1)
    delivered: int = 0
    duplicates: int = 0  # published twice (a refetch of a message already seen is not one)
    repaired: int = 0
    gone: int = 0  # missed, and no longer stored when asked for: lost for good
    contig: int = 0  # every sequence number up to this one has been seen (or is gone)
    asked: int = 0  # highest sequence number a Fetch was sent for
    latencies: list[int] = field(default_factory=list)
    ring: Keyring = field(default_factory=Keyring)  # room keys, for a sealing broker

    def record(
        self, index: int, seq: int, sent_ns: int, now_ns: int, sample: bool, repaired: bool
    ) -> None:
        """Count a message once. Repair follows sequence numbers, not counters: with two
        senders in a room they interleave, and only the sequence says what is missing."""
        if index >= len(self.seen) or index < 0:
            return
        if self.seen[index]:
            if not repaired:
                self.duplicates += 1
            return
        self.seen[index] = 1
        self.delivered += 1
        if repaired:
            self.repaired += 1
        elif sample:
            self.latencies.append(now_ns - sent_ns)
        seqs = self.seqs
        if 0 < seq < len(seqs):
            seqs[seq] = 1
        while self.contig + 1 < len(seqs) and seqs[self.contig + 1]:
            self.contig += 1

    def answered(self, first: int, count: int) -> None:
        """After a ``Messages`` reply: what precedes ``first`` (the oldest the broker keeps) is
        gone; a gap still open was larger than one reply, so ask for the rest."""
        seqs = self.seqs
        while self.contig + 1 < min(first, len(seqs)):
            self.contig += 1
            if not seqs[self.contig]:
                seqs[self.contig] = 1
                self.gone += 1
        while self.contig + 1 < len(seqs) and seqs[self.contig + 1]:
            self.contig += 1
        if count and self.contig < self.asked:
            _fetch(self, self.asked)


def subscribers(
    results: Queue,
    ready: Queue,
    proto: str,
    router: str,
    pub: str,
    rooms: list[str],
    expected: int,
    sample: bool,
    name: str = "sub",
) -> None:
    """One subscriber per entry of ``rooms``, in one process; each must see ``expected``
    messages of its room. ``sample``: keep the first subscriber's latencies. Users are named
    ``name`` + number: names are unique across a cluster."""
    ctx = zmq.Context()
    subs: list[_Sub] = []
    room = proto == "room"
    for k, room_name in enumerate(rooms):
        dealer = None
        endpoint = pub
        ring = Keyring()
        if room:
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(router)
            welcome = _handshake(dealer, f"{name}{k}", room_name, ring=ring)
            endpoint = welcome.pub
        sub = ctx.socket(zmq.SUB)
        if room:
            log_in(sub, welcome)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, p.topic(room_name))
        subs.append(
            _Sub(room_name, sub, dealer, bytearray(expected), bytearray(expected + 1), ring=ring)
        )
    time.sleep(SETTLE)
    poller = zmq.Poller()
    owner: dict[zmq.Socket[bytes], _Sub] = {}
    for s in subs:
        poller.register(s.sub, zmq.POLLIN)
        owner[s.sub] = s
        if s.dealer is not None:
            poller.register(s.dealer, zmq.POLLIN)
            owner[s.dealer] = s
    ready.put("ready")
    first = last = 0.0
    last_progress = time.monotonic()
    next_beat = time.monotonic() + HEARTBEAT
    decode_server, now_ns = p.decode_server, time.monotonic_ns
    total = expected * len(subs)
    got = 0
    next_tail = 0.0
    while got < total and time.monotonic() - last_progress < (IDLE_END if got else FIRST_WAIT):
        events = poller.poll(100)
        before = got
        for sock, _ in events:
            s = owner[sock]
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = now_ns()
                if sock is s.sub and not room:
                    index, sent = _parse(frames[1])
                    s.record(index, index + 1, sent, t, sample, False)
                    continue
                replies: Sequence[p.Messages] = ()
                late: list[p.RoomEvent] = []  # SUB bodies that waited for their room key
                if sock is s.sub:
                    batch = s.ring.open(frames[0], frames[1], time.monotonic()) or []
                    repaired = False
                else:
                    answers = decode_server(frames[0])
                    replies = [r for r in answers if type(r) is p.Messages]
                    batch = [m for r in replies for m in r.messages]
                    repaired = True
                    for key in (r for r in answers if type(r) is p.RoomKey):
                        opened = s.ring.add(key, time.monotonic())
                        late += [e for events in opened for e in events]
                for m, fetched in (*((m, repaired) for m in batch), *((m, False) for m in late)):
                    if type(m) is p.Posted:
                        index, sent = _parse(m.text)
                        s.record(index, m.seq, sent, t, sample, fetched)
                        if not fetched and m.seq - 1 > s.contig and m.seq - 1 > s.asked:
                            _fetch(s, m.seq - 1)
                if repaired:
                    for r in replies:
                        s.answered(r.first, len(r.messages))
            got = sum(x.delivered for x in subs)
        now = time.monotonic()
        if got > before:
            last = now
            first = first or now
            last_progress = now
        elif room and got and now - last_progress > 0.25 and now >= next_tail:
            next_tail = now + 0.25  # not on every wake-up: replies wake the poll too
            for s in subs:  # a quiet tail: ask for whatever is still missing
                if s.delivered + s.gone < expected:
                    _fetch(s, 0)
        if room and now >= next_beat:
            next_beat = now + HEARTBEAT
            for s in subs:
                assert s.dealer is not None
                s.dealer.send(p.encode(p.Ping()))
    results.put({
        "role": "subscribers",
        "delivered": got,
        "expected": total,
        "lost": total - got,
        "duplicates": sum(s.duplicates for s in subs),
        "repaired": sum(s.repaired for s in subs),
        "gone": sum(s.gone for s in subs),
        "first": first,
        "last": last,
        "latencies": subs[0].latencies if subs else [],
    })  # fmt: skip
    ctx.destroy(linger=0)


def _fetch(s: _Sub, upto: int) -> None:
    """Ask the broker for the gap after ``s.contig`` (``upto`` 0: to the newest)."""
    assert s.dealer is not None
    s.asked = max(s.asked, upto)
    s.dealer.send(p.encode(p.Fetch(s.room, s.contig, upto, 1000)))


# ---- idle clients -------------------------------------------------------------------------------


def idle_clients(results: Queue, ready: Queue, router: str, count: int, hold: float) -> None:
    """``count`` connected clients that only heartbeat, for ``hold`` seconds after all joined."""
    ctx = zmq.Context()
    dealers = []
    for k in range(count):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(router)
        d.send(p.encode(p.Hello(p.VERSION, f"idle{k}")))
        dealers.append(d)
    welcomed = 0
    poller = zmq.Poller()
    for d in dealers:
        poller.register(d, zmq.POLLIN)
    deadline = time.monotonic() + 30
    pending = set(range(count))
    index = {d: k for k, d in enumerate(dealers)}
    while pending and time.monotonic() < deadline:
        for sock, _ in poller.poll(100):
            while True:
                try:
                    msgs = p.decode_server(sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                welcome = any(isinstance(m, p.Welcome) for m in msgs)
                if welcome and index[sock] in pending:
                    pending.discard(index[sock])
                    welcomed += 1
    ready.put("ready")
    end = time.monotonic() + hold
    next_beat = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_beat:
            next_beat = now + HEARTBEAT
            for d in dealers:
                d.send(p.encode(p.Ping()), zmq.NOBLOCK)
        for sock, _ in poller.poll(100):
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
    results.put({"role": "idle", "connected": welcomed})
    ctx.destroy(linger=0)
