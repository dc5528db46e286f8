"""Who is who: a hello claims a name for a session, or resumes one, and the user enters the lobby;
a user removed (quit, timed out, fired, replaced) leaves its room and frees its name.

A claim the store answers at once (a broker on its own) welcomes the user in the same batch; a
shared store (a backbone) answers later, and ``claimed`` finishes the hello then, so that the loop
never waits for one: the names being claimed so are this part's own state. Uses the shared
``State`` and ``Rooms`` (a room left empty may go).
"""

from __future__ import annotations

import secrets

from broker.chat.rooms import Rooms
from broker.chat.state import State
from broker.chat.users import User
from broker.store.base import StoreError
from broker.wire import protocol as p


class Sessions:
    """The hello handshake, and users leaving."""

    def __init__(self, state: State, rooms: Rooms) -> None:
        self.state = state
        self.rooms = rooms
        self.claiming: dict[str, bytes] = {}
        """Names whose claim the backbone answers later, with the peer that said hello."""

    def hello(self, peer: bytes, msg: p.Hello, now: float, account: bool = False) -> None:
        """A hello from a peer the chat does not know: a new session for a free name, or the
        same session on a new connection (a resume). ``account``: the name is registered (the
        accounts part has let the hello through: a resume)."""
        state = self.state
        if msg.version != p.VERSION:
            reason = (
                f"protocol version {msg.version} is not supported (the broker speaks {p.VERSION})"
            )
            state.error(peer, p.Code.BAD_VERSION, reason + ": use a matching room-client")
            return
        name = msg.name
        if not p.valid_name(name):
            state.error(peer, p.Code.BAD_NAME, f"invalid name {name!r}: use {p.NAME_RULE}")
            return
        old = state.users.get(name)
        if old is not None:
            if not msg.session or not secrets.compare_digest(
                msg.session.encode(), old.session.encode()
            ):
                state.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
                return
            # The same session on a new connection: the old connection is dead or stale, and
            # gone as a member: its room's key changes, and the new one comes with the Welcome.
            state.goodbye(old.peer, p.Bye.REPLACED, "this session resumed elsewhere")
            del state.by_peer[old.peer]
            state.stalled.discard(old.peer)
            old.peer, old.last_seen = peer, now
            state.by_peer[peer] = old
            self._welcome(old)
            state.out.rekey(old.room)
            state.out.log(now, "connect", old.room, name, "resumed")
            return
        if name in self.claiming:  # someone's hello for it is being answered
            state.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
            return
        if len(state.users) >= state.settings.limits.max_clients:
            state.error(peer, p.Code.FULL, "the broker is at its client limit: try again later")
            return
        try:
            session = state.store.claim(name, secrets.token_hex(16), msg.session)
        except StoreError as exc:
            state.error(peer, p.Code.UNAVAILABLE, str(exc))
            return
        if session is None:  # a shared store answers later: ``claimed`` ends this hello
            self.claiming[name] = peer
            return
        self._enter(name, peer, session, now, account)

    def login(self, peer: bytes, name: str, now: float) -> None:
        """A login proved with the account's password: a new session for ``name``. A connection
        that holds the name now is replaced (the password outranks a session)."""
        state = self.state
        old = state.users.get(name)
        if old is not None:
            state.goodbye(old.peer, p.Bye.REPLACED, "you logged in on another connection")
            self.remove(old, now, "logged in elsewhere", end_session=True)
        if len(state.users) >= state.settings.limits.max_clients:
            state.error(peer, p.Code.FULL, "the broker is at its client limit: try again later")
            return
        try:
            session = state.store.claim(name, secrets.token_hex(16), "")
        except StoreError as exc:
            state.error(peer, p.Code.UNAVAILABLE, str(exc))
            return
        self._enter(name, peer, session or p.Code.UNAVAILABLE, now, account=True)

    def claimed(self, name: str, result: str | p.Code, reason: str, now: float) -> None:
        """The backbone's answer to the claim of ``name`` (see ``hello``)."""
        state = self.state
        peer = self.claiming.pop(name, None)
        if peer is None or peer in state.by_peer or name in state.users:
            if isinstance(result, str):  # nobody waits for it (any more): let it go
                state.store.release(name, end_session=False)
            return
        state.request = "hello"
        if result is p.Code.UNAVAILABLE:
            state.error(peer, result, reason)
        else:
            self._enter(name, peer, result, now)

    def _enter(
        self, name: str, peer: bytes, session: str | p.Code, now: float, account: bool = False
    ) -> None:
        """Welcome ``name`` on ``peer`` with its session's secret, or refuse the claim."""
        state = self.state
        if session is p.Code.BAD_SESSION:
            reason = "this session has ended (left, fired, reset, or its name taken since)"
            state.error(peer, session, reason + ": say hello without it to start a new one")
            return
        if session is p.Code.NAME_TAKEN or not isinstance(session, str):
            state.error(peer, p.Code.NAME_TAKEN, f"the name {name!r} is taken: choose another")
            return
        settings = state.settings
        user = User(name, peer, p.LOBBY, session, now, settings.burst, now)
        user.new_rooms, user.new_rooms_at = settings.limits.new_rooms, now
        user.mid_high = state.store.highest_mid(name)
        user.account = account
        state.users[name] = user
        state.by_peer[peer] = user
        state.members[p.LOBBY].add(name)
        self._welcome(user)
        state.out.publish(p.LOBBY, p.Presence(p.LOBBY, name, p.PresenceKind.ENTERED))
        state.out.log(now, "connect", p.LOBBY, name)

    def _welcome(self, user: User) -> None:
        s = self.state.settings
        blocked = user.name in self.state.store.blocked()
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
        self.state.out.reply(user.peer, welcome)

    def remove(
        self,
        user: User,
        now: float,
        why: str,
        what: p.PresenceKind = p.PresenceKind.LEFT,
        release: bool = True,
        end_session: bool = False,
    ) -> None:
        """Forget a user: the name is free again (unless ``release`` is off: another broker holds
        it now) and the room is told. The session can still be resumed, unless ``end_session``
        (/exit, fire, reset)."""
        state = self.state
        if release:
            state.store.release(user.name, end_session)
        del state.users[user.name]
        state.by_peer.pop(user.peer, None)
        state.stalled.discard(user.peer)
        state.members[user.room].discard(user.name)
        state.out.publish(user.room, p.Presence(user.room, user.name, what))
        self.rooms.drop_if_unused(user.room)
        state.out.log(now, "disconnect", user.room, user.name, why)

    def user_list(self, room: str = "") -> list[p.UserInfo]:
        """Who is connected (to ``room``, or anywhere), with who is blocked."""
        state = self.state
        blocked = state.store.blocked()
        return [
            p.UserInfo(u.name, u.room, u.name in blocked, u.account)
            for u in sorted(state.users.values(), key=lambda u: u.name)
            if not room or u.room == room
        ]
