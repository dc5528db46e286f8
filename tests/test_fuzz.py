"""Fuzz every socket of one live broker with hypothesis: random frame counts, sizes and bytes,
valid-looking but wrong messages, subscription junk on the PUB, and raw bytes at the TCP level.
The broker must never crash, must keep serving well-behaved clients, and its memory must stay
bounded. Examples are few and bounded so that the whole file runs in CI in well under a minute.
"""

from __future__ import annotations

import socket as pysocket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import WAIT, BrokerProc, ClientFactory, Replies, ctl, socket

from broker import keys
from broker import protocol as p
from broker.admin import COMMANDS

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RSS_GROWTH_MAX = 32 * 1024 * 1024
"""Bytes the broker's resident memory may grow over the whole file (about 2 MiB measured)."""

CLIENT_TAGS = ["hello", "join", "leave", "say", "sync", "fetch", "who", "rooms", "ping", "quit"]
OTHER_TAGS = ["msg", "welcome", "error", "ctl", "ctlreply", "presence", "synced", "bye", ""]
ZMTP_SIGNATURE = b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f"


# ---- strategies ---------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
names = st.one_of(
    st.sampled_from(["public", "games", "alice", "bob", "a" * 32, "a" * 33, "pub\0", "x y", ""]),
    st.text(max_size=40),
)
signed = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _packed(tag: str, items: list[Any]) -> bytes:
    return msgspec.msgpack.encode([tag, *items])


wire_like = st.builds(
    _packed, st.sampled_from(CLIENT_TAGS + OTHER_TAGS), st.lists(values, max_size=6)
)
"""A msgpack array that starts with a known tag: decodes far enough to be checked field by field."""

typed = st.one_of(
    st.builds(p.Hello, st.integers(-3, 3), names, st.text(max_size=40)),
    st.builds(p.Join, names, signed),
    st.builds(p.Leave),
    st.builds(p.Say, st.text(max_size=200), signed),
    st.builds(p.Sync, signed),
    st.builds(p.Fetch, names, signed, signed, signed),
    st.builds(p.ListUsers, names),
    st.builds(p.ListRooms),
    st.builds(p.Ping, names, signed),
    st.builds(p.Quit),
).map(p.encode)
"""Messages of the right shape with values from the edges."""

bodies = st.one_of(st.binary(max_size=3000), wire_like, typed)
frames = st.lists(st.one_of(bodies, st.binary(max_size=100)), min_size=1, max_size=5)


# ---- one broker for the whole file ---------------------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Live:
    """The broker under fuzz, a probe that proves it still answers, and its memory at start."""

    def __init__(self, broker: BrokerProc, ctx: zmq.Context) -> None:
        self.broker = broker
        self.ctx = ctx
        self.probe = self.socket(zmq.DEALER, broker.router)
        kd = keys.KeyDir.of(broker.data_dir)
        public, secret = keys.load_secret(kd.admin_secret)
        self.admin = {
            "public": public,
            "secret": secret,
            "server": keys.load_public(kd.broker_public),
        }
        self.rss_start = 0

    def socket(self, kind: int, endpoint: str, **curve: bytes) -> zmq.Socket:
        return socket(self.ctx, kind, endpoint, **curve)

    def alive(self) -> None:
        """The broker process runs and answers a request (an unknown peer's ListRooms)."""
        assert self.broker.popen.poll() is None, f"the broker exited: {self.broker.err[-5:]}"
        self.probe.send(p.encode(p.ListRooms()))
        deadline = time.monotonic() + WAIT
        replies = Replies(self.probe)
        while time.monotonic() < deadline:
            reply = replies.expect(p.Error)
            if reply.code == p.Code.HELLO_FIRST:
                return
        raise AssertionError("no answer to the probe")


def drain(sock: zmq.Socket) -> None:
    """Read whatever the broker sent back, so no queue grows on either side."""
    while sock.poll(0):
        sock.recv_multipart()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    broker = BrokerProc(tmp_path_factory.mktemp("fuzz") / "data", "--quiet")
    ctx = zmq.Context()
    try:
        state = Live(broker, ctx)
        clients = ClientFactory(broker)
        warm = clients.join("warmup")  # load every code path once before measuring memory
        warm.send("warm")
        warm.expect(r"^\[public\] warmup: warm$")
        clients.kill_all()
        state.alive()
        state.rss_start = rss(broker.popen.pid)
        yield state
    finally:
        ctx.destroy(linger=0)
        try:
            broker.stop()
        finally:
            broker.kill()


