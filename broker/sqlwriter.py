"""The store's threads: message rows go into SQLite on a thread of their own while the loop goes
on with its batch, and WAL checkpoints run on another.

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
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Final

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
