"""Room messages in the stream: the writer, the consumer, and the history read at start.

Each room's queue is written a batch per JetStream message, on the condition that the room's
subject ends where this broker thinks it does (``Nats-Expected-Last-Subject-Sequence``): the
per-room numbers stay dense however many brokers write, and one that loses the race reads the
newcomer and tries again. Every broker (the writer too) learns of a stored message from one
ordered consumer of the whole stream, in stream order, and keeps only the batches ``Order``
admits (a clustered stream may store a race's loser too). A batch is acknowledged to its senders
when this broker's consumer has admitted it; a skipped one is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.js.errors
from nats.js import api

from broker.backbone.events import (
    BATCH_BYTES,
    BATCH_RECORDS,
    Delivered,
    LogNote,
    NotStored,
    Record,
    Stored,
    decode_batch,
    encode_batch,
)
from broker.backbone.layout import (
    CALL_TIMEOUT,
    DUPLICATE_WINDOW,
    NO_PLACEMENT,
    RESET_SUBJECT,
    STREAM,
    SUBJECT,
    UNREACHABLE,
    VERDICT_TIMEOUT,
    WRONG_LAST_SEQUENCE,
)
from broker.backbone.link import Link
from broker.backbone.order import Order

VERDICTS_KEPT = 8192
"""Recent stream sequences whose verdict (admitted or skipped) a writer may still ask for."""
ADMITTED_KEPT = 65536
"""Recent (sender, message id)s the consumer admitted: a retry queued meanwhile is not
stored again."""


@dataclass(slots=True)
class _RoomWriter:
    """One room's queue of messages to store, written one at a time (compare-and-set)."""

    queue: deque[Record]
    last: tuple[int, int] | None = None  # (stream sequence, room sequence) of the last stored
    busy: bool = False


