"""One broker's capacity (issue 27): it never lets connections take its last file descriptors,
and never leaves a request unanswered for good. Real processes over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import zmq
from conftest import client_factory, running_broker
from procs import MIDS, WAIT, BrokerProc, Canary, PreludedBroker, Raw, _cmd, ctl

from broker.loop.descriptors import RESERVE
from broker.wire import protocol as p
from client.core import Session
from client.effects import Reconnect, Send

LIMIT = 256
LOW_LIMIT = f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT}))"
"""A prelude that leaves the broker 256 descriptors and no way to raise them, as ``prlimit``."""
FLOOD = 300


@contextlib.contextmanager
def preluded(data_dir: Path, prelude: str, *extra: str) -> Iterator[PreludedBroker]:
    broker = PreludedBroker(data_dir, prelude, *extra)
    try:
        yield broker
    finally:
        try:
            broker.stop()
        finally:
            broker.kill()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def stats(broker: BrokerProc) -> dict:
    done = ctl(broker, "stats", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["data"]["stats"]


class Flood:
    """Connections that say hello as fast as they can; those welcomed then stay alive (they
    ping), the others are refused in their handshake."""

    def __init__(self, ctx: zmq.Context, router: str, count: int) -> None:
        self.socks: list[zmq.Socket] = []
        self.welcomed: set[zmq.Socket] = set()
        self.full: set[zmq.Socket] = set()
        for i in range(count):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(router)
            with contextlib.suppress(zmq.Again):  # refused already: no pipe to queue it on
                sock.send(p.encode(p.Hello(p.VERSION, f"flood{i}")), zmq.NOBLOCK)
            self.socks.append(sock)

    def pump(self) -> None:
        """Read what came (noting each Welcome, and each hello refused as ``full``), and ping
        for those welcomed."""
        for sock in self.socks:
            while sock.poll(0):
                for m in p.decode_server(sock.recv()):
                    if isinstance(m, p.Welcome):
                        self.welcomed.add(sock)
                    elif isinstance(m, p.Error) and m.code == p.Code.FULL:
                        self.full.add(sock)
            if sock in self.welcomed:
                with contextlib.suppress(zmq.Again):
                    sock.send(p.encode(p.Ping()), zmq.NOBLOCK)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(0)


def expect_alive(broker: PreludedBroker, pattern: str, *alive: Canary | Flood) -> re.Match[str]:
    """``broker.expect``, while ``alive`` keep pinging (the broker drops a silent user)."""
    deadline = time.monotonic() + WAIT
    while True:
        for who in alive:
            who.pump() if isinstance(who, Flood) else who.ping()
        try:
            return broker.expect(pattern, timeout=0.5)
        except AssertionError:
            if broker.ended or time.monotonic() > deadline:
                raise


def wait_connections(broker: BrokerProc, count: int) -> dict:
    """``stats`` once the broker counts ``count`` ROUTER connections (within ``WAIT``)."""
    deadline = time.monotonic() + WAIT
    while (now := stats(broker))["connections"] != count:
        assert time.monotonic() < deadline, f"{now['connections']} connections, not {count}"
    return now


def test_a_broker_under_a_low_descriptor_limit_refuses_what_does_not_fit_and_serves_on(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    """256 descriptors, 300 connections more than a canary's four: the broker lets in what its
    limit leaves (less a reserve), refuses the rest at the handshake with one line a heartbeat,
    and meanwhile stores and publishes the canary's messages, answers room-ctl, and re-reads its
    admin allow-list; once the flood is gone, a new user gets in."""
    with preluded(tmp_path / "data", LOW_LIMIT, "--rate", "0", "--quiet") as broker:
        started = broker.expect(
            rf"at most (\d+) chat connections \(what the file-descriptor limit {LIMIT} "
            r"leaves; --max-connections 25000\), (\d+) users \(--max-clients 10000\); "
            r"file descriptors: limit 256, \d+ in use"
        )
        cap, users = int(started.group(1)), int(started.group(2))
        assert 100 < cap < LIMIT - RESERVE and users == (cap - 2) // 2  # two connections a user
        canary = Canary(ctx, broker)
        flood = Flood(ctx, broker.router, FLOOD)
        try:
            canary.chat()
            expect_alive(  # the count open includes connections in a handshake to refuse
                broker,
                r"refused \d+ chat connections over the caps \(\d+ open; most from "
                rf"127\.0\.0\.1 \(\d+\); at most {cap}: what the file-descriptor limit "
                rf"{LIMIT} leaves\)",
                canary,
                flood,
            )
            deadline = time.monotonic() + WAIT
            while (len(flood.welcomed) < users - 2 or not flood.full) and (
                time.monotonic() < deadline
            ):
                flood.pump()
                canary.ping()
            # As many users as the connections hold (the canary's two among them), and those
            # past them that got a connection are told that the broker is full.
            assert len(flood.welcomed) == users - 2, (len(flood.welcomed), users)
            assert flood.full
            # The flood holds every connection it may: the broker still has its own descriptors.
            assert open_fds(broker.popen.pid) <= LIMIT - RESERVE // 2
            for _ in range(3):
                canary.chat()  # stored, acknowledged, published
                flood.pump()
            now = stats(broker)
            assert now["clients"] >= len(flood.welcomed) + 2
            assert now["connections"] <= cap
            made = subprocess.run(
                _cmd("broker.cli", "keys", "new", "ops", "--out", str(tmp_path / "ops")),
                capture_output=True,
                text=True,
                timeout=WAIT,
                env={**os.environ, "ROOM_DATA_DIR": str(broker.data_dir)},
            )
            assert made.returncode == 0, made.stderr
            expect_alive(broker, r"! security: admin keys allowed: admin, ops ", canary, flood)
            print(
                f"cap {cap}, {len(flood.welcomed)} of {FLOOD} let in, broker holds "
                f"{open_fds(broker.popen.pid)} descriptors"
            )
            canary.chat()
        finally:
            flood.close()
            canary.close()
        wait_connections(broker, 0)  # the gate counts them out as they close
        deadline = time.monotonic() + 3 * WAIT  # their sessions end once heard of no more
        while (now := stats(broker))["clients"]:
            assert time.monotonic() < deadline, f"{now['clients']} sessions still open"
            time.sleep(0.2)  # a poll of the admin's view, not a wait for an event we could see
        late = Canary(ctx, broker, room="late", prefix="late")
        late.chat()
        late.close()
        assert broker.stop() == 0


# ---- no request left unanswered for good -----------------------------------------------------

DROP_FIRST_JOINED = """
import zmq
from broker.chat import outbox as _outbox
from broker.loop import flush as _flush
from broker.wire import protocol as _p

