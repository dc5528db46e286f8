"""How one thread tells another, blocked in a poll of its ZeroMQ sockets, to stop: an inproc
PAIR whose reading end the stopped thread polls beside its own sockets."""

from __future__ import annotations

import threading

import zmq


class StopPipe:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        name = f"inproc://stop-{id(self)}"
        self.reader: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        """Poll it: readable once ``halt`` was called."""
        self.reader.bind(name)
        self._writer: zmq.Socket[bytes] = ctx.socket(zmq.PAIR)
        self._writer.connect(name)

    def halt(self, thread: threading.Thread) -> None:
        """Stop ``thread`` (which polls ``reader``), wait for it a while, and close the pipe."""
        if thread.is_alive():
            self._writer.send(b"")
            thread.join(5)
        self.close()

    def close(self) -> None:
        self.reader.close(linger=0)
        self._writer.close(linger=0)
