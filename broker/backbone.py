"""The NATS JetStream backbone: several brokers that act as one chat server.

What lives where::

    stream ROOM, subject room.msg.<room>   room messages, a batch per JetStream message; the
                                           per-room sequence numbers are in the payload and kept
                                           dense by compare-and-set on the subject's last sequence
    KV room-names    name -> "node session"   who holds a name (claimed with create: atomic)
    KV room-blocked  name -> ""               the blocklist
    KV room-nodes    node -> endpoints         each broker's lease (the bucket's TTL)
    KV room-epochs   "rooms" -> N              bumped by reset: every broker starts its rooms over
    room.node.<id>, room.all                  the bus: admin commands routed to one or every broker
    room.node.<id>.told, room.presence        direct messages to a user there; presence lines

The broker's loop stays synchronous and owns its sockets; the NATS client (asyncio) runs on a
thread of its own here. The loop hands appends over once per flush (``call_soon_threadsafe``) and
waits on a future only for rare, small things (a name claim, a blocklist change, a purge). The
thread hands events back through a deque and wakes the loop with a byte on a socketpair. Every
broker applies stored messages (its own and the others') from one ordered consumer of the stream,
so each one publishes the same messages in the same order. ``clusterstore.ClusterStore`` is
what the chat sees of all this: a ``Store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js import api

from . import protocol as p
from .store import StoreError

STREAM: Final = "ROOM"
SUBJECT: Final = "room.msg."
NAMES: Final = "room-names"
BLOCKED: Final = "room-blocked"
NODES: Final = "room-nodes"
EPOCHS: Final = "room-epochs"
EPOCH_KEY: Final = "rooms"
BUS_ALL: Final = "room.all"
PRESENCE: Final = "room.presence"
ORIGIN: Final = "Room-Node"
"""Header naming the broker that sent a bus request."""
DUPLICATE_WINDOW: Final = 120.0
"""Seconds JetStream remembers a message id: a client's retry comes well within this."""
CONNECT_TIMEOUT: Final = 5.0
"""Seconds a starting broker tries to reach the backbone before it gives up with one line."""
CALL_TIMEOUT: Final = 2.0
"""Seconds the broker's loop waits for the backbone on a claim, a block or a purge."""
GATHER_TIMEOUT: Final = 1.0
"""Seconds an admin command waits for every broker's answer."""
WRONG_LAST_SEQUENCE: Final = (10071, 10164)
LEASE: Final = 5.0
"""Seconds a broker's lease lasts without renewal; its names are freed when it lapses. Renewed
every second: a loaded machine may delay a renewal, and a lapse frees the names of live users."""
UNREACHABLE: Final = "the chat backbone (NATS) is unreachable: try again shortly"

T = TypeVar("T")


def shown_url(url: str) -> str:
    """``url`` without its credentials (``nats://user:secret@host``): logs and errors show it."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def node_subject(node: str) -> str:
    return f"room.node.{node}"


class Record(msgspec.Struct, array_like=True, frozen=True):
    """A room message as the stream stores it: what ``Posted`` says, plus the sender's id."""

    room: str
    seq: int
    ts: float
    sender: str
    text: str
    mid: int = 0

    def posted(self) -> p.Posted:
        return p.Posted(self.room, self.seq, self.ts, self.sender, self.text)


_encode_batch = msgspec.msgpack.Encoder().encode
_decode_batch = msgspec.msgpack.Decoder(list[Record]).decode

BATCH_RECORDS: Final = 256
BATCH_BYTES: Final = 256 * 1024
"""A JetStream message carries the room's queued messages up to these bounds (NATS allows 1 MiB
by default): one round trip stores a burst, where one per message would cap a room at a few
thousand messages per second."""


# ---- what the backbone tells the broker's loop ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message the stream stored (by any broker), in stream order."""

    record: Record