_doomed = set()
_armed = [True]
_take = _outbox.Outbox.take


def _take_and_doom(self):
    out = _take(self)
    if _armed[0]:
        for peer, msg in out.replies:
            if isinstance(msg, _p.Joined) and msg.room == "games":
                _doomed.add(peer)
                _armed[0] = False
    return out


class _FullQueue:
    def __init__(self, real):
        self._real = real

    def send(self, data, flags=0, *args, **kwargs):
        if data in _doomed:  # that peer's whole batch, as when its queue is full
            _doomed.discard(data)
            raise zmq.Again()
        return self._real.send(data, flags, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


_init = _flush.BatchFlush.__init__
_flush.BatchFlush.__init__ = lambda self, router, *a, **k: _init(self, _FullQueue(router), *a, **k)
_outbox.Outbox.take = _take_and_doom
"""
"""A prelude: the broker's first batch of replies that answers a Join of ``games`` fails to
send, whole, as when the client's queue is full (the loop's own drop path counts it)."""


def test_a_client_whose_joined_was_dropped_joins_all_the_same(tmp_path: Path) -> None:
    with preluded(tmp_path / "data", DROP_FIRST_JOINED) as broker, client_factory(broker) as cf:
        bob = cf.join("bob", "games")
        alice = cf.join("alice")
        alice.send("/join games")  # its Joined (and the room's key with it) is dropped
        alice.expect(r"^\* joined games$", timeout=WAIT)  # asked again after JOIN_RETRY
        assert stats(broker)["drops"] >= 1
        bob.send("can you read me")
        alice.expect(r"^\[games\] bob: can you read me$")  # the room's key came with the retry
        alice.send("yes")
        bob.expect(r"^\[games\] alice: yes$")


class Driven:
    """The reference client's session (``client.core.Session``) over a raw DEALER whose queue is
    tiny: its sends go out, and what comes is handed to it only while ``reading``."""

    def __init__(self, ctx: zmq.Context, router: str, name: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvhwm = 1
        self.sock.rcvbuf = 4096
        self.sock.connect(router)
        self.session = Session(name, p.LOBBY, 0)
        self.session.link.lost_after = 60.0  # not reading is no sign the broker is lost
        self.reading = True
        self.apply([Send(self.session.hello())])
        deadline = time.monotonic() + WAIT
        while self.session.room is None:
            assert time.monotonic() < deadline, "no Welcome and Joined"
            self.pump(0.1)

    def apply(self, effects: list) -> None:
        for effect in effects:
            assert not isinstance(effect, Reconnect), "the session took the broker for lost"
            if isinstance(effect, Send):
                self.sock.send(p.encode(effect.msg))

    def pump(self, wait: float = 0.0) -> None:
        """Read what came (while ``reading``), and let the session's clock run."""
        if self.reading and self.sock.poll(wait * 1000):
            while self.sock.poll(0):
                for msg in p.decode_server(self.sock.recv()):
                    self.apply(self.session.on_server(msg, time.monotonic()))
        self.apply(self.session.tick(time.monotonic()))


