"""The control channel: admin requests from room-ctl, each checked against the allow-list,
run (here, or on other brokers through the plugin), audited, and answered after the commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import parse_monitor_message

from broker.admin.commands import dispatch
from broker.admin.verbs import shown_args
from broker.chat.chat import Chat
from broker.config import BATCH
from broker.loop.intake import report_bug
from broker.security.guard import Guard, user_id
from broker.security.keys import short
from broker.security.throttle import Throttle
from broker.store.base import AuditEntry
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An admin request as the audit log records it: from which room-ctl, with which key."""

    peer: bytes
    request: cp.CtlRequest
    admin: str
    key: str


class ControlChannel:
    """The admin requests of the broker: read, run, audited, answered at the flush."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        monitor: zmq.Socket[bytes],
        chat: Chat,
        guard: Guard,
        clock: Callable[[], float],
        bad_frames: Throttle,
    ) -> None:
        self.sock = sock
        self.monitor = monitor
        self.chat = chat
        self.guard = guard
        self.clock = clock
        self.bad_frames = bad_frames
        """Shared with the ROUTER's intake: one cap on the lines of malformed input."""
        self.route: Callable[[ControlRequest, float], cp.CtlReply | None] | None = None
        """A backbone's ``Plugin.control``, once it is attached: it runs what other brokers
        must answer too (None: answered later, through ``answer``)."""
        self.replies: list[tuple[bytes, cp.CtlReply]] = []
        """Answers waiting for the flush (after the commit: an audited request is stored)."""

    def drain(self) -> None:
        """Answer control requests. Each is checked against the allow-list again (a key removed
        since its connection's handshake is refused) and recorded in the audit log. The replies
        go out at the flush, after the commit; a request other brokers must answer is answered
        when they have (the plugin calls ``answer``)."""
        for _ in range(BATCH):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            now = self.clock()
            key = user_id(frames[-1])
            admin = self.guard.admin(key)
            if len(frames) != 3 or frames[1].bytes != b"":
                if self.bad_frames.allow():
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
        args = shown_args(request.command, request.args)  # never a password's verifier
        command = " ".join((request.command, *args)) or "(unreadable request)"
        name = admin or f"unknown key {short(key)}"
        self.chat.out.log(now, "admin", user=name, text=f"{command}: {reply.message} (by {name})")
        entry = AuditEntry(now, admin, key, request.command, tuple(args), reply.ok, reply.message)
        self.chat.store.audit(entry)
        self.replies.append((asked.peer, reply))

    def _admin_request(self, asked: ControlRequest, now: float) -> cp.CtlReply | None:
        """The reply, or None when other brokers must answer first (the plugin's business)."""
        request = asked.request
        if not asked.admin:
            reason = "this key is not (or no longer) on the admin allow-list: see room-broker keys"
            return cp.CtlReply(request.id, False, reason, p.Code.REFUSED.value)
        if self.route is not None:
            return self.route(asked, now)
        return self.dispatch(request, now)

    def dispatch(self, request: cp.CtlRequest, now: float) -> cp.CtlReply:
        """Run an admin request here (the verbs' table); a bug costs that request only."""
        try:
            return dispatch(self.chat, request, now)
        except Exception as exc:  # a bug must cost one request, never the broker
            report_bug(self.chat, self.clock(), None, request, exc)
            return cp.CtlReply(request.id, False, "the broker failed; see its log", "internal")

    def drain_monitor(self) -> None:
        """Log refused control handshakes (the guard caps how many per interval)."""
        for _ in range(BATCH):
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            line = self.guard.refused(event)
            if line is not None:
                self.chat.out.log(self.clock(), "security", text=line)

    def take_replies(self) -> list[tuple[bytes, cp.CtlReply]]:
        replies, self.replies = self.replies, []
        return replies

    def send(self, replies: list[tuple[bytes, cp.CtlReply]]) -> None:
        for peer, reply in replies:
            with contextlib.suppress(zmq.ZMQError):  # room-ctl gave up waiting
                self.sock.send_multipart([peer, b"", p.encode(reply)], zmq.NOBLOCK)


def unstored(reply: cp.CtlReply) -> cp.CtlReply:
    """The answer to a control request whose batch could not be stored: its audit entry and any
    change to the blocklist are lost (a block or unblock did not happen), so it is not an ok."""
    reason = "the broker could not store this request: try again; see its log"
    return cp.CtlReply(reply.id, False, reason, p.Code.UNAVAILABLE.value)
