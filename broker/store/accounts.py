"""Accounts and invite codes: in memory (``MemoryAccounts``, a ``MemoryStore``'s part) and in
SQLite (``SQLAccounts``, a ``SQLiteStore``'s part, written in the store's open batch so that an
account is as durable as a message, and rolled back with its batch). Neither keeps a password:
an account holds its SCRAM verifier, an invite only the SHA-256 of its code. Accounts outlive
``reset``."""

from __future__ import annotations

from typing import Final

from broker.store.base import Account
from broker.store.sqlwriter import SQLiteBatch
from broker.wire.scram import Verifier

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    created REAL NOT NULL,
    last_login REAL NOT NULL DEFAULT 0,
    banned INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invites (
    digest TEXT PRIMARY KEY, expires REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""

_COLUMNS: Final = "name, salt, iterations, stored_key, server_key, created, last_login, banned"
INVITES_KEPT: Final = 10_000
"""Unused invite codes kept at most; past it, the oldest go."""


def _account(row: tuple[str, bytes, int, bytes, bytes, float, float, int]) -> Account:
    name, salt, rounds, stored, server, created, last_login, banned = row
    return Account(name, Verifier(salt, rounds, stored, server), created, last_login, bool(banned))


class MemoryAccounts:
    """Accounts in process memory (gone when the broker stops)."""

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._invites: dict[str, float] = {}
        """Unused invites by digest, with when each expires."""

    def account(self, name: str) -> Account | None:
        return self._accounts.get(name)

    def accounts(self) -> list[Account]:
        return [self._accounts[name] for name in sorted(self._accounts)]

    def put_account(self, account: Account) -> None:
        self._accounts[account.name] = account

    def add_invite(self, digest: str, expires: float) -> None:
        self._invites[digest] = expires
        if len(self._invites) > INVITES_KEPT:
            del self._invites[next(iter(self._invites))]

    def use_invite(self, digest: str, now: float) -> bool:
        expires = self._invites.pop(digest, None)
        return expires is not None and expires > now


class SQLAccounts:
    """``AccountStore`` in SQLite: read on the store's connection (which sees the open batch),
    written in its batch."""

    def __init__(self, batch: SQLiteBatch) -> None:
        self._batch = batch
        self._write = batch.write

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
        self._batch.write_rows()  # the writer thread is idle after this
        return self._batch.db.execute(sql, args).fetchall()

    def account(self, name: str) -> Account | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM accounts WHERE name = ?", (name,))
        return _account(rows[0]) if rows else None

    def accounts(self) -> list[Account]:
        return [
            _account(row) for row in self._query(f"SELECT {_COLUMNS} FROM accounts ORDER BY name")
        ]

    def put_account(self, a: Account) -> None:
        v = a.verifier
        row = (a.name, v.salt, v.iterations, v.stored_key, v.server_key, a.created, a.last_login)
        self._write(
            f"INSERT OR REPLACE INTO accounts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, int(a.banned)),
        )

    def add_invite(self, digest: str, expires: float) -> None:
        self._write("INSERT OR REPLACE INTO invites VALUES (?, ?, 0)", (digest, expires))
        self._write(
            "DELETE FROM invites WHERE digest IN (SELECT digest FROM invites WHERE used = 0 "
            "ORDER BY expires DESC LIMIT -1 OFFSET ?)",
            (INVITES_KEPT,),
        )

    def use_invite(self, digest: str, now: float) -> bool:
        rows = self._query("SELECT expires, used FROM invites WHERE digest = ?", (digest,))
        if not rows or rows[0][1] or rows[0][0] <= now:
            return False
        self._write("UPDATE invites SET used = 1 WHERE digest = ?", (digest,))
        return True
