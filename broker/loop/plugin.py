"""What a backbone adds to the loop, as the loop sees it: a ``Plugin`` it drives, and the
``Host`` (the broker) the plugin may call back. Protocols only, so that neither side imports the
other: the backbone (``backbone.plugin.BackbonePlugin``) implements ``Plugin``, the loop
(``server.Broker``) is the ``Host``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from broker.chat.chat import Chat
from broker.chat.outbox import Outbox
from broker.loop.control import ControlRequest
from broker.store.base import Store
from broker.wire import ctlprotocol as cp


class Host(Protocol):
    """What the plugin uses of the broker it is attached to."""

    chat: Chat
    clock: Callable[[], float]

    def dispatch(self, request: cp.CtlRequest, now: float) -> cp.CtlReply:
        """Run an admin request on this broker."""
        ...

    def answer(self, asked: ControlRequest, reply: cp.CtlReply, now: float) -> None:
        """Answer an admin request the plugin held back (other brokers answered)."""
        ...


class Plugin(Protocol):
    """What a backbone adds to the loop; a broker on its own has none, and its loop reads the
    same without it."""

    wake: socket.socket
    """Readable when the plugin has news for the loop (``drain``)."""

    def attach(self, broker: Host, local: Store, endpoints: str) -> Store: ...
    def banner(self) -> str: ...
    def stop(self) -> None: ...
    def drain(self) -> None: ...
    def share(self, out: Outbox) -> None:
        """Just before a batch goes out."""
        ...

    def control(self, asked: ControlRequest, now: float) -> cp.CtlReply | None:
        """The reply, or None: answered later (``Host.answer``)."""
        ...

    def tick(self, now: float) -> None: ...
    def lag(self) -> tuple[int, float]:
        """How far behind the stream this broker reads, at the last message it read: messages
        still to read, and seconds from stored to read (the metrics ask, from their thread)."""
        ...
