"""The durable store: room messages, rooms, the blocklist and the admin audit log in SQLite (WAL
mode).

Writes go into one open transaction; the broker calls ``commit`` once per batch, before it
publishes or acknowledges anything from that batch (a group commit). An Ack therefore always means
the message is on disk, and a burst of messages costs one fsync, not one each. Message rows are
inserted into that transaction by a writer thread while the loop handles the rest of the batch
(``sqlwriter``); the loop waits for it before it reads, writes anything else, or commits.

The store is made of parts, each an object it holds: its batch (``sqlwriter.SQLiteBatch``: the
open transaction, the row writer and the checkpoint threads), the access tables
(``sqlaccess.AccessTables``, written in that batch) and the name claims (``names.LocalNames``,
the same as a ``MemoryStore``'s, whose session changes the store writes in the batch). Messages,
rooms, the blocklist and the audit log are the store's own.

A write that fails (disk full, I/O error) fails the whole batch: ``commit`` rolls the transaction
back, puts the sequence counters and the blocklist back where the last commit left them (numbering
stays dense) and raises ``StoreError``; the broker then refuses what the batch would have
acknowledged, and the next batch starts clean.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import IO, Final

import msgspec

from broker.store.access import Access, Request
from broker.store.accounts import SCHEMA as ACCOUNTS_SCHEMA
from broker.store.accounts import SQLAccounts
from broker.store.base import AuditEntry, StoreError
from broker.store.names import LocalNames
from broker.store.sqlaccess import SCHEMA as ACCESS_SCHEMA
from broker.store.sqlaccess import AccessTables
from broker.store.sqlwriter import CHUNK, SQLiteBatch
from broker.store.window import Window
from broker.wire.protocol import LOBBY, Ack, Code, Posted

PRUNE_ROOMS: Final = 16
"""Rooms whose old messages one ``prune`` looks at (a query each); the next call goes on."""

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
DROP INDEX IF EXISTS messages_by_sender_ts;
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages (sender, mid);
CREATE TABLE IF NOT EXISTS blocked (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (name TEXT PRIMARY KEY, secret TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    admin TEXT NOT NULL,
    key TEXT NOT NULL,
    command TEXT NOT NULL,
    args TEXT NOT NULL,
    ok INTEGER NOT NULL,
    message TEXT NOT NULL
);
"""

ACKED: Final = "SELECT mid, room, seq FROM messages WHERE sender = ? AND mid = ? LIMIT 1"
FIRST_LAST: Final = "SELECT room, min(seq), max(seq) FROM messages GROUP BY room"
HIGHEST_MID: Final = "SELECT max(mid) FROM messages WHERE sender = ?"
"""Both answered by ``messages_by_sender`` in one index look-up, however many messages the
sender has: a retry is found however old it is."""

SYNC_MODES: Final = ("normal", "full")
"""``normal`` (the default): a commit is in the WAL file before the Ack, so it survives a crash or
kill -9 of the broker; an OS crash or power cut may lose the last commits. ``full`` adds an fsync
per commit (per batch): survives power loss, and costs about a millisecond of latency each."""
DEFAULT_SYNC: Final = SYNC_MODES[0]


WINDOW_KEPT: Final = 64
WINDOW_CHARS: Final = 8_192
"""Each room's newest messages kept in memory (at most this many, and this much text): a join's
history and a repair just after it are read from there, never waiting for the row writer in a
flood. At ``--max-rooms`` 1,000 that is at most about 10 MB of ASCII text (Python keeps up to 4
bytes a character for other scripts: 35 MB at worst); the rest is read from the database."""


