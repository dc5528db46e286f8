"""The store's batch: one open transaction per turn of the loop, message rows inserted into it on a
thread of their own while the loop goes on, and WAL checkpoints on another.

The loop hands over rows ``CHUNK`` at a time; the writer inserts each chunk in one multi-row
``INSERT`` into the open transaction. sqlite3 releases the GIL while SQLite works, so on two cores
the B-tree work of one chunk overlaps the decoding and chat rules of the next messages (the
profile: inserting was a quarter of the broker's time in a flood). Nothing else changes: the
loop waits (``wait``) before it reads, writes anything else, or commits, so the connection is
used by one thread at a time, the transaction holds exactly what it held before, and an Ack
still follows the ``COMMIT`` of its batch.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Final

from broker.store.base import StoreError

CHUNK: Final = 128
"""Rows per INSERT (768 parameters, far below SQLite's limit)."""

Row = tuple[str, int, float, str, str, int]


@lru_cache(maxsize=CHUNK)
def insert_sql(rows: int) -> str:
    """One INSERT of ``rows`` messages (a few sizes only: sqlite3 keeps them prepared)."""
    return "INSERT INTO messages VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)


class RowWriter(threading.Thread):
    """Inserts the chunks it is given, in order; the first error is kept for ``wait``."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(name="row-writer", daemon=True)
        self._db = db
        self._cond = threading.Condition()
        self._chunks: deque[list[Row]] = deque()
        self._busy = False
        self._halt = False
        self._error: sqlite3.Error | None = None

    def submit(self, rows: list[Row]) -> None:
        """Rows for the open transaction (the loop has begun it)."""
        with self._cond:
            self._chunks.append(rows)
            self._cond.notify()

    def wait(self) -> sqlite3.Error | None:
        """Until every chunk given is in; the first error since the last wait, if any."""
        with self._cond:
            while self._chunks or self._busy:
                self._cond.wait()
            error, self._error = self._error, None
        return error

    def run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._chunks and not self._halt:
                    cond.wait()
                if not self._chunks:
                    return
                rows = self._chunks.popleft()
                self._busy = True
                failed = self._error is not None
            try:
                if not failed:  # after an error the batch is lost: the loop rolls it back
                    self._db.execute(insert_sql(len(rows)), list(chain.from_iterable(rows)))
            except sqlite3.Error as exc:
                self._error = exc
            except Exception as exc:  # a bug must fail the batch, never leave the loop waiting
                self._error = sqlite3.DatabaseError(f"row writer: {type(exc).__name__}: {exc}")
            finally:
                with cond:
                    self._busy = False
                    if not self._chunks:
                        cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._halt = True
            self._cond.notify_all()
        self.join(5)


CHECKPOINT_EVERY: Final = 1.0
"""Seconds between WAL checkpoints, run by a thread of their own so that their fsyncs never
stall the broker's loop (SQLite's automatic checkpoint would run inside a commit)."""


class Checkpointer(threading.Thread):
    """Moves the WAL into the database in the background (PASSIVE: never blocks a writer)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="wal-checkpoint", daemon=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._halt = threading.Event()  # not _stop: that is Thread's own method

    def run(self) -> None:
        while not self._halt.wait(CHECKPOINT_EVERY):
            with contextlib.suppress(sqlite3.Error):  # busy now: the next round catches up
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self._db.close()


class SQLiteBatch:
    """The open batch of a SQLite store: every write goes into one transaction, message rows
    ``CHUNK`` at a time through the ``RowWriter``; ``commit`` makes it durable or forgets it.

    The store appends message rows to ``rows`` itself (the hot path: no call per message) and
    calls ``hand_off`` when ``CHUNK`` are there. A write that fails is kept, never raised, so the
    chat's decisions stand until ``commit`` says the batch failed; then ``forget`` puts the
    store's own counters back (``kept``: the batch is durable, the store's undo records can go)."""

    def __init__(
        self,
        db: sqlite3.Connection,
        path: Path,
        kept: Callable[[], None],
        forget: Callable[[], None],
    ) -> None:
        self.db = db
        """The store's connection: the loop's, except while the writer inserts a chunk."""
        self.path = path
        self._kept = kept
        self._forget = forget
        self._checkpointer = Checkpointer(path)
        self._writer = RowWriter(db)
        self.handed = False
        """Chunks were handed to the writer since it was last waited for."""
        self._dirty = False
        self.rows: list[Row] = []
        """Messages appended and not yet handed to the writer (``CHUNK`` at a time)."""
        self._failed: sqlite3.Error | None = None
        """The first write error of the open batch: later writes are skipped, ``commit`` fails."""

    def start(self) -> None:
        self._checkpointer.start()
        self._writer.start()

    def write(self, sql: str, args: tuple[object, ...]) -> None:
        """One statement in the batch's transaction; an error is kept for ``commit``."""
        self.write_rows()  # the writer is idle after this: the connection is ours
        if self._failed is not None:
            return
        try:
            if not self._dirty:
                self.db.execute("BEGIN")
                self._dirty = True
            self.db.execute(sql, args)
        except sqlite3.Error as exc:
            self._failed = exc

    def hand_off(self) -> None:
        """A full chunk to the writer thread, which inserts it while the loop goes on."""
        if self._begin():
            self._writer.submit(self.rows)
            self.handed = True
        self.rows = []

    def _begin(self) -> bool:
        """The batch's transaction is open (or the batch has failed: False). Before the first
        chunk is handed over the writer is idle, so the connection is the loop's."""
        if self._failed is not None:
            return False
        if not self._dirty:
            try:
                self.db.execute("BEGIN")
            except sqlite3.Error as exc:
                self._failed = exc
                return False
            self._dirty = True
        return True

    def write_rows(self) -> None:
        """Every buffered message into the open transaction, and the writer idle: before any
        read, any other write, and the commit. What is left of a chunk is inserted here, on the
        loop's thread: a lone message at a low rate costs no hand-over between threads."""
        if self.handed:
            self.handed = False
            error = self._writer.wait()
            if error is not None and self._failed is None:
                self._failed = error
        rows = self.rows
        if rows:
            if self._begin():
                try:
                    self.db.execute(insert_sql(len(rows)), list(chain.from_iterable(rows)))
                except sqlite3.Error as exc:
                    self._failed = exc
            self.rows = []

    def commit(self) -> None:
        """Make the batch durable, or roll it back and raise ``StoreError`` (see ``sqlstore``)."""
        self.write_rows()
        try:
            if self._failed is not None:
                raise self._failed
            if self._dirty:
                self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"the database {self.path} could not store a batch ({exc})") from None
        self._dirty = False
        self._kept()

    def _rollback(self) -> None:
        """Forget the failed batch, in the database and in what the store keeps in memory."""
        self._writer.wait()
        self.handed = False
        if self.db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL, IOERR)
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        self.rows = []
        self._dirty = False
        self._failed = None
        self._forget()

    def close(self) -> None:
        with contextlib.suppress(StoreError):  # nothing uncommitted was acknowledged
            self.commit()
        self._writer.stop()
        self._checkpointer.stop()
        self.db.close()
