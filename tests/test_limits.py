"""Every abuse limit through `room-broker start`: its option, its environment variable, its default,
and that it holds end to end; plus MAXMSGSIZE on each socket and the name rules on the wire."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import zmq
from procs import WAIT, BrokerProc, ClientFactory, Replies
from zmq.utils.monitor import recv_monitor_message

from broker.cli import start
from broker.config import Exit
from broker.security import keys
from broker.wire import protocol as p

README = Path(__file__).resolve().parent.parent / "README.md"

LIMITS = [  # option, environment variable, default (what a person typing never notices)
    ("--rate", "ROOM_RATE", 10),
    ("--burst", "ROOM_BURST", 30),
    ("--max-message", "ROOM_MAX_MESSAGE", 4096),
    ("--max-clients", "ROOM_MAX_CLIENTS", 10_000),
    ("--max-rooms", "ROOM_MAX_ROOMS", 1_000),
]


def _param(option: str) -> click.Option:
    found = [p for p in start.params if isinstance(p, click.Option) and option in p.opts]
    assert len(found) == 1, option
    return found[0]


@pytest.mark.parametrize(("option", "env", "default"), LIMITS)
def test_each_limit_has_an_option_an_env_var_and_a_default(option: str, env: str, default: int):
    param = _param(option)
    assert param.envvar == env
    assert param.default == default


@pytest.mark.parametrize(("option", "env", "default"), LIMITS)
def test_the_readme_lists_each_limit_with_its_default(option: str, env: str, default: int):
    row = rf"^\| `{re.escape(option)}` \| `{env}` \| {default} \|"
    assert re.search(row, README.read_text(), re.MULTILINE), f"README has no row {row}"


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[BrokerProc | ClientFactory]]:
    """Brokers a test starts with its own options, and their clients; all stopped at the end."""
    procs: list[BrokerProc | ClientFactory] = []
    yield procs
    for proc in procs:  # clients first, then the brokers they talk to
        if isinstance(proc, ClientFactory):
            proc.kill_all()
    for proc in procs:
        if isinstance(proc, BrokerProc):
            proc.kill()


def broker_with(
    started: list[BrokerProc | ClientFactory], tmp_path: Path, how: str, **limits: str
) -> ClientFactory:
    """A client factory for a new broker with ``limits`` (option name -> value) given as flags or
    as environment variables."""
    flags: list[str] = []
    env: dict[str, str] = {}
    for name, value in limits.items():
        option = "--" + name.replace("_", "-")
        if how == "flag":
            flags += [option, value]
        else:
            env[_param(option).envvar] = value
    proc = BrokerProc(tmp_path / f"data{len(started)}", *flags, env=env)
    factory = ClientFactory(proc)
    started += [proc, factory]
    return factory


HOW = pytest.mark.parametrize("how", ["flag", "env"])


@HOW
def test_rate_and_burst_keep_a_flood_out_of_the_room(started, tmp_path: Path, how: str):
    clients = broker_with(started, tmp_path, how, rate="1", burst="3")
    watcher = clients.join("watcher")
    flooder = clients.join("flooder")
    for i in range(10):
        flooder.send(f"flood {i}")
    for i in range(3):
        watcher.expect(rf"^\[public\] flooder: flood {i}$")
    flooder.expect(r"^\* not delivered: slow down: at most 1 messages per second$")
    time.sleep(1.6)  # pacing, not a wait for an event: at 1/s a token or so comes back
    flooder.send("after a pause")
    watcher.expect(r"^\[public\] flooder: after a pause$")
    got = [line for line in watcher.seen + watcher.drain() if "flood " in line]
    assert len(got) <= 4, got  # the burst, and at most one token refilled meanwhile


@HOW
def test_rate_zero_turns_the_limit_off(started, tmp_path: Path, how: str):
    clients = broker_with(started, tmp_path, how, rate="0", burst="1")
    watcher = clients.join("watcher")
    talker = clients.join("talker")
    for i in range(40):
        talker.send(f"line {i}")
    for i in range(40):
        watcher.expect(rf"^\[public\] talker: line {i}$")
    assert not any("slow down" in line for line in talker.seen + talker.drain())


@HOW
def test_max_message_counts_bytes_of_text(started, tmp_path: Path, how: str):
    clients = broker_with(started, tmp_path, how, max_message="10")
    watcher = clients.join("watcher")
    talker = clients.join("talker")
    talker.send("x" * 10)
    watcher.expect(r"^\[public\] talker: x{10}$")
    talker.send("y" * 11)
    talker.expect(r"^\* not delivered: message is 11 bytes; the limit is 10$")
    talker.send("\u00e9" * 6)  # six characters, twelve bytes
    talker.expect(r"^\* not delivered: message is 12 bytes; the limit is 10$")
    talker.send("short")
    watcher.expect(r"^\[public\] talker: short$")
    assert not any("yyy" in line or "\u00e9" in line for line in watcher.seen)


def test_a_large_max_message_raises_the_frame_limit_with_it(started, tmp_path: Path):
    clients = broker_with(started, tmp_path, "flag", max_message="100000")
    watcher = clients.join("watcher")
    talker = clients.join("talker")
    talker.send("z" * 90_000)  # beyond the default 64 KiB frame limit
    watcher.expect(r"^\[public\] talker: z{90000}$")


@HOW
def test_max_clients_refuses_one_more(started, tmp_path: Path, how: str):
    clients = broker_with(started, tmp_path, how, max_clients="2")
    clients.join("alice")
    bob = clients.join("bob")
    carol = clients.start("carol")
    assert carol.wait() == Exit.ERROR
    assert len(carol.err) == 1 and "client limit" in carol.err[0], carol.err
    bob.send("/exit")
    assert bob.wait() == Exit.OK
    clients.join("carol")  # a place is free again


@HOW
def test_max_rooms_refuses_one_more(started, tmp_path: Path, how: str):
    clients = broker_with(started, tmp_path, how, max_rooms="2")
    clients.join("bob")  # public and games are in use: two rooms
    alice = clients.join("alice", "games")
    alice.send("/join other")
    alice.expect(r"^\* error: the broker is at its room limit: join another$")
    alice.send("still in games")
    alice.expect(r"^\[games\] alice: still in games$")
    carol = clients.join("carol", "games")  # an existing room is fine
    carol.send("/exit")
    assert carol.wait() == Exit.OK


# ---- frame size on every socket (MAXMSGSIZE) ---------------------------------------------------


def dropped(sock: zmq.Socket, monitor: zmq.Socket, timeout: float = WAIT) -> bool:
    """Whether the peer closed the connection (a DISCONNECTED event) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if monitor.poll(left * 1000):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                return True
    return False


