"""Connections per address and in all, so that the ZAP handler can refuse what is over the caps.

A user holds two connections (its DEALER on the ROUTER, its SUB on the PUB), but anyone who can
reach the ports can open thousands that never say hello, each costing the broker memory for as
long as it stays open (a ROUTER cannot drop one peer). So every chat connection passes through
ZAP, the NULL mechanism included (the chat sockets have a ZAP domain): the handler asks
``Gate.admit``, which only reads counts. The same thread keeps the counts from the sockets'
monitors (accepted, disconnected), by the peer address of each file descriptor, and reads them
before it judges a handshake, so a connection is always counted when it is judged. A refused
connection is closed in its handshake, before it costs anything more.

On Linux a connection over the caps is refused sooner, as it is accepted (``refusal``): shut down
before its handshake, and never counted. So a crowd from one address gets its cap in the order it
came: counted at accept and judged by ZAP later, a crowd of 100 against a cap of 40 was all
counted before ZAP heard of the first, and all refused, again at each reconnection.
"""

from __future__ import annotations

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
        """Connections refused since the start (only ever added to, on the ZAP thread)."""
        self.refused_full = 0
        """Of those, refused because ``total`` were open."""
        self._taken = (0, 0)
        """``refused`` and ``refused_full`` at the last ``take_refused``."""
        self.banned: dict[str, float] = {}
        """Addresses refused until a time (``time.monotonic``): the guard evicted one of their
        connections (written by the guard's thread, read by the ZAP thread)."""

    def accepted(self, sock: str, fd: int, address: str) -> None:
        """``sock`` (a name) accepted a connection on ``fd`` from ``address``."""
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

    def users(self) -> int:
        """Users that ``total`` holds: two connections each (a DEALER, a SUB), less a reserve of
        1% in which one more user's DEALER still gets in, to be told the broker is full (past
        ``total`` it is shut before it could hear anything)."""
        return max(1, (self.total - max(2, self.total // 100)) // 2)

    def ban(self, address: str, seconds: float) -> None:
        """Refuse ``address`` at the handshake for ``seconds``."""
        self.banned[address] = time.monotonic() + seconds

    def is_banned(self, address: str) -> bool:
        """Whether ``address`` is refused now (the door shuts its new connections at once)."""
        until = self.banned.get(address)
        return until is not None and until > time.monotonic()

    def admit(self, address: str) -> str | None:
        """For ZAP: None to let a new connection from ``address`` in, else why not. The counts
        include this connection: the ZAP thread read its monitor event first."""
        return self._over_caps(address, 1)

    def refusal(self, address: str) -> str | None:
        """Before a connection just accepted from ``address`` is counted: None if it may go on
        to its handshake, else why it is shut at once."""
        return self._over_caps(address, 0)

    def _over_caps(self, address: str, counted: int) -> str | None:
        """Why a connection from ``address`` is refused (counted), or None; ``counted``: 1 if
        the counts include it already."""
        if self.is_banned(address):
            self.refused += 1
            return f"{address} was evicted for abuse; refused for a while"
        self.banned.pop(address, None)  # its time is up, if it was banned
        if (others := self.open - counted) >= self.total:
            self.refused += 1
            self.refused_full += 1
            return f"{others} connections are open (at most {self.total}: {self.total_why})"
        if self.by_address.get(address, 0) - counted >= self.per_address:
            self.refused += 1
            return f"too many connections from {address} (--max-per-address {self.per_address})"
        return None

    def take_refused(self) -> tuple[int, int]:
        """Connections refused since the last call, and how many of them because ``total``
        were open (read on another thread than the one that counts)."""
        now = (self.refused, self.refused_full)
        taken, self._taken = self._taken, now
        return now[0] - taken[0], now[1] - taken[1]
