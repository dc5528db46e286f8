"""How a lean subscriber counts (see ``lean``): one subscription's record by number, and the
readers that fill it from each target's sends, one per target, each a tight loop over what is
waiting: a room broker's batches, decoded only as far as counting needs (a gap fetched over its
DEALER), a bare relay's sends, a batching relay's bodies, Redis's replies."""

from __future__ import annotations

import socket
import time
from array import array
from typing import Any, Final

import msgspec
import zmq

from bench.lean import COUNTER, NOBLOCK
from broker.wire import protocol as p
from client.keyring import Keyring


class _Sub:
    """One subscription: what it has seen, by number (index 0 unused)."""

    __slots__ = (
        "asked",
        "dealer",
        "dups",
        "gone",
        "got",
        "opening_ns",
        "reader",
        "recv_ns",
        "repaired",
        "ring",
        "room",
        "seen",
        "sock",
        "top",
    )  # fmt: skip

    def __init__(self, room: str, sock: Any, expected: int, sample: bool) -> None:
        self.room = room
        self.sock = sock
        self.dealer: zmq.Socket[bytes] | None = None
        self.ring = Keyring()
        self.reader: Any = None  # Redis: a hiredis reader
        self.seen = bytearray(expected + 1)
        self.seen[0] = 1
        self.got = self.dups = self.repaired = self.gone = 0
        self.opening_ns = 0  # CPU time in the keyring (room keys: opening the broker's sends)
        self.top = 0  # highest number seen on the subscription
        self.asked = 0  # highest number a Fetch asked for
        self.recv_ns = array("q", bytes(8 * (expected + 1))) if sample else None

    def mark_run(self, first: int, last: int, t: int) -> None:
        """Numbers ``first..last``, all new and in order, or one by one."""
        seen = self.seen
        n = last - first + 1
        if last < len(seen) and self.recv_ns is None and not seen.count(1, first, last + 1):
            seen[first : last + 1] = b"\x01" * n
            self.got += n
        else:
            for q in range(first, last + 1):
                self.mark(q, t, False)
        if last > self.top:
            self.top = last

    def mark(self, q: int, t: int, repaired: bool) -> None:
        seen = self.seen
        if q >= len(seen):
            return
        if seen[q]:
            if not repaired:
                self.dups += 1
            return
        seen[q] = 1
        self.got += 1
        if repaired:
            self.repaired += 1
        elif self.recv_ns is not None:
            self.recv_ns[q] = t

    def missing(self) -> int:
        """The lowest number not seen yet (``len(seen)``: none)."""
        at = self.seen.find(0)
        return len(self.seen) if at < 0 else at


_RAW: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
_EVENT: Final = msgspec.msgpack.Decoder(p.RoomEvent)


def _room_sub(s: _Sub, size: int) -> None:
    """A batch of room events, decoded only as far as counting needs: its items are found, the
    first and the last decoded; if they are messages numbered a..b and there are b - a + 1
    items, every item is message a..b (a batch's messages are consecutive), marked at once.
    Anything else is decoded in full."""
    sock, ring, mark_run = s.sock, s.ring, s.mark_run
    posted, raw, event = p.Posted, _RAW.decode, _EVENT.decode
    now_ns, clock = time.monotonic_ns, time.thread_time_ns  # CPU time: not while preempted
    while True:
        try:
            topic = sock.recv(NOBLOCK)
        except zmq.Again:
            return
        body = sock.recv()
        t0 = clock()
        data = ring.plain(topic, body, time.monotonic())
        s.opening_ns += clock() - t0
        t = now_ns()
        if data is None:
            continue
        items = raw(data)
        if not items:
            continue
        a, b = event(items[0]), event(items[-1])
        if (type(a) is posted and type(b) is posted and b.seq - a.seq + 1 == len(items)
                and s.recv_ns is None):  # fmt: skip
            if a.seq > s.top + 1 and a.seq - 1 > s.asked:
                _fetch(s, s.top, a.seq - 1)  # a gap before this batch
            mark_run(a.seq, b.seq, t)
        else:
            _room_events(s, p.decode_room(data), t, mark_run, posted)