class SQLiteStore:
    """One SQLite file in the data dir; the broker's only thread uses it (see the module for its
    parts)."""

    def __init__(self, path: Path, sync: str = DEFAULT_SYNC) -> None:
        self.path = path
        try:
            # Owner-only from the first byte (SQLite gives its -wal and -shm files the same
            # mode): chat history is nobody else's business, whatever the data dir's mode.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Small pages: a lone message's commit writes a few KiB of WAL, not a few 4 KiB pages,
            # which halves the checkpoints' work and the latency tail (room-bench). Only a new
            # database takes it; an existing one keeps its page size.
            db.execute("PRAGMA page_size=1024")
            db.execute(f"PRAGMA synchronous={sync.upper()}")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.DatabaseError(f"journal mode is {mode}, not wal")
            db.executescript(SCHEMA + ACCESS_SCHEMA + ACCOUNTS_SCHEMA)
            db.execute("INSERT OR IGNORE INTO rooms VALUES (?)", (LOBBY,))
            rooms = [r for (r,) in db.execute("SELECT name FROM rooms")]
            kept = {room: (first, last) for room, first, last in db.execute(FIRST_LAST)}
            self._blocked = {n for (n,) in db.execute("SELECT name FROM blocked")}
            sessions = dict(db.execute("SELECT name, secret FROM sessions"))
            db.execute("PRAGMA wal_autocheckpoint=0")
            batch = SQLiteBatch(db, path, kept=self._kept, forget=self._forget)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(
                f"the database {path} cannot be used ({exc}): move it aside or restore a backup; "
                "it was not changed"
            ) from None
        self._batch = batch
        self._write = batch.write
        self._write_rows = batch.write_rows
        self._hand_off = batch.hand_off
        self._access = AccessTables(batch)
        self._accounts = SQLAccounts(batch)
        self._names = LocalNames(sessions, saved=self._session_saved)
        self._seq: dict[str, int] = {room: kept.get(room, (0, 0))[1] for room in rooms}
        self._first: dict[str, int] = {room: kept.get(room, (1, 0))[0] for room in rooms}
        """Each room's oldest stored seq (its newest + 1 when it has none)."""
        self._windows: dict[str, Window] = {}
        """Each room's newest messages since the start (see ``WINDOW_KEPT``)."""
        self._prune_next = ""
        """The room the next ``prune`` starts at."""
        self._undo: dict[str, int | None] = {}
        """Each room's sequence counter before the open batch changed it (None: a new room)."""
        self._blocked_before: set[str] | None = None
        """The blocklist before the open batch changed it."""
        self.lock: IO[str] | None = None  # the data dir's lock file, released on close
        batch.start()

    @property
    def _db(self) -> sqlite3.Connection:
        """The batch's connection (tests read it, and replace it to make commits fail)."""
        return self._batch.db

    @_db.setter
    def _db(self, db: sqlite3.Connection) -> None:
        self._batch.db = db

    @property
    def _handed(self) -> bool:
        """Chunks are with the writer thread (the batch's; for tests)."""
        return self._batch.handed

    def append(self, room: str, sender: str, text: str, ts: float, mid: int = 0) -> Posted:
        old = self._seq.get(room)
        if room not in self._undo:
            self._undo[room] = old
        if old is None:
            self._write("INSERT OR IGNORE INTO rooms VALUES (?)", (room,))
            self._first[room] = 1
        seq = self._seq[room] = (old or 0) + 1
        rows = self._batch.rows
        rows.append((room, seq, ts, sender, text, mid))
        if len(rows) >= CHUNK:
            self._hand_off()
        posted = Posted(room, seq, ts, sender, text)
        window = self._windows.get(room)
        if window is None:
            window = self._windows[room] = Window(WINDOW_KEPT, WINDOW_CHARS)
        window.add(posted)
        return posted

    def last_seq(self, room: str) -> int:
        return self._seq.get(room, 0)

    def recent(self, room: str, count: int) -> list[Posted]:
        if count <= 0 or self._first.get(room, 1) > self._seq.get(room, 0):
            return []
        window = self._windows.get(room)
        if window is not None:
            held = window.newest(count, self._first[room])
            if held is not None:
                return held
        self._write_rows()
        rows = self._batch.db.execute(
            "SELECT room, seq, ts, sender, text FROM messages WHERE room = ? "
            "ORDER BY seq DESC LIMIT ?",
            (room, count),
        ).fetchall()
        return [Posted(*row) for row in reversed(rows)]

    def range(self, room: str, after: int, upto: int, limit: int) -> tuple[list[Posted], int]:
        newest = self._seq.get(room, 0)
        first = self._first.get(room, newest + 1)
        start = max(after + 1, first)
        stop = min(newest if upto <= 0 else min(upto, newest), start + limit - 1)
        if stop < start:
            return [], first
        window = self._windows.get(room)
        held = window.slice(start, stop) if window is not None else None
        if held is not None:
            return held, first
        self._write_rows()
        rows = self._batch.db.execute(
            "SELECT room, seq, ts, sender, text FROM messages WHERE room = ? AND seq >= ? "
            "AND seq <= ? ORDER BY seq",
            (room, start, stop),
        ).fetchall()
        return [Posted(*row) for row in rows], first

    def acked(self, sender: str, mid: int) -> Ack | None:
        self._write_rows()
        row = self._batch.db.execute(ACKED, (sender, mid)).fetchone()
        return Ack(*row) if row else None

    def highest_mid(self, sender: str) -> int:
        self._write_rows()
        return self._batch.db.execute(HIGHEST_MID, (sender,)).fetchone()[0] or 0

    def rooms(self) -> list[str]:
        return list(self._seq)

    def add_room(self, room: str) -> None:
        if room not in self._seq:
            self._undo.setdefault(room, None)
            self._seq[room] = 0
            self._first[room] = 1
            self._write("INSERT OR IGNORE INTO rooms VALUES (?)", (room,))

    def remove_room(self, room: str) -> None:
        if room in self._seq:
            self._undo.setdefault(room, self._seq[room])
            self._write_rows()
            self._write("DELETE FROM messages WHERE room = ?", (room,))
            self._write("DELETE FROM rooms WHERE name = ?", (room,))
            del self._seq[room]
            self._first.pop(room, None)
            self._windows.pop(room, None)

    def prune(self, keep: int, before: float, limit: int) -> int:
        """Rooms are visited in turn (``_prune_next``), at most ``PRUNE_ROOMS`` a call, and each
        looks at its oldest ``limit`` messages only (the primary key's order): bounded work for
        one turn of the loop, however many rooms there are."""
        self._write_rows()
        pruned = 0
        rooms = sorted(self._seq)
        start = bisect.bisect_left(rooms, self._prune_next)
        for visited, room in enumerate(rooms[start:] + rooms[:start]):
            if pruned >= limit or visited >= PRUNE_ROOMS:
                self._prune_next = room
                return pruned
            oldest = self._batch.db.execute(
                "SELECT seq, ts FROM messages WHERE room = ? ORDER BY seq LIMIT ?",
                (room, limit - pruned),
            ).fetchall()
            past = self._seq[room] - keep
            upto = 0
            for seq, ts in oldest:
                if seq > past and ts >= before:
                    break
                upto = seq
            if upto:
                self._write("DELETE FROM messages WHERE room = ? AND seq <= ?", (room, upto))
                pruned += sum(1 for seq, _ in oldest if seq <= upto)
                self._first[room] = upto + 1
                if room in self._windows:
                    self._windows[room].drop_upto(upto)
        self._prune_next = ""
        return pruned

    def reset(self) -> None:
        self._batch.rows = []
        for room, seq in self._seq.items():
            self._undo.setdefault(room, seq)
        self._write("DELETE FROM messages", ())
        self._write("DELETE FROM rooms WHERE name != ?", (LOBBY,))
        self._write("DELETE FROM sessions", ())
        self._access.reset()
        self._seq = {LOBBY: 0}
        self._first = {LOBBY: 1}
        self._windows.clear()
        self._names.reset()

    def blocked(self) -> set[str]:
        return self._blocked

    def block(self, name: str) -> bool:
        if name in self._blocked:
            return False
        self._keep_blocked()
        self._blocked.add(name)
        self._write("INSERT OR IGNORE INTO blocked VALUES (?)", (name,))
        return True

    def unblock(self, name: str) -> bool:
        if name not in self._blocked:
            return False
        self._keep_blocked()
        self._blocked.discard(name)
        self._write("DELETE FROM blocked WHERE name = ?", (name,))
        return True

    def claim(self, name: str, session: str, resume: str) -> str | Code:
        return self._names.claim(name, session, resume)

    def release(self, name: str, end_session: bool) -> None:
        self._names.release(name, end_session)

    def holder(self, name: str) -> str:
        return self._names.holder(name)

    def _session_saved(self, name: str, secret: str | None) -> None:
        """The names' ``saved``: a session that started or ended, in the batch."""
        if secret is None:
            self._write("DELETE FROM sessions WHERE name = ?", (name,))
        else:
            self._write("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (name, secret))

    def _keep_blocked(self) -> None:
        if self._blocked_before is None:
            self._blocked_before = set(self._blocked)

    def access(self) -> Access:
        return self._access.access()

    def set_private(self, room: str, allowed: set[str] | None) -> None:
        self._access.set_private(room, allowed)

    def set_allowed(self, room: str, user: str, allowed: bool) -> None:
        self._access.set_allowed(room, user, allowed)

    def set_request(self, room: str, user: str, request: Request | None) -> None:
        self._access.set_request(room, user, request)

    def account_store(self) -> SQLAccounts:
        return self._accounts

    def audit(self, entry: AuditEntry) -> None:
        args = msgspec.json.encode(list(entry.args)).decode()
        self._write(
            "INSERT INTO audit (ts, admin, key, command, args, ok, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry.ts, entry.admin, entry.key, entry.command, args, int(entry.ok), entry.message),
        )

    def audit_log(self, limit: int) -> list[AuditEntry]:
        if limit <= 0:
            return []
        self._write_rows()
        rows = self._batch.db.execute(
            "SELECT ts, admin, key, command, args, ok, message FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            AuditEntry(ts, admin, key, command, tuple(_args(args)), bool(ok), message)
            for ts, admin, key, command, args, ok, message in reversed(rows)
        ]

    def commit(self) -> None:
        """Make the batch durable, or roll it back and raise ``StoreError`` (see the module)."""
        self._batch.commit()

    def _kept(self) -> None:
        """The batch's ``kept``: it is durable, the undo records go."""
        self._undo.clear()
        self._blocked_before = None

    def _forget(self) -> None:
        """The batch's ``forget``: it failed, the counters, windows and blocklist go back."""
        for room, seq in self._undo.items():
            if seq is None:
                self._seq.pop(room, None)
                self._windows.pop(room, None)
            else:
                self._seq[room] = seq
                if room in self._windows:
                    self._windows[room].drop_after(seq)
        self._undo.clear()
        with contextlib.suppress(sqlite3.Error):  # the database is where the last commit left it
            found = {room: first for room, first, _ in self._batch.db.execute(FIRST_LAST)}
            self._first = {room: found.get(room, seq + 1) for room, seq in self._seq.items()}
        if self._blocked_before is not None:
            self._blocked, self._blocked_before = self._blocked_before, None

    def size(self) -> int:
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())

    def close(self) -> None:
        self._batch.close()
        if self.lock is not None:
            self.lock.close()


def _args(text: str) -> list[str]:
    try:
        args = msgspec.json.decode(text, type=list[str])
    except msgspec.DecodeError:  # written by hand or by a later version: show it as it is
        return [text]
    return args
