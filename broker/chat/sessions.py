"""Who is who: a hello claims a name for a session, or resumes one, and the user enters the lobby.

A claim the store answers at once (a broker on its own) welcomes the user in the same batch; a
shared store (a backbone) answers later, and ``claimed`` finishes the hello then, so that the loop
never waits for one. Part of ``state.Chat``, apart because it is one story.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from broker.chat.users import User
from broker.store.base import StoreError
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.chat.chat import Chat

    _Base = Chat
else:
    _Base = object


class Sessions(_Base):
    """The hello handshake of ``Chat`` (a mixin: it uses the chat's users, store and outbox)."""

    def _hello(self, peer: bytes, msg: p.Hello, now: float) -> None:
        if msg.version != p.VERSION:
            reason = (
                f"protocol version {msg.version} is not supported (the broker speaks {p.VERSION})"
            )
            self.error(peer, p.Code.BAD_VERSION, reason + ": use a matching room-client")
            return
        name = msg.name
        if not p.valid_name(name):
            self.error(peer, p.Code.BAD_NAME, f"invalid name {name!r}: use {p.NAME_RULE}")
            return
        old = self.users.get(name)
        if old is not None:
            if not msg.session or not secrets.compare_digest(
                msg.session.encode(), old.session.encode()
            ):
                self.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
                return
            # The same session on a new connection: the old connection is dead or stale, and
            # gone as a member: its room's key changes, and the new one comes with the Welcome.
            self.out.reply(old.peer, p.Goodbye(p.Bye.REPLACED, "this session resumed elsewhere"))
            del self.by_peer[old.peer]
            self.stalled.discard(old.peer)
            old.peer, old.last_seen = peer, now
            self.by_peer[peer] = old
            self._welcome(old)
            self.out.rekey(old.room)
            self.out.log(now, "connect", old.room, name, "resumed")
            return
        if name in self.claiming:  # someone's hello for it is being answered
            self.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
            return
        if len(self.users) >= self.settings.limits.max_clients:
            self.error(peer, p.Code.FULL, "the broker is at its client limit: try again later")
            return
        try:
            session = self.store.claim(name, secrets.token_hex(16), msg.session)
        except StoreError as exc:
            self.error(peer, p.Code.UNAVAILABLE, str(exc))
            return
        if session is None:  # a shared store answers later: ``claimed`` ends this hello
            self.claiming[name] = peer
            return
        self._enter(name, peer, session, now)

    def claimed(self, name: str, result: str | p.Code, reason: str, now: float) -> None:
        """The backbone's answer to the claim of ``name`` (see ``_hello``)."""
        peer = self.claiming.pop(name, None)
        if peer is None or peer in self.by_peer or name in self.users:
            if isinstance(result, str):  # nobody waits for it (any more): let it go
                self.store.release(name, end_session=False)
            return
        self.request = "hello"
        if result is p.Code.UNAVAILABLE:
            self.error(peer, result, reason)
        else:
            self._enter(name, peer, result, now)

    def _enter(self, name: str, peer: bytes, session: str | p.Code, now: float) -> None:
        """Welcome ``name`` on ``peer`` with its session's secret, or refuse the claim."""
        if session is p.Code.BAD_SESSION:
            reason = "this session has ended (left, fired, reset, or its name taken since)"
            self.error(peer, session, reason + ": say hello without it to start a new one")
            return
        if session is p.Code.NAME_TAKEN or not isinstance(session, str):
            self.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
            return
        user = User(name, peer, p.LOBBY, session, now, self.settings.burst, now)
        user.new_rooms, user.new_rooms_at = self.settings.limits.new_rooms, now
        user.mid_high = self.store.highest_mid(name)
        self.users[name] = user
        self.by_peer[peer] = user
        self.members[p.LOBBY].add(name)
        self._welcome(user)
        self.out.publish(p.LOBBY, p.Presence(p.LOBBY, name, p.PresenceKind.ENTERED))
        self.out.log(now, "connect", p.LOBBY, name)

    def _welcome(self, user: User) -> None:
        s = self.settings
        blocked = user.name in self.store.blocked()
        welcome = p.Welcome(
            p.VERSION,
            user.name,
            user.room,
            s.pub_endpoint,
            user.session,
            s.heartbeat,
            blocked,
            s.sealed,
        )
        self.out.reply(user.peer, welcome)