def test_an_oversized_frame_drops_the_connection_on_every_socket(
    broker: BrokerProc, clients: ClientFactory, ctx: zmq.Context
):
    alice = clients.join("alice")
    kd = keys.KeyDir.of(broker.data_dir)
    public, secret = keys.load_secret(kd.admin_secret)
    server = keys.load_public(kd.broker_public)
    huge = b"\x01" + b"x" * 70_000
    cases = [
        (zmq.DEALER, broker.router, {}),
        (zmq.DEALER, broker.control, {"public": public, "secret": secret, "server": server}),
        (zmq.XSUB, broker.pub, {}),  # a subscription is a message too
    ]
    for kind, endpoint, curve in cases:
        sock = ctx.socket(kind)
        sock.linger = 0
        if curve:
            sock.curve_publickey, sock.curve_secretkey = curve["public"], curve["secret"]
            sock.curve_serverkey = curve["server"]
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(endpoint)
        sock.send(huge)
        assert dropped(sock, monitor), endpoint
        assert not (kind == zmq.DEALER and sock.poll(100)), "an oversized frame was answered"
        sock.disable_monitor()
        sock.close(linger=0)
    alice.send("still serving")
    alice.expect(r"^\[public\] alice: still serving$")


def test_a_subscription_longer_than_any_topic_is_dropped(broker: BrokerProc, ctx: zmq.Context):
    xsub = ctx.socket(zmq.XSUB)
    xsub.linger = 0
    monitor = xsub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    xsub.connect(broker.pub)
    xsub.send(b"\x01" + b"r" * 2000)
    assert dropped(xsub, monitor)
    xsub.disable_monitor()


# ---- name rules on the wire --------------------------------------------------------------------


def _ask(sock: zmq.Socket, msg: p.ClientMsg) -> p.ServerMsg:
    sock.send(p.encode(msg))
    return Replies(sock).expect((p.Welcome, p.Error))


@pytest.mark.parametrize(
    "name", ["", "a b", "-x", "_x", "a" * 33, "caf\u00e9", "pub\0", "x/y", "*", "a.b"]
)
def test_names_that_break_the_rules_are_refused_on_the_wire(
    broker: BrokerProc, ctx: zmq.Context, name: str
):
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(broker.router)
    refused = _ask(sock, p.Hello(p.VERSION, name))
    assert isinstance(refused, p.Error) and refused.code == p.Code.BAD_NAME
    assert isinstance(_ask(sock, p.Hello(p.VERSION, "okname")), p.Welcome)
    room = _ask(sock, p.Join(name))
    assert isinstance(room, p.Error) and room.code == p.Code.BAD_ROOM
    fetch = _ask(sock, p.Fetch(name, 0))
    assert isinstance(fetch, p.Error) and fetch.code == p.Code.BAD_ROOM
