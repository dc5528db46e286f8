"""A commit that fails (disk full, I/O error): what it stored is refused, not acknowledged, nothing
of its batch is published, one line is logged, and the broker keeps serving.

``FlakyStore`` is the real SQLite store whose ``COMMIT`` meets an I/O error on demand, so the real
rollback runs. The chat is driven directly first, then a whole ``Broker`` in this process, on real
loopback sockets (store-level failures with a genuinely full database are in test_store).
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from procs import WAIT, Replies, subscriber

from broker.chat.chat import STORE_FAILED, Chat, Settings
from broker.logfmt import LogWriter
from broker.loop.server import Broker, Endpoints
from broker.store.base import StoreError
from broker.store.sqlstore import SQLiteStore
from broker.wire import protocol as p

T0 = 1_000.0
ANY_PORT = "tcp://127.0.0.1:0"


class _FailingCommit:
    """The store's connection, but ``COMMIT`` fails while the store's ``fail`` count lasts."""

    def __init__(self, db: sqlite3.Connection, store: FlakyStore) -> None:
        self._db, self._store = db, store

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self._store.fail:
            self._store.fail -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class FlakyStore(SQLiteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail = 0
        """How many of the next commits (with something to write) fail."""
        self._db = _FailingCommit(self._db, self)  # type: ignore[assignment]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FlakyStore]:
    s = FlakyStore(tmp_path / "room.db")
    try:
        yield s
    finally:
        s.close()


def _hello(chat: Chat, name: str) -> Any:
    chat.handle(name.encode(), p.Hello(p.VERSION, name), T0)
    return chat.users[name]


def test_a_failed_commit_turns_the_batch_into_refusals(store: FlakyStore) -> None:
    chat = Chat(store, Settings("tcp://127.0.0.1:1", rate=0))
    alice, bob = _hello(chat, "alice"), _hello(chat, "bob")
    chat.handle(alice.peer, p.Say("stored before", 9), T0)
    chat.out.take()
    store.commit()

    store.fail = 1
    chat.handle(alice.peer, p.Say("lost", 1), T0)
    chat.handle(alice.peer, p.Say("lost", 1), T0)  # a retry in the same batch
    chat.handle(alice.peer, p.Say("stored before", 9), T0)  # a retry of a stored one
    chat.handle(bob.peer, p.Fetch(p.LOBBY, 0), T0)
    chat.handle(bob.peer, p.Join("games", 5), T0)
    chat.handle(bob.peer, p.Tell("alice", "not stored anyway", 3), T0)
    chat.tick(T0)  # Pings carry each room's newest seq
    out = chat.out.take()
    with pytest.raises(StoreError, match="disk I/O error"):
        store.commit()
    assert chat.commit_failed(out) == 1

    to_alice = [m for peer, m in out.replies if peer == alice.peer]
    refused = p.Refused(1, p.Code.UNAVAILABLE, STORE_FAILED)
    assert [m for m in to_alice if isinstance(m, p.Ack | p.Refused)] == [
        refused,
        refused,
        p.Ack(9, p.LOBBY, 1),
    ]
    assert p.Ping(p.LOBBY, 1) in to_alice  # not 2: that number is used again
    to_bob = [m for peer, m in out.replies if peer == bob.peer]
    messages = next(m for m in to_bob if isinstance(m, p.Messages))
    assert [m.text for m in messages.messages] == ["stored before"]
    assert any(isinstance(m, p.Told) for m in to_bob)
    assert p.Ack(3, "", 0) in to_bob  # the direct message was delivered: nothing to store
    assert out.rooms == {}
    assert not any(e.kind == "msg" for e in out.logs)
    assert store.acked("alice", 1) is None and store.acked("alice", 9) == p.Ack(9, p.LOBBY, 1)
    assert (chat.counters.accepted, chat.counters.refused) == (1, 1)

    # The next batch commits: the retried message is stored once, with the next number.
    chat.handle(alice.peer, p.Say("lost", 1), T0)
    out = chat.out.take()
    store.commit()
    assert (alice.peer, p.Ack(1, p.LOBBY, 2)) in out.replies
    assert [m.seq for m in out.rooms[p.LOBBY] if isinstance(m, p.Posted)] == [2]
    assert (chat.counters.accepted, chat.counters.refused) == (2, 1)


def test_a_failed_commit_keeps_what_the_room_list_says_of_private_rooms(
    store: FlakyStore,
) -> None:
    chat = Chat(store, Settings("tcp://127.0.0.1:1", rate=0))
    alice = _hello(chat, "alice")
    chat.handle(alice.peer, p.Join("ops"), T0)
    chat.make_private("ops", T0)
    chat.out.take()
    store.commit()

    store.fail = 1
    chat.handle(alice.peer, p.Say("lost", 1), T0)
    chat.handle(alice.peer, p.ListRooms(), T0)
    out = chat.out.take()
    with pytest.raises(StoreError):
        store.commit()
    chat.commit_failed(out)
    listed = next(m for _, m in out.replies if isinstance(m, p.Rooms))
    assert [(r.name, r.private, r.seq) for r in listed.rooms if r.name == "ops"] == [
        ("ops", True, 0)
    ]


# ---- the whole broker ------------------------------------------------------------------------


class _Running:
    """A Broker serving in a thread of this process; ``stop`` returns what ``run`` raised."""

    def __init__(self, store: FlakyStore) -> None:
        self.log = io.StringIO()
        self.broker = Broker(
            Endpoints(ANY_PORT, ANY_PORT, ANY_PORT),
            store=store,
            rate=0,
            room_keys=False,  # its subscriber reads the PUB as is; test_roomkeys seals
            log=LogWriter(self.log),
        )
        self.raised: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.broker.run()
        except BaseException as exc:  # reported by stop
            self.raised = exc

    def stop(self) -> BaseException | None:
        self.broker.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the broker did not stop"
        return self.raised


def _next_posted(sub: zmq.Socket) -> p.Posted:
    while sub.poll(WAIT * 1000):
        _, body = sub.recv_multipart()
        posted = [e for e in p.decode_room(body) if isinstance(e, p.Posted)]
        if posted:
            assert len(posted) == 1, posted
            return posted[0]
    raise AssertionError("nothing published")


def test_the_broker_refuses_what_it_could_not_store_and_keeps_serving(
    store: FlakyStore, ctx: zmq.Context
) -> None:
    running = _Running(store)
    endpoints = running.broker.endpoints
    dealer = ctx.socket(zmq.DEALER)
    sub = None
    try:
        dealer.linger = 0
        dealer.connect(endpoints.router)
        replies = Replies(dealer)
        dealer.send(p.encode(p.Hello(p.VERSION, "alice")))
        welcome = replies.expect(p.Welcome)
        assert isinstance(welcome, p.Welcome)
        sub = subscriber(ctx, endpoints.pub, welcome)
        sub.setsockopt(zmq.SUBSCRIBE, p.topic(p.LOBBY))
        for nonce in range(1, 100):  # until the subscription is live
            dealer.send(p.encode(p.Sync(nonce)))
            if sub.poll(100):
                sub.recv_multipart()
                break

        store.fail = 1
        dealer.send(p.encode(p.Say("lost", 1)))
        answer = replies.expect(p.Ack | p.Refused)
        assert answer == p.Refused(1, p.Code.UNAVAILABLE, STORE_FAILED)
        dealer.send(p.encode(p.Say("kept", 2)))
        assert replies.expect(p.Ack | p.Refused) == p.Ack(2, p.LOBBY, 1)  # dense numbering
        posted = _next_posted(sub)
        assert (posted.seq, posted.sender, posted.text) == (1, "alice", "kept")
        dealer.send(p.encode(p.Fetch(p.LOBBY, 0)))
        stored = replies.expect(p.Messages)
        assert [m.text for m in stored.messages] == ["kept"]
    finally:
        dealer.close(0)
        if sub is not None:
            sub.close(0)
        raised = running.stop()
    assert raised is None, repr(raised)
    log = running.log.getvalue().splitlines()
    errors = [line for line in log if "could not store" in line]
    assert len(errors) == 1, log
    assert "disk I/O error" in errors[0] and "1 messages refused" in errors[0]
    assert not any(": lost" in line for line in log), log
    assert any("alice: kept" in line for line in log), log
    assert "Traceback" not in running.log.getvalue()
