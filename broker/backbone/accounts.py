"""Accounts shared by every broker: the ``AccountStore`` of a broker on the backbone, a mirror of
a key-value bucket that every broker follows, so that an account made, banned or given a new
password through one broker holds on all of them within the follower's round trip.

::

    KV room-accounts   account.<name>    -> JSON [salt, iterations, stored_key, server_key,
                                                  created, last_login, banned] (keys in base64)
                       invite.<digest>   -> JSON expires   (the SHA-256 of a code, never the code)

Reads come from the mirror and never wait. A new account is created in the bucket (an atomic
create: two brokers registering one name at once make one account), a ban, an unban and a new
password are put there, and an invite is spent by deleting its key at the revision this broker
saw (atomic too: a code works once in the whole chat); the loop waits for these, as for a block.
A login's new ``last_login`` is written without waiting. A ban seen on the bucket is an
``AccountBanned`` event: the broker holding that user disconnects them.
"""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import replace
from typing import Any

import nats.js.errors

from broker.backbone.events import AccountBanned
from broker.backbone.layout import ACCOUNTS, UNREACHABLE, WRONG_LAST_SEQUENCE
from broker.backbone.link import Link
from broker.store.base import Account, StoreError
from broker.wire.scram import Verifier

_ACCOUNT = "account."
_INVITE = "invite."


def encode_account(account: Account) -> bytes:
    v = account.verifier
    b64 = base64.b64encode
    fields = [b64(v.salt).decode(), v.iterations, b64(v.stored_key).decode()]
    fields += [b64(v.server_key).decode(), account.created, account.last_login, account.banned]
    return json.dumps(fields).encode()


def decode_account(name: str, value: bytes) -> Account:
    """Raises ``ValueError`` (or ``TypeError``) for a value no broker wrote."""
    salt, rounds, stored, server, created, last_login, banned = json.loads(value)
    b64 = base64.b64decode
    verifier = Verifier(b64(salt), int(rounds), b64(stored), b64(server))
    return Account(name, verifier, float(created), float(last_login), bool(banned))


class SharedAccounts:
    """This broker's mirror of the bucket (``AccountStore``), and its writes to it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._accounts: dict[str, Account] = {}
        self._invites: dict[str, tuple[float, int]] = {}
        """By digest: when each unused invite expires, and the revision this broker saw."""

    async def create(self) -> None:
        """Make the bucket and read it (``on_change`` follows it from then on)."""
        kv = await self.link.bucket(ACCOUNTS)
        watcher = await self.link.making(kv.watchall)
        try:
            while (entry := await watcher.updates(timeout=2.0)) is not None:
                if entry.operation is None:
                    self._apply(entry.key, entry.value, entry.revision or 0)
        finally:
            await watcher.stop()

    def on_change(self, key: str, value: bytes | None, revision: int, deleted: bool) -> None:
        """A change seen on the bucket (any broker's, this one's too)."""
        was = self._accounts.get(key.removeprefix(_ACCOUNT))
        self._apply(key, None if deleted else value, revision)
        now = self._accounts.get(key.removeprefix(_ACCOUNT))
        if now is not None and now.banned and not (was is not None and was.banned):
            self.link.emit(AccountBanned(now.name))

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        with contextlib.suppress(ValueError, TypeError):
            if key.startswith(_ACCOUNT):
                name = key.removeprefix(_ACCOUNT)
                if value is None:
                    self._accounts.pop(name, None)
                else:
                    self._accounts[name] = decode_account(name, value)
            elif key.startswith(_INVITE):
                digest = key.removeprefix(_INVITE)
                if value is None:
                    self._invites.pop(digest, None)
                else:
                    self._invites[digest] = (float(json.loads(value)), revision)

    # ---- AccountStore ---------------------------------------------------------------------------

    def account(self, name: str) -> Account | None:
        return self._accounts.get(name)

    def accounts(self) -> list[Account]:
        return [self._accounts[name] for name in sorted(self._accounts)]

    def put_account(self, account: Account) -> None:
        """Make or replace ``account`` on the backbone; ``StoreError`` when it is away, or when
        another broker made an account of this name first."""
        known = self._accounts.get(account.name)
        key, value = _ACCOUNT + account.name, encode_account(account)
        if known is not None and replace(known, last_login=account.last_login) == account:
            self._accounts[account.name] = account  # a login: nobody waits for it
            self.link.background(self._put(key, value))
            return
        self._reachable()
        if known is None:
            if not self.link.call(self._create(key, value)):
                raise StoreError(f"{account.name} was registered meanwhile, through another broker")
        else:
            self.link.call(self.link.kv[ACCOUNTS].put(key, value))
        self._accounts[account.name] = account

    def add_invite(self, digest: str, expires: float) -> None:
        self._reachable()
        self.link.call(self.link.kv[ACCOUNTS].put(_INVITE + digest, json.dumps(expires).encode()))
        self._invites.setdefault(digest, (expires, 0))

    def use_invite(self, digest: str, now: float) -> bool:
        """Spend the invite: deleted at the revision seen, so that only one broker spends it."""
        seen = self._invites.pop(digest, None)
        if seen is None or seen[0] <= now:
            return False
        self._reachable()
        return self.link.call(self._spend(_INVITE + digest, seen[1]))

    async def _create(self, key: str, value: bytes) -> bool:
        try:
            await self.link.kv[ACCOUNTS].create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _spend(self, key: str, revision: int) -> bool:
        """Whether this broker deleted the invite (another may have spent it a moment ago)."""
        kv = self.link.kv[ACCOUNTS]
        try:
            if not revision:  # made here a moment ago: its revision is not mirrored yet
                revision = (await kv.get(key)).revision or 0
            await kv.delete(key, last=revision)
        except nats.js.errors.NotFoundError:  # never made, or spent already
            return False
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:  # spent by another broker meanwhile
                return False
            raise
        return True

    async def _put(self, key: str, value: bytes) -> None:
        with contextlib.suppress(Exception):  # a last login lost to an outage is no harm
            await self.link.kv[ACCOUNTS].put(key, value)

    def _reachable(self) -> None:
        """Fail at once while the backbone is known to be away (as ``BackboneStore`` does)."""
        if not self.link.connected:
            raise StoreError(UNREACHABLE)

    def follower(self) -> Any:
        """What ``Registry.follow`` calls with each change of the bucket."""
        return lambda e: self.on_change(e.key, e.value, e.revision or 0, e.operation is not None)
