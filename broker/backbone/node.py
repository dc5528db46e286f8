"""``Backbone``: this broker's part in the shared chat, the link, the stream, the registry and
the bus together. It starts them in order and stops them; the loop's side is ``plugin``."""

from __future__ import annotations

import asyncio

import nats.js.errors

from broker.backbone.access import SharedAccess
from broker.backbone.accounts import SharedAccounts
from broker.backbone.bus import Bus
from broker.backbone.events import LogNote, Record
from broker.backbone.layout import ACCESS, ACCOUNTS, CONNECT_TIMEOUT, NO_PLACEMENT, too_old
from broker.backbone.link import ELECTING, Link
from broker.backbone.registry import Registry
from broker.backbone.stream import Stream
from broker.store.access import Access
from broker.store.base import StoreError


class Backbone:
    """Connects at ``start``; ``keep`` is how many messages per room the stream keeps."""

    def __init__(self, urls: list[str], node: str, keep: int, replicas: int) -> None:
        self.link = Link(urls, node, replicas)
        self.stream = Stream(self.link, keep)
        self.registry = Registry(self.link, self.stream.catch_up)
        self.bus = Bus(self.link, self.registry.live_nodes)
        self.access = SharedAccess(self.link)
        self.accounts = SharedAccounts(self.link)
        self.keep = keep

    @property
    def url(self) -> str:
        """The URL to show (no credentials)."""
        return self.link.url

    @property
    def node(self) -> str:
        return self.link.node

    def start(self, endpoints: str) -> tuple[list[Record], set[str], Access]:
        """Connect, make the stream and buckets, and read what is stored: the history to mirror,
        the blocklist and room access. Raises ``StoreError`` with one line for the operator."""
        self.link.start()
        return self.link.call(self._start(endpoints), timeout=30.0)

    async def _start(self, endpoints: str) -> tuple[list[Record], set[str], Access]:
        link = self.link
        try:  # nats-py would retry a first connect forever: the start waits CONNECT_TIMEOUT
            await asyncio.wait_for(link.connect(), CONNECT_TIMEOUT)
        except Exception as exc:
            why = link.last_error or type(exc).__name__
            raise StoreError(
                f"cannot reach the backbone at {link.url} ({why}): "
                "start nats-server -js there, or check --backbone and its credentials"
            ) from None
        self._check_version()
        try:  # a cluster that has just started elects its JetStream leader first
            await link.making(self.stream.create)
        except (TimeoutError, *ELECTING):
            raise StoreError(
                f"the NATS server at {link.url} has no JetStream: start it with -js "
                "(a cluster: check that its servers reach each other)"
            ) from None
        except nats.js.errors.APIError as exc:
            if exc.err_code in NO_PLACEMENT:
                raise StoreError(
                    f"the backbone cannot keep {link.replicas} copies of the stream: give "
                    "--replicas at most the number of NATS servers in the cluster"
                ) from None
            raise
        blocked = await self.registry.create(endpoints)
        access = await self.access.create()
        await link.making(
            lambda: self.registry.follow(
                ACCESS, lambda e: self.access.on_change(e.key, e.value, e.operation is not None)
            )
        )
        await self.accounts.create()
        await link.making(lambda: self.registry.follow(ACCOUNTS, self.accounts.follower()))
        history = await link.making(self.stream.history)
        await link.making(self.stream.follow)
        await self.bus.listen()
        return history, blocked, access

    def _check_version(self) -> None:
        """A warning (in the log, once the loop runs) for a nats-server older than the backbone
        is tested on: it still runs, an operator may have no other at hand."""
        v = self.link.nc.connected_server_version
        warning = too_old((v.major, v.minor, v.patch))
        if warning:
            self.link.emit(LogNote(f"backbone: {warning}"))

    def stop(self) -> None:
        self.link.stop(self.registry.leave)
