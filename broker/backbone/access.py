"""Private rooms shared by every broker: who may enter each, and who asked, in a key-value
bucket every broker follows. A change made through one broker (``room-ctl allow`` there) reaches
the others as ``AccessChanged`` within the follower's round trip, and a requester connected to
another broker is let in there.

::

    KV room-access   private.<room>         -> ""   (the room is private)
                     allowed.<room>.<user>  -> ""   (the user may enter it)
                     request.<room>.<user>  -> JSON [ts, history]

One key per fact, so that no broker has to read, change and write back another's list.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from broker.backbone.events import AccessChanged
from broker.backbone.layout import ACCESS
from broker.backbone.link import Link
from broker.store.access import Access, Request


class SharedAccess:
    """This broker's mirror of the bucket, and its writes to it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.mirror = Access()

    async def create(self) -> Access:
        """Make the bucket, read it, and follow it (``follow``: the registry's follower)."""
        kv = await self.link.bucket(ACCESS)
        watcher = await self.link.making(kv.watchall)
        try:
            while (entry := await watcher.updates(timeout=2.0)) is not None:
                if entry.operation is None:
                    self._apply(entry.key, entry.value)
        finally:
            await watcher.stop()
        return self.snapshot()

    def snapshot(self) -> Access:
        private = {room: set(users) for room, users in self.mirror.private.items()}
        return Access(private, {room: dict(by) for room, by in self.mirror.requests.items()})

    def on_change(self, key: str, value: bytes | None, deleted: bool) -> None:
        """A change seen on the bucket (any broker's, this one's too): mirror it, and tell the
        loop the room's whole access as it is now."""
        room = self._apply(key, None if deleted else value)
        if room:
            allowed = self.mirror.private.get(room)
            waiting = dict(self.mirror.requests.get(room, {}))
            self.link.emit(AccessChanged(room, None if allowed is None else set(allowed), waiting))

    def _apply(self, key: str, value: bytes | None) -> str:
        kind, _, rest = key.partition(".")
        room, _, user = rest.partition(".")
        private, requests = self.mirror.private, self.mirror.requests
        with contextlib.suppress(ValueError, TypeError):
            if kind == "private":
                if value is None:
                    private.pop(room, None)
                else:
                    private.setdefault(room, set())
            elif kind == "allowed":
                if value is not None:
                    private.setdefault(room, set()).add(user)
                elif room in private:
                    private[room].discard(user)
            elif kind == "request":
                if value is None:
                    requests.get(room, {}).pop(user, None)
                else:
                    ts, history = json.loads(value)
                    requests.setdefault(room, {})[user] = Request(ts, history)
            else:
                return ""
            return room
        return ""

    # ---- writes (from the broker's thread, without waiting) ----------------------------------

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        if allowed is None:
            for user in self.mirror.private.get(room, set()):
                self._write(f"allowed.{room}.{user}", None)
            for user in self.mirror.requests.get(room, {}):
                self._write(f"request.{room}.{user}", None)
            self._write(f"private.{room}", None)
            return
        self._write(f"private.{room}", b"")
        for user in allowed:
            self._write(f"allowed.{room}.{user}", b"")

    def set_allowed(self, room: str, user: str, allowed: bool) -> None:
        self._write(f"allowed.{room}.{user}", b"" if allowed else None)

    def set_request(self, room: str, user: str, request: Request | None) -> None:
        value = None if request is None else json.dumps([request.ts, request.history]).encode()
        self._write(f"request.{room}.{user}", value)

    def _write(self, key: str, value: bytes | None) -> None:
        self.link.background(self._put(key, value))

    async def _put(self, key: str, value: bytes | None) -> Any:
        kv = self.link.kv[ACCESS]
        with contextlib.suppress(Exception):  # the backbone is away: the follower says so
            if value is None:
                await kv.delete(key)
            else:
                await kv.put(key, value)
