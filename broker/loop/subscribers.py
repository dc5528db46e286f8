"""Only sessions subscribe: what a PUB connection's handshake must prove, asked by the ZAP
handler's thread, and what the guard's thread asks of a subscriber's session.

Without ``--curve`` a subscriber is a PLAIN client whose user name is its session's name and
whose password is the session's secret (from ``Welcome``); with ``--curve`` it uses the client
key that its session's DEALER uses. Either way the session must be live (its user connected), and
it may hold at most ``subscribers_per_session`` PUB connections. Both threads only read the
chat's dicts (one lookup each, atomic under the GIL); the loop's thread writes them.
"""

from __future__ import annotations

import secrets

from broker.chat.chat import Chat
from broker.config import Limits
from broker.loop.watch import Watch
from broker.security.guard import Guard
from broker.security.zap import Verdict, curve_user


class Subscribers:
    def __init__(self, chat: Chat, guard: Guard, watch: Watch, limits: Limits, curve: bool) -> None:
        self.chat = chat
        self.guard = guard
        self.watch = watch
        """The guard's thread: it counts each session's PUB connections."""
        self.limits = limits
        self.curve = curve

    def admit(self, address: str, mechanism: str, credentials: list[bytes]) -> Verdict:
        """The session's name (its User-Id) for a subscriber that proves a live session, else
        None and why not: the PUB's ZAP check, after the connection caps."""
        if self.curve:
            if mechanism != "CURVE" or not credentials:
                return None, "a subscriber must use CURVE with its session's key"
            proof = curve_user(credentials[0])
            peer = self.guard.peer_with_key(proof)
            user = None if peer is None else self.chat.by_peer.get(peer)
            if user is None:
                return None, "no session uses this client key: say hello on the ROUTER first"
            name = user.name
        else:
            if mechanism != "PLAIN" or len(credentials) != 2:
                return None, "a subscriber must log in (PLAIN) with its session's name and secret"
            name = credentials[0].decode("utf-8", "replace")
            proof = credentials[1].decode("utf-8", "replace")
            if self.moves(name, proof) is None:
                return None, f"no live session {name!r} with this secret"
        cap = self.limits.subscribers_per_session
        if self.watch.subscribers(name) >= cap:
            return None, f"session {name!r} holds {cap} subscribers already"
        self.watch.approved(address, name, proof)
        return name, ""

    def moves(self, name: str, proof: str) -> int | None:
        """How often the live session ``name`` (proved by ``proof``) moved rooms; None when it
        is not live (any more), or ``proof`` is not its."""
        user = self.chat.users.get(name)
        if user is None:
            return None
        if self.curve:
            held = self.guard.key_of(user.peer) == proof
        else:
            held = secrets.compare_digest(user.session.encode(), proof.encode())
        return user.moves if held else None
