"""MemoryStore (broker.store.memory): sequence numbers, history windows, ranges, rooms,
blocklist; the audit log of both stores; and the SQLite store's sender index and failed commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.store.base import AuditEntry, StoreError
from broker.store.memory import MemoryStore
from broker.store.sqlstore import ACKED, HIGHEST_MID, WINDOW_KEPT, SQLiteStore
from broker.store.sqlwriter import CHUNK
from broker.wire.protocol import LOBBY, Ack, Code, Posted

T0 = 1_000.0


def filled(count: int, room: str = "x", keep: int = 10_000) -> MemoryStore:
    store = MemoryStore(keep=keep)
    for i in range(1, count + 1):
        store.append(room, "alice", f"m{i}", T0 + i)
    return store


def seqs(messages: list[Posted]) -> list[int]:
    return [m.seq for m in messages]


# ---- append and last_seq -----------------------------------------------------------------------


def test_append_numbers_each_room_from_one() -> None:
    store = MemoryStore()
    assert store.append("x", "alice", "a", T0) == Posted("x", 1, T0, "alice", "a")
    assert store.append("x", "bob", "b", T0 + 1) == Posted("x", 2, T0 + 1, "bob", "b")
    assert store.append("y", "bob", "c", T0 + 2) == Posted("y", 1, T0 + 2, "bob", "c")
    assert store.append(LOBBY, "carol", "d", T0 + 3).seq == 1
    assert (store.last_seq("x"), store.last_seq("y"), store.last_seq(LOBBY)) == (2, 1, 1)


def test_last_seq_of_an_unknown_or_empty_room_is_zero() -> None:
    store = MemoryStore()
    store.add_room("empty")
    assert store.last_seq("nowhere") == 0
    assert store.last_seq("empty") == 0
    assert store.last_seq(LOBBY) == 0


def test_last_seq_keeps_counting_past_the_window() -> None:
    store = filled(12, keep=5)
    assert store.last_seq("x") == 12
    assert store.append("x", "bob", "next", T0).seq == 13


# ---- recent ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, []),
        (-3, []),
        (1, [10]),
        (3, [8, 9, 10]),
        (10, list(range(1, 11))),
        (99, list(range(1, 11))),
    ],
)
def test_recent(count: int, expected: list[int]) -> None:
    assert seqs(filled(10).recent("x", count)) == expected


def test_recent_is_limited_to_the_window() -> None:
    store = filled(12, keep=5)
    assert seqs(store.recent("x", 100)) == [8, 9, 10, 11, 12]
    assert seqs(store.recent("x", 2)) == [11, 12]


def test_recent_of_an_unknown_or_empty_room_is_empty() -> None:
    store = MemoryStore()
    store.add_room("empty")
    assert store.recent("nowhere", 5) == []
    assert store.recent("empty", 5) == []


def test_recent_returns_the_stored_messages() -> None:
    store = filled(3)
    assert store.recent("x", 1) == [Posted("x", 3, T0 + 3, "alice", "m3")]


# ---- range -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "upto", "limit", "expected"),
    [
        (0, 0, 1000, list(range(1, 11))),
        (3, 6, 1000, [4, 5, 6]),
        (3, 0, 2, [4, 5]),
        (9, 0, 1000, [10]),
        (10, 0, 1000, []),
        (15, 0, 1000, []),
        (6, 3, 1000, []),
        (6, 6, 1000, []),
        (5, 99, 1000, [6, 7, 8, 9, 10]),
        (-5, 2, 1000, [1, 2]),
        (0, -1, 1000, list(range(1, 11))),  # upto <= 0 means newest
        (0, 0, 1, [1]),
        (0, 0, 0, []),
    ],
)
def test_range(after: int, upto: int, limit: int, expected: list[int]) -> None:
    messages, first = filled(10).range("x", after, upto, limit)
    assert seqs(messages) == expected
    assert [m.text for m in messages] == [f"m{s}" for s in expected]
    assert first == 1


@pytest.mark.parametrize(
    ("after", "upto", "limit", "expected"),
    [
        (0, 0, 1000, [8, 9, 10, 11, 12]),  # older ones are gone: start at the window
        (3, 9, 1000, [8, 9]),
        (7, 0, 2, [8, 9]),
        (9, 11, 1000, [10, 11]),
        (0, 5, 1000, []),  # everything asked for is gone
        (12, 0, 1000, []),
    ],
)
def test_range_with_a_window_smaller_than_the_history(
    after: int, upto: int, limit: int, expected: list[int]
) -> None:
    messages, first = filled(12, keep=5).range("x", after, upto, limit)
    assert seqs(messages) == expected
    assert first == 8


def test_first_moves_as_the_window_slides() -> None:
    store = MemoryStore(keep=5)
    firsts = []
    for i in range(1, 9):
        store.append("x", "alice", f"m{i}", T0)
        firsts.append(store.range("x", 0, 0, 1000)[1])
    assert firsts == [1, 1, 1, 1, 1, 2, 3, 4]


def test_range_of_an_unknown_room_is_empty_from_one() -> None:
    assert MemoryStore().range("nowhere", 0, 0, 1000) == ([], 1)


def test_range_of_an_empty_room_is_empty_from_one() -> None:
    store = MemoryStore()
    store.add_room("empty")
    assert store.range("empty", 0, 0, 1000) == ([], 1)


def test_range_when_nothing_is_kept_says_everything_is_gone() -> None:
    store = filled(4, keep=0)
    assert store.last_seq("x") == 4
    assert store.range("x", 0, 0, 1000) == ([], 5)


@given(
    count=st.integers(0, 30),
    keep=st.integers(1, 12),
    after=st.integers(-2, 35),
    upto=st.integers(-2, 35),
    limit=st.integers(0, 40),
)
def test_range_matches_a_filter_over_the_window(
    count: int, keep: int, after: int, upto: int, limit: int
) -> None:
    store = filled(count, keep=keep)
    window = list(range(max(1, count - keep + 1), count + 1))
    top = count if upto <= 0 else upto
    expected = [s for s in window if after < s <= top][: max(limit, 0)]
    messages, first = store.range("x", after, upto, limit)
    assert seqs(messages) == expected
    assert first == (window[0] if window else count + 1)


# ---- rooms and reset ---------------------------------------------------------------------------


def test_rooms_start_with_the_lobby_and_grow_by_add_or_append() -> None:
    store = MemoryStore()
    assert store.rooms() == [LOBBY]
    store.add_room("x")
    store.append("y", "alice", "hi", T0)
    assert set(store.rooms()) == {LOBBY, "x", "y"}


def test_add_room_is_idempotent_and_keeps_history() -> None:
    store = filled(3)
    store.add_room("x")
    assert store.last_seq("x") == 3
    assert seqs(store.recent("x", 10)) == [1, 2, 3]
    assert store.rooms().count("x") == 1


def test_reset_removes_every_room_and_all_history_but_keeps_the_blocklist() -> None:
    store = filled(3, keep=5)
    store.append(LOBBY, "alice", "hi", T0)
    store.block("mallory")
    store.reset()
    assert store.rooms() == [LOBBY]
    assert store.last_seq("x") == 0
    assert store.last_seq(LOBBY) == 0
    assert store.recent(LOBBY, 10) == []
    assert store.blocked() == {"mallory"}
    # The window size survives the reset.
    for i in range(7):
        store.append("x", "alice", f"n{i}", T0)
    assert seqs(store.recent("x", 100)) == [3, 4, 5, 6, 7]


# ---- blocklist ---------------------------------------------------------------------------------


def test_block_and_unblock_report_whether_anything_changed() -> None:
    store = MemoryStore()
    assert store.blocked() == set()
    assert store.block("alice") is True
    assert store.block("alice") is False
    assert store.blocked() == {"alice"}
    assert store.unblock("bob") is False
    assert store.unblock("alice") is True
    assert store.unblock("alice") is False
    assert store.blocked() == set()


def test_commit_and_close_are_harmless() -> None:
    store = filled(2)
    store.commit()
    store.close()
    assert store.last_seq("x") == 2


# ---- audit log ---------------------------------------------------------------------------------


def _entry(i: int, ok: bool = True) -> AuditEntry:
    return AuditEntry(T0 + i, "admin", "K" * 40, "block", (f"user{i}",), ok, f"blocked user{i}")


def test_memory_audit_log_keeps_the_latest_oldest_first() -> None:
    store = MemoryStore()
    assert store.audit_log(5) == []
    for i in range(4):
        store.audit(_entry(i, ok=i % 2 == 0))
    assert store.audit_log(10) == [_entry(i, ok=i % 2 == 0) for i in range(4)]
    assert [e.args for e in store.audit_log(2)] == [("user2",), ("user3",)]
    assert store.audit_log(0) == []
    store.reset()  # the audit log is not chat state: reset keeps it
    assert len(store.audit_log(10)) == 4


def test_sqlite_audit_log_survives_a_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "room.db")
    for i in range(3):
        store.audit(_entry(i, ok=i != 1))
    assert [e.ts for e in store.audit_log(2)] == [T0 + 1, T0 + 2]  # visible before commit
    store.reset()
    store.close()
    again = SQLiteStore(tmp_path / "room.db")
    try:
        assert again.audit_log(10) == [_entry(i, ok=i != 1) for i in range(3)]
        assert again.audit_log(0) == []
    finally:
        again.close()


# ---- SQLite: the sender index ------------------------------------------------------------------


def test_a_retry_is_found_by_one_index_look_up_however_old(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "room.db")
    try:
        for i in range(1, 301):
            store.append(LOBBY if i % 2 else "x", "alice" if i % 3 else "bob", f"m{i}", T0 + i, i)
        store.commit()
        for query, args in ((ACKED, ("bob", 9)), (HIGHEST_MID, ("bob",))):
            plan = [row[3] for row in store._db.execute("EXPLAIN QUERY PLAN " + query, args)]
            assert len(plan) == 1, plan
            assert "INDEX messages_by_sender" in plan[0], plan
            assert not any("TEMP B-TREE" in step or step.startswith("SCAN") for step in plan)
        assert store.acked("bob", 3) == Ack(3, LOBBY, 2)  # the oldest of bob's 100
        assert store.acked("bob", 4) is None  # alice's id, not bob's
        assert store.highest_mid("bob") == 300
        assert store.highest_mid("nobody") == 0
    finally:
        store.close()


def test_a_database_with_the_old_sender_index_gets_the_new_one(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "room.db")
    db.executescript(
        "CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, "
        "sender TEXT NOT NULL, text TEXT NOT NULL, mid INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (room, seq)) WITHOUT ROWID;"
        "CREATE INDEX messages_by_sender_ts ON messages (sender, ts, mid);"
        f"INSERT INTO messages VALUES ('{LOBBY}', 1, {T0}, 'alice', 'old', 42);"
    )
    db.close()
    store = SQLiteStore(tmp_path / "room.db")
    try:
        indexes = {
            n for (n,) in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert "messages_by_sender" in indexes
        assert "messages_by_sender_ts" not in indexes
        assert store.acked("alice", 42) == Ack(42, LOBBY, 1)
        assert store.last_seq(LOBBY) == 1
    finally:
        store.close()


# ---- SQLite: a commit that fails -------------------------------------------------------------


def test_a_failed_commit_stores_nothing_and_rolls_the_counters_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "room.db")
    try:
        store.append(LOBBY, "alice", "kept", T0, 1)
        store.block("mallory")
        store.commit()
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from now on
        for i in range(300):
            store.append(LOBBY, "alice", "x" * 200, T0 + i, 100 + i)
        store.highest_mid("alice")  # a read writes the batch first: the error waits for the commit
        store.append("new", "bob", "in a new room", T0, 7)
        store.add_room("empty")
        store.block("eve")
        store.unblock("mallory")
        store.audit(_entry(1))
        with pytest.raises(StoreError, match="full") as failed:
            store.commit()
        assert str(failed.value).count("\n") == 0 and "room.db" in str(failed.value)
        # Back where the last commit left it: numbering stays dense.
        assert store.last_seq(LOBBY) == 1
        assert store.last_seq("new") == 0
        assert sorted(store.rooms()) == [LOBBY]
        assert store.blocked() == {"mallory"}
        assert store.acked("alice", 1) is not None and store.acked("alice", 100) is None
        assert store.audit_log(10) == []
        store._db.execute("PRAGMA max_page_count = 1073741823")  # space again
        assert store.append(LOBBY, "alice", "next", T0 + 1, 2).seq == 2
        assert store.append("new", "bob", "again", T0 + 1, 8).seq == 1
        store.commit()
    finally:
        store.close()
    again = SQLiteStore(tmp_path / "room.db")
    try:
        assert [(m.seq, m.text) for m in again.range(LOBBY, 0, 0, 1000)[0]] == [
            (1, "kept"),
            (2, "next"),
        ]
        assert sorted(again.rooms()) == sorted([LOBBY, "new"])
        assert again.blocked() == {"mallory"}
    finally:
        again.close()


def test_a_new_database_is_readable_by_its_owner_only(tmp_path):
    store = SQLiteStore(tmp_path / "room.db")
    store.append("public", "alice", "private words", 1.0)
    store.commit()
    try:
        for name in ("room.db", "room.db-wal"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        store.close()


def test_sqlite_keeps_sessions_across_a_restart_until_they_end(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "room.db")
    assert store.claim("alice", "s1", "") == "s1"
    assert store.claim("bob", "s2", "") == "s2"
    store.commit()
    store.close()
    store = SQLiteStore(tmp_path / "room.db")
    assert store.claim("alice", "new", "s1") == "s1"
    assert store.claim("alice", "new", "wrong") is Code.BAD_SESSION
    store.release("bob", end_session=True)
    store.commit()
    store.close()
    store = SQLiteStore(tmp_path / "room.db")
    assert store.claim("bob", "new", "s2") is Code.BAD_SESSION
    assert store.claim("alice", "new", "s1") == "s1"
    store.close()


def test_sessions_are_bounded_the_oldest_ending_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.store import names as store_module

    monkeypatch.setattr(store_module, "SESSIONS_KEPT", 3)
    store = MemoryStore()
    for i in range(5):
        assert store.claim(f"u{i}", f"s{i}", "") == f"s{i}"
    assert store.claim("u0", "new", "s0") is Code.BAD_SESSION
    assert store.claim("u1", "new", "s1") is Code.BAD_SESSION
    assert store.claim("u4", "new", "s4") == "s4"


def _text(i: int) -> str:
    return ("long " * 900 if i % 37 == 0 else "m") + str(i)  # some fill the window's text bound


def test_the_sqlite_window_answers_as_the_database_does(tmp_path: Path) -> None:
    """Joins and repairs are read from the newest messages in memory; the answers are the
    database's exactly, at the window's edges, after a prune, and after a failed batch."""
    path = tmp_path / "room.db"
    store = SQLiteStore(path)
    try:
        for i in range(1, 201):
            store.append("x", "alice", _text(i), T0 + i, i)
        store.append("y", "bob", "only", T0, 1)
        store.commit()
        assert store.prune(150, 0.0, 1000) == 50
        store.commit()
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")  # a batch that cannot be stored
        for i in range(300):
            store.append("x", "alice", "x" * 200, T0 + i, 1000 + i)
        with pytest.raises(StoreError):
            store.commit()
        store._db.execute("PRAGMA max_page_count = 1073741823")
        for i in range(201, 241):
            store.append("x", "alice", _text(i), T0 + i, i)
        store.commit()
        assert 150 < store._windows["x"].first() <= 240 - 20  # the window holds the newest
        fresh = SQLiteStore(path)  # an empty window: everything from the database
        try:
            for room in ("x", "y", "absent"):
                for count in (0, 1, 20, WINDOW_KEPT - 1, WINDOW_KEPT, WINDOW_KEPT + 1, 190, 191):
                    assert store.recent(room, count) == fresh.recent(room, count), (room, count)
                for after in (0, 49, 50, 51, 120, 180, 199, 200, 220, 239, 240, 250):
                    for upto in (0, 60, 181, 221, 240, 300):
                        for limit in (1, 5, 1000):
                            want = fresh.range(room, after, upto, limit)
                            assert store.range(room, after, upto, limit) == want
        finally:
            fresh.close()
    finally:
        store.close()


def test_a_join_in_a_flood_reads_history_without_waiting_for_the_writer(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "room.db")
    try:
        for i in range(1, 2 * CHUNK + 1):
            store.append("x", "alice", f"m{i}", T0 + i, i)
        assert store._handed  # chunks are with the writer thread
        assert seqs(store.recent("x", 20)) == list(range(2 * CHUNK - 19, 2 * CHUNK + 1))
        assert seqs(store.range("x", 2 * CHUNK - 10, 0, 1000)[0]) == list(
            range(2 * CHUNK - 9, 2 * CHUNK + 1)
        )
        assert store._handed  # still: nothing waited for them
        store.commit()
    finally:
        store.close()
