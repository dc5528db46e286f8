"""Who may talk to the broker: CURVE on its sockets, the admins' allow-list, refused handshakes.

The control socket is always a CURVE server whose ZAP domain accepts only the public keys on the
admins' allow-list (``keys.AllowList``, re-read at each heartbeat tick when its files changed); a
ZAP thread (``zap.ZapHandler``) answers the handshakes. A monitor on the control socket reports
refused handshakes, which the loop hands to ``Guard.refused``. The ROUTER and PUB sockets are in
the chat domain, whose handler first asks the connection ``Gate`` (too many connections from one
address, or in all, are refused); with ``curve`` they are CURVE servers too, accepting any client
key: encryption, not client authentication (a user is still known by its connection and its
session secret).

``Guard`` holds this state and answers the loop's questions; it returns log lines rather than
writing them, and never touches the chat.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import zmq

from broker.security.gate import Gate
from broker.security.keys import AllowList, KeyDir, load_secret, short
from broker.security.throttle import Throttle
from broker.security.zap import Check, Verdict, ZapHandler, curve_user

CONTROL_DOMAIN: Final = "room-control"
"""ZAP domain of the control socket: only the admins' public keys pass."""
CHAT_DOMAIN: Final = "room-chat"
"""ZAP domain of the ROUTER: connections over the ``Gate``'s caps are refused; with ``curve``,
any client key passes."""
PUB_DOMAIN: Final = "room-pub"
"""ZAP domain of the PUB: only a live session's subscribers pass (``Guard.subscribers``), within
the caps: PLAIN with the session's name and secret, or with ``curve`` the client key its
session's connection uses."""
REFUSED_EVENTS: Final = int(
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
KEYS_LOOKED_AT: Final = 256
"""Peers' CURVE keys looked at per heartbeat at least, to forget those of gone connections."""
REFUSALS_LOGGED: Final = 20
"""Refused control handshakes logged one by one per heartbeat interval; the rest are counted, so a
flood of bad handshakes cannot flood the log."""


def _no_sessions(address: str, mechanism: str, credentials: list[bytes]) -> Verdict:
    return None, "the broker is starting"


class _Checks:
    """What each domain lets in, for the ZAP handler: the connection gate in front of the chat
    domains, a session's proof in the PUB's, an admin's key in the control domain's."""

    def __init__(self, gate: Gate, admins: AllowList, curve: bool) -> None:
        self.gate = gate
        self.admins = admins
        self.curve = curve
        self.subscribers: Check = _no_sessions
        """Whether a subscriber proves a live session (the loop's, once the chat exists)."""

    def control(self, address: str, mechanism: str, credentials: list[bytes]) -> Verdict:
        if mechanism != "CURVE" or len(credentials) != 1:
            return None, "the control socket takes CURVE only"
        user = curve_user(credentials[0])
        if not self.admins.admits(user.encode()):
            return None, "Unknown key"
        return user, ""

    def chat(self, address: str, mechanism: str, credentials: list[bytes]) -> Verdict:
        why = self.gate.admit(address)
        if why is not None:
            return None, why
        if self.curve and mechanism == "CURVE" and len(credentials) == 1:
            return curve_user(credentials[0]), ""  # any client key: encryption, not identity
        if not self.curve and mechanism == "NULL":
            return "anonymous", ""
        return None, f"{mechanism} is not this socket's mechanism"

    def pub(self, address: str, mechanism: str, credentials: list[bytes]) -> Verdict:
        why = self.gate.admit(address)
        if why is not None:
            return None, why
        user, why = self.subscribers(address, mechanism, credentials)
        if user is None:
            self.gate.refused += 1
        return user, why


def user_id(frame: zmq.Frame) -> str:
    """The CURVE User-Id (the z85 client public key, set by the ZAP handler) of a received frame."""
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:  # no such property: not an authenticated connection
        return ""


class Guard:
    """The broker's security state. Create it before any socket is bound, so that the ZAP handler
    is there to be asked about the first handshake, and ``start`` it once the sockets are.
    ``keys`` is the data dir's key directory; without it the broker gets a throwaway key pair and
    allows no admin key. Raises ``KeyFileError``."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], keys: KeyDir | None, curve: bool, gate: Gate
    ):
        self.admins = AllowList(keys.admins if keys else None)
        _, self._secret = load_secret(keys.broker_secret) if keys else zmq.curve_keypair()
        self.curve = curve
        self.gate = gate
        self._peer_keys: dict[bytes, str] = {}
        """With ``curve``: the client key of each ROUTER peer id, so a new connection that
        claims a dead connection's id (with another key) cannot act as its user."""
        self._key_turns: deque[bytes] = deque()
        """The peers of ``_peer_keys`` in turn: each ``tick`` looks at a share of them."""
        self._keys_added = 0
        """Peers added to ``_peer_keys`` since the last ``tick``."""
        self._refused = Throttle(REFUSALS_LOGGED, "refused {} more control connections")
        self._checks = _Checks(gate, self.admins, curve)
        self.zap = ZapHandler(ctx)
        self.zap.serve(CONTROL_DOMAIN, self._checks.control)
        self.zap.serve(CHAT_DOMAIN, self._checks.chat)
        self.zap.serve(PUB_DOMAIN, self._checks.pub)

    def start(self) -> None:
        """Start answering handshakes (those that came meanwhile waited)."""
        self.zap.start()

    def serve(self, sock: zmq.Socket[bytes], domain: str) -> None:
        """Put ``sock`` (not yet bound) in ``domain``: a CURVE server, but without ``curve`` a
        plain ROUTER (its connections still pass the gate, with the NULL mechanism) and a PLAIN
        PUB (a subscriber names its session)."""
        if domain == CONTROL_DOMAIN or self.curve:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)
        elif domain == PUB_DOMAIN:
            sock.setsockopt(zmq.PLAIN_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())

    def check_subscribers(self, check: Check) -> None:
        """How the PUB's handshakes prove a session (set once the chat exists)."""
        self._checks.subscribers = check

    def peer_with_key(self, key: str) -> bytes | None:
        """With ``curve``: the ROUTER peer whose connection uses client ``key`` (any thread)."""
        for peer, known in list(self._peer_keys.items()):
            if known == key:
                return peer
        return None

    def key_of(self, peer: bytes) -> str:
        return self._peer_keys.get(peer, "")

    def admin(self, key: str) -> str | None:
        """The admin's name for a CURVE key on the allow-list now, else None."""
        return self.admins.name(key)

    def key_taken(self, peer: bytes, key: str) -> bool:
        """With ``curve``: whether a peer id seen before with another client key now carries
        ``key``, i.e. a new connection took a dead connection's id. Its user must be dropped,
        not handed over (a real client resumes with its session secret)."""
        old = self._peer_keys.get(peer)
        if old == key:
            return False
        self._peer_keys[peer] = key
        if old is None:
            self._key_turns.append(peer)
            self._keys_added += 1
        return old is not None

    def refused(self, event: dict[str, object]) -> str | None:
        """A refused control handshake, in words an admin can act on; None past the per-interval
        cap (``tick`` reports how many more)."""
        why = self._why(event)
        return f"refused a control connection: {why}" if self._refused.allow() else None

    def _why(self, event: dict[str, object]) -> str:
        kind, value = event["event"], event["value"]
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            key = self.admins.refused.pop(0) if self.admins.refused else b""
            who = f"key {short(key)}... " if key else "its key "
            return f"{who}is not on the admin allow-list (ZAP {value})"
        if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return "the peer does not use CURVE (a plain socket)"
            if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                return "the CURVE handshake failed (the peer has another broker key)"
            return f"protocol error 0x{value:x} in the handshake"
        return f"the peer hung up in the handshake (errno {value}): a plain socket, or another key"

    def tick(self, live_peers: set[bytes] | dict[bytes, object]) -> list[str]:
        """Once per heartbeat: the count of refusals not logged, a changed allow-list, and the
        keys of peers that are no user's connection forgotten. Returns the log lines."""
        lines = self._refused.tick()
        refused, full = self.gate.take_refused()
        if refused:
            gate = self.gate
            open_now, top = gate.open, gate.by_address.most_common(1)
            busiest = f"; most from {top[0][0]} ({top[0][1]})" if top else ""
            cap = f"; at most {gate.total}: {gate.total_why}" if full else ""
            lines.append(f"refused {refused} chat connections over the caps ({open_now} open"
                         f"{busiest}{cap})")  # fmt: skip
        self.admins.refused.clear()
        lines += self.refresh()
        if self.curve:
            self._forget_keys(live_peers)
        return lines

    def _forget_keys(self, live_peers: set[bytes] | dict[bytes, object]) -> None:
        """The keys of peers that are no user's connection now go, a share at a time: twice as
        many peers looked at as came since the last tick (at least ``KEYS_LOOKED_AT``), so the
        table stays within about twice the live peers and new ones, and no tick's work grows
        with all the users connected."""
        turns, keys = self._key_turns, self._peer_keys
        looks = min(len(turns), max(KEYS_LOOKED_AT, 2 * self._keys_added))
        self._keys_added = 0
        for _ in range(looks):
            peer = turns.popleft()
            if peer in live_peers:
                turns.append(peer)
            else:
                keys.pop(peer, None)

    def refresh(self) -> list[str]:
        """Re-read the admin allow-list if its files changed; the log lines that say so."""
        problems = self.admins.refresh()
        if problems is None:
            return []
        lines = [f"admin key ignored: {problem}" for problem in problems]
        names = sorted(self.admins.keys.values())
        where = self.admins.directory
        lines.append(
            f"admin keys allowed: {', '.join(names)} (from {where})"
            if names
            else f"no admin key in {where}: room-ctl is refused until "
            "`room-broker keys new NAME` (or `keys add NAME FILE`)"
        )
        return lines

    def stop(self) -> None:
        self.zap.stop()
