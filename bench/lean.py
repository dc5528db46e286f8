"""The lean load generator: the same senders and subscribers for every target, costing as
little per message as Python allows, so that a ratio measures the targets, not the load.

- **Pre-encoded.** Every message is encoded before the clock starts: a ``Say`` for the broker,
  a body of ``size`` bytes that starts with its 4-byte counter for the relays, a packed
  ``PUBLISH`` for Redis. Nothing is formatted or parsed as text.
- **A bounded window.** A sender keeps at most ``window`` messages unacknowledged (the broker's
  ``Ack``, Redis's ``PUBLISH`` reply), and counts acknowledgements a received batch at a time.
  The relays acknowledge nothing: only their high-water marks bound them.
- **Counted by number.** A subscriber marks each message in a bytearray by its sequence number
  (the broker's ``seq``; a relay's or Redis's counter + 1): a batch in order is checked and
  marked in one slice. Lost, duplicated and repaired (fetched again from the broker by number)
  are counted apart; a message counts as delivered once, however often it came.
- **Several subscriptions per process**, in processes of their own, apart from the sender's.
- **Latency without clocks in the body**: when asked to sample, the sender keeps each message's
  send time and the subscriber each arrival time (``time.monotonic_ns``, one clock on the
  machine); the parent pairs them.

Each process reports its own CPU time, so the bench prints what the load generator costs per
message beside each target's cost.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Final

import zmq

from broker.wire import protocol as p
from client.keyring import Keyring

SETTLE: Final = 0.5
"""Seconds subscribers wait after subscribing, so the subscriptions reach the publisher."""
GRACE: Final = 1.0
"""After the sender is done, a subscriber stops after this long with nothing new."""
REPAIR_WAIT: Final = 10.0
"""After the sender is done, a broker subscriber asks for what it misses for this long at most."""
FIRST_WAIT: Final = 60.0
"""How long subscribers wait at most for the sender to finish."""
HEARTBEAT: Final = 1.0
NAP: Final = 0.0005
SMALL: Final = 16
"""In a flood, a subscriber that read fewer than ``SMALL`` messages on a wake-up sleeps ``NAP``
seconds before the next: a per-message stream then costs a wake-up per few dozen messages, not
per message (every target's subscribers do the same; latency runs never nap)."""
CHECK_EVERY: Final = 0.01
"""Seconds between a subscriber's checks of the time, the sender's end, heartbeats."""
WINDOW: Final = 1024
"""Messages a sender keeps unacknowledged at most (the broker drains 512 per turn)."""
SUB_RCVHWM: Final = 100_000
"""The subscribers' own queue (receives, not bytes): the same for every target."""
COUNTER: Final = 4
"""Bytes of counter at the start of a relay's or Redis's body."""
WARM: Final = 2 ** (8 * COUNTER) - 1
"""The counter of a warm-up message (never a real one): through a relay, it tells a subscriber
that its subscription is live."""

NOBLOCK: Final = int(zmq.NOBLOCK)  # a plain int: enum flags cost an operation per call


def body(i: int, size: int) -> bytes:
    """A relay's or Redis's message: its counter, padded to ``size`` bytes."""
    return i.to_bytes(COUNTER, "big") + b"x" * max(0, size - COUNTER)


def text(size: int) -> str:
    """The broker's message text, ``size`` bytes."""
    return "x" * size


def redis_address(where: str) -> tuple[str, int]:
    host, port = where.rsplit(":", 1)
    return host, int(port)


def pack(*args: bytes) -> bytes:
    """One Redis command, packed by redis-py."""
    return b"".join(_redis_packer().pack_command(*args))


@functools.cache
def _redis_packer() -> Any:
    """One redis-py connection object (never connected), for its packer; imported here: only
    Redis runs need redis-py."""
    from redis.connection import Connection

    return Connection()


def handshake(dealer: zmq.Socket[bytes], name: str, room: str, ring: Keyring) -> p.Welcome:
    """Hello, then Join ``room``; the room keys that come meanwhile go on ``ring``. Returns the
    ``Welcome`` (the PUB endpoint it names, and the session a subscriber logs in with)."""
    dealer.send(p.encode(p.Hello(p.VERSION, name)))
    welcome = _await(dealer, p.Welcome, ring)
    ring.sealed = welcome.sealed
    dealer.send(p.encode(p.Join(room)))
    _await(dealer, p.Joined, ring)
    return welcome


def _await(dealer: zmq.Socket[bytes], kind: type, ring: Keyring, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not dealer.poll(left * 1000):
            break
        found = None
        for msg in p.decode_server(dealer.recv()):
            if type(msg) is p.RoomKey:
                ring.add(msg, time.monotonic())
            elif type(msg) is p.Error:
                raise RuntimeError(msg.reason)
            elif found is None and type(msg) is kind:
                found = msg
        if found is not None:
            return found
    raise TimeoutError(f"no {kind.__name__} from the broker")
