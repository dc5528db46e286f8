"""A client given several brokers: it starts on the first that answers, and moves on when its
broker dies.

Real processes on loopback. The brokers here are independent (each its own data dir), so a broker
taking over does not know the session: the client resumes as a new session there, which is all
these tests need. Brokers run with a short ``--heartbeat`` so that a lost broker is noticed in
about a second (5 intervals).
"""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import BrokerProc, ClientFactory, ClientProc, Proc

from broker.config import ROUTER, Exit
from client.cli import join
from client.connection import handshake_timeout

FAST = ("--heartbeat", "0.2")
"""Liveness (5 intervals) in about a second."""


def dead_endpoint() -> str:
    """A loopback endpoint nobody listens on (a port that was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts itself; every one is killed at teardown."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.kill()  # SIGKILL works on a stopped process too


def client(procs: list[Proc], servers: str, name: str, home: Path) -> ClientProc:
    """A piped client given ``servers`` (comma-separated), killed at teardown."""
    proc = ClientProc(servers, name, env={"ROOM_DATA_DIR": str(home)})
    procs.append(proc)
    return proc


def broker(procs: list[Proc], data_dir: Path, *extra: str) -> BrokerProc:
    proc = BrokerProc(data_dir, *extra)
    procs.append(proc)
    return proc


def on(procs: list[Proc], brk: BrokerProc, name: str) -> ClientProc:
    """A client of ``brk`` alone, in public."""
    proc = ClientFactory(brk).join(name)
    procs.append(proc)
    return proc


# ---- the option -------------------------------------------------------------------------------


def test_servers_may_be_repeated_comma_separated_or_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
):
    def servers(*argv: str) -> tuple[str, ...]:
        return join.make_context("join", ["--name", "alice", *argv]).params["server"]

    monkeypatch.delenv("ROOM_SERVER", raising=False)
    assert servers() == (ROUTER,)
    assert servers("--server", "tcp://a:1, tcp://b:2", "--server", "tcp://c:3") == (
        "tcp://a:1",
        "tcp://b:2",
        "tcp://c:3",
    )
    assert servers("--server", "tcp://a:1,tcp://a:1,") == ("tcp://a:1",)  # once, in order
    monkeypatch.setenv("ROOM_SERVER", "tcp://a:1,tcp://[::1]:2")
    assert servers() == ("tcp://a:1", "tcp://[::1]:2")
    assert servers("--server", "tcp://c:3") == ("tcp://c:3",)  # the flag wins
    monkeypatch.setenv("ROOM_SERVER", "tcp://nohost")
    with pytest.raises(Exception, match="not an endpoint"):
        servers()


def test_each_broker_of_a_list_gets_a_share_of_the_handshake_timeout():
    assert handshake_timeout(1) == 5.0  # one broker: as before
    assert handshake_timeout(2) == 2.5
    assert handshake_timeout(3) == handshake_timeout(10) == 2.0


# ---- starting ---------------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_a_dead_broker_first_in_the_list_is_skipped(tmp_path: Path, procs: list[Proc]):
    live = broker(procs, tmp_path / "data")
    bob = on(procs, live, "bob")
    started = time.monotonic()
    alice = client(procs, f"{dead_endpoint()},{live.router}", "alice", live.data_dir)
    alice.expect(r"^\* joined public$")
    assert time.monotonic() - started < handshake_timeout(2) + 5
    alice.send("hello from the second broker")
    bob.expect(r"^\[public\] alice: hello from the second broker$")
    bob.send("heard you")
    alice.expect(r"^\[public\] bob: heard you$")
    assert not [line for line in alice.seen if line.startswith("* now on")]  # no move: started


@pytest.mark.timeout(40)
def test_the_list_may_come_from_the_environment(tmp_path: Path, procs: list[Proc]):
    live = broker(procs, tmp_path / "data")
    argv = [sys.executable, "-c", "from client.cli import main; main()", "join", "--name", "al"]
    env = {"ROOM_SERVER": f"{dead_endpoint()},{live.router}", "ROOM_DATA_DIR": str(live.data_dir)}
    al = Proc(argv, stdin=True, env=env)
    procs.append(al)
    al.expect(r"^\* joined public$")


@pytest.mark.timeout(40)
def test_no_broker_of_the_list_answering_is_one_line_and_exit_3(tmp_path: Path, procs: list[Proc]):
    dead = [dead_endpoint(), dead_endpoint()]
    started = time.monotonic()
    alice = client(procs, ",".join(dead), "alice", tmp_path)
    assert alice.wait(2 * handshake_timeout(2) + 5) == Exit.UNREACHABLE
    assert time.monotonic() - started < 2 * handshake_timeout(2) + 5
    assert len(alice.err) == 1, alice.err
    assert "no answer from any of the brokers" in alice.err[0]
    assert all(endpoint in alice.err[0] for endpoint in dead)


# ---- failing over -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_client_whose_broker_dies_resumes_on_the_next_one(tmp_path: Path, procs: list[Proc]):
    first = broker(procs, tmp_path / "one", *FAST)
    second = broker(procs, tmp_path / "two", *FAST)
    bob = on(procs, second, "bob")
    alice = client(procs, f"{first.router},{second.router}", "alice", first.data_dir)
    alice.expect(r"^\* joined public$")
    alice.send("on the first")
    alice.expect(r"^\[public\] alice: on the first$")

    first.kill9()
    alice.expect(r"^\* lost the broker")
    alice.expect(r"^\* reconnected")
    alice.expect(rf"^\* now on the broker at {re.escape(second.router)}$")
    bob.expect(r"^\* alice entered public$")  # a new session there: the broker never knew her
    alice.send("on the second")
    bob.expect(r"^\[public\] alice: on the second$")
    bob.send("welcome over")
    alice.expect(r"^\[public\] bob: welcome over$")  # subscribed to the second broker's PUB
    assert alice.popen.poll() is None


@pytest.mark.timeout(90)
def test_a_dead_broker_in_the_list_is_passed_over_and_the_list_wraps_around(
    tmp_path: Path, procs: list[Proc]
):
    first = broker(procs, tmp_path / "one", *FAST)
    second = broker(procs, tmp_path / "two", *FAST)
    servers = f"{first.router},{dead_endpoint()},{second.router}"
    alice = client(procs, servers, "alice", first.data_dir)
    alice.expect(r"^\* joined public$")

    first.kill9()
    alice.expect(rf"^\* now on the broker at {re.escape(second.router)}$", timeout=15)
    bob = on(procs, second, "bob")
    alice.send("past the dead one")
    bob.expect(r"^\[public\] alice: past the dead one$")

    back = first.restart()  # the same endpoints, so the first of the list again
    procs.append(back)
    carol = on(procs, back, "carol")
    second.kill9()
    alice.expect(rf"^\* now on the broker at {re.escape(first.router)}$", timeout=15)
    alice.send("round again")
    carol.expect(r"^\[public\] alice: round again$")
    carol.send("hi alice")
    alice.expect(r"^\[public\] carol: hi alice$")