def _room_events(s: _Sub, events: list[Any], t: int, mark_run: Any, posted: Any) -> None:
    """A batch from the PUB: in order and all messages (the usual case), marked at once."""
    if not events:
        return
    a, b = events[0], events[-1]
    if type(a) is posted and type(b) is posted and b.seq - a.seq + 1 == len(events):
        if a.seq > s.top + 1 and a.seq - 1 > s.asked:
            _fetch(s, s.top, a.seq - 1)  # a gap before this batch
        mark_run(a.seq, b.seq, t)
        return
    for m in events:
        if type(m) is posted:
            if m.seq > s.top + 1 and m.seq - 1 > s.asked:
                _fetch(s, s.top, m.seq - 1)
            s.mark(m.seq, t, False)
            if m.seq > s.top:
                s.top = m.seq


def _room_replies(s: _Sub) -> None:
    """The DEALER: repaired messages (``Messages``), room keys (and what they open)."""
    dealer = s.dealer
    assert dealer is not None
    while True:
        try:
            batch = p.decode_server(dealer.recv(NOBLOCK))
        except zmq.Again:
            return
        t = time.monotonic_ns()
        for r in batch:
            if type(r) is p.Messages:
                for m in r.messages:
                    s.mark(m.seq, t, True)
                for q in range(1, min(r.first, len(s.seen))):
                    if not s.seen[q]:  # gone for good: no longer stored
                        s.seen[q] = 1
                        s.gone += 1
                if r.messages and s.missing() <= s.asked:
                    _fetch(s, s.missing() - 1, s.asked)  # longer than one reply
            elif type(r) is p.RoomKey:
                for events in s.ring.add(r, time.monotonic()):  # bodies that waited for it
                    _room_events(s, events, t, s.mark_run, p.Posted)


def _fetch(s: _Sub, after: int, upto: int) -> None:
    assert s.dealer is not None
    s.asked = max(s.asked, upto or len(s.seen) - 1)
    s.dealer.send(p.encode(p.Fetch(s.room, after, upto, p.HISTORY_MAX)))


def _relay_sub(s: _Sub, size: int) -> None:
    """A bare relay's sends: one message each, so the marking is inlined (unless sampling)."""
    sock, seen = s.sock, s.seen
    end = len(seen)
    now_ns, from_bytes = time.monotonic_ns, int.from_bytes
    sampled = s.recv_ns is not None
    while True:
        try:
            sock.recv(NOBLOCK)
        except zmq.Again:
            return
        q = from_bytes(sock.recv()[:COUNTER], "big") + 1
        if sampled:
            s.mark(q, now_ns(), False)
        elif q < end:
            if seen[q]:
                s.dups += 1
            else:
                seen[q] = 1
                s.got += 1


def _batch_sub(s: _Sub, size: int) -> None:
    """A batching relay's body: bodies of ``size`` bytes end to end."""
    sock = s.sock
    now_ns, from_bytes = time.monotonic_ns, int.from_bytes
    while True:
        try:
            sock.recv(NOBLOCK)
        except zmq.Again:
            return
        data = sock.recv()
        t = now_ns()
        count = len(data) // size
        a = from_bytes(data[:COUNTER], "big") + 1
        b = from_bytes(data[(count - 1) * size : (count - 1) * size + COUNTER], "big") + 1
        if b - a + 1 == count:
            s.mark_run(a, b, t)
        else:
            for off in range(0, count * size, size):
                s.mark(from_bytes(data[off : off + COUNTER], "big") + 1, t, False)


def _redis_reader(s: socket.socket) -> Any:
    """A hiredis reader for one subscription (imported here: only Redis runs need it)."""
    import hiredis

    reader = hiredis.Reader()
    s.setblocking(True)
    while True:  # the SUBSCRIBE confirmation
        data = s.recv(4096)
        if not data:
            raise RuntimeError("redis-server closed the connection")
        reader.feed(data)
        reply = reader.gets()
        if reply is not False:
            break
    s.setblocking(False)
    return reader


def _redis_sub(s: _Sub, size: int) -> None:
    sock, reader = s.sock, s.reader
    now_ns, from_bytes = time.monotonic_ns, int.from_bytes
    try:
        data = sock.recv(1 << 20)
    except BlockingIOError:
        return
    if not data:
        raise RuntimeError("redis-server closed the connection")
    t = now_ns()
    reader.feed(data)
    gets, mark = reader.gets, s.mark
    while (reply := gets()) is not False:
        mark(from_bytes(reply[2][:COUNTER], "big") + 1, t, False)
