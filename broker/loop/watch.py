"""The guard: a thread that watches every connection the ROUTER and the PUB accept, and evicts one
that breaks its budget. libzmq gives no call to drop one peer, but each connection is a file
descriptor that the sockets' monitors name when they accept it; the kernel counts the bytes each
has received (``TCP_INFO``), and shutting the descriptor down makes libzmq tear that one
connection down, subscriptions and all, while the others go on (../shared/PUB-GUARD.md).

Budgets, each far above what an honest client sends:

- a ROUTER connection that sent nothing but its handshake within ``hello_timeout``: it never said
  hello (the connections of a flood that only connects);
- a ROUTER connection over its byte rate (only with a rate limit: ``--rate 0`` turns it off);
- a PUB connection that sent more subscription bytes than its session's room changes need (a
  subscriber sends one subscription and one unsubscription a move), or whose session ended.

The connections come from the door (``door.py``), which counts them, or shuts those over the
caps, on the ZAP thread.

An evicted address is refused at the handshake for ``evict_for`` seconds (``Gate.ban``), and the
loop logs one line per address and reason at each heartbeat. The descriptor is libzmq's: it is
only read and shut down, never closed, and its peer is checked again just before the shutdown, as
libzmq may have closed it and the number been reused. Linux only (``TCP_INFO``); elsewhere the
caps alone hold, and the broker says so at start.
"""

from __future__ import annotations

import ctypes
import math
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import zmq

from broker.loop.door import SUPPORTED, Arrival, Gone, libc, peer, shut_down
from broker.security.gate import Gate
from broker.stoppipe import StopPipe

TICK: Final = 0.02
"""Seconds between the guard's looks at young connections. At 5 ms, a hundred new subscribers
cost the broker a third more CPU a message one to a hundred (18.5 us against 13.8); at 20 ms the
same as before the guard (14.2 us), and a flood is still cut off before it stores much (issue
17's 200 x 1,000: RSS +7 MB, the canary's slowest 151-195 ms)."""
LOOKS_PER_TICK: Final = 256
"""Young connections looked at a tick at most (a few microseconds each): a crowd arriving at
once is looked at in turn, and the guard never holds the interpreter for long."""
SETTLED_EVERY: Final = {"router": 2.0, "pub": 1.0}
"""Seconds between looks at a ROUTER connection, and at a PUB one past its first
``hello_timeout``: 8,000 users (16,000 connections) cost the guard 12,000 looks a second, 10% of
a core (py-spy); 8,000 a second and 6% with ``--rate 0`` (``_watched``)."""
HANDSHAKE: Final = {False: 107, True: 567}
"""Bytes a stock DEALER's handshake sends (ZMTP greeting and READY; with CURVE, its four
commands): a ROUTER connection that sent no more never said hello (the smallest is 12 bytes)."""
SMALLEST_HELLO: Final = 12
SUBSCRIPTION_BYTES_PER_MOVE: Final = 256
"""What one move to another room lets a session's subscriber send (a subscription and an
unsubscription: a topic of at most 33 bytes each, with framing, and CURVE's per-message bytes)."""

_TCP_INFO_BYTES: Final = 232
_BYTES_RECEIVED: Final = struct.Struct("=Q")
_BYTES_RECEIVED_AT: Final = 128  # tcpi_bytes_received in struct tcp_info (Linux 4.1 on)

TRIM_EVERY: Final = 1.0
"""Seconds between the guard's ``malloc_trim`` calls at most, when connections closed meanwhile."""

if SUPPORTED:
    _getsockopt = libc.getsockopt
    _malloc_trim = getattr(libc, "malloc_trim", None)  # glibc's; another libc keeps what it keeps


@dataclass(frozen=True, slots=True)
class Budgets:
    """What the guard allows one connection (``config.Limits`` and the rate limit say)."""

    hello_timeout: float
    subscription_bytes: int
    """A PUB connection's allowance before its session moved anywhere."""
    router_burst: int
    router_rate: float
    """Bytes a second a ROUTER connection may send on average; 0: no limit."""
    evict_for: float
    curve: bool


