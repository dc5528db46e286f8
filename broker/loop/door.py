"""The door: where each connection the ROUTER and the PUB accept is counted, or shut at once.

The sockets' monitors report every connection accepted (with its file descriptor) and every one
gone. They are read on the ZAP thread (``zap.ZapHandler.also_read``), before each handshake is
judged, so a connection is always in the gate's counts when ZAP looks at it. One over the caps,
or from an address banned after an eviction, is shut down as it is accepted (``Gate.refusal``),
before its ZMTP greeting, and never counted: first come, first in. ZAP would refuse it too, but
only after its handshake; a crowd of peers reconnecting every 100 ms queues up handshakes (each
holding libzmq's buffers) faster than they are answered, and a crowd counted before ZAP judged
any of it was refused whole (100 DEALERs from one address against a cap of 40: none in). The
others go on to the guard's thread (``watch.Watch``) over ``arrivals``.

A descriptor is libzmq's: it is only read and shut down here, never closed. Linux only (the
guard's ``TCP_INFO``); elsewhere connections are counted and ZAP alone refuses.
"""

from __future__ import annotations

import ctypes
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

import zmq
from zmq.utils.monitor import parse_monitor_message

from broker.security.gate import Gate

CONNECTION_EVENTS: Final = int(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
"""What the ROUTER's and the PUB's monitors report."""

SUPPORTED: Final = sys.platform.startswith("linux")
if SUPPORTED:
    libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A connection let on to its handshake: its socket ("router" or "pub"), fd and peer."""

    kind: str
    fd: int
    address: str
    port: int
    at: float


Gone = tuple[str, int]
"""(socket, fd) of a connection that closed."""


class Door:
    def __init__(self, monitors: dict[str, zmq.Socket[bytes]], gate: Gate) -> None:
        self.monitors = monitors
        """By socket name ("router", "pub"): read only by the ZAP thread, from its start."""
        self.gate = gate
        self.arrivals: deque[Arrival | Gone] = deque()
        """For the guard's thread, in order: each connection let on, and each gone."""
        self._shut: set[tuple[str, int]] = set()
        """Connections shut at accept, until their monitor says they are gone."""

    def readers(self) -> list[tuple[zmq.Socket[bytes], Callable[[], None]]]:
        """Each monitor, and what reads it (never waiting): for ``ZapHandler.also_read``."""
        return [(m, partial(self._events, m, kind)) for kind, m in self.monitors.items()]

    def _events(self, monitor: zmq.Socket[bytes], kind: str) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                address, port = peer(fd)
                if SUPPORTED and self.gate.refusal(address) is not None:
                    shut_down(fd)
                    self._shut.add((kind, fd))
                    continue
                self.gate.accepted(kind, fd, address)
                self.arrivals.append(Arrival(kind, fd, address, port, time.monotonic()))
            elif (kind, fd) in self._shut:
                self._shut.discard((kind, fd))
            else:
                self.gate.disconnected(kind, fd)
                self.arrivals.append((kind, fd))


def shut_down(fd: int) -> None:
    """Make libzmq tear down the connection on ``fd`` (it reads an error, then closes it)."""
    libc.shutdown(fd, socket.SHUT_RDWR)


def peer(fd: int) -> tuple[str, int]:
    """The peer (address, port) of ``fd``, borrowed and given back (never closed)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return "", 0
    try:
        name = sock.getpeername()
    except OSError:
        return "", 0
    finally:
        sock.detach()
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else ("", 0)
