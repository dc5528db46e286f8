"""The loop's side of the backbone: what a broker on it does beyond a single broker, in the
hooks the loop offers (``server.Plugin``).

- ``attach``: start the backbone; the chat's store becomes a ``BackboneStore``.
- ``drain``: apply what the backbone reports, in order: stored messages (mirrored, then
  published), acknowledgements, name claims, blocklist changes, admin requests and answers.
- ``share``: before a batch goes out, send the other brokers its presence lines and direct
  messages, and add theirs to it.
- ``control``: an admin request that must run elsewhere (``routing.plan``) goes over the bus; a
  reset moves the shared epoch first.
- ``tick``: renew this broker's lease.
- ``lag``: how far behind the stream this broker reads (for the metrics).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.backbone import events as ev
from broker.backbone import routing
from broker.backbone.layout import BUS_ALL, node_subject
from broker.backbone.node import Backbone
from broker.backbone.store import BackboneStore
from broker.chat.chat import Outbox
from broker.store.base import Store, StoreError
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.loop.control import ControlRequest
    from broker.loop.plugin import Host


@dataclass(frozen=True, slots=True)
class _Waiting:
    """An admin request sent over the bus, waiting for the other brokers' answers."""

    asked: ControlRequest
    plan: routing.Plan


class BackbonePlugin:
    """Made before the broker (``room-broker start --backbone``), attached by it."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.wake = backbone.link.wake_r
        """Readable when the backbone has news for the loop."""
        self._broker: Host | None = None
        self._store: BackboneStore | None = None
        self._waiting: dict[int, _Waiting] = {}
        self._relayed: dict[str, list[p.RoomEvent]] = {}  # other brokers' presence lines

    def attach(self, broker: Host, local: Store, endpoints: str) -> Store:
        """Start the backbone; the chat's store from now on. Raises ``StoreError``."""
        self._broker = broker
        self._store = BackboneStore(self.backbone, local, endpoints)
        return self._store

    def banner(self) -> str:
        return f"room-broker backbone: {self.backbone.url} as node {self.backbone.node}"

    def stop(self) -> None:
        """Before the start completed (the store stops it otherwise)."""
        self.backbone.stop()

    def lag(self) -> tuple[int, float]:
        stream = self.backbone.stream
        return stream.pending, stream.lag

    @property
    def _parts(self) -> tuple[Host, BackboneStore]:
        assert self._broker is not None and self._store is not None, "attach first"
        return self._broker, self._store

    # ---- the hooks -------------------------------------------------------------------------------

    def drain(self) -> None:
        broker, store = self._parts
        chat, clock = broker.chat, broker.clock
        for event in self.backbone.link.take():
            match event:
                case ev.Delivered(records=records):
                    for record in records:
                        chat.delivered(store.mirror_put(record), record.mid)
                case ev.Stored(sender=sender, mid=mid, room=room, seq=seq):
                    chat.stored(sender, p.Ack(mid, room, seq))
                case ev.NotStored(sender=sender, mid=mid, reason=reason):
                    chat.not_stored(sender, mid, reason)
                case ev.Claimed(name=name, result=result, reason=reason):
                    chat.claimed(name, result, reason, clock())
                case ev.AccessChanged(room=room, allowed=allowed, waiting=waiting):
                    chat.access_changed(room, allowed, waiting, clock())
                case ev.BlockChanged(name=name, blocked=blocked):
                    if store.block_changed(name, blocked):
                        chat.blocked_changed(name, blocked)
                case ev.AccountBanned(name=name):
                    chat.account_banned(name, clock())
                case ev.Replaced(name=name):
                    chat.replaced(name, clock())
                case ev.TheirRequest(request=request, reply_to=reply_to):
                    reply = broker.dispatch(request, clock())
                    command = " ".join((request.command, *request.args))
                    text = f"{command}: {reply.message} (asked by another broker)"
                    chat.out.log(clock(), "admin", text=text)
                    self.backbone.bus.respond(reply_to, reply)
                case ev.TheirAnswers(token=token, replies=replies):
                    waiting = self._waiting.pop(token, None)
                    if waiting is not None:
                        broker.answer(waiting.asked, self._combine(waiting, replies), clock())
                case ev.Forwarded(told=told):
                    chat.forwarded(told)
                case ev.TheirPresence(events=events):
                    for e in events:
                        self._relayed.setdefault(e.room, []).append(e)
                case ev.Reset(epoch=epoch):
                    chat.reset(clock())
                    text = f"reset by another broker: every room starts over (epoch {epoch})"
                    chat.out.log(clock(), "backbone", text=text)
                case ev.LogNote(text=text):
                    chat.out.log(clock(), "backbone", text=text)

    def share(self, out: Outbox) -> None:
        bus = self.backbone.bus
        mine = [e for events in out.rooms.values() for e in events if isinstance(e, p.Presence)]
        if mine:
            bus.share(mine)
        forwards: dict[str, list[p.ServerMsg]] = {}
        for node, told in out.forwards:
            forwards.setdefault(node, []).append(told)
        for node, batch in forwards.items():
            bus.forward(node, batch)
        for room, events in self._relayed.items():
            out.rooms.setdefault(room, []).extend(events)
        self._relayed = {}

    def control(self, asked: ControlRequest, now: float) -> cp.CtlReply | None:
        """The reply to an admin request from this broker's room-ctl, or None: it went over
        the bus, and ``drain`` answers it when the others have. None of it for a request that
        runs here alone: the loop dispatches that itself (``Broker.dispatch``)."""
        broker, _ = self._parts
        request = asked.request
        if request.command == "reset" and not request.args:  # the shared history first
            try:
                epoch = self.backbone.link.call(self._reset())
            except StoreError as exc:
                return cp.CtlReply(request.id, False, str(exc), p.Code.UNAVAILABLE.value)
            r = broker.dispatch(request, now)
            message = f"{r.message}; every other broker follows (epoch {epoch})"
            return cp.CtlReply(r.id, r.ok, message, r.code, r.data)
        plan = routing.plan(request, broker.chat.users, self.backbone.registry.holder)
        if not (plan.node or plan.every):
            return broker.dispatch(request, now)
        token = secrets.randbits(53)
        self._waiting[token] = _Waiting(asked, plan)
        subject = node_subject(plan.node) if plan.node else BUS_ALL
        bus_request = cp.CtlRequest(token, request.command, request.args)
        self.backbone.bus.ask(token, subject, bus_request, plan.every)
        return None

    def tick(self, now: float) -> None:
        self.backbone.registry.renew(now)

    # ---- the rest -----------------------------------------------------------------------------

    async def _reset(self) -> int:
        epoch = await self.backbone.registry.next_epoch()
        await self.backbone.stream.purge()
        return epoch

    def _combine(self, waiting: _Waiting, replies: list[cp.CtlReply]) -> cp.CtlReply:
        """The reply to an admin request that other brokers answered (and maybe this one)."""
        broker, _ = self._parts
        request = waiting.asked.request
        if waiting.plan.node:
            if not replies:
                reason = f"the broker holding {request.args[0]} did not answer: try again"
                return cp.CtlReply(request.id, False, reason, p.Code.UNAVAILABLE.value)
            r = replies[0]
            return cp.CtlReply(request.id, r.ok, r.message, r.code, r.data)
        here = broker.dispatch(request, broker.clock())
        return routing.merge(request, here, replies)
