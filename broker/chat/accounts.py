"""A name belongs to someone: accounts, logins and the policy, with no sockets and no clock.

A registered name is let in only by a login that proves its password (SCRAM-SHA-256, the
``Checker`` of ``broker.wire.scram``: the broker holds the verifier and checks a proof with a few
HMACs, never deriving a key on the loop), or by a resume of a session such a login started (the
session's secret proves it). ``--accounts required`` lets in registered names only;
``--registration`` says who may register (``open``, ``invite`` with the admin's one-time codes, or
``closed``). Wrong passwords are counted per name and per address (``Guesses``): past a few, a
login is refused with ``retry_later`` for a while that doubles with each further failure; nobody
waits in the loop, and nobody else is slowed. Uses the shared ``State`` and ``Sessions`` (which
welcomes a login).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Final

from broker.chat.sessions import Sessions
from broker.chat.state import State
from broker.chat.users import User
from broker.store.base import Account, AccountStore
from broker.wire import protocol as p
from broker.wire.scram import Checker, ScramException, Verifier

FREE_GUESSES: Final = 3
"""Wrong passwords (or unknown names, bad invite codes) a name or an address may give before it
must wait."""
NAME_WAIT_MAX: Final = 60.0
"""The longest wait of a name (the owner, too, waits this long at worst while it is guessed)."""
ADDRESS_WAIT_MAX: Final = 300.0
"""The longest wait of an address."""
FORGET_AFTER: Final = 900.0
"""Seconds without a failure after which a name's or an address's count starts over."""
GUESSES_KEPT: Final = 100_000
"""Names and addresses counted at most (the oldest go first): a bound on the memory."""
LOGINS_PENDING: Final = 10_000
"""Logins between their challenge and their proof, at most; the oldest go first."""
PROVE_WITHIN: Final = 30.0
"""Seconds a client has to answer a ``Challenge``."""


def invite_digest(code: str) -> str:
    """What the store keeps of an invite code: its SHA-256 (hex)."""
    return hashlib.sha256(code.encode()).hexdigest()


class Guesses:
    """Failures per key (a name, an address) and until when each must wait: after
    ``FREE_GUESSES``, 1 s, then twice as long at each failure, up to ``longest``."""

    def __init__(self, longest: float) -> None:
        self.longest = longest
        self._seen: dict[str, tuple[int, float, float]] = {}
        """Per key: failures, until when it waits, when it last failed."""

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait (0: it may try now)."""
        seen = self._seen.get(key)
        if not key or seen is None:
            return 0.0
        if now - seen[2] > FORGET_AFTER:
            del self._seen[key]
            return 0.0
        return max(0.0, seen[1] - now)

    def failed(self, key: str, now: float) -> None:
        if not key:
            return
        count, _, last = self._seen.pop(key, (0, 0.0, now))
        count = 1 if now - last > FORGET_AFTER else count + 1
        extra = count - FREE_GUESSES
        until = now + min(self.longest, 2.0 ** (extra - 1)) if extra > 0 else now
        self._seen[key] = (count, until, now)  # last in the order: the oldest go first
        if len(self._seen) > GUESSES_KEPT:
            del self._seen[next(iter(self._seen))]

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)


@dataclass(slots=True)
class _Pending:
    name: str
    checker: Checker
    since: float


