"""Connections that never say hello: counted, and what they cost goes back when they go."""

from __future__ import annotations

import json
import time
from pathlib import Path

import zmq
from conftest import running_broker
from procs import WAIT, Canary, ctl

FLOOD = 2_000
ROUNDS = 3


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stats(broker) -> dict:
    return json.loads(ctl(broker, "stats", "--json").stdout)["data"]["stats"]


def wait_for_connections(broker, count: int, timeout: float = WAIT) -> dict:
    deadline = time.monotonic() + timeout
    while (now := stats(broker))["connections"] != count:
        assert time.monotonic() < deadline, f"{now['connections']} connections, not {count}"
    return now


def test_a_flood_of_silent_connections_is_counted_and_its_memory_returns(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    ctx.max_sockets = FLOOD + 100
    with running_broker(tmp_path / "data", "--quiet", "--rate", "0") as broker:
        canary = Canary(ctx, broker)
        try:
            canary.chat()
            wait_for_connections(broker, 2)
            idle = rss_mb(broker.popen.pid)
            peak = idle
            for _ in range(ROUNDS):
                silent = []
                for _ in range(FLOOD):
                    sock = ctx.socket(zmq.DEALER)
                    sock.linger = 0
                    sock.connect(broker.router)
                    silent.append(sock)
                now = wait_for_connections(broker, FLOOD + 2)
                assert now["unnamed_connections"] == FLOOD and now["clients"] == 2
                peak = max(peak, rss_mb(broker.popen.pid))
                canary.chat()
                for sock in silent:
                    sock.close(0)
                wait_for_connections(broker, 2, timeout=3 * WAIT)  # 2,000 to take down
            deadline = time.monotonic() + WAIT  # returned at the next heartbeat tick
            while (after := rss_mb(broker.popen.pid)) > 2 * idle and time.monotonic() < deadline:
                canary.chat()
            print(f"RSS idle {idle:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB")
            assert peak > idle + 10, "the flood should have cost something to give back"
            assert after <= 2 * idle, (idle, peak, after)
            canary.chat()
        finally:
            canary.close()
