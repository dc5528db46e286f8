"""The chat day's users (``bench.chatday``): one generator process holds a share of them, for the
room broker (a DEALER and a SUB each, as the reference client holds them) or for Redis pub/sub (a
subscriber connection each, and one publisher connection for the process).

A process is one loop over an epoll of its sockets (a ZeroMQ socket through its ``ZMQ_FD``, drained
until ``ZMQ_EVENTS`` says nothing more is waiting, and checked again after every send, which may
take the wake-up), so that a turn costs what is ready, not the number of users. Its phases follow
the parent's signals: ``go`` (everyone says hello), ``steady`` (the time the lines and the churn
start), ``final`` (every process has had its lines acknowledged: each member bounds what it must
have seen), ``stop``.

What a member must have seen: from the ``Synced`` that put it in the room to the ``Synced`` (of a
``Sync`` sent as it leaves, or at the end) that closes its stay, every sequence number of the room
in between. One not delivered on the SUB is lost; one delivered twice is a duplicate. Redis has no
numbers: what it must deliver is the sum of its ``PUBLISH`` replies (the subscribers it had when it
published), and a leaving subscriber unsubscribes (and the last ones ``PING``) first, so that
everything counted has arrived.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import signal
import socket
import time
from array import array
from collections import Counter
from typing import Any, Final

import zmq

from broker.wire import protocol as p
from client.delivery import sync_wait  # as the reference client (protocol.md: joining a room)
from client.keyring import Keyring
from client.sockets import log_in

OFF, HELLO, JOIN, SYNC, IN, LEAVE, FINAL, DONE = range(8)
"""A user's state: away; said hello (Redis: subscribing); joining; syncing; in the room; leaving
(its last ``Sync`` out; Redis: unsubscribing); bounding the end (Redis: its ``PING`` out); done."""
BUSY: Final = frozenset((HELLO, JOIN, SYNC, LEAVE, FINAL))
"""The states the sweep looks at (an answer to wait for, a request to send again)."""

JOIN_RETRY: Final = 2.0
RESEND_AFTER: Final = 3.0  # an unacknowledged Say, with its mid
RETRY_HELLO: Final = 1.0  # after a refused hello or a dropped session: a new session
SWEEP: Final = 0.05
TURN: Final = 0.02
"""Longest wait for sockets: pings and lines are due on this grain (a line's time is taken when it
is sent)."""
QUIET_WAIT: Final = 20.0
FINAL_WAIT: Final = 20.0
LINE: Final = 60
RCVHWM: Final = 10_000  # the reference client's
EXAMPLES: Final = 10

POLLIN, EVENTS = zmq.POLLIN, zmq.EVENTS


class User:
    __slots__ = ("away", "back_at", "dealer", "first_in", "got", "hi", "idx", "last_sent", "lo",
                 "marks", "mid", "name", "nonce", "reader", "retries", "ring", "room", "since",
                 "sock", "state", "sub", "topic", "want")  # fmt: skip

    def __init__(self, idx: int, name: str, room: str) -> None:
        self.idx, self.name, self.room = idx, name, room
        self.topic = p.topic(room)
        self.state = OFF
        self.dealer: Any = None  # room: the DEALER
        self.sub: Any = None  # room: the SUB
        self.sock: socket.socket | None = None  # Redis: the subscriber connection
        self.reader: Any = None  # Redis: its hiredis reader
        self.ring = Keyring()
        self.got: set[Any] = set()  # this stay: the seqs (Redis: the lines) delivered
        self.lo: int | None = None  # this stay: the room's seq at its Synced
        self.hi = 0  # this stay: the room's seq at the Synced that bounds it
        self.want: list[int] = []  # seqs missed on the SUB, being fetched
        self.marks: list[float] = []  # first admission: when it said hello, was welcomed, joined
        self.first_in = 0.0
        self.since = 0.0  # when the current request (hello, join, sync) was sent
        self.last_sent = 0.0
        self.nonce = self.mid = 0
        self.retries = 0  # of the current Sync
        self.back_at = 0.0
        self.away = 0.0


class Load:
    """The phases, the schedule and the report, shared by both kinds of load."""

    kind = ""

    def __init__(self, wid: int, address: str, part: dict[str, Any], signals: Any, out: Any):
        self.wid, self.address, self.out = wid, address, out
        self.go, self.steady, self.final, self.stop = signals
        self.users = [User(i, name, room) for i, (name, room) in enumerate(part["users"])]
        self.n = len(self.users)
        self.lines: list[tuple[float, int]] = part["lines"]
        self.churn: list[tuple[float, int, float]] = part["churn"]
        self.seconds: float = part["seconds"]
        self.ep = select.epoll()
        self.fds: dict[int, tuple[User, bool]] = {}
        self.busy: set[User] = set()
        self.returning: list[tuple[float, int]] = []
        self.lat = array("q")  # microseconds, send to delivery
        self.c: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()  # errors, refusals, goodbyes, by kind and code
        self.examples: list[str] = []  # lost
        self.missed: list[str] = []  # missed on the SUB (and fetched, or lost)
        self.first_hello = 0.0
        self.t0 = self.t_end = 0.0
        self.cpu: dict[str, float] = {}
        self.in_at_t0 = 0
        self.ever_in = 0  # users that were in their room at least once
        self.turned_away: set[int] = set()
        """Users whose hello the broker refused as ``full``: they go, as room-client does."""
        self.spans: dict[str, list[float]] = {"welcome": [], "joined": [], "synced": []}
        """First admissions, seconds: hello to Welcome, Welcome to Joined, Joined to Synced."""
        self.parent = os.getppid()

    # ---- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        while not self.go.wait(1.0):
            if self.stop.is_set() or os.getppid() != self.parent:
                return
        cpu_go = time.process_time()
        self.first_hello = time.monotonic()
        self.started = self.first_hello
        for u in self.users:
            self.connect(u, self.first_hello)
        admitted = False
        line = churn = 0
        phase = "admit"
        next_sweep = 0.0
        deadline = 0.0
        poll, ready = self.ep.poll, self.ready
        while not self.stop.is_set():
            now = time.monotonic()
            wait = TURN
            if phase == "steady":
                if line < len(self.lines):
                    wait = min(wait, self.t0 + self.lines[line][0] - now)
                if churn < len(self.churn):
                    wait = min(wait, self.t0 + self.churn[churn][0] - now)
            if self.settle():
                wait = 0.0
            for fd, _ in poll(max(0.0, wait)):
                ready(fd)
            now = time.monotonic()
            self.beat(now)
            if now >= next_sweep:
                self.sweep(now, returning=phase in ("admit", "steady"))
                next_sweep = now + SWEEP
                if os.getppid() != self.parent:
                    return
            if phase == "admit":
                if not admitted and self.ever_in + self.never_in_turned_away() == self.n:
                    admitted = True
                    self.cpu["admission"] = time.process_time() - cpu_go
                    self.out.put(("admitted", self.wid, None))
                if self.steady.value and now >= self.steady.value:
                    self.t0 = self.steady.value
                    self.t_end = self.t0 + self.seconds
                    self.cpu.setdefault("admission", time.process_time() - cpu_go)
                    self.cpu["steady0"] = time.process_time()
                    self.in_at_t0 = sum(1 for u in self.users if u.state == IN)
                    phase = "steady"
            elif phase == "steady":
                while line < len(self.lines) and self.t0 + self.lines[line][0] <= now:
                    self.line(self.users[self.lines[line][1]], now)
                    line += 1
                while churn < len(self.churn) and self.t0 + self.churn[churn][0] <= now:
                    _, k, away = self.churn[churn]
                    self.leave(self.users[k], now, away)
                    churn += 1
                if now >= self.t_end:
                    self.cpu["steady"] = time.process_time() - self.cpu.pop("steady0")
                    self.c["lines_unsent"] = len(self.lines) - line
                    phase, deadline = "quiet", now + QUIET_WAIT
            elif phase == "quiet":
                if not self.outstanding() or now >= deadline:
                    self.c["unacked"] = self.outstanding()
                    self.out.put(("quiet", self.wid, None))
                    phase = "wait"
            elif phase == "wait":
                if self.final.is_set():
                    for u in self.users:
                        if u.state == IN:
                            self.bound(u, now)
                    phase, deadline = "final", now + FINAL_WAIT
            elif phase == "final" and (
                not any(u.state == FINAL for u in self.busy) or now >= deadline
            ):
                self.c["unbounded"] = sum(1 for u in self.users if u.state == FINAL)
                self.out.put(("done", self.wid, self.report()))
                phase = "reported"

    def sweep(self, now: float, returning: bool) -> None:
        for u in list(self.busy):
            self.retry(u, now)
        while self.returning and self.returning[0][0] <= now:
            _, k = heapq.heappop(self.returning)
            u = self.users[k]
            if returning and u.state == OFF:
                self.connect(u, now)
        self.resend(now)

    def leave(self, u: User, now: float, away: float) -> None:
        """A churn event: a user in the room leaves for ``away`` seconds (one not in is skipped)."""
        if u.state != IN:
            self.c["churn_skipped"] += 1
            return
        self.c["churn_left"] += 1
        u.away = away
        self.bound(u, now, leaving=True)

    def gone(self, u: User, now: float, after: float) -> None:
        """The user is away, and comes back (a new session) after ``after`` seconds."""
        u.state = OFF
        self.busy.discard(u)
        u.back_at = now + after
        heapq.heappush(self.returning, (u.back_at, u.idx))

    def close_stay(self, u: User, hi: int) -> None:
        """The end of a stay in the room: every seq in (lo, hi] was due."""
        lo = u.lo
        u.lo = None
        if lo is None or hi <= lo:
            return
        got = u.got
        missing = [q for q in range(lo + 1, hi + 1) if q not in got]
        self.c["expected"] += hi - lo
        self.c["lost"] += len(missing)
        for q in missing[: max(0, EXAMPLES - len(self.examples))]:
            self.examples.append(f"{u.room}#{q} to {u.name}")

    def record(self, u: User, key: Any, sent_ns: int, t_ns: int) -> None:
        got = u.got
        if key in got:
            self.c["duplicates"] += 1
            return
        got.add(key)
        self.c["delivered"] += 1
        self.lat.append((t_ns - sent_ns) // 1000)

    def text(self, u: User, now: float) -> str:
        u.mid += 1
        self.c["lines"] += 1
        return f"{time.monotonic_ns():016x} {u.name} {u.mid} ".ljust(LINE, ".")

    def register(self, fd: int, u: User, second: bool) -> None:
        self.ep.register(fd, select.EPOLLIN)
        self.fds[fd] = (u, second)

    def unregister(self, fd: int) -> None:
        with contextlib.suppress(KeyError, OSError, ValueError):
            self.ep.unregister(fd)
        self.fds.pop(fd, None)

    def never_in_turned_away(self) -> int:
        return sum(1 for k in self.turned_away if not self.users[k].first_in)

    def report(self) -> dict[str, Any]:
        firsts = [u.first_in for u in self.users if u.first_in]
        return {
            "wid": self.wid,
            "users": self.n,
            "first_hello": self.first_hello,
            "last_in": max(firsts, default=0.0),
            "ever_in": len(firsts),
            "in_at_t0": self.in_at_t0,
            "turned_away": self.never_in_turned_away(),
            "counts": dict(self.c),
            "codes": dict(self.codes),
            "examples": self.examples,
            "missed": self.missed,
            "cpu": self.cpu,
            "latency_us": self.lat.tobytes(),
            "spans": self.spans,
        }

    # ---- what each kind does -----------------------------------------------------------------

    def connect(self, u: User, now: float) -> None: ...
    def settle(self) -> bool:
        """Read what actions left readable without a wake-up; True if anything was read."""
        return False

    def ready(self, fd: int) -> None: ...
    def beat(self, now: float) -> None: ...
    def retry(self, u: User, now: float) -> None: ...
    def resend(self, now: float) -> None: ...
    def line(self, u: User, now: float) -> None: ...
    def bound(self, u: User, now: float, leaving: bool = False) -> None: ...
    def outstanding(self) -> int: ...
    def close(self) -> None: ...


class RoomLoad(Load):
    """Users of the room broker, each a DEALER and a SUB, as docs/protocol.md says."""

    kind = "room"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ctx = zmq.Context()
        self.ctx.max_sockets = 2 * self.n + 64
        self.hb = 1.0  # Welcome.heartbeat
        self.beaten = 0
        self.nonces = iter(range(self.wid << 40, 1 << 52))
        self.unacked: dict[tuple[int, int], tuple[User, bytes, float]] = {}
        self.ping = p.encode(p.Ping())
        self.recheck: set[User] = set()
        """Users whose sockets an action (a send, a subscription) may have left readable without
        a wake-up of their descriptor: read before the next wait, never inside another read."""

    def connect(self, u: User, now: float) -> None:
        d = self.ctx.socket(zmq.DEALER)
        d.linger = 0
        d.rcvhwm = RCVHWM
        d.connect(self.address)
        u.dealer, u.ring, u.got, u.lo, u.want = d, Keyring(), set(), None, []
        self.register(d.fd, u, False)
        u.state, u.since = HELLO, now
        u.marks = [] if u.first_in else [now]
        self.busy.add(u)
        self.send(u, p.encode(p.Hello(p.VERSION, u.name)), now)

    def settle(self) -> bool:
        read = False
        while self.recheck:
            users, self.recheck = self.recheck, set()
            for u in users:
                d, s = u.dealer, u.sub
                if d is not None and d.get(EVENTS) & POLLIN:
                    self.read_dealer(u)
                    read = True
                if s is not None and u.sub is s and s.get(EVENTS) & POLLIN:
                    self.read_sub(u)
                    read = True
        return read

    def drop(self, u: User, linger: int = 0) -> None:
        for sock in (u.sub, u.dealer):
            if sock is not None:
                self.unregister(sock.fd)
                sock.close(linger)
        u.dealer = u.sub = None

    def send(self, u: User, body: bytes, now: float) -> None:
        d = u.dealer
        try:
            d.send(body, zmq.NOBLOCK)
        except zmq.Again:
            self.c["send_full"] += 1
        u.last_sent = now
        self.recheck.add(u)  # the send may have taken the wake-up of a reply

    def ready(self, fd: int) -> None:
        entry = self.fds.get(fd)
        if entry is not None:
            if entry[1]:
                self.read_sub(entry[0])
            else:
                self.read_dealer(entry[0])

    def read_dealer(self, u: User) -> None:
        d = u.dealer
        while u.dealer is d and d.get(EVENTS) & POLLIN:
            body = d.recv(zmq.NOBLOCK)
            try:
                msgs = p.decode_server(body)
            except p.ProtocolError:
                self.c["bad_bodies"] += 1
                continue
            for m in msgs:
                if u.dealer is not d:
                    return
                self.reply(u, m)

    def reply(self, u: User, m: Any) -> None:
        kind, now = type(m), time.monotonic()
        if kind is p.Ping:
            return
        if kind is p.RoomKey:
            t = time.monotonic_ns()
            for events in u.ring.add(m, now):  # bodies that waited for this key
                self.events(u, events, t)
        elif kind is p.Ack:
            if self.unacked.pop((u.idx, m.mid), None) is not None:
                self.c["acked"] += 1
        elif kind is p.Refused:
            if self.unacked.pop((u.idx, m.mid), None) is not None:
                self.codes[f"refused {m.code}"] += 1
        elif kind is p.Welcome:
            self.welcome(u, m, now)
        elif kind is p.Messages:
            self.messages(u, m, now)
        elif kind is p.Joined:
            if u.state == JOIN and m.room == u.room:
                u.marks.append(now)
                u.sub.subscribe(u.topic)
                u.state = SYNC
                self.sync(u, now, next(self.nonces))
        elif kind is p.Goodbye:
            self.codes[f"goodbye {m.reason}"] += 1
            if m.reason == p.Bye.TIMEOUT:
                self.c["dropped"] += 1
            self.lost_session(u, now)
        elif kind is p.Error:
            if m.request == "hello" or u.state == HELLO:
                self.codes[f"hello {m.code}"] += 1
                if m.code == p.Code.FULL:  # told to go: it does not come back
                    self.turned_away.add(u.idx)
                    self.lost_session(u, now)
                    u.state = DONE  # not OFF: never connected again
                    return
                self.c["refused_hellos"] += 1
                self.lost_session(u, now)
            elif m.code == p.Code.HELLO_FIRST:
                self.codes["forgotten"] += 1
                self.c["dropped"] += 1
                self.lost_session(u, now)
            else:
                self.codes[f"{m.request} {m.code}"] += 1

    def welcome(self, u: User, m: p.Welcome, now: float) -> None:
        if u.state != HELLO:
            return
        u.marks.append(now)
        self.hb = m.heartbeat
        u.ring.sealed = m.sealed
        sub = self.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = RCVHWM
        log_in(sub, m)
        sub.connect(m.pub)
        u.sub = sub
        self.register(sub.fd, u, True)
        u.state, u.since = JOIN, now
        self.send(u, p.encode(p.Join(u.room, 0)), now)

    def lost_session(self, u: User, now: float) -> None:
        """Refused, dropped or forgotten: what it saw of its stay is counted (not the tail, which
        no bound closes), and it comes back as a new session."""
        u.want = []
        if u.lo is not None:
            self.close_stay(u, max((q for q in u.got if q > u.lo), default=u.lo))
        self.forget_unacked(u)
        self.drop(u)
        self.gone(u, now, RETRY_HELLO)

    def forget_unacked(self, u: User) -> None:
        for key in [k for k in self.unacked if k[0] == u.idx]:
            del self.unacked[key]
            self.c["abandoned"] += 1

    def read_sub(self, u: User) -> None:
        s = u.sub
        ring, now_ns = u.ring, time.monotonic_ns
        while u.sub is s and s.get(EVENTS) & POLLIN:
            topic = s.recv(zmq.NOBLOCK)
            body = s.recv(zmq.NOBLOCK)
            t = now_ns()
            plain = ring.plain(topic, body, t / 1e9)
            if plain is None:
                continue
            try:
                events = p.decode_room(plain)
            except p.ProtocolError:
                self.c["bad_bodies"] += 1
                continue
            self.events(u, events, t)

    def events(self, u: User, events: list[Any], t: int) -> None:
        posted, synced = p.Posted, p.Synced
        for e in events:
            kind = type(e)
            if kind is posted:
                if e.room == u.room:
                    try:
                        sent = int(e.text[:16], 16)
                    except ValueError:
                        continue
                    self.record(u, e.seq, sent, t)
            elif kind is synced and e.nonce == u.nonce and e.room == u.room:
                self.synced(u, e.seq, t / 1e9)

    def synced(self, u: User, seq: int, now: float) -> None:
        state = u.state
        u.nonce = -1  # answered: a retry's Synced is passed over
        if state == SYNC:
            u.state, u.lo = IN, seq
            self.busy.discard(u)
            if not u.first_in:
                u.first_in = now
                self.ever_in += 1
                if len(u.marks) == 3:
                    hello, welcome, joined = u.marks
                    for what, span in zip(self.spans, (welcome - hello, joined - welcome,
                                                       now - joined), strict=True):  # fmt: skip
                        self.spans[what].append(span)
        elif state in (LEAVE, FINAL):
            u.hi = seq
            want = [q for q in range((u.lo or 0) + 1, seq + 1) if q not in u.got]
            if want:  # missed on the SUB: fetched, as the reference client repairs a gap
                self.c["missed"] += len(want)
                for q in want[: max(0, EXAMPLES - len(self.missed))]:
                    self.missed.append(f"{u.room}#{q} to {u.name}")
                u.want = want
                self.fetch(u, want[0] - 1, now)
            else:
                self.end_stay(u, now)

    def end_stay(self, u: User, now: float) -> None:
        """The stay is bounded (and repaired): counted, then the user quits or is done."""
        u.want = []
        self.close_stay(u, u.hi)
        if u.state == LEAVE:
            self.send(u, p.encode(p.Quit()), now)
            self.forget_unacked(u)
            self.drop(u, linger=1000)  # the Quit leaves: the name is free at once
            self.gone(u, now, u.away)
        else:
            u.state = DONE
            self.busy.discard(u)

    def fetch(self, u: User, after: int, now: float) -> None:
        u.since = now
        self.send(u, p.encode(p.Fetch(u.room, after, u.want[-1], p.HISTORY_MAX)), now)

    def messages(self, u: User, m: p.Messages, now: float) -> None:
        """A gap's answer: what it holds is delivered late (``repaired``); what is below
        ``first``, or missing below the newest it returned, is gone."""
        if not u.want or m.room != u.room:
            return
        wanted = set(u.want)
        for posted in m.messages:
            if posted.seq in wanted and posted.seq not in u.got:
                u.got.add(posted.seq)
                self.c["repaired"] += 1
        newest = m.messages[-1].seq if m.messages else u.want[-1]
        u.want = [q for q in u.want if q not in u.got and q > newest]
        if u.want and m.messages:  # cut short: the rest from the newest returned
            self.fetch(u, newest, now)
        else:
            self.end_stay(u, now)

    def sync(self, u: User, now: float, nonce: int) -> None:
        u.nonce, u.since, u.retries = nonce, now, 0
        self.busy.add(u)
        self.send(u, p.encode(p.Sync(nonce)), now)

    def bound(self, u: User, now: float, leaving: bool = False) -> None:
        u.state = LEAVE if leaving else FINAL
        self.sync(u, now, next(self.nonces))

    def retry(self, u: User, now: float) -> None:
        state = u.state
        if u.want:
            if now - u.since >= JOIN_RETRY:  # an unanswered gap's Fetch, again
                self.c["fetch_retries"] += 1
                self.fetch(u, u.want[0] - 1, now)
        elif state in (SYNC, LEAVE, FINAL) and now - u.since >= sync_wait(u.retries):
            self.c["sync_retries"] += 1
            u.since = now
            u.retries += 1
            self.send(u, p.encode(p.Sync(u.nonce)), now)
        elif state == JOIN and now - u.since >= JOIN_RETRY:
            self.c["join_retries"] += 1
            u.since = now
            self.send(u, p.encode(p.Join(u.room, 0)), now)

    def resend(self, now: float) -> None:
        for (_, mid), (u, body, at) in list(self.unacked.items()):
            if now - at >= RESEND_AFTER and u.dealer is not None:
                self.c["resent"] += 1
                self.unacked[(u.idx, mid)] = (u, body, now)
                self.send(u, body, now)

    def beat(self, now: float) -> None:
        """Each user has its moment in the heartbeat interval; at it, a user that has sent
        nothing for an interval pings."""
        due = int((now - self.started) / self.hb * self.n)
        users, n, hb, ping = self.users, self.n, self.hb, self.ping
        for j in range(self.beaten, due):
            u = users[j % n]
            if u.dealer is not None and now - u.last_sent >= hb:
                self.send(u, ping, now)
        self.beaten = max(self.beaten, due)

    def line(self, u: User, now: float) -> None:
        if u.state != IN:
            self.c["lines_skipped"] += 1
            return
        text = self.text(u, now)
        body = p.encode(p.Say(text, u.mid))
        self.unacked[(u.idx, u.mid)] = (u, body, now)
        self.send(u, body, now)

    def outstanding(self) -> int:
        return len(self.unacked)

    def close(self) -> None:
        for u in self.users:
            self.drop(u)
        self.ctx.destroy(linger=0)


def command(*parts: bytes) -> bytes:
    """One Redis command in RESP."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in parts)