@dataclass(frozen=True, slots=True)
class Stored:
    """This broker's message is stored: acknowledge it to its sender."""

    sender: str
    mid: int
    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class NotStored:
    sender: str
    mid: int
    reason: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """The answer to a name claim (``claim_later``): the session's secret, or why not."""

    name: str
    result: str | p.Code
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BlockChanged:
    name: str
    blocked: bool


@dataclass(frozen=True, slots=True)
class Replaced:
    """Another broker resumed this user's session: drop the local connection, keep the name."""

    name: str


@dataclass(frozen=True, slots=True)
class Remote:
    """An admin request from another broker (or this one, broadcast) to run here."""

    request: p.CtlRequest
    reply_to: str


@dataclass(frozen=True, slots=True)
class Answered:
    """The answers to a routed or broadcast admin request (``token`` says which)."""

    token: int
    replies: list[p.CtlReply]


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A direct message from a user on another broker to a user here."""

    told: p.Told


@dataclass(frozen=True, slots=True)
class Shared:
    """Presence lines (entered, left, ...) from another broker's users, for the rooms here."""

    events: list[p.Presence]


@dataclass(frozen=True, slots=True)
class Reset:
    """Another broker reset the chat (a new epoch): drop every user and room here too."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Said:
    """A line for the broker's log (the backbone was lost, or is back)."""

    text: str


Event = (
    Delivered
    | Stored
    | NotStored
    | Claimed
    | BlockChanged
    | Replaced
    | Remote
    | Answered
    | Forwarded
    | Shared
    | Reset
    | Said
)


class _Entry(NamedTuple):
    """A key-value change: ``operation`` is None for a value, else DEL or PURGE."""

    key: str
    value: bytes | None
    revision: int | None
    operation: str | None


@dataclass(slots=True)
class _RoomWriter:
    """One room's queue of messages to store, written one at a time (compare-and-set)."""

    queue: deque[Record]
    last: tuple[int, int] | None = None  # (stream sequence, room sequence) of the last stored
    busy: bool = False


