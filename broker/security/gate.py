"""Connections per address and in all, so that the ZAP handler can refuse what is over the caps.

A user holds two connections (its DEALER on the ROUTER, its SUB on the PUB), but anyone who can
reach the ports can open thousands that never say hello, each costing the broker memory for as
long as it stays open (a ROUTER cannot drop one peer). So every chat connection passes through
ZAP, the NULL mechanism included (the chat sockets have a ZAP domain): the handler, on the
ZAP thread (``zap.py``), asks ``Gate.admit``, which only reads counts. The loop keeps the counts
from the sockets' monitors (accepted, disconnected), by the peer address of each file
descriptor. A refused connection is closed in its handshake, before it costs anything more.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter


class Gate:
    def __init__(self, per_address: int, total: int) -> None:
        self.per_address = per_address
        self.total = total
        """Chat connections open at once, at most: ``--max-connections``, or less (``cap``)."""
        self.total_why = f"--max-connections {total}"
        """What sets ``total``, in words for the log."""
        self.open = 0
        """Chat connections open now, on the ROUTER and the PUB."""
        self.by_address: Counter[str] = Counter()
        self._address_of: dict[tuple[str, int], str] = {}
        """Each open connection's address, by socket and file descriptor."""
        self.refused = 0
        """Connections refused since the last ``take_refused`` (written on the ZAP thread)."""
        self.refused_full = 0
        """Of those, refused because ``total`` were open."""
        self.banned: dict[str, float] = {}
        """Addresses refused until a time (``time.monotonic``): the guard evicted one of their
        connections (written by the guard's thread, read by the ZAP thread)."""

    def accepted(self, sock: str, fd: int, address: str | None = None) -> None:
        """``sock`` (a name) accepted a connection on ``fd`` (from ``address``, if known)."""
        if address is None:
            address = peer_address(fd)
        self._address_of[(sock, fd)] = address
        self.by_address[address] += 1
        self.open += 1

    def disconnected(self, sock: str, fd: int) -> None:
        address = self._address_of.pop((sock, fd), None)
        if address is None:
            return
        self.open -= 1
        left = self.by_address[address] - 1
        if left:
            self.by_address[address] = left
        else:
            del self.by_address[address]

    def cap(self, total: int, why: str) -> None:
        """Allow at most ``total`` connections (fewer than asked: ``why`` says what sets it)."""
        self.total = total
        self.total_why = why

    def ban(self, address: str, seconds: float) -> None:
        """Refuse ``address`` at the handshake for ``seconds``."""
        self.banned[address] = time.monotonic() + seconds

    def is_banned(self, address: str) -> bool:
        """Whether ``address`` is refused now (the guard shuts its new connections at once)."""
        until = self.banned.get(address)
        return until is not None and until > time.monotonic()

    def admit(self, address: str) -> str | None:
        """None to let a new connection from ``address`` in, else why not. The counts may
        already include this connection (its monitor event came first), hence ``>``."""
        if self.is_banned(address):
            return f"{address} was evicted for abuse; refused for a while"
        self.banned.pop(address, None)  # its time is up, if it was banned
        if self.open > self.total:
            self.refused_full += 1
            return f"{self.open} connections are open (at most {self.total}: {self.total_why})"
        if self.by_address.get(address, 0) > self.per_address:
            return f"too many connections from {address} (--max-per-address {self.per_address})"
        return None

    def take_refused(self) -> tuple[int, int]:
        """Connections refused since the last call, and how many of them because ``total``
        were open."""
        refused, self.refused = self.refused, 0
        full, self.refused_full = self.refused_full, 0
        return refused, full


def peer_address(fd: int) -> str:
    """The peer's IP address of a connected socket, as ZAP names it; "" when it is gone."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:  # a duplicate: the original stays open
            peer = sock.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""
