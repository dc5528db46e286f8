"""Who holds which name, which brokers are alive, the blocklist and reset epochs, in key-value
buckets every broker follows.

A name is claimed with an atomic create (one holder, whichever broker asks); a session resumed
on another broker takes the name over and tells the old broker to let go. A broker's lease lapses
when it stops renewing it, and the others then free its names. Every change to the names, the
blocklist and the epoch reaches every broker through an ordered consumer of its bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import nats.js.errors
from nats.js import api

from broker.backbone.events import BlockChanged, Claimed, Reset
from broker.backbone.layout import (
    BLOCKED,
    CALL_TIMEOUT,
    CLAIM_TIMEOUT,
    EPOCH_KEY,
    EPOCHS,
    LEASE,
    NAMES,
    NODES,
    UNREACHABLE,
    node_subject,
)
from broker.backbone.link import Link
from broker.store.base import StoreError
from broker.wire import protocol as p


class _Entry(NamedTuple):
    """A key-value change: ``operation`` is None for a value, else DEL or PURGE."""

    key: str
    value: bytes | None
    revision: int | None
    operation: str | None


class Registry:
    """This broker's view of the buckets, and its changes to them."""

    def __init__(self, link: Link, catch_up: Callable[[], Awaitable[None]]) -> None:
        self.link = link
        self._catch_up = catch_up
        """Waits until the stream's consumer has delivered what is stored (see ``claim``)."""
        self.names: dict[str, tuple[str, str, int]] = {}  # name -> (node, session, revision)
        self.held: dict[str, str] = {}  # name -> session, the names this broker's users hold
        self.nodes: set[str] = set()
        self.epoch = 0  # how many resets the chat has seen
        self._renewed = 0.0
        self._endpoints = b""  # this broker's, the value of its lease

    @property
    def node(self) -> str:
        return self.link.node

    # ---- start ----------------------------------------------------------------------------------

    async def create(self, endpoints: str) -> set[str]:
        """Make the buckets, take this node's lease, free the names of its previous life, and
        follow every bucket. Returns the blocklist."""
        kv = self.link.kv
        for bucket, ttl in ((NAMES, None), (BLOCKED, None), (NODES, LEASE), (EPOCHS, None)):
            await self.link.bucket(bucket, ttl)
        try:  # a lease nobody else holds: two brokers as one node would free each other's names
            self._endpoints = endpoints.encode()
            await self.link.patient(lambda: kv[NODES].create(self.node, self._endpoints))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise StoreError(
                f"another broker is node {self.node} on the backbone (or was, less than "
                f"{LEASE:g}s ago): choose another --node-id, or wait"
            ) from None
        self.nodes = {self.node}
        making = self.link.making
        blocked = {e.key for e in await making(lambda: self._entries(BLOCKED))}
        for e in await making(lambda: self._entries(NAMES)):
            node, _, session = (e.value or b"").decode().partition(" ")
            self.names[e.key] = (node, session, e.revision or 0)
        for name, (node, _, revision) in list(self.names.items()):
            if node == self.node:  # held by this node's previous life: nobody holds them now
                await self._release(name, revision)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            self.epoch = int((await making(lambda: kv[EPOCHS].get(EPOCH_KEY))).value or b"0")
        for bucket, apply in ((NAMES, self._on_name), (BLOCKED, self._on_block)):
            await making(lambda b=bucket, a=apply: self.follow(b, a))
        await making(lambda: self.follow(EPOCHS, self._on_epoch))
        return blocked

    async def leave(self) -> None:
        """End this node's lease at a clean stop (its names are released one by one before)."""
        await self.link.kv[NODES].delete(self.node)

    async def _entries(self, bucket: str) -> list[Any]:
        """The bucket's live entries, read once."""
        watcher = await self.link.kv[bucket].watchall()
        entries = []
        try:
            while (entry := await watcher.updates(timeout=CALL_TIMEOUT)) is not None:
                if entry.operation is None:
                    entries.append(entry)
        finally:
            await watcher.stop()
        return entries

    async def follow(self, bucket: str, apply: Callable[[_Entry], None]) -> None:
        """Follow a bucket's changes for the life of the broker. An ordered consumer with a 1 s
        heartbeat, not nats-py's watcher: that one's 5 s heartbeat leaves a broker blind to a
        block for 10 s or more after nats-server restarts."""
        prefix = f"$KV.{bucket}."

        async def changed(msg: Any) -> None:
            op = (msg.headers or {}).get("KV-Operation")
            apply(_Entry(msg.subject[len(prefix) :], msg.data, msg.metadata.sequence.stream, op))

        await self.link.js.subscribe(
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
            self.link.spawn(self._reclaim(entry.key, session))

    async def _reclaim(self, name: str, session: str) -> None:
        with contextlib.suppress(Exception):
            await self.link.kv[NAMES].create(name, f"{self.node} {session}".encode())

    def _on_epoch(self, entry: _Entry) -> None:
        with contextlib.suppress(ValueError):
            epoch = int(entry.value or b"0")
            if entry.key == EPOCH_KEY and epoch > self.epoch:
                self.epoch = epoch
                self.link.emit(Reset(epoch))

    def _on_block(self, entry: _Entry) -> None:
        self.link.emit(BlockChanged(entry.key, entry.operation is None))

    # ---- names ----------------------------------------------------------------------------------

    def claim_later(self, name: str, session: str, resume: str) -> None:
        """Claim ``name`` on the backbone's thread; the answer comes back as ``Claimed``, so
        the loop never waits for NATS while someone says hello."""
        self.link.background(self._claim_and_say(name, session, resume))

    async def _claim_and_say(self, name: str, session: str, resume: str) -> None:
        try:
            result = await asyncio.wait_for(self.claim(name, session, resume), CLAIM_TIMEOUT)
        except Exception as exc:
            reason = f"{UNREACHABLE} ({type(exc).__name__})"
            self.link.emit(Claimed(name, p.Code.UNAVAILABLE, reason))
            return
        self.link.emit(Claimed(name, result))

    async def claim(self, name: str, session: str, resume: str) -> str | p.Code:
        """Take ``name`` for a new session, or for ``resume`` (the secret of a session held on
        another broker, which is told to let go). Returns the session's secret, NAME_TAKEN when
        someone else holds the name, or BAD_SESSION when ``resume`` names no session held now
        (the name was freed: the session ended).

        First this broker catches up with the stream: a message its user's last broker stored
        just before it died is then in the mirror, with its id, so a retry here is acknowledged
        with the stored number instead of being stored twice."""
        patient = self.link.patient
        await patient(self._catch_up)
        kv = self.link.kv[NAMES]
        mine = f"{self.node} {session}".encode()
        if not resume:
            try:
                await patient(lambda: kv.create(name, mine))
            except nats.js.errors.KeyWrongLastSequenceError:
                return p.Code.NAME_TAKEN
            self.held[name] = session
            return session
        try:
            entry = await patient(lambda: kv.get(name))
        except nats.js.errors.KeyNotFoundError:
            return p.Code.BAD_SESSION
        node, _, held = (entry.value or b"").decode().partition(" ")
        if resume != held:
            return p.Code.NAME_TAKEN
        try:
            mine = f"{self.node} {held}".encode()
            await patient(lambda: kv.update(name, mine, last=entry.revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            return p.Code.NAME_TAKEN
        if node != self.node:
            await self.link.nc.publish(node_subject(node) + ".replaced", name.encode())
        self.held[name] = held
        return held

    def release(self, name: str) -> None:
        """Let the name go if this node still holds it (fire and forget; on the thread)."""
        self.held.pop(name, None)
        held = self.names.get(name)
        self.link.spawn(self._release(name, held[2] if held else 0))

    async def _release(self, name: str, revision: int) -> None:
        kv = self.link.kv[NAMES]
        with contextlib.suppress(Exception):
            if not revision:
                entry = await kv.get(name)
                if not (entry.value or b"").decode().startswith(self.node + " "):
                    return
                revision = entry.revision
            await kv.delete(name, last=revision)

    def holder(self, name: str) -> str:
        """The node holding ``name`` as far as the bucket's follower has seen ('' if none)."""
        held = self.names.get(name)
        return held[0] if held else ""

    # ---- blocklist, epochs, leases ---------------------------------------------------------------

    async def block(self, name: str, blocked: bool) -> None:
        kv = self.link.kv[BLOCKED]
        if blocked:
            await kv.put(name, b"")
        else:
            await kv.delete(name)

    async def next_epoch(self) -> int:
        """A reset: a new epoch, which every broker follows (also one that is away now: it
        reads the epoch when it is back)."""
        self.epoch += 1
        await self.link.kv[EPOCHS].put(EPOCH_KEY, str(self.epoch).encode())
        return self.epoch

    def renew(self, now: float) -> None:
        """From the loop, at each tick: renew the lease every fifth of it."""
        if now - self._renewed >= LEASE / 5:
            self._renewed = now
            self.link.background(self._renew())

    async def _renew(self) -> None:
        """Renew this node's lease; free the names of nodes whose lease has lapsed."""
        kv = self.link.kv[NODES]
        try:
            await kv.put(self.node, self._endpoints)
            self.nodes = set(await kv.keys())
        except nats.js.errors.NoKeysError:
            self.nodes = set()
        except Exception:
            return
        if time.monotonic() - self.link.linked < 2 * LEASE:  # the others have not renewed yet
            return
        for name, (node, _, revision) in list(self.names.items()):
            if node not in self.nodes and node != self.node:
                await self._release(name, revision)

    async def live_nodes(self) -> set[str]:
        """The live brokers now, not as of the last renewal."""
        with contextlib.suppress(Exception):
            self.nodes = set(await self.link.kv[NODES].keys())
        return self.nodes
