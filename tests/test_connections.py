"""Connections that never say hello: counted, and what they cost goes back when they go."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import zmq
from conftest import running_broker
from procs import WAIT, Canary, ctl

from broker.security.gate import Gate
from broker.wire import protocol as p

FLOOD = 2_000
ROUNDS = 3


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stats(broker) -> dict:
    return json.loads(ctl(broker, "stats", "--json").stdout)["data"]["stats"]


def tcp_peers(endpoint: str) -> str:
    """The TCP connections to ``endpoint``'s port and the processes holding them, as ``ss``
    shows them: said when a count is wrong, to tell a leak of the broker's from a peer's."""
    port = endpoint.rsplit(":", 1)[1]
    try:
        shown = subprocess.run(
            ["ss", "-Htanp", f"( sport = :{port} )"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(ss: {exc})"
    return " | ".join(" ".join(line.split()) for line in shown.stdout.splitlines()[:20])


def wait_for_connections(broker, count: int, canary: Canary, timeout: float = WAIT) -> dict:
    """Until the broker counts ``count``; the canary pings meanwhile (on a loaded machine a
    flood can take longer than the broker waits for a silent client)."""
    deadline = time.monotonic() + timeout
    while (now := stats(broker))["connections"] != count:
        assert time.monotonic() < deadline, (
            f"{now['connections']} connections, not {count}; open: {tcp_peers(broker.router)}"
        )
        canary.ping()
    return now


def test_a_flood_of_silent_connections_is_counted_and_its_memory_returns(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    ctx.max_sockets = FLOOD + 100
    # Counted and given back: the guard's hello timeout (test_guard) would cut them first on a
    # slow machine, and refuse the address for the rounds after.
    guardless = ("--hello-timeout", "600")
    with running_broker(tmp_path / "data", "--quiet", "--rate", "0", *guardless) as broker:
        canary = Canary(ctx, broker)
        try:
            canary.chat()
            wait_for_connections(broker, 2, canary)
            idle = rss_mb(broker.popen.pid)
            peak = idle
            for _ in range(ROUNDS):
                silent = []
                for _ in range(FLOOD):
                    sock = ctx.socket(zmq.DEALER)
                    sock.linger = 0
                    sock.connect(broker.router)
                    silent.append(sock)
                canary.ping()
                now = wait_for_connections(broker, FLOOD + 2, canary)
                assert now["unnamed_connections"] == FLOOD and now["clients"] == 2
                peak = max(peak, rss_mb(broker.popen.pid))
                canary.chat()
                for sock in silent:
                    sock.close(0)
                wait_for_connections(broker, 2, canary, timeout=3 * WAIT)  # 2,000 to take down
            deadline = time.monotonic() + WAIT  # returned at the next heartbeat tick
            while (after := rss_mb(broker.popen.pid)) > 2 * idle and time.monotonic() < deadline:
                canary.chat()
            print(f"RSS idle {idle:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB")
            assert peak > idle + 10, "the flood should have cost something to give back"
            assert after <= 2 * idle, (idle, peak, after)
            canary.chat()
        finally:
            canary.close()


def test_a_crowd_from_one_address_gets_its_cap_not_nothing():
    """A crowd of 100 accepted at once, before ZAP judges any: the door lets the first 40 on to
    their handshake, shuts the rest uncounted, and ZAP lets those 40 in (counted at accept and
    judged by ZAP, all 100 were refused). What a gone connection held is free again."""
    gate = Gate(per_address=40, total=1_000)
    let_on = []
    for fd in range(100):
        if gate.refusal("10.0.0.1") is None:
            gate.accepted("router", fd, "10.0.0.1")
            let_on.append(fd)
    assert let_on == list(range(40)) and gate.open == 40
    assert all(gate.admit("10.0.0.1") is None for _ in let_on)
    assert gate.take_refused() == (60, 0) and gate.take_refused() == (0, 0)
    gate.disconnected("router", 0)
    assert gate.refusal("10.0.0.1") is None and gate.open == 39
    full = Gate(per_address=40, total=2)
    full.accepted("router", 1, "10.0.0.3")
    full.accepted("pub", 1, "10.0.0.4")
    assert "2 connections are open (at most 2" in (full.refusal("10.0.0.5") or "")
    assert full.take_refused() == (1, 1)


def test_connections_over_the_per_address_cap_are_refused_and_the_room_chats_on(
    tmp_path: Path, ctx: zmq.Context
):
    """Everything here comes from 127.0.0.1: with --max-per-address 40, the canary's four
    connections and at most 36 of 100 more get in; the rest are refused in their handshake (the
    broker logs how many), the canary chats on, and once the flood closes a new user gets in."""
    from conftest import client_factory

    with running_broker(tmp_path / "data", "--max-per-address", "40", "--rate", "0") as broker:
        canary = Canary(ctx, broker)
        flood = []
        for i in range(100):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(broker.router)
            sock.send(p.encode(p.Hello(p.VERSION, f"flood{i}")))
            flood.append(sock)
        welcomed: set[zmq.Socket] = set()
        deadline = time.monotonic() + 3  # what gets in answers in well under a second
        while time.monotonic() < deadline:
            for sock in flood:
                if sock in welcomed or not sock.poll(0):
                    continue
                if any(isinstance(m, p.Welcome) for m in p.decode_server(sock.recv())):
                    welcomed.add(sock)
            canary.chat()
        # At most 40 in all, the canary's 4 among them: a connection counts from its handshake.
        assert 0 < len(welcomed) <= 36, f"{len(welcomed)} of the flood got in"
        broker.expect(r"refused \d+ chat connections over the caps \(\d+ open; most from "
                      r"127\.0\.0\.1 \(\d+\)\)")  # fmt: skip
        for sock in flood:
            sock.close(0)
        with client_factory(broker) as clients:
            late = clients.join("late")  # the gate counted the flood out again
            late.send("made it")
            canary.chat()
        canary.close()