class Stream:
    """The room stream as one broker writes and reads it."""

    def __init__(self, link: Link, keep: int) -> None:
        self.link = link
        self.keep = keep
        self.received = 0
        """The stream sequence of the last message the consumer delivered."""
        self.pending = 0
        """Messages the stream held beyond it then (the consumer's ``num_pending``): the lag."""
        self.lag = 0.0
        """Seconds from JetStream storing it to the consumer reading it (clocks apart count)."""
        self._writers: dict[str, _RoomWriter] = {}
        self._order = Order()
        self._verdicts: OrderedDict[int, bool] = OrderedDict()  # stream seq -> admitted
        self._admitted: OrderedDict[tuple[str, int], tuple[str, int]] = OrderedDict()
        """(sender, message id) -> (room, number) of what the consumer admitted lately."""
        self._moved = asyncio.Event()  # set (and replaced) at each message the consumer reads

    # ---- start ----------------------------------------------------------------------------------

    async def create(self) -> None:
        config = api.StreamConfig(
            name=STREAM,
            subjects=[SUBJECT + "*"],
            storage=api.StorageType.FILE,
            max_msgs_per_subject=self.keep,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,
            num_replicas=self.link.replicas,
        )
        try:
            await self.link.js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code in NO_PLACEMENT:  # more replicas than servers: the caller says so
                raise
            await self.link.js.update_stream(config)  # exists with other limits: ours win

    async def history(self) -> list[Record]:
        """Every stored message (the stream keeps ``keep`` per room), in stream order; the
        consumer then follows from the next one."""
        js = self.link.js
        info = await js.stream_info(STREAM)
        last = info.state.last_seq
        history: list[tuple[int, Record]] = []
        if info.state.messages:
            sub = await js.subscribe(
                SUBJECT + "*", ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
            )
            try:
                while True:
                    msg = await sub.next_msg(timeout=CALL_TIMEOUT * 5)
                    sseq = msg.metadata.sequence.stream
                    with contextlib.suppress(msgspec.DecodeError):  # not ours: skipped
                        records = decode_batch(msg.data)
                        if self._order.admit(records):
                            history += ((sseq, record) for record in records)
                            self._remember(records)
                    if sseq >= last:
                        self.received = sseq
                        break
            finally:
                await sub.unsubscribe()
        return [record for _, record in history]

    async def follow(self) -> None:
        """Deliver every message stored from now on, by any broker (``Delivered``)."""
        await self.link.js.subscribe(
            SUBJECT + "*",
            cb=self._on_message,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=self.received + 1),
        )

    async def _on_message(self, msg: Any) -> None:
        meta = msg.metadata
        sseq = meta.sequence.stream
        self.pending, self.lag = meta.num_pending, time.time() - meta.timestamp.timestamp()
        if sseq <= self.received:  # nats-py's consumer, reset before its first message (a NATS
            return  # server lost), starts over from the stream's first: seen here already
        try:
            records = decode_batch(msg.data)
        except msgspec.DecodeError:
            self.link.emit(LogNote(f"backbone: unreadable stream message {sseq} skipped"))
            records = None
        admitted = records is not None and self._order.admit(records)
        if admitted and records:
            self._remember(records)
            self.link.emit(Delivered(records))
        self._verdicts[sseq] = admitted
        if len(self._verdicts) > VERDICTS_KEPT:
            self._verdicts.popitem(last=False)  # O(1), where a dict's first is not
        self.received = sseq
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    def _remember(self, records: list[Record]) -> None:
        admitted = self._admitted
        for record in records:
            if record.mid:
                admitted[record.sender, record.mid] = (record.room, record.seq)
        while len(admitted) > ADMITTED_KEPT:
            admitted.popitem(last=False)

    async def _verdict(self, sseq: int) -> bool:
        """Whether this broker's consumer admitted the batch stored at ``sseq`` (waiting for it
        to get there). One it passed over was purged by a reset: nothing to write again."""
        deadline = time.monotonic() + VERDICT_TIMEOUT
        while (admitted := self._verdicts.get(sseq)) is None:
            if self.received >= sseq:
                return True
            moved = self._moved
            await asyncio.wait_for(moved.wait(), max(0.0, deadline - time.monotonic()))
        return admitted

    async def catch_up(self) -> None:
        """Wait (a little) until the consumer has delivered what the stream holds now."""
        state = (await self.link.js.stream_info(STREAM)).state
        if not state.messages:  # empty, or purged: nothing to wait for
            return
        deadline = time.monotonic() + CALL_TIMEOUT / 2
        while self.received < state.last_seq and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    async def purge(self) -> None:
        """Empty the stream, then mark the reset in it: every broker's ``Order`` starts over
        there, in stream order, also one that reads the stream later."""
        await self.link.js.purge_stream(STREAM)
        for writer in self._writers.values():
            writer.last = None
        await self.link.js.publish(RESET_SUBJECT, encode_batch([]))

    # ---- the writer ------------------------------------------------------------------------------

    def submit(self, records: list[Record]) -> None:
        """Queue messages to store (on the backbone's thread)."""
        for record in records:
            writer = self._writers.get(record.room)
            if writer is None:
                writer = self._writers[record.room] = _RoomWriter(deque())
            writer.queue.append(record)
            if not writer.busy:
                writer.busy = True
                self.link.spawn(self._write(writer))

    async def _write(self, writer: _RoomWriter) -> None:
        """Store the room's queue in order, a batch per JetStream message: the batch takes the
        next room sequence numbers on the condition that the subject's last message is the one
        we think it is. Another broker that got there first makes us read it and try again."""
        try:
            skipped = False
            while writer.queue:
                if self._known(writer):
                    continue
                batch = self._next_batch(writer.queue)
                try:
                    sseq, stored = await self._store(writer, batch, msg_id=not skipped)
                    skipped = not await self._verdict(sseq)
                except nats.js.errors.APIError as exc:
                    if exc.err_code in WRONG_LAST_SEQUENCE:
                        writer.last = None  # someone else stored one: read it, try again
                        continue
                    self._refuse(writer, batch, f"{UNREACHABLE} ({exc.description})")
                    continue
                except Exception:
                    self._refuse(writer, batch, UNREACHABLE)
                    continue
                if skipped:  # another broker's batch took these numbers: write it again
                    writer.last = None
                    continue
                for _ in batch:
                    writer.queue.popleft()
                for record in stored:
                    self.link.emit(Stored(record.sender, record.mid, record.room, record.seq))
        finally:
            writer.busy = False
            if writer.queue:  # cancelled (the broker stops) or a bug: answered all the same
                self._refuse(writer, list(writer.queue), UNREACHABLE)

    def _known(self, writer: _RoomWriter) -> bool:
        """Acknowledge the queue's first message if the consumer has admitted it already: a
        client's retry of a message whose first copy was stored after its refusal (a publish
        that timed out while the stream elected a leader). True if it did."""
        first = writer.queue[0]
        stored = self._admitted.get((first.sender, first.mid)) if first.mid else None
        if stored is None:
            return False
        writer.queue.popleft()
        self.link.emit(Stored(first.sender, first.mid, *stored))
        return True

    def _next_batch(self, queue: deque[Record]) -> list[Record]:
        """The queue's first messages, up to the bounds, and short of one admitted already or
        a second copy of one in the batch (a client's retry, queued while the first waited):
        once the batch is stored, ``_known`` acknowledges it."""
        batch: list[Record] = []
        size = 0
        admitted = self._admitted
        ids: set[tuple[str, int]] = set()
        for record in queue:
            if record.mid:
                key = (record.sender, record.mid)
                if batch and (key in admitted or key in ids):
                    break
                ids.add(key)
            size += len(record.text) + len(record.sender) + 32
            if batch and (len(batch) >= BATCH_RECORDS or size > BATCH_BYTES):
                break
            batch.append(record)
        return batch

    async def _store(
        self, writer: _RoomWriter, batch: list[Record], msg_id: bool
    ) -> tuple[int, list[Record]]:
        """One compare-and-set publish; its stream sequence and the records as stored
        (numbered). A lone message carries its sender's message id (``msg_id``: unless its
        first copy was skipped), so a retry JetStream has seen is not stored again; a batch's
        retries are caught by the brokers' mirrors (see ``Registry.claim``)."""
        if not self.link.nc.is_connected:  # refuse now: a publish nats-py buffers while it
            raise ConnectionError  # is disconnected would be stored later, after its refusal
        first = batch[0]
        subject = SUBJECT + first.room
        if writer.last is None:
            writer.last = await self._last(first.room)
        sseq, seq = writer.last
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(sseq)}
        if len(batch) == 1 and first.mid and msg_id:
            headers[api.Header.MSG_ID] = f"{first.sender}.{first.mid}"
        numbered = [
            Record(r.room, seq + i, r.ts, r.sender, r.text, r.mid)
            for i, r in enumerate(batch, start=1)
        ]
        ack = await self.link.js.publish(subject, encode_batch(numbered), headers=headers)
        if ack.duplicate:  # a retry of a stored message: its first copy's number
            return ack.seq, await self._read(ack.seq)
        writer.last = (ack.seq, numbered[-1].seq)
        return ack.seq, numbered

    def _refuse(self, writer: _RoomWriter, batch: list[Record], reason: str) -> None:
        writer.last = None
        for record in batch:
            writer.queue.popleft()
            self.link.emit(NotStored(record.sender, record.mid, reason))

    async def _last(self, room: str) -> tuple[int, int]:
        """The room subject's last stream sequence, and the room's last number as ``Order``
        has it once the consumer has read that far ((0, 0): nothing stored). Not the last
        message's own numbers: it may be a skipped batch. Asked of the stream's leader: a
        replica's direct answer may be behind."""
        try:
            msg = await self.link.js.get_last_msg(STREAM, SUBJECT + room)
        except nats.js.errors.NotFoundError:
            return 0, 0
        await self._verdict(msg.seq)
        return msg.seq, self._order.last.get(room, 0)

    async def _read(self, sseq: int) -> list[Record]:
        msg = await self.link.js.get_msg(STREAM, seq=sseq, direct=True)
        return decode_batch(msg.data)
