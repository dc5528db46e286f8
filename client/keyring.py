"""The room keys a client holds (a sealing broker: the default), and what it does with a PUB body.

A sealed body names the epoch of its key in its first bytes; a body whose key has not come yet
(it comes over the DEALER, which may be a little behind the SUB) is held for a second, then
dropped: the gap it leaves is repaired by sequence number like any other. Pure code: no clock
reads, no sockets.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from broker.security.roomkeys import (
    AESGCM,
    EPOCH_BYTES,
    InvalidTag,
    cipher_of,
    epoch_head,
    open_sealed,
)
from broker.wire.protocol import ProtocolError, RoomEvent, RoomKey, decode_room

HOLD: Final = 1.0
"""Seconds a body waits for its key."""
HELD_MAX: Final = 1_000
"""Bodies held at most (the oldest go first)."""
KEYS_KEPT: Final = 64
"""Keys kept, newest last: the current one of each room the client was in lately, and a few
before it for bodies still on their way."""


class Keyring:
    def __init__(self) -> None:
        self.sealed = False
        """Whether the broker seals (``Welcome.sealed``); a plain broker's bodies are read as is."""
        self._keys: dict[bytes, AESGCM] = {}
        """By epoch (as the first bytes of a body sealed with it), each key's cipher, made once."""
        self._held: deque[tuple[float, bytes, bytes]] = deque(maxlen=HELD_MAX)

    def open(self, topic: bytes, body: bytes, now: float) -> list[RoomEvent] | None:
        """The events of a PUB body; None if it is not readable (now: it may be held)."""
        plain = self.plain(topic, body, now)
        return None if plain is None else _decoded(plain)

    def plain(self, topic: bytes, body: bytes, now: float) -> bytes | None:
        """A PUB body opened, not yet decoded (as it is, from a broker that does not seal);
        None if it is not readable (now: it may be held)."""
        if not self.sealed:
            return body
        key = self._keys.get(body[:EPOCH_BYTES])
        if key is None:
            self._held.append((now + HOLD, topic, body))
            return None
        try:
            return open_sealed(key, topic, body)
        except InvalidTag:  # not sealed with this room's key: not for us
            return None

    def add(self, msg: RoomKey, now: float) -> list[list[RoomEvent]]:
        """Keep a key; the held bodies it opens, oldest first."""
        head = epoch_head(msg.epoch)
        self._keys[head] = cipher_of(msg.key)
        while len(self._keys) > KEYS_KEPT:
            del self._keys[next(iter(self._keys))]
        held, self._held = self._held, deque(maxlen=HELD_MAX)
        opened = []
        for deadline, topic, body in held:
            if body[:EPOCH_BYTES] == head:
                events = self.open(topic, body, now)
                if events is not None:
                    opened.append(events)
            elif deadline > now:
                self._held.append((deadline, topic, body))
        return opened

    def expire(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            self._held.popleft()


def _decoded(body: bytes) -> list[RoomEvent] | None:
    try:
        return decode_room(body)
    except ProtocolError:
        return None  # not ours to answer; a gap in sequence numbers repairs any loss