class Logins:
    """Hello under the policy, Login and Prove, Register (and a logged-in user's new password)."""

    def __init__(self, state: State, sessions: Sessions) -> None:
        self.state = state
        self.sessions = sessions
        self.pending: dict[bytes, _Pending] = {}
        """Peers that got a ``Challenge`` and owe their proof, oldest first."""
        self.names = Guesses(NAME_WAIT_MAX)
        self.addresses = Guesses(ADDRESS_WAIT_MAX)

    @property
    def store(self) -> AccountStore:
        return self.state.store.account_store()

    def pending_name(self, peer: bytes) -> str | None:
        """The name ``peer`` is logging in as, between its Login and its Prove."""
        pending = self.pending.get(peer)
        return None if pending is None else pending.name

    def first(self, peer: bytes, msg: p.ClientMsg, now: float, address: str) -> None:
        """A message of a peer the chat does not know yet that may begin a session."""
        match msg:
            case p.Hello():
                account = self._admits(peer, msg)
                if account is not None:
                    self.sessions.hello(peer, msg, now, account)
            case p.Login():
                self._login(peer, msg, now, address)
            case p.Prove():
                self._prove(peer, msg, now, address)
            case p.Register():
                self._register(peer, msg, now, address)

    def _admits(self, peer: bytes, msg: p.Hello) -> bool | None:
        """Whether the name is registered, for a hello the policy lets through; None (and an
        error sent) for one it does not."""
        accounts = self.store
        if msg.version != p.VERSION or not p.valid_name(msg.name):
            return False  # a bad version or name: the hello itself says so
        account = accounts.account(msg.name)
        if account is not None and account.banned:
            self.state.error(peer, p.Code.BANNED, f"the admin banned the account {msg.name}")
            return None
        if msg.session:  # a resume: the secret proves the session (a login's, if registered)
            return account is not None
        if account is not None:
            reason = f"{msg.name} is a registered name: log in with its password"
            self.state.error(peer, p.Code.LOGIN_FIRST, reason)
            return None
        if self.state.settings.accounts == "required":
            self.state.error(peer, p.Code.UNKNOWN_ACCOUNT, _unknown(msg.name, required=True))
            return None
        return False

    def _valid(self, peer: bytes, version: int, name: str) -> bool:
        """Whether a login's or a registration's version and name are; if not, an error sent."""
        state = self.state
        if version != p.VERSION:
            reason = f"protocol version {version} is not supported (the broker speaks {p.VERSION})"
            state.error(peer, p.Code.BAD_VERSION, reason)
            return False
        if not p.valid_name(name):
            state.error(peer, p.Code.BAD_NAME, f"invalid name {name!r}: use {p.NAME_RULE}")
            return False
        return True

    def _waits(self, peer: bytes, name: str, address: str, now: float) -> bool:
        wait = max(self.names.wait(name, now), self.addresses.wait(address, now))
        if wait <= 0:
            return False
        seconds = math.ceil(wait)
        reason = (
            f"too many failed attempts for {name} or from your address: try again in {seconds} s"
        )
        self.state.error(peer, p.Code.RETRY_LATER, reason)
        return True

    def _login(self, peer: bytes, msg: p.Login, now: float, address: str) -> None:
        state, name = self.state, msg.name
        if not self._valid(peer, msg.version, name):
            return
        if self._waits(peer, name, address, now):
            return
        account = self.store.account(name)
        if account is None:
            self.addresses.failed(address, now)
            state.error(peer, p.Code.UNKNOWN_ACCOUNT, _unknown(name))
            return
        if account.banned:
            state.error(peer, p.Code.BANNED, f"the admin banned the account {name}")
            return
        verifier = account.verifier
        checker = Checker(name, lambda: verifier)
        try:
            challenge = checker.challenge(msg.first)
        except ScramException as exc:
            state.error(peer, p.Code.BAD_FRAME, f"the login's SCRAM message is not valid: {exc}")
            return
        self.pending.pop(peer, None)
        self.pending[peer] = _Pending(name, checker, now)
        if len(self.pending) > LOGINS_PENDING:
            del self.pending[next(iter(self.pending))]
        state.out.reply(peer, p.Challenge(challenge))

    def _prove(self, peer: bytes, msg: p.Prove, now: float, address: str) -> None:
        state = self.state
        pending = self.pending.pop(peer, None)
        if pending is None or now - pending.since > PROVE_WITHIN:
            state.error(peer, p.Code.LOGIN_FIRST, "no login is waiting for this proof: log in")
            return
        name = pending.name
        try:
            verified = pending.checker.verify(msg.final)
        except ScramException:
            self.names.failed(name, now)
            self.addresses.failed(address, now)
            state.error(peer, p.Code.BAD_PASSWORD, f"wrong password for {name}")
            state.out.log(now, "security", user=name, text=_failed(name, address))
            return
        account = self.store.account(name)
        if account is None or account.banned:  # banned meanwhile
            state.error(peer, p.Code.BANNED, f"the admin banned the account {name}")
            return
        self.names.forget(name)
        self.addresses.forget(address)
        self.store.put_account(replace(account, last_login=now))
        state.out.reply(peer, p.Verified(verified))
        self.sessions.login(peer, name, now)

    def _register(self, peer: bytes, msg: p.Register, now: float, address: str) -> None:
        state, name = self.state, msg.name
        if not self._valid(peer, msg.version, name):
            return
        accounts = self.store
        policy = state.settings.registration
        if policy == "closed":
            reason = "registration is closed on this broker: the admin registers names"
            state.error(peer, p.Code.REGISTRATION_CLOSED, reason + " (room-ctl register)")
            return
        if self._waits(peer, name, address, now):
            return
        if accounts.account(name) is not None:
            state.error(peer, p.Code.NAME_TAKEN, f"{name} is registered already: choose another")
            return
        if name in state.users or name in self.sessions.claiming:
            reason = f"{name} is in use now: choose another, or register it when it is free"
            state.error(peer, p.Code.NAME_TAKEN, reason)
            return
        if policy == "invite":
            if not msg.invite:
                reason = "registration is by invite on this broker: ask the admin for a code"
                state.error(peer, p.Code.REGISTRATION_CLOSED, reason)
                return
            if not accounts.use_invite(invite_digest(msg.invite), now):
                self.addresses.failed(address, now)
                reason = "this invite code is unknown, used or expired: ask the admin for another"
                state.error(peer, p.Code.BAD_INVITE, reason)
                return
        accounts.put_account(Account(name, _verifier(msg), now))
        state.store.release(name, end_session=True)  # a session of it from before is over
        state.out.reply(peer, p.Registered(name))
        state.out.log(now, "security", user=name, text=f"registered the account {name}")

    def passwd(self, user: User, msg: p.Register, now: float) -> None:
        """A logged-in user's ``Register`` of its own name: a new password."""
        state = self.state
        accounts = self.store
        account = accounts.account(user.name)
        if account is None or not user.account or msg.name != user.name:
            reason = "only a user logged in to its account may change its password"
            state.error(user.peer, p.Code.LOGIN_FIRST, reason)
            return
        accounts.put_account(replace(account, verifier=_verifier(msg)))
        state.out.reply(user.peer, p.Registered(user.name))
        state.out.log(now, "security", user=user.name, text=f"{user.name} changed its password")


def _verifier(msg: p.Register) -> Verifier:
    return Verifier(msg.salt, msg.iterations, msg.stored_key, msg.server_key)


def _unknown(name: str, required: bool = False) -> str:
    why = "only registered names may chat on this broker" if required else "no such account"
    return f"{name}: {why}: `room-client register --name {name}` makes one"


def _failed(name: str, address: str) -> str:
    return f"wrong password for {name}" + (f" from {address}" if address else "")