class Backbone:
    """The NATS connection, its thread, and the shared state mirrored for the broker's loop."""

    def __init__(self, url: str, node: str, keep: int) -> None:
        self._url = url
        self.url = shown_url(url)
        """The URL to show: without the user and password it may carry."""
        self.node = node
        self.keep = keep
        self._renewed = 0.0
        self._linked = 0.0  # when the connection came back: names are freed only two leases
        # later, as every lease looks lapsed when nats-server comes back from a restart
        self.received = 0  # the stream sequence of the last message the consumer delivered
        self.epoch = 0  # how many resets the chat has seen
        self.held: dict[str, str] = {}  # name -> session, the names this broker's users hold
        self.events: deque[Event] = deque()
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="backbone", daemon=True)
        self._writers: dict[str, _RoomWriter] = {}
        self.names: dict[str, tuple[str, str, int]] = {}  # name -> (node, session, revision)
        self.nodes: set[str] = set()
        self.connected = False
        self._nc: Any = None
        self._last_error = ""
        self._endpoints = b""  # this broker's, the value of its lease
        self._js: Any = None
        self._kv: dict[str, Any] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    # ---- from the broker's thread -------------------------------------------------------------

    def start(self, endpoints: str) -> tuple[list[Record], set[str]]:
        """Connect, make the stream and buckets, and read what is stored: the history to mirror
        and the blocklist. Raises ``StoreError`` with one line for the operator."""
        self._thread.start()
        return self.call(self._start(endpoints), timeout=30.0)

    def call(self, coro: Awaitable[T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the backbone's thread and wait for it; ``StoreError`` if it fails."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except StoreError:
            raise
        except Exception as exc:
            future.cancel()
            raise StoreError(f"{UNREACHABLE} ({type(exc).__name__})") from None

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Hand ``fn(*args)`` to the backbone's thread without waiting."""
        self._loop.call_soon_threadsafe(fn, *args)

    def submit(self, records: list[Record]) -> None:
        self.soon(self._submit, records)

    def claim_later(self, name: str, session: str, resume: str) -> None:
        """Claim ``name`` on the backbone's thread; the answer comes back as ``Claimed``, so
        the loop never waits for NATS while someone says hello."""
        self.soon(lambda: self._spawn(self._claim_and_say(name, session, resume)))

    async def _claim_and_say(self, name: str, session: str, resume: str) -> None:
        try:
            result = await asyncio.wait_for(self.claim(name, session, resume), CALL_TIMEOUT)
        except Exception as exc:
            reason = f"{UNREACHABLE} ({type(exc).__name__})"
            self._say(Claimed(name, p.Code.UNAVAILABLE, reason))
            return
        self._say(Claimed(name, result))

    def take(self) -> list[Event]:
        """Everything the backbone has said since the last call."""
        with contextlib.suppress(OSError):
            while self.wake_r.recv(4096):
                pass
        events = self.events
        taken = []
        while events:
            taken.append(events.popleft())
        return taken

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self._stop(), timeout=3.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=3.0)
        self.wake_r.close()
        self._wake_w.close()

    # ---- on the backbone's thread -------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``coro`` in the background, holding it until it is done (the loop does not)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _say(self, event: Event) -> None:
        """Queue an event for the loop, waking it only when the queue was empty: the loop
        empties the wake-up pipe first and then the whole queue (``take``)."""
        events = self.events
        events.append(event)
        if len(events) == 1:
            with contextlib.suppress(OSError):  # a full pipe is already a wake-up
                self._wake_w.send(b"\0")

    async def _connect(self) -> Any:
        """A connection that, once made, reconnects by itself for as long as it takes."""

        async def disconnected() -> None:
            if self.connected:
                self.connected = False
                self._say(Said(f"backbone: lost {self.url}; room messages are refused meanwhile"))

        async def reconnected() -> None:
            self.connected = True
            self._linked = time.monotonic()
            self._say(Said(f"backbone: reconnected to {self.url}"))

        async def error(exc: Exception) -> None:
            """nats-py reports every failed (re)connect here: the disconnect line says enough
            later on, but a start that fails says why (refused, or bad credentials)."""
            if not self._last_error:  # the first says why (a refusal, bad credentials)
                self._last_error = str(exc).strip() or type(exc).__name__

        return await nats.connect(
            self._url,
            name=f"room-broker {self.node}",
            connect_timeout=2,
            reconnect_time_wait=0.25,
            max_reconnect_attempts=-1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )

    async def _start(self, endpoints: str) -> tuple[list[Record], set[str]]:
        try:  # nats-py would retry a first connect forever: the start waits CONNECT_TIMEOUT
            self._nc = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
        except Exception as exc:
            why = self._last_error or type(exc).__name__
            raise StoreError(
                f"cannot reach the backbone at {self.url} ({why}): "
                "start nats-server -js there, or check --backbone and its credentials"
            ) from None
        self.connected = True
        js = self._js = self._nc.jetstream(timeout=CALL_TIMEOUT)
        try:
            config = api.StreamConfig(
                name=STREAM,
                subjects=[SUBJECT + "*"],
                storage=api.StorageType.FILE,
                max_msgs_per_subject=self.keep,
                duplicate_window=DUPLICATE_WINDOW,
                allow_direct=True,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:  # exists with other limits: ours win
                await js.update_stream(config)
            for bucket, ttl in ((NAMES, None), (BLOCKED, None), (NODES, LEASE), (EPOCHS, None)):
                self._kv[bucket] = await js.create_key_value(bucket=bucket, ttl=ttl)
        except nats.js.errors.ServiceUnavailableError:
            raise StoreError(
                f"the NATS server at {self.url} has no JetStream: start it with -js"
            ) from None
        try:  # a lease nobody else holds: two brokers as one node would free each other's names
            self._endpoints = endpoints.encode()
            await self._kv[NODES].create(self.node, self._endpoints)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise StoreError(
                f"another broker is node {self.node} on the backbone (or was, less than "
                f"{LEASE:g}s ago): choose another --node-id, or wait"
            ) from None
        self.nodes = {self.node}
        blocked = {e.key for e in await self._entries(BLOCKED)}
        for e in await self._entries(NAMES):
            node, _, session = (e.value or b"").decode().partition(" ")
            self.names[e.key] = (node, session, e.revision or 0)
        for name, (node, _, revision) in list(self.names.items()):
            if node == self.node:  # held by this node's previous life: nobody holds them now
                await self._release(name, revision)
        history = await self._history()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            self.epoch = int((await self._kv[EPOCHS].get(EPOCH_KEY)).value or b"0")
        await self._follow(NAMES, self._on_name)
        await self._follow(BLOCKED, self._on_block)
        await self._follow(EPOCHS, self._on_epoch)
        self.received = history[-1][0] if history else 0
        start = self.received + 1
        await js.subscribe(
            SUBJECT + "*",
            cb=self._on_message,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=start),
        )
        await self._nc.subscribe(node_subject(self.node), cb=self._on_bus)
        await self._nc.subscribe(BUS_ALL, cb=self._on_bus)
        await self._nc.subscribe(node_subject(self.node) + ".replaced", cb=self._on_replaced)
        await self._nc.subscribe(node_subject(self.node) + ".told", cb=self._on_told)
        await self._nc.subscribe(PRESENCE, cb=self._on_presence)
        return [record for _, record in history], blocked

    async def _stop(self) -> None:
        if self._tasks:  # releases and writes: let them finish
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._kv[NODES].delete(self.node)
        with contextlib.suppress(Exception):
            await self._nc.drain()
        # nats-py leaves tasks of its own (consumer heartbeat checks): end them here, or the
        # interpreter complains about each at exit.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _entries(self, bucket: str) -> list[Any]:
        """The bucket's live entries, read once."""
        watcher = await self._kv[bucket].watchall()
        entries = []
        try:
            while (entry := await watcher.updates(timeout=CALL_TIMEOUT)) is not None:
                if entry.operation is None:
                    entries.append(entry)
        finally:
            await watcher.stop()
        return entries

    async def _history(self) -> list[tuple[int, Record]]:
        """Every stored message (the stream keeps ``keep`` per room), in stream order."""
        info = await self._js.stream_info(STREAM)
        last = info.state.last_seq
        if not info.state.messages:
            return []
        sub = await self._js.subscribe(
            SUBJECT + "*", ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
        )
        history: list[tuple[int, Record]] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=CALL_TIMEOUT * 5)
                sseq = msg.metadata.sequence.stream
                with contextlib.suppress(msgspec.DecodeError):  # not ours: skipped
                    history += ((sseq, record) for record in _decode_batch(msg.data))
                if sseq >= last:
                    return history
        finally:
            await sub.unsubscribe()

    async def _follow(self, bucket: str, apply: Callable[[_Entry], None]) -> None:
        """Follow a bucket's changes for the life of the broker. An ordered consumer with a 1 s
        heartbeat, not nats-py's watcher: that one's 5 s heartbeat leaves a broker blind to a
        block for 10 s or more after nats-server restarts."""
        prefix = f"$KV.{bucket}."

        async def changed(msg: Any) -> None:
            op = (msg.headers or {}).get("KV-Operation")
            apply(_Entry(msg.subject[len(prefix) :], msg.data, msg.metadata.sequence.stream, op))

        await self._js.subscribe(
            prefix + ">",
            stream=f"KV_{bucket}",
            cb=changed,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        )

    def _on_name(self, entry: _Entry) -> None:
        if entry.operation is None:
            node, _, session = (entry.value or b"").decode().partition(" ")
            self.names[entry.key] = (node, session, entry.revision or 0)
            return
        self.names.pop(entry.key, None)
        session = self.held.get(entry.key)
        if session is not None:  # freed while our user holds it (our lease seemed to lapse)
            self._spawn(self._reclaim(entry.key, session))

    async def _reclaim(self, name: str, session: str) -> None:
        with contextlib.suppress(Exception):
            await self._kv[NAMES].create(name, f"{self.node} {session}".encode())

    def _on_epoch(self, entry: _Entry) -> None:
        with contextlib.suppress(ValueError):
            epoch = int(entry.value or b"0")
            if entry.key == EPOCH_KEY and epoch > self.epoch:
                self.epoch = epoch
                self._say(Reset(epoch))

    def _on_block(self, entry: _Entry) -> None:
        self._say(BlockChanged(entry.key, entry.operation is None))

    async def _on_message(self, msg: Any) -> None:
        sseq = msg.metadata.sequence.stream
        try:
            records = _decode_batch(msg.data)
        except msgspec.DecodeError:
            self._say(Said(f"backbone: unreadable stream message {sseq} skipped"))
            return
        for record in records:
            self._say(Delivered(record))
        self.received = sseq

    async def _on_replaced(self, msg: Any) -> None:
        self._say(Replaced(msg.data.decode()))

    async def _on_told(self, msg: Any) -> None:
        with contextlib.suppress(p.ProtocolError):
            for told in p.decode_server(msg.data):
                if isinstance(told, p.Told):
                    self._say(Forwarded(told))

    async def _on_presence(self, msg: Any) -> None:
        if (msg.headers or {}).get(ORIGIN) == self.node:
            return
        with contextlib.suppress(p.ProtocolError):
            events = [e for e in p.decode_room(msg.data) if isinstance(e, p.Presence)]
            if events:
                self._say(Shared(events))

    def forward(self, node: str, told: list[p.ServerMsg]) -> None:
        """Direct messages to the broker ``node``, which hands them to its users (not stored:
        like a direct message on one broker, lost if that user has gone meanwhile)."""
        self.soon(self._spawn, self._publish(node_subject(node) + ".told", p.encode(told)))

    def share(self, events: list[p.RoomEvent]) -> None:
        """Presence lines of this broker's users, for every other broker's rooms."""
        self.soon(self._spawn, self._publish(PRESENCE, p.encode(events)))

    async def _publish(self, subject: str, body: bytes) -> None:
        with contextlib.suppress(Exception):  # best effort, like presence on one broker
            await self._nc.publish(subject, body, headers={ORIGIN: self.node})

    async def _on_bus(self, msg: Any) -> None:
        if msg.subject == BUS_ALL and (msg.headers or {}).get(ORIGIN) == self.node:
            return  # our own broadcast: the broker runs it here itself
        try:
            request = p.decode_ctl_request(msg.data)
        except p.ProtocolError:
            return
        if msg.reply:
            self._say(Remote(request, msg.reply))

    # ---- room messages ------------------------------------------------------------------------

    def _submit(self, records: list[Record]) -> None:
        for record in records:
            writer = self._writers.get(record.room)
            if writer is None:
                writer = self._writers[record.room] = _RoomWriter(deque())
            writer.queue.append(record)
            if not writer.busy:
                writer.busy = True
                self._spawn(self._write(writer))

    async def _write(self, writer: _RoomWriter) -> None:
        """Store the room's queue in order, a batch per JetStream message: the batch takes the
        next room sequence numbers on the condition that the subject's last message is the one
        we think it is. Another broker that got there first makes us read it and try again."""
        try:
            while writer.queue:
                batch = self._next_batch(writer.queue)
                try:
                    stored = await self._store(writer, batch)
                except nats.js.errors.APIError as exc:
                    if exc.err_code in WRONG_LAST_SEQUENCE:
                        writer.last = None  # someone else stored one: read it, try again
                        continue
                    self._refuse(writer, batch, f"{UNREACHABLE} ({exc.description})")
                    continue
                except Exception:
                    self._refuse(writer, batch, UNREACHABLE)
                    continue
                for _ in batch:
                    writer.queue.popleft()
                for record in stored:
                    self._say(Stored(record.sender, record.mid, record.room, record.seq))
        finally:
            writer.busy = False

    @staticmethod
    def _next_batch(queue: deque[Record]) -> list[Record]:
        batch: list[Record] = []
        size = 0
        for record in queue:
            size += len(record.text) + len(record.sender) + 32
            if batch and (len(batch) >= BATCH_RECORDS or size > BATCH_BYTES):
                break
            batch.append(record)
        return batch

    async def _store(self, writer: _RoomWriter, batch: list[Record]) -> list[Record]:
        """One compare-and-set publish; the records as stored (numbered). A lone message
        carries its sender's message id, so a retry JetStream has seen is not stored again;
        a batch's retries are caught by the brokers' mirrors (see ``claim``)."""
        if not self._nc.is_connected:  # refuse now: a publish nats-py buffers while it is
            raise ConnectionError  # disconnected would be stored later, after its refusal
        first = batch[0]
        subject = SUBJECT + first.room
        if writer.last is None:
            writer.last = await self._last(subject)
        sseq, seq = writer.last
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(sseq)}
        if len(batch) == 1 and first.mid:
            headers[api.Header.MSG_ID] = f"{first.sender}.{first.mid}"
        numbered = [
            Record(r.room, seq + i, r.ts, r.sender, r.text, r.mid)
            for i, r in enumerate(batch, start=1)
        ]
        ack = await self._js.publish(subject, _encode_batch(numbered), headers=headers)
        if ack.duplicate:  # a retry of a stored message: its first copy's number
            return await self._read(ack.seq)
        writer.last = (ack.seq, numbered[-1].seq)
        return numbered

    def _refuse(self, writer: _RoomWriter, batch: list[Record], reason: str) -> None:
        writer.last = None
        for record in batch:
            writer.queue.popleft()
            self._say(NotStored(record.sender, record.mid, reason))

    async def _last(self, subject: str) -> tuple[int, int]:
        """The subject's last stream sequence and room sequence ((0, 0): nothing stored)."""
        try:
            msg = await self._js.get_last_msg(STREAM, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return 0, 0
        return msg.seq, _decode_batch(msg.data)[-1].seq

    async def _read(self, sseq: int) -> list[Record]:
        msg = await self._js.get_msg(STREAM, seq=sseq, direct=True)
        return _decode_batch(msg.data)

    async def reset(self) -> int:
        """Start a new epoch, which every broker follows (also one that is away now: it reads
        the epoch when it is back), and purge the stream. Returns the new epoch."""
        self.epoch += 1
        await self._kv[EPOCHS].put(EPOCH_KEY, str(self.epoch).encode())
        await self._js.purge_stream(STREAM)
        for writer in self._writers.values():
            writer.last = None
        return self.epoch

    # ---- names, blocklist, leases -------------------------------------------------------------

    async def claim(self, name: str, session: str, resume: str) -> str | p.Code:
        """Take ``name`` for a new session, or for ``resume`` (the secret of a session held on
        another broker, which is told to let go). Returns the session's secret, NAME_TAKEN when
        someone else holds the name, or BAD_SESSION when ``resume`` names no session held now
        (the name was freed: the session ended).

        First this broker catches up with the stream: a message its user's last broker stored
        just before it died is then in the mirror, with its id, so a retry here is acknowledged
        with the stored number instead of being stored twice."""
        await self._catch_up()
        kv = self._kv[NAMES]
        if not resume:
            try:
                await kv.create(name, f"{self.node} {session}".encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                return p.Code.NAME_TAKEN
            self.held[name] = session
            return session
        try:
            entry = await kv.get(name)
        except nats.js.errors.KeyNotFoundError:
            return p.Code.BAD_SESSION
        node, _, held = (entry.value or b"").decode().partition(" ")
        if resume != held:
            return p.Code.NAME_TAKEN
        try:
            await kv.update(name, f"{self.node} {held}".encode(), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return p.Code.NAME_TAKEN
        if node != self.node:
            await self._nc.publish(node_subject(node) + ".replaced", name.encode())
        self.held[name] = held
        return held

    async def _catch_up(self) -> None:
        state = (await self._js.stream_info(STREAM)).state
        if not state.messages:  # empty, or purged: nothing to wait for
            return
        deadline = time.monotonic() + CALL_TIMEOUT / 2
        while self.received < state.last_seq and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def release(self, name: str) -> None:
        """Let the name go if this node still holds it (fire and forget)."""
        self.held.pop(name, None)
        held = self.names.get(name)
        self._spawn(self._release(name, held[2] if held else 0))

    async def _release(self, name: str, revision: int) -> None:
        kv = self._kv[NAMES]
        with contextlib.suppress(Exception):
            if not revision:
                entry = await kv.get(name)
                if not (entry.value or b"").decode().startswith(self.node + " "):
                    return
                revision = entry.revision
            await kv.delete(name, last=revision)

    async def block(self, name: str, blocked: bool) -> None:
        kv = self._kv[BLOCKED]
        if blocked:
            await kv.put(name, b"")
        else:
            await kv.delete(name)

    def holder(self, name: str) -> str:
        """The node holding ``name`` as far as the bucket's watcher has seen ('' if none)."""
        held = self.names.get(name)
        return held[0] if held else ""

    def renew(self, now: float) -> None:
        if now - self._renewed >= LEASE / 5:
            self._renewed = now
            self.soon(self._spawn, self._renew())

    async def _renew(self) -> None:
        """Renew this node's lease; free the names of nodes whose lease has lapsed."""
        kv = self._kv[NODES]
        try:
            await kv.put(self.node, self._endpoints)
            self.nodes = set(await kv.keys())
        except nats.js.errors.NoKeysError:
            self.nodes = set()
        except Exception:
            return
        if time.monotonic() - self._linked < 2 * LEASE:  # the others have not renewed yet
            return
        for name, (node, _, revision) in list(self.names.items()):
            if node not in self.nodes and node != self.node:
                await self._release(name, revision)

    # ---- the bus ------------------------------------------------------------------------------

    def ask(self, token: int, subject: str, request: p.CtlRequest, every: bool) -> None:
        """Send an admin request to one broker, or to ``every`` live one, and report the answers
        as ``Answered(token)``."""
        self.soon(self._spawn, self._ask(token, subject, request, every))

    async def _ask(self, token: int, subject: str, request: p.CtlRequest, every: bool) -> None:
        if every:  # the live brokers now, not as of the last renewal
            with contextlib.suppress(Exception):
                self.nodes = set(await self._kv[NODES].keys())
        expected = len(self.nodes - {self.node}) if every else 1
        replies: list[p.CtlReply] = []
        done = asyncio.Event()
        inbox = self._nc.new_inbox()

        async def collect(msg: Any) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                replies.append(msgspec.msgpack.decode(msg.data, type=p.CtlReply))
            if len(replies) >= expected:
                done.set()

        if not expected:
            self._say(Answered(token, replies))
            return
        try:
            sub = await self._nc.subscribe(inbox, cb=collect)
            headers = {ORIGIN: self.node}
            await self._nc.publish(subject, p.encode(request), reply=inbox, headers=headers)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), GATHER_TIMEOUT)
            await sub.unsubscribe()
        except Exception:
            pass
        self._say(Answered(token, replies))

    def respond(self, reply_to: str, reply: p.CtlReply) -> None:
        self.soon(self._spawn, self._respond(reply_to, reply))

    async def _respond(self, reply_to: str, reply: p.CtlReply) -> None:
        with contextlib.suppress(Exception):
            await self._nc.publish(reply_to, p.encode(reply))
