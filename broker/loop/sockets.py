"""The broker's sockets made and unmade: each bound with its options set before the bind and in
its ZAP domain, a monitor that loses no event, the endpoint each got (port 0: any free port), and
all of them closed at the end.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Final

import zmq

from broker.config import HEARTBEAT, LIVENESS, ZMTP_PING_EVERY, Limits
from broker.loop.door import CONNECTION_EVENTS
from broker.security.guard import CHAT_DOMAIN, CONTROL_DOMAIN, PUB_DOMAIN, REFUSED_EVENTS, Guard
from broker.store.datadir import StartError

# Plain ints: pyzmq's flag enums cost an enum operation per call on the hot path.
NOBLOCK: Final = int(zmq.NOBLOCK)
SNDMORE: Final = int(zmq.SNDMORE)
SNDMORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
RCVMORE: Final = int(zmq.RCVMORE)

ROUTER_RCVHWM: Final = 10_000
"""Client messages waiting to be read, per client."""
PUB_RCVHWM: Final = 64
"""Subscriptions waiting for the publisher, per subscriber: a flood of them stays in the kernel's
buffers (and in its byte count, which the guard reads) instead of in libzmq's tree."""

BACKLOG: Final = 4_096
"""Connections the kernel holds for the ROUTER and the PUB before the broker accepts them (the
kernel caps it at net.core.somaxconn). libzmq's default of 100 let a crowd's connections be
dropped and retried by TCP after 1, 3, 7... s: at 500 users arriving at once, 313 dropped, all in
after 1.4 s; with 4,096, 0.6 s (room-bench --chat-day)."""


@dataclass(slots=True)
class Endpoints:
    router: str
    pub: str
    control: str


def _bindable(endpoint: str) -> str:
    """Accept port 0 as 'any free port', the way people write it."""
    return (
        endpoint[:-2] + ":*"
        if endpoint.startswith("tcp://") and endpoint.endswith(":0")
        else endpoint
    )


