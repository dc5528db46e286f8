"""The broker's file descriptors: it never lets connections take the last ones.

Every chat connection is a file descriptor, and so are the store's files, the key files the
guard re-reads, the log, and what libzmq's threads and the broker's own use. A broker that let
connections take them all could then open nothing of its own (issue 27: at 10,000 users it could
not open its database or its admin allow-list any more), and libzmq, failing to accept with
EMFILE, spins on its listening socket. So at start the broker raises its soft limit
(``RLIMIT_NOFILE``) to the hard one where it may, counts what it holds once its sockets are bound
and its threads started, keeps ``RESERVE`` more for what it opens later, and lets connections have
the rest: the connection gate refuses any past it at the handshake, as past ``--max-connections``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

try:
    import resource
except ImportError:  # not a POSIX system: no limit to read or raise
    resource = None  # type: ignore[assignment]

RESERVE: Final = 64
"""Descriptors kept for what the broker opens after its start: the store's files (a checkpoint,
a reopened WAL), the admin allow-list it re-reads, the log, room-ctl's connections, a metrics
scrape, and connections in their handshake that the gate is about to refuse."""
UNLIMITED_TARGET: Final = 1 << 20
"""The soft limit asked for when the hard one is unlimited (Linux's usual ``nr_open``)."""


@dataclass(frozen=True, slots=True)
class Descriptors:
    """The broker's descriptor budget, as found at its start."""

    limit: int
    """The soft limit now (0: none known)."""
    raised_from: int
    """The soft limit before the broker raised it (= ``limit`` when it was not raised)."""
    in_use: int
    """Descriptors open once the broker was set up (its sockets, store, threads)."""

    @property
    def for_connections(self) -> int | None:
        """Chat connections the limit leaves room for; None without a limit."""
        if not self.limit:
            return None
        return max(0, self.limit - self.in_use - RESERVE)

    def describe(self) -> str:
        """The budget in words, for the start-up line."""
        if not self.limit:
            return "file descriptors: no limit known"
        raised = f" (raised from {self.raised_from})" if self.raised_from != self.limit else ""
        return (
            f"file descriptors: limit {self.limit}{raised}, {self.in_use} in use at start, "
            f"{RESERVE} kept for the store, keys and logs"
        )


def raise_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one where the OS lets us; (before, now),
    (0, 0) where there is no such limit."""
    if resource is None:
        return 0, 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return UNLIMITED_TARGET, UNLIMITED_TARGET
    target = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_TARGET)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. macOS: no more than OPEN_MAX; keep what we have
            return soft, soft
        return soft, target
    return soft, soft


def in_use() -> int:
    """Descriptors open in this process now (the ones listed, less the listing's own)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return max(0, len(os.listdir(where)) - 1)
        except OSError:
            continue
    return RESERVE  # no way to count: guess as many again as the reserve


def budget(before: int, limit: int) -> Descriptors:
    """The budget now, the soft limit having been ``before`` and now ``limit``."""
    return Descriptors(limit, before, in_use())
