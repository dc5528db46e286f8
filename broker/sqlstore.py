"""The durable store: room messages, rooms and the blocklist in SQLite (WAL mode).

Writes go into one open transaction; the broker calls ``commit`` once per batch, before it
publishes or acknowledges anything from that batch (a group commit). An Ack therefore always means
the message is on disk, and a burst of messages costs one fsync, not one each.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import IO, Final

from .protocol import LOBBY, Ack, Posted

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    mid INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (sender, mid);
CREATE TABLE IF NOT EXISTS blocked (name TEXT PRIMARY KEY) WITHOUT ROWID;
"""

SYNC_MODES: Final = ("full", "normal")
"""``full`` survives power loss; ``normal`` survives a crash of the broker (kill -9) only."""


class StoreError(Exception):
    """The database cannot be used; the message is one line for the operator."""


class SQLiteStore:
    """One SQLite file in the data dir; the broker's only thread uses it."""

    def __init__(self, path: Path, sync: str = "full") -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"journal mode is {mode}, not wal")
            self._db.executescript(SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO rooms VALUES (?)", (LOBBY,))
            rooms = [r for (r,) in self._db.execute("SELECT name FROM rooms")]
            seqs = dict(self._db.execute("SELECT room, max(seq) FROM messages GROUP BY room"))
            self._blocked = {n for (n,) in self._db.execute("SELECT name FROM blocked")}
        except sqlite3.Error as exc:
            raise StoreError(
                f"the database {path} cannot be used ({exc}): move it aside or restore a backup; "
                "it was not changed"
            ) from None
        self._seq: dict[str, int] = {room: seqs.get(room, 0) for room in rooms}
        self._dirty = False
        self.lock: IO[str] | None = None  # the data dir's lock file, released on close

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        if not self._dirty:
            self._db.execute("BEGIN")
            self._dirty = True
        self._db.execute(sql, args)

    def append(self, room: str, sender: str, text: str, ts: float, mid: int = 0) -> Posted:
        seq = self._seq.get(room, 0) + 1
        if room not in self._seq:
            self._write("INSERT OR IGNORE INTO rooms VALUES (?)", (room,))
        self._seq[room] = seq
        self._write(
            "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)", (room, seq, ts, sender, text, mid)
        )
        return Posted(room, seq, ts, sender, text)

    def last_seq(self, room: str) -> int:
        return self._seq.get(room, 0)

    def recent(self, room: str, count: int) -> list[Posted]:
        if count <= 0:
            return []
        rows = self._db.execute(
            "SELECT room, seq, ts, sender, text FROM messages WHERE room = ? "
            "ORDER BY seq DESC LIMIT ?",
            (room, count),
        ).fetchall()
        return [Posted(*row) for row in reversed(rows)]

    def range(self, room: str, after: int, upto: int, limit: int) -> tuple[list[Posted], int]:
        upto = self._seq.get(room, 0) if upto <= 0 else upto
        rows = self._db.execute(
            "SELECT room, seq, ts, sender, text FROM messages WHERE room = ? AND seq > ? "
            "AND seq <= ? ORDER BY seq LIMIT ?",
            (room, after, upto, limit),
        ).fetchall()
        first = self._db.execute(
            "SELECT min(seq) FROM messages WHERE room = ?", (room,)
        ).fetchone()[0]
        return [Posted(*row) for row in rows], first or self._seq.get(room, 0) + 1

    def recent_acks(self, sender: str, count: int) -> list[Ack]:
        rows = self._db.execute(
            "SELECT mid, room, seq FROM messages WHERE sender = ? AND mid != 0 "
            "ORDER BY ts DESC LIMIT ?",
            (sender, count),
        ).fetchall()
        return [Ack(*row) for row in reversed(rows)]

    def rooms(self) -> list[str]:
        return list(self._seq)

    def add_room(self, room: str) -> None:
        if room not in self._seq:
            self._seq[room] = 0
            self._write("INSERT OR IGNORE INTO rooms VALUES (?)", (room,))

    def reset(self) -> None:
        self._write("DELETE FROM messages", ())
        self._write("DELETE FROM rooms WHERE name != ?", (LOBBY,))
        self._seq = {LOBBY: 0}

    def blocked(self) -> set[str]:
        return self._blocked

    def block(self, name: str) -> bool:
        if name in self._blocked:
            return False
        self._blocked.add(name)
        self._write("INSERT OR IGNORE INTO blocked VALUES (?)", (name,))
        return True

    def unblock(self, name: str) -> bool:
        if name not in self._blocked:
            return False
        self._blocked.discard(name)
        self._write("DELETE FROM blocked WHERE name = ?", (name,))
        return True

    def commit(self) -> None:
        if self._dirty:
            self._db.execute("COMMIT")
            self._dirty = False
        self.lock: IO[str] | None = None  # the data dir's lock file, released on close

    def close(self) -> None:
        self.commit()
        self._db.close()
        if self.lock is not None:
            self.lock.close()