class Sockets:
    """The ROUTER (clients), the PUB (rooms) and the control ROUTER (admins), each with a
    monitor; bound in the constructor (a ``StartError`` if one cannot be, with nothing left
    open), closed by ``close``."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        guard: Guard,
        endpoints: Endpoints,
        limits: Limits,
        pub_hwm: int | None = None,
        pub_sndbuf: int | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        """``heartbeat``: the broker's interval, which sets the ROUTER's ZMTP heartbeats."""
        self.ctx = ctx
        self.guard = guard
        bound: list[zmq.Socket[bytes]] = []
        try:
            # Per-peer queues bounded in bytes: a send is at most about ANSWER_BYTES (replies)
            # or PUB_SEND_BYTES (room events). A peer that falls that far behind loses what
            # does not fit, and repairs it by retry or sequence number: the broker never waits.
            handshake = int(limits.hello_timeout * 1000)  # a connection that never finishes it
            router_options = {
                zmq.SNDHWM: limits.router_hwm,
                zmq.RCVHWM: ROUTER_RCVHWM,
                zmq.HANDSHAKE_IVL: handshake,
                zmq.BACKLOG: BACKLOG,
                **zmtp_heartbeat(heartbeat),  # a dead client's connection is closed by libzmq
            }
            self.router = self._bind(
                zmq.ROUTER, endpoints.router, limits.max_frame, CHAT_DOMAIN, router_options
            )
            bound.append(self.router)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            pub_options = {
                zmq.SNDHWM: limits.pub_hwm if pub_hwm is None else pub_hwm,
                zmq.RCVHWM: PUB_RCVHWM,
                zmq.HANDSHAKE_IVL: handshake,
                zmq.BACKLOG: BACKLOG,
            }
            if pub_sndbuf is not None:  # tests: a small kernel buffer makes a slow peer drop
                pub_options[zmq.SNDBUF] = pub_sndbuf
            self.pub = self._bind(
                zmq.PUB, endpoints.pub, limits.max_subscription, PUB_DOMAIN, pub_options
            )
            bound.append(self.pub)
            self.control = self._bind(
                zmq.ROUTER, endpoints.control, limits.max_frame, CONTROL_DOMAIN
            )
        except StartError:
            for sock in bound:
                sock.close(linger=0)
            raise
        self.control_monitor = self._monitor(self.control, REFUSED_EVENTS)
        self.router_monitor = self._monitor(self.router, CONNECTION_EVENTS)
        self.pub_monitor = self._monitor(self.pub, CONNECTION_EVENTS)
        self.endpoints = Endpoints(
            _endpoint(self.router), _endpoint(self.pub), _endpoint(self.control)
        )

    def _bind(
        self,
        kind: int,
        endpoint: str,
        max_frame: int,
        domain: str,
        options: dict[int, int] | None = None,
    ) -> zmq.Socket[bytes]:
        """Bind a socket with ``MAXMSGSIZE`` and ``options``, in a ZAP ``domain``. Every option
        is set before the bind: libzmq copies them into the listener then, and an option set
        later never reaches the connections it accepts (high-water marks, buffer sizes)."""
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame)
        for option, value in (options or {}).items():
            sock.setsockopt(option, value)
        self.guard.serve(sock, domain)
        try:
            sock.bind(_bindable(endpoint))
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            hint = (
                "is another broker running? choose another endpoint"
                if exc.errno == errno.EADDRINUSE
                else "check the endpoint"
            )
            raise StartError(f"cannot bind {endpoint}: {exc.strerror}: {hint}") from None
        return sock

    def _monitor(self, sock: zmq.Socket[bytes], events: int) -> zmq.Socket[bytes]:
        """A monitor of ``sock`` that loses no event: pyzmq's ``get_monitor_socket`` leaves the
        pipe at 1,000 events, and a flood of connections that come and go fills it while the
        loop is busy (the connection count would then drift for good)."""
        addr = f"inproc://monitor-{id(sock)}"
        sock.monitor(addr, events)
        monitor: zmq.Socket[bytes] = self.ctx.socket(zmq.PAIR)
        monitor.setsockopt(zmq.RCVHWM, 0)  # before connecting: the pipe takes no limit then
        monitor.connect(addr)
        return monitor

    def close(self, linger: int) -> None:
        self.control.disable_monitor()
        self.control_monitor.close(linger=0)
        for sock, monitor in ((self.router, self.router_monitor), (self.pub, self.pub_monitor)):
            sock.disable_monitor()
            monitor.close(linger=0)
        for sock in (self.router, self.pub, self.control):
            sock.close(linger=linger)


def zmtp_heartbeat(heartbeat: float) -> dict[int, int]:
    """The ROUTER's ZMTP heartbeats (libzmq's own PING and PONG, below the protocol's ``Ping``):
    a PING on each connection every ``ZMTP_PING_EVERY`` heartbeats (30 s by default), and a
    connection that then carries nothing for ``2 * LIVENESS`` heartbeats (10 s) is closed by
    libzmq itself, its descriptor and queues freed: a peer that vanished without closing its TCP
    connection would otherwise hold them for good (the chat cannot close one). Not more often:
    libzmq cancels a timer by walking all of its I/O thread's timers, and each PING sets one, so
    the cost grows with the square of the connections (a PING every 5 s took about 9 points
    more of a core at 5,000 idle users; every 30 s, none that the bench could tell)."""
    timeout = max(100, round(2 * LIVENESS * heartbeat * 1000))
    return {
        zmq.HEARTBEAT_IVL: max(100, round(ZMTP_PING_EVERY * heartbeat * 1000)),
        zmq.HEARTBEAT_TIMEOUT: timeout,
        zmq.HEARTBEAT_TTL: min(timeout, 6_553_500),  # sent to the peer: deciseconds, 16 bits
    }


def _endpoint(sock: zmq.Socket[bytes]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
