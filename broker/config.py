"""Defaults defined once: endpoints, paths, intervals, limits and exit codes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

import platformdirs

ROUTER: Final = "tcp://127.0.0.1:5555"
PUB: Final = "tcp://127.0.0.1:5556"
CONTROL: Final = "tcp://127.0.0.1:5557"

ENV_PREFIX: Final = "ROOM"
"""Every CLI option also reads ``ROOM_<OPTION>``, named in one place: ``options.envvar``."""

DATA_DIR_ENV: Final = "ROOM_DATA_DIR"

HEARTBEAT: Final = 1.0
"""Seconds between heartbeats when a side has sent nothing else."""
LIVENESS: Final = 5
"""Heartbeats a peer may miss before it is taken for dead."""

ZMTP_PING_EVERY: Final = 30
"""Heartbeat intervals between two ZMTP PINGs of the broker's ROUTER on one connection (see
``loop.sockets.zmtp_heartbeat``)."""

CTL_TIMEOUT: Final = 5.0
"""Seconds room-ctl and the client's handshake wait for the broker."""

HISTORY: Final = 20
"""Recent messages a client is shown when it joins a room."""


class Exit(IntEnum):
    """Exit codes of the three commands, one place for all."""

    OK = 0
    ERROR = 1  # the command failed (refused, bad argument, broker error)
    USAGE = 2  # click's own code for bad usage
    UNREACHABLE = 3  # no answer from the broker within the timeout
    FIRED = 4  # the admin disconnected this user
    DISCONNECTED = 5  # the broker closed or reset, or dropped the session
    REFUSED = 6  # the broker refused the connection: wrong or missing key (CURVE)


@dataclass(frozen=True, slots=True)
class Limits:
    """Abuse limits, each also an option of ``room-broker start``."""

    max_message: int = 4096  # bytes of UTF-8 text in one room message
    max_clients: int = 10_000
    max_rooms: int = 1_000
    history_keep: int = 10_000  # messages per room kept in memory (a backbone's mirror)
    keep_messages: int = 100_000  # messages per room kept on disk; older ones are pruned
    keep_days: float = 365.0  # days a message is kept on disk; 0 keeps them for ever
    new_rooms: int = 10  # rooms one user may create per minute
    max_frame: int = 64 * 1024  # MAXMSGSIZE on the ROUTER and control sockets
    max_subscription: int = 1024  # MAXMSGSIZE on the PUB socket: a subscription is one room
    # topic (at most 34 bytes), but a CURVE handshake's INITIATE (about 300 bytes) counts too
    max_connections: int = 25_000  # chat connections open at once (ROUTER and PUB)
    max_per_address: int = 4_096  # chat connections open at once from one IP address
    client_queue: int = 4 * 1024 * 1024  # bytes of replies queued for one client
    subscriber_queue: int = 4 * 1024 * 1024  # bytes of room events queued for one subscriber
    hello_timeout: float = 10.0  # seconds a connection may stay without saying hello
    subscribers_per_session: int = 4  # PUB connections one session may hold at once
    subscription_bytes: int = 4096  # bytes a subscriber may send besides its room changes
    evict_for: float = 60.0  # seconds an evicted connection's address is refused

    @property
    def router_hwm(self) -> int:
        """The ROUTER's per-client queue in sends, each at most about ``ANSWER_BYTES``."""
        return max(2, self.client_queue // ANSWER_BYTES)

    @property
    def pub_hwm(self) -> int:
        """The PUB's per-subscriber queue in sends, each at most ``PUB_SEND_BYTES``."""
        return max(2, self.subscriber_queue // PUB_SEND_BYTES)


BATCH: Final = 512
"""Messages the loop reads from one socket before it flushes; bounds latency under load."""

ANSWER_BYTES: Final = 256 * 1024
"""About the most history (Fetch, Join) one turn of the loop answers one client: a longer
answer is cut short (the client fetches the rest), and a Fetch past it is refused ``busy``. One
send to a client is therefore about this size at most."""
PUB_SEND_BYTES: Final = 64 * 1024
"""The most bytes of room events in one PUB send; a larger batch goes out in several."""
FETCH_TOKEN_BYTES: Final = 64 * 1024
"""History returned for the cost of one message from the asker's rate budget."""

FRAME_OVERHEAD: Final = 1024
"""Bytes a client message may add around its text; ``max_frame`` grows with ``--max-message``."""


DEFAULT_LIMITS: Final = Limits()


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where state lives: the flag, else ``ROOM_DATA_DIR``, else the user's data dir."""
    chosen = override or os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("room")
    return Path(chosen).expanduser()
