"""Room keys at scale (``room-bench --keys``): how long a key change takes to reach every member
of a big room; and the churner of the ``churn`` scenarios, a member who leaves and comes back
once a second while the room is flooded.

A room of ``members`` users (DEALERs only, in ``PROCESSES`` processes that ping for them) and one
more, the mover, who leaves and comes back each round. Each move changes the room's members, so
the broker makes a new key before the room's next send (the move's own presence event) and sends
it to every member over its DEALER. A round's figure is the time from the mover's request to the
moment the last member had the new key (``time.monotonic_ns``: one clock for every process).
A first round is not counted: the members are still reading the keys that came with each join.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Final

import zmq

from bench import load
from broker.wire import protocol as p

ROOM: Final = "big"
PROCESSES: Final = 2
WAIT: Final = 60.0


def _members(router: str, first: int, count: int, orders: Queue, results: Queue) -> None:
    """``count`` members of ``ROOM``; on each order (an epoch floor; -1 stops them), the first
    epoch newer than it that all of them got, and when the last of them got it."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealers: list[zmq.Socket[bytes]] = []
    next_ping = time.monotonic()

    def keep_alive() -> None:  # the broker drops the silent
        nonlocal next_ping
        if time.monotonic() >= next_ping:
            next_ping = time.monotonic() + load.HEARTBEAT
            for dealer in dealers:
                dealer.send(p.encode(p.Ping()))

    for i in range(first, first + count):
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVHWM, 0)
        dealer.connect(router)
        load._handshake(dealer, f"member{i}", ROOM, timeout=WAIT)
        dealers.append(dealer)
        keep_alive()
    results.put({"role": "members", "ready": count})
    got: dict[int, list[int]] = {}  # epoch -> arrival times, one per member
    poller = zmq.Poller()
    for dealer in dealers:
        poller.register(dealer, zmq.POLLIN)
    floor: int | None = None  # the order being answered
    while True:
        for dealer, _ in poller.poll(50):
            while dealer.poll(0):
                now = time.monotonic_ns()
                for msg in p.decode_server(dealer.recv()):
                    if type(msg) is p.RoomKey and msg.room == ROOM:
                        got.setdefault(msg.epoch, []).append(now)
        keep_alive()
        if floor is None and not orders.empty():
            floor = orders.get()
            if floor < 0:
                break
        if floor is not None:
            whole = [e for e, times in got.items() if e > floor and len(times) == count]
            if whole:
                results.put({"role": "members", "epoch": min(whole), "last": max(got[min(whole)])})
                floor = None
    ctx.destroy(linger=0)


def churner(router: str, room: str, stop: Any, results: Queue) -> None:
    """Be in ``room``, and leave it and come back once a second until ``stop`` is set: each
    leave is a removal, after which the room's key changes (and again at the return)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(router)
    load._handshake(dealer, "churner", room, timeout=WAIT)
    removals = 0
    while True:
        dealer.send(p.encode(p.Leave()))
        dealer.send(p.encode(p.Join(room)))
        removals += 1
        while dealer.poll(0):  # its answers and keys, unread
            dealer.recv()
        if stop.wait(1.0):
            break
    results.put({"role": "churner", "removals": removals})
    ctx.destroy(linger=0)


def _get(queue: Any, role: str) -> dict[str, Any]:
    result = queue.get(timeout=WAIT)
    if result.get("role") != role:
        raise RuntimeError(f"expected a {role} result, got {result}")
    return result


def _key_of(mover: zmq.Socket[bytes], timeout: float) -> int:
    """The epoch of the next RoomKey of ``ROOM`` that reaches ``mover``."""
    deadline = time.monotonic() + timeout
    while mover.poll(max(0.0, deadline - time.monotonic()) * 1000):
        for msg in p.decode_server(mover.recv()):
            if type(msg) is p.RoomKey and msg.room == ROOM:
                return msg.epoch
    raise TimeoutError("the mover got no key")


def rotation(members: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Key changes in a room of ``members``: each round the mover leaves and comes back."""
    from bench.run import Target  # here: run imports measure, which imports this module

    target = Target("room", workdir, extra=("--room-keys", "--quiet"))
    ctx = mp.get_context("spawn")
    procs, orders = [], [ctx.Queue() for _ in range(PROCESSES)]
    results = ctx.Queue()
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        share = members // PROCESSES
        for k in range(PROCESSES):
            args = (target.router, k * share, share, orders[k], results)
            proc = ctx.Process(target=_members, args=args)
            proc.start()
            procs.append(proc)
        for _ in procs:
            _get(results, "members")
        mover = zctx.socket(zmq.DEALER)
        mover.setsockopt(zmq.LINGER, 0)
        mover.connect(target.router)
        mover.send(p.encode(p.Hello(p.VERSION, "mover")))
        mover.send(p.encode(p.Join(ROOM)))
        floor = _key_of(mover, WAIT)  # the members' newest key too: they are all in
        leave_ms, join_ms = [], []
        for turn in range(rounds + 1):
            for request, into in ((p.Leave(), leave_ms), (p.Join(ROOM), join_ms)):
                start = time.monotonic_ns()
                mover.send(p.encode(request))
                for q in orders:
                    q.put(floor)
                answers = [_get(results, "members") for _ in procs]
                epochs = {a["epoch"] for a in answers}
                assert len(epochs) == 1, f"the members got different keys: {epochs}"
                floor = epochs.pop()
                if turn:  # the first round lets the members read the keys of all the joins
                    into.append((max(a["last"] for a in answers) - start) / 1e6)
                if isinstance(request, p.Leave):
                    mover.send(p.encode(p.Ping()))
                else:
                    assert _key_of(mover, WAIT) >= floor, "the mover came back to an old key"
            time.sleep(0.2)  # let pings flow between rounds
        return {
            "members": members,
            "rounds": rounds,
            "leave_ms": leave_ms,
            "join_ms": join_ms,
            "cpu_s": target.cpu(),
        }
    finally:
        for q in orders:
            q.put(-1)  # stop
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        zctx.destroy(linger=0)
        target.stop()


def main(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="room-bench-keys-") as tmp:
        return rotation(100 if quick else 1_000, 3 if quick else 10, Path(tmp))