def test_a_join_whose_answer_a_full_queue_dropped_is_asked_again_and_answered(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    """A real drop: alice's replies queue (--client-queue 512 KiB: two sends) and her DEALER's
    (RCVHWM 1) fill with bob's direct messages while she does not read; her Join's answer is
    dropped (the broker counts it); once she reads again, her session asks again and is in."""
    with running_broker(tmp_path / "data", "--rate", "0", "--client-queue", "512") as broker:
        alice = Driven(ctx, broker.router, "alice")
        bob = Raw(ctx, broker.router, "bob")
        alice.reading = False
        text = "x" * 4000
        before = stats(broker)["drops"]
        deadline = time.monotonic() + WAIT
        while stats(broker)["drops"] == before:  # alice's queue is full
            assert time.monotonic() < deadline, "alice's queue never filled"
            for _ in range(200):
                bob.send(p.Tell("alice", text, next(MIDS)))
            bob.replies.pump()
            bob.replies.pending.clear()
            alice.pump()
        dropped = stats(broker)["drops"]
        alice.apply(alice.session.join("games", time.monotonic()))
        while stats(broker)["drops"] == dropped:  # the answer to the Join: dropped too
            assert time.monotonic() < deadline, "the Join's answer was not dropped"
            alice.pump()
        assert alice.session.room == p.LOBBY
        alice.reading = True
        while alice.session.room != "games":  # within JOIN_RETRY of reading again
            assert time.monotonic() < deadline, "alice never joined games"
            alice.pump(0.05)
        bob.send(p.ListUsers("games"))
        users = bob.expect(p.Users)
        assert [u.name for u in users.users] == ["alice"]
        bob.close()
        alice.sock.close(0)


# ---- ZMTP heartbeats: libzmq closes a dead client's connection itself ------------------------


def test_the_connection_of_a_client_that_froze_is_closed_by_libzmq(tmp_path: Path) -> None:
    """A client that stopped answering (SIGSTOP: its TCP connection stays up, as when a host
    vanishes) is dropped by the chat after 5 heartbeats, and its ROUTER connection, which the
    chat cannot close, is closed by libzmq's ZMTP heartbeat: a PING every 30 heartbeats (1.5 s
    here), and no traffic for 10 heartbeats after it. Its descriptor is free again."""
    data = tmp_path / "data"
    with running_broker(data, "--heartbeat", "0.05") as broker, client_factory(broker) as cf:
        alice = cf.join("alice")
        bob = cf.join("bob")
        wait_connections(broker, 2)  # counted at the next tick
        alice.popen.send_signal(signal.SIGSTOP)
        try:
            broker.expect(r"\* alice disconnected from public: timed out")
            assert wait_connections(broker, 1)["clients"] == 1
            bob.send("still here")
            bob.expect(r"^\[public\] bob: still here$")
        finally:
            alice.popen.send_signal(signal.SIGCONT)
