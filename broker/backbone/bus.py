"""Plain NATS subjects between brokers: admin requests and their answers, direct messages to a
user on another broker, presence lines, and "your user resumed elsewhere". Best effort, like
presence and direct messages on one broker; an admin request that gets no answer says so."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from broker.backbone.events import Forwarded, Replaced, TheirAnswers, TheirPresence, TheirRequest
from broker.backbone.layout import BUS_ALL, GATHER_TIMEOUT, ORIGIN, PRESENCE, node_subject
from broker.backbone.link import Link
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p


class Bus:
    """This broker's end of the bus; ``live_nodes`` says which brokers to expect answers from."""

    def __init__(self, link: Link, live_nodes: Callable[[], Awaitable[set[str]]]) -> None:
        self.link = link
        self._live_nodes = live_nodes

    async def listen(self) -> None:
        nc, me = self.link.nc, node_subject(self.link.node)
        await nc.subscribe(me, cb=self._on_request)
        await nc.subscribe(BUS_ALL, cb=self._on_request)
        await nc.subscribe(me + ".replaced", cb=self._on_replaced)
        await nc.subscribe(me + ".told", cb=self._on_told)
        await nc.subscribe(PRESENCE, cb=self._on_presence)

    # ---- from the broker's thread -------------------------------------------------------------

    def ask(self, token: int, subject: str, request: cp.CtlRequest, every: bool) -> None:
        """Send an admin request to one broker, or to ``every`` live one, and report the answers
        as ``TheirAnswers(token)``."""
        self.link.background(self._ask(token, subject, request, every))

    def respond(self, reply_to: str, reply: cp.CtlReply) -> None:
        self.link.background(self._respond(reply_to, reply))

    def forward(self, node: str, told: list[p.ServerMsg]) -> None:
        """Direct messages to the broker ``node``, which hands them to its users (not stored:
        like a direct message on one broker, lost if that user has gone meanwhile)."""
        self.link.background(self.link.publish(node_subject(node) + ".told", p.encode(told)))

    def share(self, events: list[p.RoomEvent]) -> None:
        """Presence lines of this broker's users, for every other broker's rooms."""
        self.link.background(self.link.publish(PRESENCE, p.encode(events)))

    # ---- on the backbone's thread -------------------------------------------------------------

    async def _ask(self, token: int, subject: str, request: cp.CtlRequest, every: bool) -> None:
        me = self.link.node
        expected = len(await self._live_nodes() - {me}) if every else 1
        replies: list[cp.CtlReply] = []
        done = asyncio.Event()
        nc = self.link.nc

        async def collect(msg: Any) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                replies.append(msgspec.msgpack.decode(msg.data, type=cp.CtlReply))
            if len(replies) >= expected:
                done.set()

        if not expected:
            self.link.emit(TheirAnswers(token, replies))
            return
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=collect)
            await nc.publish(subject, p.encode(request), reply=inbox, headers={ORIGIN: me})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), GATHER_TIMEOUT)
            await sub.unsubscribe()
        except Exception:
            pass
        self.link.emit(TheirAnswers(token, replies))

    async def _respond(self, reply_to: str, reply: cp.CtlReply) -> None:
        with contextlib.suppress(Exception):
            await self.link.nc.publish(reply_to, p.encode(reply))

    async def _on_request(self, msg: Any) -> None:
        if msg.subject == BUS_ALL and (msg.headers or {}).get(ORIGIN) == self.link.node:
            return  # our own broadcast: the broker runs it here itself
        try:
            request = cp.decode_ctl_request(msg.data)
        except p.ProtocolError:
            return
        if msg.reply:
            self.link.emit(TheirRequest(request, msg.reply))

    async def _on_replaced(self, msg: Any) -> None:
        self.link.emit(Replaced(msg.data.decode()))

    async def _on_told(self, msg: Any) -> None:
        with contextlib.suppress(p.ProtocolError):
            for told in p.decode_server(msg.data):
                if isinstance(told, p.Told):
                    self.link.emit(Forwarded(told))

    async def _on_presence(self, msg: Any) -> None:
        if (msg.headers or {}).get(ORIGIN) == self.link.node:
            return
        with contextlib.suppress(p.ProtocolError):
            events = [e for e in p.decode_room(msg.data) if isinstance(e, p.Presence)]
            if events:
                self.link.emit(TheirPresence(events))