@pytest.fixture(scope="module")
def dealers(live: Live) -> list[zmq.Socket]:
    return [live.socket(zmq.DEALER, live.broker.router) for _ in range(3)]


# ---- the sockets ---------------------------------------------------------------------------------


@settings(FUZZ, max_examples=600)
@given(batch=st.lists(st.tuples(st.integers(0, 2), frames), min_size=1, max_size=8))
def test_fuzz_router(live: Live, dealers: list[zmq.Socket], batch: list[tuple[int, list[bytes]]]):
    for which, parts in batch:
        dealers[which].send_multipart(parts)
    live.alive()
    for sock in dealers:
        drain(sock)


def _not_close(parts: list[bytes]) -> list[bytes]:
    """Control frames, with a decodable request for ``close`` renamed: shutting the broker down
    is the one thing an admin may do to it."""
    out = []
    for part in parts:
        try:
            request = p.decode_ctl_request(part)
        except p.ProtocolError:
            out.append(part)
            continue
        command = "not-close" if request.command == "close" else request.command
        out.append(p.encode(p.CtlRequest(request.id, command, request.args)))
    return out


ctl_requests = st.builds(
    p.CtlRequest,
    signed,
    st.one_of(st.sampled_from([c for c in COMMANDS if c != "close"]), st.text(max_size=20)),
    st.lists(st.one_of(names, st.text(max_size=10)), max_size=3),
).map(p.encode)
ctl_frames = st.one_of(
    frames,
    st.tuples(st.just(b""), st.one_of(ctl_requests, bodies)).map(list),
)


@FUZZ
@given(batch=st.lists(ctl_frames, min_size=1, max_size=6))
def test_fuzz_control_as_the_admin(live: Live, batch: list[list[bytes]]):
    """With the admin's key, every frame reaches the control decoder."""
    sock = live.socket(zmq.DEALER, live.broker.control, **live.admin)
    try:
        for parts in batch:
            sock.send_multipart(_not_close(parts))
        live.alive()
        drain(sock)
    finally:
        sock.close(linger=0)


@FUZZ
@given(
    messages=st.lists(
        st.one_of(
            st.tuples(st.sampled_from([b"\x00", b"\x01"]), st.binary(max_size=60)).map(
                lambda t: t[0] + t[1]
            ),
            st.binary(max_size=1500),  # no command byte, or longer than any topic
        ),
        min_size=1,
        max_size=8,
    )
)
def test_fuzz_pub_subscriptions(live: Live, messages: list[bytes]):
    """Subscriptions are inbound messages on the PUB: junk, oversized, endless (un)subscribes."""
    xsub = live.socket(zmq.XSUB, live.broker.pub)
    try:
        for message in messages:
            xsub.send(message)
        live.alive()
    finally:
        xsub.close(linger=0)


raw_bytes = st.tuples(
    st.sampled_from([b"", ZMTP_SIGNATURE, ZMTP_SIGNATURE + b"\x03\x00NULL" + b"\0" * 16]),
    st.binary(max_size=600),
).map(lambda t: t[0] + t[1])


def _tcp(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


@settings(FUZZ, max_examples=150)
@given(junk=st.lists(st.tuples(st.integers(0, 2), raw_bytes), min_size=1, max_size=3))
def test_fuzz_raw_tcp_on_every_port(live: Live, junk: list[tuple[int, bytes]]):
    """Bytes that are not ZMTP (or only start like it) at each port, plain or CURVE."""
    endpoints = [live.broker.router, live.broker.pub, live.broker.control]
    for which, data in junk:
        with pysocket.create_connection(_tcp(endpoints[which]), timeout=WAIT) as conn:
            conn.sendall(data)
    live.alive()


# ---- and afterwards ------------------------------------------------------------------------------


def test_after_the_fuzz_the_broker_still_serves_and_memory_is_bounded(live: Live):
    clients = ClientFactory(live.broker)
    try:
        # Names no strategy produces: the fuzz may have blocked or taken "alice" and "bob".
        first = clients.join("omega1")
        second = clients.join("omega2")
        first.send("after the storm")
        second.expect(r"^\[public\] omega1: after the storm$")
        second.send("/join calm")
        second.expect(r"^\* joined calm$")
        assert ctl(live.broker, "who").returncode == 0
    finally:
        clients.kill_all()
    grown = rss(live.broker.popen.pid) - live.rss_start
    assert grown < RSS_GROWTH_MAX, f"the broker grew by {grown / 2**20:.1f} MiB"
    assert not any("Traceback" in line for line in live.broker.err), live.broker.err[-10:]
