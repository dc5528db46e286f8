"""The abusers of ``bench.soak``: each attack, run in a process of its own, and the stopped
subscribers; the witnesses (the canary, the watch on the broker's memory) are in
``bench.canary``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import zmq

from bench import load
from bench.canary import SETUP_WAIT, _dealer, _drain, ctl_stats
from broker.wire import protocol as p

TEXT_4K: Final = "abuse " * 666 + "abcd"  # 4000 bytes: near the default --max-message of 4096
FLOOD: Final = 2_000
"""Silent connections in each wave of the ``connections`` scenario."""
STUCK: Final = 20
"""Stopped subscriptions in the ``stopped-subs`` scenario."""
WINDOW: Final = 200
"""Messages a flooder keeps unacknowledged."""


# ---- attackers, each in a process of its own -----------------------------------------------------


def _entry(results: Any, body: Callable[..., dict[str, Any]], *args: Any) -> None:
    """An attacker process: ``body(ctx, ready, *args)`` calls ``ready()`` once set up and returns
    its figures; both go on ``results``, as does an exception. SIGTERM ends it through its
    ``finally`` blocks: sockets closed, a room-ctl it waits for stopped."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        figures = body(ctx, lambda: results.put({"ready": True}), *args)
        results.put(figures)
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        ctx.destroy(linger=0)


