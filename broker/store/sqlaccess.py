"""Room access in SQLite: private rooms, who is allowed in, and pending join requests. A part of
``sqlstore.SQLiteStore``: it writes in the store's open batch (``sqlwriter.SQLiteBatch``), so an
access change is as durable as a message, and rolled back with its batch."""

from __future__ import annotations

from typing import Final

from broker.store.access import Access, Request
from broker.store.sqlwriter import SQLiteBatch

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS private_rooms (room TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS allowed (
    room TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (room, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    room TEXT NOT NULL, user TEXT NOT NULL, ts REAL NOT NULL, history INTEGER NOT NULL,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
"""


class AccessTables:
    """``Store``'s access methods, written in the store's batch and read on its connection."""

    def __init__(self, batch: SQLiteBatch) -> None:
        self._batch = batch
        self._write = batch.write

    def access(self) -> Access:
        batch = self._batch
        batch.write_rows()  # the store's writer thread is idle after this
        db = batch.db
        access = Access()
        for (room,) in db.execute("SELECT room FROM private_rooms"):
            access.private[room] = set()
        for room, user in db.execute("SELECT room, user FROM allowed"):
            access.private.setdefault(room, set()).add(user)
        rows = db.execute("SELECT room, user, ts, history FROM requests ORDER BY ts")
        for room, user, ts, history in rows:
            access.requests.setdefault(room, {})[user] = Request(ts, history)
        return access

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        if allowed is None:
            for table in ("private_rooms", "allowed", "requests"):
                self._write(f"DELETE FROM {table} WHERE room = ?", (room,))
            return
        self._write("INSERT OR IGNORE INTO private_rooms VALUES (?)", (room,))
        for user in allowed:
            self._write("INSERT OR IGNORE INTO allowed VALUES (?, ?)", (room, user))

    def set_allowed(self, room: str, user: str, allowed: bool) -> None:
        if allowed:
            self._write("INSERT OR IGNORE INTO allowed VALUES (?, ?)", (room, user))
        else:
            self._write("DELETE FROM allowed WHERE room = ? AND user = ?", (room, user))

    def set_request(self, room: str, user: str, request: Request | None) -> None:
        if request is None:
            self._write("DELETE FROM requests WHERE room = ? AND user = ?", (room, user))
        else:
            self._write(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)",
                (room, user, request.ts, request.history),
            )

    def reset(self) -> None:
        """No private room, nobody allowed, no request (the store's ``reset``)."""
        for table in ("private_rooms", "allowed", "requests"):
            self._write(f"DELETE FROM {table}", ())
