"""The broker's sockets made and unmade: each bound with its options set before the bind and in
its ZAP domain, a monitor that loses no event, the endpoint each got (port 0: any free port), and
all of them closed at the end.

Part of ``server.Broker`` (a mixin: it uses the broker's context, guard and sockets), apart
because it is one story.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

import zmq

from broker.store.datadir import StartError

# Plain ints: pyzmq's flag enums cost an enum operation per call on the hot path.
NOBLOCK: Final = int(zmq.NOBLOCK)
SNDMORE: Final = int(zmq.SNDMORE)
SNDMORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
RCVMORE: Final = int(zmq.RCVMORE)

if TYPE_CHECKING:
    from broker.loop.server import Broker

    _Base = Broker
else:
    _Base = object


def _bindable(endpoint: str) -> str:
    """Accept port 0 as 'any free port', the way people write it."""
    return (
        endpoint[:-2] + ":*"
        if endpoint.startswith("tcp://") and endpoint.endswith(":0")
        else endpoint
    )


class BrokerSockets(_Base):
    """The sockets of ``Broker``: made in its constructor, closed when it stops."""

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

    @staticmethod
    def _endpoint(sock: zmq.Socket[bytes]) -> str:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def _close_sockets(self, linger: int) -> None:
        self.control.disable_monitor()
        self.control_monitor.close(linger=0)
        for sock, monitor in ((self.router, self.router_monitor), (self.pub, self.pub_monitor)):
            sock.disable_monitor()
            monitor.close(linger=0)
        for sock in (self.router, self.pub, self.control):
            sock.close(linger=linger)
        self.guard.stop()
        self.ctx.term()
