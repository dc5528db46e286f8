"""What each turn of the loop sends, once, after the drain: commit the store (before anything
leaves: an Ack means stored), then each room's events in one PUB send (sealed with the room's key,
split when large), new room keys to their members, one send of replies per peer, the control
replies, the log lines. A commit that fails refuses the batch's messages (``Chat.commit_failed``)
and publishes nothing of it; the loop goes on.

It is the hot path: each flush caches what it calls in locals.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter, thread_time
from typing import TYPE_CHECKING

import zmq

from broker.chat.chat import Chat
from broker.chat.outbox import Outbox
from broker.config import PUB_SEND_BYTES
from broker.logfmt import LogWriter
from broker.loop.control import ControlChannel, unstored
from broker.loop.publisher import Publisher
from broker.loop.sockets import NOBLOCK, SNDMORE_NOBLOCK
from broker.security.roomkeys import RoomKeys
from broker.store.base import StoreError
from broker.wire import protocol as p

_NOBODY: frozenset[str] = frozenset()

if TYPE_CHECKING:
    from broker.loop.plugin import Plugin


class BatchFlush:
    """The sends of the broker, once per turn of its loop (``run``)."""

    def __init__(
        self,
        router: zmq.Socket[bytes],
        publisher: Publisher,
        chat: Chat,
        control: ControlChannel,
        keys: RoomKeys | None,
        log: LogWriter,
        clock: Callable[[], float],
    ) -> None:
        self.router = router
        self.publisher = publisher
        self.chat = chat
        self.control = control
        self.keys = keys
        """With room keys, every PUB send is sealed (``roomkeys``)."""
        self.log = log
        self.clock = clock
        self.plugin: Plugin | None = None
        """A backbone, once attached: it shares each batch just before it goes out."""
        self.committed: Callable[[float], None] | None = None
        """With metrics: told each turn's commit time (``metrics.BrokerMetrics``)."""

    def run(self) -> None:
        out = self.chat.out.take()
        ctl_replies = self.control.take_replies()
        counters = self.chat.counters
        start = perf_counter()
        try:
            self.chat.store.commit()  # before anything leaves: an Ack means stored
        except StoreError as exc:  # the batch is lost, not the broker: refuse what it stored
            refused = self.chat.commit_failed(out)
            ctl_replies = [(peer, unstored(reply)) for peer, reply in ctl_replies]
            text = f"{exc}: {refused} messages refused, nothing of the batch published"
            out.log(self.clock(), "error", text=text)
        if self.committed is not None:
            self.committed(perf_counter() - start)
        if self.plugin is not None:
            self.plugin.share(out)
        encode, topic = p.encode, p.topic
        publish, send = self.publisher.send, self.router.send
        keys = self.keys
        if keys is not None and out.rekeyed:  # before the sends: this batch's go out sealed anew
            members = self.chat.members
            for room in out.rekeyed:
                keys.rotate(room, topic(room), members.get(room, _NOBODY))
        for room, events in out.rooms.items():
            body = encode(events)
            if len(body) > PUB_SEND_BYTES:
                counters.published += self._publish_in_parts(room, events, len(body))
                continue
            head = topic(room)
            publish(head, body if keys is None else self._seal(room, head, body))
            counters.published += 1
        if keys is not None:
            self._hand_out_keys(keys, out)
        batches: dict[bytes, list[p.ServerMsg]] = {}
        for peer, msg in out.replies:  # one send per peer, however many replies it has
            batch = batches.get(peer)
            if batch is None:
                batches[peer] = [msg]
            else:
                batch.append(msg)
        stalled = self.chat.stalled
        for peer, batch in batches.items():
            try:
                send(peer, SNDMORE_NOBLOCK)  # an unknown or full peer fails here, whole
            except zmq.ZMQError:  # peer gone or its queue full: it repairs by retry or gap fill
                counters.dropped_replies += len(batch)
                if peer in self.chat.by_peer:
                    stalled.add(peer)  # no more history for it until it reads
                continue
            send(encode(batch), NOBLOCK)
            if stalled:
                stalled.discard(peer)
        self.control.send(ctl_replies)
        if out.logs:
            self.log.events(out.logs)

    def _publish_in_parts(self, room: str, events: list[p.RoomEvent], size: int) -> int:
        """A batch of events larger than PUB_SEND_BYTES goes out in several sends of about
        that size, so that a subscriber's queue (in sends) is bounded in bytes. Returns how
        many sends."""
        parts = -(-size // PUB_SEND_BYTES)
        step = -(-len(events) // parts)
        head = p.topic(room)
        for start in range(0, len(events), step):
            body = p.encode(events[start : start + step])
            self.publisher.send(head, body if self.keys is None else self._seal(room, head, body))
        return -(-len(events) // step)

    def _seal(self, room: str, head: bytes, body: bytes) -> bytes:
        """``body`` sealed, the CPU time it took counted (``room-ctl stats``: what keys cost;
        the thread's, as a wall clock would count the time others ran while this one waited)."""
        assert self.keys is not None
        start = thread_time()
        sealed = self.keys.seal(room, head, self.chat.members.get(room, _NOBODY), body)
        self.chat.counters.sealing += thread_time() - start
        return sealed

    def _hand_out_keys(self, keys: RoomKeys, out: Outbox) -> None:
        """Each new room key, to every member it was made for (their replies of this batch), and
        the current key to each member that asked for it again (a ``Join`` of its own room)."""
        users = self.chat.users
        for room, epoch, key, holders in keys.new_keys():
            for name in holders:
                user = users.get(name)
                if user is not None:
                    out.replies.append((user.peer, p.RoomKey(room, epoch, key)))
        by_peer = self.chat.by_peer
        for peer, room in out.key_wanted:
            user = by_peer.get(peer)
            held = None if user is None else keys.current(room, user.name)
            if held is not None:
                out.replies.append((peer, p.RoomKey(room, *held)))