class RedisLoad(Load):
    """The same users on Redis pub/sub: a subscriber connection each on its room's channel, and
    one publisher connection for this process."""

    kind = "redis"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        import hiredis  # only Redis runs need it

        self.hiredis = hiredis
        host, port = self.address.rsplit(":", 1)
        self.where = (host, int(port))
        self.pub = self.open()
        self.pub_reader = hiredis.Reader()
        self.register(self.pub.fileno(), User(-1, "", "x"), True)
        self.published = 0  # PUBLISH replies still to come

    def open(self) -> socket.socket:
        s = socket.create_connection(self.where, timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        return s

    def write(self, s: socket.socket, data: bytes) -> None:
        try:
            sent = s.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # a full socket buffer: rare at a chat's pace
            s.setblocking(True)
            s.sendall(data[sent:])
            s.setblocking(False)

    def connect(self, u: User, now: float) -> None:
        try:
            u.sock = self.open()
        except OSError:
            self.c["refused_hellos"] += 1
            self.gone(u, now, RETRY_HELLO)
            return
        u.reader, u.got, u.lo = self.hiredis.Reader(), set(), None
        self.register(u.sock.fileno(), u, False)
        u.state, u.since = HELLO, now
        self.busy.add(u)
        self.write(u.sock, command(b"SUBSCRIBE", u.room.encode()))

    def drop(self, u: User) -> None:
        if u.sock is not None:
            self.unregister(u.sock.fileno())
            u.sock.close()
            u.sock = None

    def ready(self, fd: int) -> None:
        entry = self.fds.get(fd)
        if entry is None:
            return
        u, publisher = entry
        s = self.pub if publisher else u.sock
        reader = self.pub_reader if publisher else u.reader
        try:
            data = s.recv(1 << 18)
        except BlockingIOError:
            return
        if not data:
            if publisher:  # Ctrl-C reached redis-server too: the parent stops us in a moment
                if self.stop.wait(5):
                    return
                raise RuntimeError("redis-server closed the publisher's connection")
            self.c["dropped"] += 1
            self.codes["closed by redis-server"] += 1
            self.drop(u)
            self.gone(u, time.monotonic(), RETRY_HELLO)
            return
        t = time.monotonic_ns()
        reader.feed(data)
        if publisher:
            while (r := reader.gets()) is not False:
                self.published -= 1
                self.c["acked"] += 1
                self.c["expected"] += r
            return
        while u.sock is s and (r := reader.gets()) is not False:
            what = r[0]
            if what == b"message":
                body = r[2]
                self.record(u, body, int(body[:16], 16), t)
            elif what == b"subscribe":
                u.state = IN
                self.busy.discard(u)
                if not u.first_in:
                    u.first_in = t / 1e9
                    self.ever_in += 1
            elif what == b"unsubscribe":
                self.drop(u)
                self.gone(u, t / 1e9, u.away)
            elif what == b"pong":
                u.state = DONE
                self.busy.discard(u)

    def bound(self, u: User, now: float, leaving: bool = False) -> None:
        u.state = LEAVE if leaving else FINAL
        self.busy.add(u)
        assert u.sock is not None
        self.write(u.sock, command(b"UNSUBSCRIBE") if leaving else command(b"PING"))

    def line(self, u: User, now: float) -> None:
        if u.state != IN:
            self.c["lines_skipped"] += 1
            return
        text = self.text(u, now)
        self.published += 1
        self.write(self.pub, command(b"PUBLISH", u.room.encode(), text.encode()))

    def outstanding(self) -> int:
        return self.published

    def close(self) -> None:
        for u in self.users:
            self.drop(u)
        self.pub.close()


def main(kind: str, wid: int, address: str, part: dict[str, Any], signals: Any, out: Any) -> None:
    """One generator process (``multiprocessing``, spawned): Ctrl-C is the parent's to handle;
    it stops this one by ``stop``, or by SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    load = (RoomLoad if kind == "room" else RedisLoad)(wid, address, part, signals, out)
    try:
        out.put(("ready", wid, None))
        load.run()
    finally:
        load.close()
