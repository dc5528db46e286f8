"""Durability and delivery, end to end: broker crashes and restarts, slow, frozen and late clients.

Real processes on loopback. The piped client shows no acknowledgements, so what a sender saw
acknowledged is observed with ``Raw``, a bare DEALER speaking the protocol. Brokers run with a
short ``--heartbeat`` so that liveness (5 intervals) plays out in about a second.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from procs import (
    MIDS,
    WAIT,
    BrokerProc,
    ClientFactory,
    ClientProc,
    Raw,
    assert_all_acknowledged_stored_once,
    broker_argv,
    ctl,
)

from broker.config import Exit
from broker.loop.server import StartError, open_store
from broker.wire import protocol as p

NO_LIMIT = ("--rate", "0")
"""No rate limit, for floods."""
FAST = ("--heartbeat", "0.2", *NO_LIMIT)
"""Liveness (5 intervals) in about a second, and no rate limit."""


@pytest.fixture
def procs() -> Iterator[list[BrokerProc | ClientProc]]:
    """Processes a test starts itself; every one is killed at teardown."""
    started: list[BrokerProc | ClientProc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.kill()  # SIGKILL works on a stopped process too


def _room_lines(client: ClientProc, room: str, sender: str) -> list[str]:
    prefix = f"[{room}] {sender}: "
    return [line[len(prefix) :] for line in client.seen if line.startswith(prefix)]


def test_kill9_loses_no_acknowledged_message_and_clients_resume(
    tmp_path: Path, ctx: zmq.Context, procs: list
):
    first = BrokerProc(tmp_path / "data", *FAST)
    procs.append(first)
    clients = ClientFactory(first)
    alice = clients.join("alice")
    bob = clients.join("bob")
    procs += [alice, bob]
    assert ctl(first, "block", "carol").returncode == 0
    Raw(ctx, first.router, "gamer", "games")  # creates the room games

    writer = Raw(ctx, first.router, "writer")
    sent = {mid: f"w{mid}" for mid in itertools.islice(MIDS, 300)}
    for mid, text in sent.items():
        writer.send(p.Say(text, mid))
    acked: dict[int, p.Ack] = {}
    while len(acked) < 100:
        ack = writer.expect(p.Ack)
        acked[ack.mid] = ack
    first.kill9()  # with messages still in flight
    killed = time.monotonic()
    while (msg := writer.recv(0.3)) is not None:
        if isinstance(msg, p.Ack):
            acked[msg.mid] = msg
    writer.close()
    alice.expect(r"^\* lost the broker", timeout=5)
    bob.expect(r"^\* lost the broker", timeout=5)
    noticed = time.monotonic() - killed
    assert noticed < 3, f"{noticed:.1f}s: the clients did not follow the broker's 0.2 s heartbeat"

    second = first.restart()
    procs.append(second)
    writer = Raw(ctx, second.router, "writer")  # at once: before the clients are back
    for _ in range(200):
        mid = next(MIDS)
        sent[mid] = f"w{mid}"
        acked[mid] = writer.say(sent[mid], mid)
    alice.expect(r"^\* reconnected", timeout=5)
    bob.expect(r"^\* reconnected", timeout=5)
    alice.send("after the crash")
    bob.expect(r"^\[public\] alice: after the crash$")

    history = Raw(ctx, second.router, "reader").history()
    written = assert_all_acknowledged_stored_once(history, acked, sent)
    # The clients saw what was published before the crash live, and fetched the rest (committed
    # but not yet published at the kill, or published before their subscription was back).
    for client in (alice, bob):
        if f"[public] writer: {written[-1]}" not in client.seen:
            client.expect(rf"^\[public\] writer: {written[-1]}$")
        assert _room_lines(client, "public", "writer") == written
    assert "already blocked" in ctl(second, "block", "carol").stdout
    assert "games" in ctl(second, "rooms").stdout

    late = ClientFactory(second).start("late", "--history", "1000")
    procs.append(late)
    late.expect(r"^\* joined public$")
    assert _room_lines(late, "public", "writer") == written
    assert second.stop() == 0


def test_a_retried_message_is_stored_once_even_across_a_restart(
    tmp_path: Path, ctx: zmq.Context, procs: list
):
    first = BrokerProc(tmp_path / "data", *FAST, "--sync", "full")
    procs.append(first)
    raw = Raw(ctx, first.router, "retry")
    ack = raw.say("only once", 4242)
    assert raw.say("only once", 4242) == ack
    raw.say("something else")
    assert raw.say("only once", 4242) == ack  # still known after a later message
    raw.close()
    first.kill9()

    second = first.restart()
    procs.append(second)
    raw = Raw(ctx, second.router, "retry")
    assert raw.say("only once", 4242) == ack
    texts = [m.text for m in raw.history()]
    assert texts == ["only once", "something else"]
    assert second.stop() == 0


FLOOD = 2000


def test_a_client_with_a_tiny_queue_still_sees_every_message_once_in_order(
    tmp_path: Path, ctx: zmq.Context, procs: list
):
    # Over TCP a full SUB queue pushes back to the broker's PUB queue (10 000 sends deep), which
    # is where a slow subscriber would lose messages: see the next test, which makes it drop.
    broker = BrokerProc(tmp_path / "data", *NO_LIMIT)
    procs.append(broker)
    slow = ClientFactory(broker).join("slow", "flood", "--sub-hwm", "1", "--history", "0")
    procs.append(slow)
    flooder = Raw(ctx, broker.router, "flooder", "flood")
    texts = [f"f{i:05d}" for i in range(FLOOD)]
    for text in texts:
        flooder.send(p.Say(text, next(MIDS)))
    for _ in texts:
        flooder.expect(p.Ack)
    slow.expect(rf"^\[flood\] flooder: {texts[-1]}$", timeout=20)
    slow.drain(0.3)
    assert _room_lines(slow, "flood", "flooder") == texts
    assert not any("lost" in line for line in slow.seen)
    assert broker.stop() == 0


DROP_FLOOD = 4000
PUB_DROPS = ("--pub-hwm", "1", "--pub-sndbuf", "4096", "--heartbeat", "30")
"""A PUB queue of one send and a small kernel buffer: a stopped subscriber loses messages at once.
The long heartbeat keeps the broker's Pings, which also say a room's newest seq, out of the test."""


def test_messages_the_pub_dropped_for_a_stopped_client_are_repaired_once_in_order(
    tmp_path: Path, ctx: zmq.Context, procs: list
):
    broker = BrokerProc(tmp_path / "data", *NO_LIMIT, *PUB_DROPS)
    procs.append(broker)
    slow = ClientFactory(broker).join("slow", "flood", "--sub-hwm", "1", "--history", "0")
    procs.append(slow)
    flooder = Raw(ctx, broker.router, "flooder", "flood")
    pad = "x" * 500  # about 2 MB in all: more than the TCP buffers between broker and client hold
    texts = [f"d{i:05d} {pad}" for i in range(DROP_FLOOD)]
    os.kill(slow.popen.pid, signal.SIGSTOP)
    try:
        for text in texts:
            flooder.send(p.Say(text, next(MIDS)))
        for _ in texts:
            flooder.expect(p.Ack)
    finally:
        os.kill(slow.popen.pid, signal.SIGCONT)
    # Once the client has shown what reached it, one more message shows it the hole; the PUB may
    # drop that one too while the client still drains its backlog, so it is sent until one comes.
    slow.drain(0.5)
    ends: list[str] = []
    while not any(f"[flood] flooder: {end}" in slow.seen for end in ends):
        assert len(ends) < 5, "no message after the flood reached the client"
        ends.append(f"the end {len(ends)}")
        flooder.say(ends[-1])
        slow.drain(1.0)
    if f"[flood] flooder: {ends[-1]}" not in slow.seen:
        slow.expect(rf"^\[flood\] flooder: {ends[-1]}$", timeout=20)
    slow.drain(0.3)
    assert _room_lines(slow, "flood", "flooder") == [*texts, *ends]
    assert not any("lost" in line for line in slow.seen)
    # Without broker Pings the client fetches only what it saw missing between the messages the
    # PUB delivered: anything fetched was dropped at the PUB.
    done = ctl(broker, "--json", "stats")
    assert done.returncode == 0, done.stderr
    fetched = json.loads(done.stdout)["data"]["stats"]["fetched"]
    assert 0 < fetched <= DROP_FLOOD + len(ends), fetched
    assert broker.stop() == 0


def test_a_client_joining_during_a_flood_misses_nothing_after_joined(
    tmp_path: Path, ctx: zmq.Context, procs: list
):
    broker = BrokerProc(tmp_path / "data", *NO_LIMIT)
    procs.append(broker)
    flooder = Raw(ctx, broker.router, "flooder", "flood")
    joined = threading.Event()
    started = threading.Event()
    count = 0

    def flood() -> None:  # the socket is used by this thread alone while it runs
        nonlocal count
        after_join = 0
        while after_join < 300 and count < 50_000:
            flooder.send(p.Say(f"f{count:05d}", next(MIDS)))
            count += 1
            if count == 100:
                started.set()
            if joined.is_set():
                after_join += 1
            if count % 20 == 0:  # pacing, not a wait: the flood goes on around the join
                time.sleep(0.002)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        assert started.wait(WAIT)
        late = ClientFactory(broker).start("late", "--room", "flood", "--history", "0")
        procs.append(late)
        late.expect(r"^\* joined flood$")
    finally:
        joined.set()
        thread.join(WAIT)
    assert not thread.is_alive()
    for _ in range(count):
        flooder.expect(p.Ack)
    last = f"f{count - 1:05d}"
    late.expect(rf"^\[flood\] flooder: {last}$", timeout=20)
    # The room's number at the join (Joined.seq), from the broker's log, which is in the order the
    # broker did things: the flood's messages stored before "late entered flood". The flooder is
    # the room's only writer, so message f<i> is number i + 1.
    broker.expect(r"\* late entered flood \(")
    before = [m[1] for line in broker.seen if (m := re.search(r"\[flood\] flooder: (\S+)$", line))]
    joined_at = len(before)
    assert before == [f"f{i:05d}" for i in range(joined_at)]
    assert 0 < joined_at < count, "the join was not during the flood: nothing was tested"
    # Every message after that number is shown, once and in order: those stored before Synced
    # (ahead of "* joined flood") as well as the rest.
    shown = [line.split(": ", 1)[1] for line in late.seen if line.startswith("[flood] flooder: ")]
    assert shown == [f"f{i:05d}" for i in range(joined_at, count)]
    after = late.seen[late.seen.index("* joined flood") + 1 :]
    assert any(line.startswith("[flood] flooder: ") for line in after), "nothing after the join"
    assert broker.stop() == 0


def test_a_frozen_client_is_dropped_and_its_name_freed(tmp_path: Path, procs: list):
    broker = BrokerProc(tmp_path / "data", *FAST)
    procs.append(broker)
    clients = ClientFactory(broker)
    watcher = clients.join("watcher")
    frozen = clients.join("frozen")
    procs += [watcher, frozen]
    os.kill(frozen.popen.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    watcher.expect(r"^\* frozen left public$", timeout=5)
    dropped_after = time.monotonic() - t0
    assert dropped_after < 3, f"dropped after {dropped_after:.1f}s"
    assert "frozen" not in ctl(broker, "who").stdout
    again = clients.join("frozen")
    procs.append(again)
    watcher.expect(r"^\* frozen entered public$")
    os.kill(frozen.popen.pid, signal.SIGCONT)
    assert frozen.wait() == Exit.DISCONNECTED  # it does not take its name back
    assert frozen.err and "Traceback" not in "\n".join(frozen.err)
    again.send("it is mine now")
    watcher.expect(r"^\[public\] frozen: it is mine now$")
    assert re.search(r"(?m)^frozen\s+public", ctl(broker, "who").stdout)
    assert broker.stop() == 0


def _garbage(db: Path) -> None:
    db.write_bytes(b"this is not an SQLite database\n" * 200)


def _truncated(db: Path) -> None:
    store = open_store(db.parent)
    for i in range(3000):
        store.append(p.LOBBY, "alice", f"message {i}", float(i))
    store.commit()
    store.close()
    whole = db.read_bytes()
    db.write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize("spoil", [_garbage, _truncated])
def test_a_corrupt_database_stops_the_start_and_is_left_alone(tmp_path: Path, spoil):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "room.db"
    spoil(db)
    before = db.read_bytes()
    done = subprocess.run(
        broker_argv(data), capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("room-broker: "), done.stderr
    assert "room.db" in done.stderr
    assert db.read_bytes() == before


def test_the_data_dir_stays_locked_after_commits(tmp_path: Path):
    store = open_store(tmp_path)
    store.append(p.LOBBY, "alice", "hi", 1.0)
    store.commit()  # once dropped the lock file, and with it the lock
    with pytest.raises(StartError, match="another broker"):
        open_store(tmp_path)
    store.close()
    open_store(tmp_path).close()  # released on close


def test_a_second_broker_on_the_same_data_dir_is_refused(broker: BrokerProc, clients):
    clients.join("alice").send("the first broker has written")
    done = subprocess.run(
        broker_argv(broker.data_dir), capture_output=True, text=True, timeout=WAIT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "another broker is using the data dir" in done.stderr


def test_a_stall_that_makes_a_client_retry_500_messages_stores_none_twice(
    tmp_path: Path, ctx: zmq.Context, procs: list
):
    """The broker stops (SIGSTOP) while a client sends 500 messages and, hearing nothing, sends
    them all again with the same ids: far more than any window of recent ids."""
    broker = BrokerProc(tmp_path / "data", *NO_LIMIT)
    procs.append(broker)
    raw = Raw(ctx, broker.router, "stalled")
    sent = {mid: f"s{mid}" for mid in itertools.islice(MIDS, 500)}
    os.kill(broker.popen.pid, signal.SIGSTOP)
    try:
        for _ in range(2):  # the messages, then the retries
            for mid, text in sent.items():
                raw.send(p.Say(text, mid))
    finally:
        os.kill(broker.popen.pid, signal.SIGCONT)
    answers: dict[int, list[p.Ack]] = {}
    while sum(len(a) for a in answers.values()) < 2 * len(sent):
        ack = raw.expect(p.Ack)
        assert isinstance(ack, p.Ack)
        answers.setdefault(ack.mid, []).append(ack)
    assert set(answers) == set(sent)
    assert all(first == again for first, again in answers.values())  # the same Ack twice
    acked = {mid: acks[0] for mid, acks in answers.items()}
    assert_all_acknowledged_stored_once(raw.history(), acked, sent)
    raw.close()
    assert broker.stop() == 0
