"""The data dir: one broker at a time (a lock file), and its database."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Final

from broker.store.base import StoreError
from broker.store.sqlstore import DEFAULT_SYNC, SQLiteStore


class StartError(Exception):
    """The broker cannot start; the message is one line for the operator."""


DB_FILE: Final = "room.db"
LOCK_FILE: Final = "broker.lock"


def open_store(home: Path, sync: str = DEFAULT_SYNC) -> SQLiteStore:
    """Create the data dir, take its lock (one broker per data dir) and open the database."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(home / LOCK_FILE, "a")  # noqa: SIM115 - held for the life of the process
    except OSError as exc:
        raise StartError(
            f"cannot use the data dir {home}: {exc.strerror}: choose another"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StartError(
            f"another broker is using the data dir {home}: stop it, or choose another --data-dir"
        ) from None
    try:
        store = SQLiteStore(home / DB_FILE, sync)
    except StoreError as exc:
        lock.close()
        raise StartError(str(exc)) from None
    store.lock = lock
    return store
