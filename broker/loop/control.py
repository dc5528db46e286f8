"""The control channel: admin requests from room-ctl, each checked against the allow-list,
run (here, or on other brokers through the plugin), audited, and answered after the commit.

Part of ``server.Broker`` (a mixin: it uses the broker's control socket, chat, guard and clock),
apart because it is one story.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import parse_monitor_message

from broker.admin.commands import dispatch
from broker.config import BATCH
from broker.security.guard import user_id
from broker.security.keys import short
from broker.store.base import AuditEntry
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.loop.server import Broker

    _Base = Broker
else:
    _Base = object


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An admin request as the audit log records it: from which room-ctl, with which key."""

    peer: bytes
    request: cp.CtlRequest
    admin: str
    key: str


class ControlChannel(_Base):
    """The admin requests of ``Broker``."""

    def _drain_control(self) -> None:
        """Answer control requests. Each is checked against the allow-list again (a key removed
        since its connection's handshake is refused) and recorded in the audit log. The replies
        go out at the flush, after the commit; a request other brokers must answer is answered
        when they have (the plugin calls ``answer``)."""
        for _ in range(BATCH):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            now = self.clock()
            key = user_id(frames[-1])
            admin = self.guard.admin(key)
            if len(frames) != 3 or frames[1].bytes != b"":
                if self._bad_frames.allow():
                    self.chat.out.log(now, "error", text="malformed control request: ignored")
                continue  # not a REQ peer: nothing we could address a reply to
            peer = frames[0].bytes
            try:
                request = cp.decode_ctl_request(frames[2].bytes)
            except p.ProtocolError as exc:
                request = cp.CtlRequest(0, "", [])
                reply: cp.CtlReply | None = cp.CtlReply(0, False, exc.reason, exc.code.value)
            else:
                reply = None
            asked = ControlRequest(peer, request, admin or "", key)
            if reply is None:
                reply = self._admin_request(asked, now)
            if reply is not None:
                self.answer(asked, reply, now)

    def answer(self, asked: ControlRequest, reply: cp.CtlReply, now: float) -> None:
        """Log and audit a control request, and queue its reply for the flush."""
        request, admin, key = asked.request, asked.admin, asked.key
        command = " ".join((request.command, *request.args)) or "(unreadable request)"
        name = admin or f"unknown key {short(key)}"
        self.chat.out.log(now, "admin", user=name, text=f"{command}: {reply.message} (by {name})")
        entry = AuditEntry(
            now, admin, key, request.command, tuple(request.args), reply.ok, reply.message
        )
        self.chat.store.audit(entry)
        self._ctl_out.append((asked.peer, reply))

    def _admin_request(self, asked: ControlRequest, now: float) -> cp.CtlReply | None:
        """The reply, or None when other brokers must answer first (the plugin's business)."""
        request = asked.request
        if not asked.admin:
            reason = "this key is not (or no longer) on the admin allow-list: see room-broker keys"
            return cp.CtlReply(request.id, False, reason, p.Code.REFUSED.value)
        if self.plugin is not None:
            return self.plugin.control(asked, now)
        return self.dispatch(request, now)

    def dispatch(self, request: cp.CtlRequest, now: float) -> cp.CtlReply:
        """Run an admin request here (the verbs' table); a bug costs that request only."""
        try:
            return dispatch(self.chat, request, now)
        except Exception as exc:  # a bug must cost one request, never the broker
            self._internal_error(None, request, exc)
            return cp.CtlReply(request.id, False, "the broker failed; see its log", "internal")

    def _drain_monitor(self) -> None:
        """Log refused control handshakes (the guard caps how many per interval)."""
        for _ in range(BATCH):
            try:
                event = parse_monitor_message(self.control_monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            line = self.guard.refused(event)
            if line is not None:
                self.chat.out.log(self.clock(), "security", text=line)

    def _security_log(self, lines: list[str], now: float) -> None:
        for line in lines:
            self.chat.out.log(now, "security", text=line)

    def _send_control_replies(self, replies: list[tuple[bytes, cp.CtlReply]]) -> None:
        for peer, reply in replies:
            with contextlib.suppress(zmq.ZMQError):  # room-ctl gave up waiting
                self.control.send_multipart([peer, b"", p.encode(reply)], zmq.NOBLOCK)


def unstored(reply: cp.CtlReply) -> cp.CtlReply:
    """The answer to a control request whose batch could not be stored: its audit entry and any
    change to the blocklist are lost (a block or unblock did not happen), so it is not an ok."""
    reason = "the broker could not store this request: try again; see its log"
    return cp.CtlReply(reply.id, False, reason, p.Code.UNAVAILABLE.value)