def _send_until(sock: zmq.Socket[bytes], frame: bytes, until: float) -> bool:
    """Send without blocking past ``until``; False if the queue stayed full that long."""
    while True:
        try:
            sock.send(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:
            left = until - time.monotonic()
            if left <= 0:
                return False
            sock.poll(min(left, 0.01) * 1000, zmq.POLLOUT)


def _flood(
    sock: zmq.Socket[bytes], count: int | None, seconds: float, window: int = WINDOW
) -> tuple[int, Counter[str], float]:
    """Say 4 KB messages with ``window`` unacknowledged, ``count`` of them or for ``seconds``,
    then wait (at most ``SETUP_WAIT``) for the last answers. Returns the messages sent, the
    answers by kind, and the seconds it took."""
    got = Counter[str]()
    sent = 0
    began = time.monotonic()
    end = began + seconds
    said = p.encode(p.Say(TEXT_4K, 0))  # mid 0: never looked up as a retry
    while (count is None or sent < count) and time.monotonic() < end:
        while sent - got["Ack"] - got["Refused"] < window and (count is None or sent < count):
            if not _send_until(sock, said, end):
                break
            sent += 1
        if sock.poll(100):
            for msg in _drain(sock):
                got[type(msg).__name__] += 1
    deadline = time.monotonic() + SETUP_WAIT
    while got["Ack"] + got["Refused"] < sent and time.monotonic() < deadline:
        if sock.poll(100):
            for msg in _drain(sock):
                got[type(msg).__name__] += 1
        else:
            _send_until(sock, p.encode(p.Ping()), time.monotonic() + 0.1)
    return sent, got, time.monotonic() - began


def _fetcher(ctx: Any, ready: Callable[[], None], router: str, seconds: float) -> dict[str, Any]:
    """Seed room ``big`` with 1,000 messages of 4 KB (4 MB of history), then ask for all of it
    in bursts of 100 Fetches every 50 ms, pinging, and never read an answer."""
    seeder = _dealer(ctx, router)
    load._handshake(seeder, "seeder", "big")
    sent, got, took = _flood(seeder, 1000, SETUP_WAIT)
    if got["Ack"] != 1000:
        raise RuntimeError(f"seeding: {sent} sent, answers {dict(got)}")
    seeder.close(0)

    attacker = ctx.socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.setsockopt(zmq.RCVHWM, 1)  # libzmq holds one message for it...
    attacker.setsockopt(zmq.RCVBUF, 4096)  # ...the kernel a few KB: the broker's queue the rest
    attacker.connect(router)
    load._handshake(attacker, "attacker", "big")
    ready()
    fetch, ping = p.encode(p.Fetch("big", 0, 0, 1000)), p.encode(p.Ping())
    requests = full = 0
    began = time.monotonic()
    end = began + seconds
    next_ping = began
    burst = 0
    while (now := time.monotonic()) < end:
        if now >= next_ping:
            next_ping = now + 1.0
            _send_until(attacker, ping, end)
        for _ in range(100):
            try:
                attacker.send(fetch, zmq.NOBLOCK)
                requests += 1
            except zmq.Again:  # the broker reads slower than this: come back next burst
                full += 1
                break
        burst += 1
        time.sleep(max(0.0, min(began + 0.05 * burst, end) - time.monotonic()))
    elapsed = time.monotonic() - began
    return {"requests": requests, "rate": requests / elapsed, "full": full,
            "seeded_in": took}  # fmt: skip


def _flooder(ctx: Any, ready: Callable[[], None], router: str, seconds: float) -> dict[str, Any]:
    """Flood room ``flooded`` with 4 KB messages as fast as the broker acknowledges them."""
    sock = _dealer(ctx, router)
    sock.setsockopt(zmq.RCVHWM, 0)  # every Ack
    load._handshake(sock, "flooder", "flooded")
    ready()
    sent, got, took = _flood(sock, None, seconds)
    return {"sent": sent, "acked": got["Ack"], "refused": got["Refused"], "seconds": took}


def _roomer(ctx: Any, ready: Callable[[], None], router: str, seconds: float) -> dict[str, Any]:
    """Join new room names (``flood0``, ``flood1``...) as fast as they go, reading loosely; then
    list the rooms, which also says that every Join has been handled."""
    sock = _dealer(ctx, router)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.send(p.encode(p.Hello(p.VERSION, "roomer")))
    load._await(sock, p.Welcome, SETUP_WAIT)
    ready()
    got = Counter[str]()

    def take(msgs: list[p.ServerMsg]) -> list[p.ServerMsg]:
        for msg in msgs:
            got[msg.code.value if type(msg) is p.Error else type(msg).__name__] += 1
        return msgs

    began = time.monotonic()
    end = began + seconds
    sent = 0
    while time.monotonic() < end:
        if not _send_until(sock, p.encode(p.Join(f"flood{sent}", 0)), end):
            break
        sent += 1
        if sent % 256 == 0:
            take(_drain(sock))
    sent_in = time.monotonic() - began
    rooms: list[p.RoomInfo] | None = None
    deadline = time.monotonic() + SETUP_WAIT
    next_ask = 0.0
    while rooms is None and time.monotonic() < deadline:
        if time.monotonic() >= next_ask:  # asks again: a reply may have been dropped
            next_ask = time.monotonic() + 2.0
            _send_until(sock, p.encode(p.ListRooms()), next_ask)  # the queue may be full
        if sock.poll(200):
            for msg in take(_drain(sock)):
                if type(msg) is p.Rooms:
                    rooms = msg.rooms
    return {"sent": sent, "rate": sent / sent_in, "got": dict(got),
            "rooms": None if rooms is None else len(rooms),
            "handled_in": time.monotonic() - began}  # fmt: skip


def _connector(
    ctx: Any, ready: Callable[[], None], router: str, seconds: float, control: str, data: str
) -> dict[str, Any]:
    """Waves of ``FLOOD`` DEALERs that connect and say nothing: each wave waits until the broker
    counts it (``room-ctl stats``), is closed, and the next starts once the broker has let them
    all go, until ``seconds`` have passed."""
    ctx.max_sockets = FLOOD + 100
    ready()
    waves = opened = 0
    peak = 0
    slow: list[str] = []
    began = time.monotonic()
    end = began + seconds

    def wait_for(check: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        deadline = time.monotonic() + SETUP_WAIT
        stats = None
        while time.monotonic() < deadline:
            stats = ctl_stats(control, data)
            if stats is not None and check(stats):
                return stats
            time.sleep(0.1)
        return stats

    while time.monotonic() < end:
        silent = []
        try:
            for _ in range(FLOOD):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                silent.append(sock)
                sock.connect(router)
            opened += FLOOD
            stats = wait_for(lambda s: s["unnamed_connections"] >= FLOOD)
            if stats is None or stats["unnamed_connections"] < FLOOD:
                slow.append(f"wave {waves + 1} counted {stats and stats['unnamed_connections']}")
            else:
                peak = max(peak, stats["connections"])
        finally:
            for sock in silent:
                sock.close(0)
        waves += 1
        stats = wait_for(lambda s: s["unnamed_connections"] == 0)
        if stats is None or stats["unnamed_connections"]:
            slow.append(f"after wave {waves}: {stats and stats['unnamed_connections']} left")
    return {"waves": waves, "opened": opened, "peak": peak, "slow": slow,
            "seconds": time.monotonic() - began}  # fmt: skip


# ---- 20 stopped subscribers ----------------------------------------------------------------------

STOPPED_SUBSCRIBERS = """
import math, sys, time, zmq
from broker.wire import protocol as p
from client.sockets import log_in
router, endpoint, count, topic, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), \\
    bytes.fromhex(sys.argv[4]), float(sys.argv[5])
ctx = zmq.Context()
welcomes = []  # only a session's subscribers may connect: a few sessions, 4 subscribers each
for k in range(math.ceil(count / 4)):
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(router)
    dealer.send(p.encode(p.Hello(p.VERSION, f"stuck{k}")))
    while not welcomes[k:]:
        welcomes += [m for m in p.decode_server(dealer.recv()) if isinstance(m, p.Welcome)]
subs = []
for i in range(count):
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 1
    sub.rcvbuf = 4096
    log_in(sub, welcomes[i // 4])
    sub.connect(endpoint)
    sub.subscribe(topic)
    subs.append(sub)
poller = zmq.Poller()
for sub in subs:
    poller.register(sub, zmq.POLLIN)
waiting = set(subs)
deadline = time.monotonic() + hold
while waiting and time.monotonic() < deadline:  # each is live once it has heard the room
    for sub, _ in poller.poll(1000):
        sub.recv_multipart()
        waiting.discard(sub)
print("ready" if not waiting else "not ready", flush=True)
time.sleep(max(0.0, deadline - time.monotonic()))  # stopped meanwhile, killed at the end
ctx.destroy(linger=0)
"""


def stop_stopped(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and SIGCONT (a stopped process acts on its signals once continued), then
    SIGKILL if it has not gone after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