@dataclass(slots=True)
class _Conn:
    fd: int
    kind: str  # "router" or "pub"
    address: str
    port: int
    accepted: float
    holder: tuple[str, str] | None = None
    """A PUB connection's session (name, proof), once its handshake was matched to it."""
    candidates: set[tuple[str, str]] = field(default_factory=set)
    """The sessions it may be the subscriber of: its holder, and every other session whose
    subscriber handshook from the same address while this one was being matched (a set shared
    by that group). Of subscribers handshaking at once from one address (a NAT, room-web,
    loopback) the guard cannot tell which is whose, and closing one at its holder's end closed
    live sessions' subscribers; so the end of the last of them closes it."""
    received: int = 0
    said_hello: bool = False
    """A ROUTER connection: a look saw it send more than its handshake."""
    allowance: float = 0.0
    checked: float = 0.0
    gone: bool = False


@dataclass(slots=True)
class Approval:
    """A PUB handshake the ZAP handler let in: from which address, for which session."""

    address: str
    name: str
    proof: str
    at: float = field(default_factory=time.monotonic)


Sessions = Callable[[str, str], int | None]
"""(name, proof) -> how often that live session moved to another room; None if it is not live."""


class Watch:
    """The guard's thread; ``start`` it once the sockets are bound, ``stop`` it before closing
    them. The ZAP handler reports approved subscribers (``approved``) and asks how many PUB
    connections a session holds (``subscribers``); the loop takes the log lines (``take_lines``)
    and the open connection counts."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        arrivals: deque[Arrival | Gone],
        gate: Gate,
        budgets: Budgets,
    ) -> None:
        self.arrivals = arrivals
        """The door's: each connection let on, and each gone, in order."""
        self.gate = gate
        self.budgets = budgets
        self.sessions: Sessions = _no_sessions
        """How the guard asks after a subscriber's session (set once the chat exists)."""
        self.conns: dict[tuple[str, int], _Conn] = {}
        self._young: deque[_Conn] = deque()
        """PUB connections in their first ``hello_timeout``: looked at every tick (or, when more
        than ``LOOKS_PER_TICK`` are new at once, in turn)."""
        self._settled: dict[str, deque[_Conn]] = {"router": deque(), "pub": deque()}
        """The others (and the ROUTER's from the start), by socket, looked at in turn: each every
        ``SETTLED_EVERY`` seconds."""
        self.open: Counter[str] = Counter()
        """Connections open now, by socket name."""
        self.accepted: Counter[str] = Counter()
        """Connections accepted since the start, by socket name."""
        self.closed = 0
        """Connections closed since the start."""
        self._trimmed = (0, 0.0)
        """``closed`` at the last ``malloc_trim``, and when."""
        self.evicted = 0
        self._approvals: deque[Approval] = deque()
        self._unmatched: dict[str, deque[_Conn]] = {}
        """By address: PUB connections whose handshake is not matched to a session yet."""
        self._groups: dict[str, set[tuple[str, str]]] = {}
        """By address: the sessions whose subscribers are being matched there now."""
        self._holders: Counter[str] = Counter()
        """PUB connections matched to each session name."""
        self._lines: deque[tuple[str, str]] = deque()
        self._failures: deque[str] = deque()
        self._stop = StopPipe(ctx)
        self._buf = ctypes.create_string_buffer(_TCP_INFO_BYTES)
        self._len = ctypes.c_uint32(_TCP_INFO_BYTES)
        self._thread = threading.Thread(target=self._run, name="room-guard", daemon=True)

    # ---- what other threads call ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.halt(self._thread)

    def approved(self, address: str, name: str, proof: str) -> None:
        """The ZAP thread let a subscriber of session ``name`` in from ``address``."""
        self._approvals.append(Approval(address, name, proof))

    def subscribers(self, name: str) -> int:
        """PUB connections session ``name`` holds or is being let in with (for its cap)."""
        pending = sum(1 for a in list(self._approvals) if a.name == name)
        return self._holders.get(name, 0) + pending

    def take_lines(self) -> list[str]:
        """One line per address and reason evicted since the last call."""
        taken: Counter[tuple[str, str]] = Counter()
        while self._lines:
            taken[self._lines.popleft()] += 1
        failures = [self._failures.popleft() for _ in range(len(self._failures))]
        return failures + [
            f"evicted {count} connection{'s' if count > 1 else ''} from {address}: {why}; "
            f"{address} is refused for {self.budgets.evict_for:g} s"
            for (address, why), count in taken.items()
        ]

    # ---- the guard's thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._stop.reader.poll(TICK * 1000):
                return
            now = time.monotonic()
            self._arrived()
            self._match(now)
            if not SUPPORTED:
                continue
            self._give_back_memory(now)
            try:
                self._look(now)
            except Exception as exc:  # a bug costs one look, never the guard
                self._failures.append(f"the guard failed: {exc!r}")

    def _give_back_memory(self, now: float) -> None:
        """Once connections have closed, hand their freed buffers back to the OS: glibc keeps
        them otherwise (a flood of 5,000 connections that came and went, four times, left the
        broker at 314 MB for good; with this, 32 MB, its idle size). Here, not in the loop: a
        trim of a few hundred MB takes 8-20 ms, with the interpreter released (ctypes)."""
        closed, at = self._trimmed
        if _malloc_trim is not None and self.closed != closed and now - at >= TRIM_EVERY:
            self._trimmed = (self.closed, now)
            _malloc_trim(0)

    def _look(self, now: float) -> None:
        """The young connections, and the share of the settled ones whose turn it is: the
        guard's work a tick is bounded (``LOOKS_PER_TICK`` young ones at most), and does not
        grow with the connections that are settled."""
        grown = now - self.budgets.hello_timeout - 1
        young = self._young
        for _ in range(min(len(young), LOOKS_PER_TICK)):
            conn = young.popleft()
            if not conn.gone:
                self._check(conn, now)
            if conn.gone:
                continue
            if conn.accepted < grown:
                self._settled[conn.kind].append(conn)
            else:
                young.append(conn)
        for kind, settled in self._settled.items():
            for _ in range(min(len(settled), math.ceil(len(settled) * TICK / SETTLED_EVERY[kind]))):
                conn = settled.popleft()
                if conn.gone:
                    continue
                self._check(conn, now)
                if not conn.gone and self._watched(conn):
                    settled.append(conn)

    def _watched(self, conn: _Conn) -> bool:
        """Whether ``conn`` needs more looks. Without a rate limit (``--rate 0``), a ROUTER
        connection seen to say hello has nothing left to be looked at for (a third of the looks
        at 8,000 users); a subscriber always has (its session may end, or it may flood)."""
        return conn.kind == "pub" or self.budgets.router_rate > 0 or not conn.said_hello

    def _arrived(self) -> None:
        """Take the connections the door let on, and those gone, in turn."""
        arrivals = self.arrivals
        for _ in range(len(arrivals)):
            arrival = arrivals.popleft()
            if not isinstance(arrival, Arrival):
                conn = self.conns.pop(arrival, None)
                if conn is not None:
                    self._forget(conn)
                continue
            conn = _Conn(arrival.fd, arrival.kind, arrival.address, arrival.port, arrival.at,
                         allowance=self.budgets.router_burst, checked=arrival.at)  # fmt: skip
            self.conns[(conn.kind, conn.fd)] = conn
            self.open[conn.kind] += 1
            self.accepted[conn.kind] += 1
            # A subscriber's flood is stored as it comes: young ones are looked at each tick.
            # A DEALER's requests wait in its queue of 1,000: looked at in turn from the start.
            if conn.kind == "pub":
                self._young.append(conn)
                self._unmatched.setdefault(conn.address, deque()).append(conn)
            else:
                self._settled["router"].append(conn)

    def _forget(self, conn: _Conn) -> None:
        conn.gone = True
        self.open[conn.kind] -= 1
        self.closed += 1
        if conn.holder is not None:
            self._holders[conn.holder[0]] -= 1
            if self._holders[conn.holder[0]] <= 0:
                del self._holders[conn.holder[0]]
        waiting = self._unmatched.get(conn.address)
        if waiting is not None and conn in waiting:
            waiting.remove(conn)

    def _match(self, now: float) -> None:
        """Each approved handshake to the oldest unmatched PUB connection from its address (the
        handshakes of one address end in about the order they began)."""
        for _ in range(len(self._approvals)):
            approval = self._approvals[0]
            waiting = self._unmatched.get(approval.address)
            if not waiting:
                if now - approval.at > 2 * self.budgets.hello_timeout:
                    self._approvals.popleft()  # its connection is gone already
                    continue
                self._approvals.rotate(-1)
                continue
            self._approvals.popleft()
            conn = waiting.popleft()
            conn.holder = (approval.name, approval.proof)
            group = self._groups.setdefault(approval.address, set())
            group.add(conn.holder)
            conn.candidates = group
            if not waiting:
                del self._unmatched[approval.address]
                if not any(a.address == approval.address for a in self._approvals):
                    del self._groups[approval.address]  # the next ones make a group of their own
            self._holders[approval.name] += 1

    def _check(self, conn: _Conn, now: float) -> None:
        received = self._received(conn.fd)
        if received is None:
            return
        elapsed, conn.checked = now - conn.checked, now
        sent, conn.received = received - conn.received, received
        b = self.budgets
        if conn.kind == "router":
            age = now - conn.accepted
            conn.said_hello = received >= HANDSHAKE[b.curve] + SMALLEST_HELLO
            if age >= b.hello_timeout and not conn.said_hello:
                self._evict(conn, f"no hello within {b.hello_timeout:g} s", ban=True)
            elif b.router_rate > 0:
                conn.allowance = min(b.router_burst, conn.allowance + elapsed * b.router_rate)
                conn.allowance -= sent
                if conn.allowance < 0:
                    self._evict(conn, "sent more than any client may", ban=True)
            return
        if conn.holder is None:
            allowed = b.subscription_bytes
        else:
            moves = self.sessions(*conn.holder)
            if moves is None and not self._any_live(conn.candidates):
                self._evict(conn, "its session ended", ban=False)
                return
            allowed = b.subscription_bytes + (moves or 0) * SUBSCRIPTION_BYTES_PER_MOVE
        if received > allowed:
            self._evict(conn, "subscriptions beyond what its rooms need", ban=True)

    def _any_live(self, candidates: set[tuple[str, str]]) -> bool:
        """Whether a session of ``candidates`` is live; the ended ones leave the set (so each is
        asked after once, and a look stops at the first live one)."""
        for candidate in list(candidates):
            if self.sessions(*candidate) is not None:
                return True
            candidates.discard(candidate)
        return False

    def _received(self, fd: int) -> int | None:
        self._len.value = _TCP_INFO_BYTES
        if _getsockopt(fd, socket.IPPROTO_TCP, socket.TCP_INFO, self._buf, ctypes.byref(self._len)):
            return None  # closed meanwhile: its DISCONNECTED event is on its way
        return _BYTES_RECEIVED.unpack_from(self._buf.raw, _BYTES_RECEIVED_AT)[0]

    def _evict(self, conn: _Conn, why: str, ban: bool) -> None:
        """Shut one connection down (libzmq then drops it), if its fd is still that peer."""
        if peer(conn.fd) != (conn.address, conn.port):
            return  # libzmq closed it, and the number may be another connection's now
        shut_down(conn.fd)
        conn.gone = True  # its DISCONNECTED event forgets it
        self.evicted += 1
        if ban:
            self.gate.ban(conn.address, self.budgets.evict_for)
        if why != "its session ended":
            self._lines.append((conn.address, why))


def _no_sessions(name: str, proof: str) -> int | None:
    return None
