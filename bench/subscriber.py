"""The lean subscribers (see ``lean``): several subscriptions a process, counted by number."""

from __future__ import annotations

import socket
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import zmq

from bench.counting import (
    _batch_sub,
    _fetch,
    _redis_reader,
    _redis_sub,
    _relay_sub,
    _room_replies,
    _room_sub,
    _Sub,
)
from bench.lean import (
    CHECK_EVERY,
    COUNTER,
    FIRST_WAIT,
    GRACE,
    HEARTBEAT,
    NAP,
    NOBLOCK,
    REPAIR_WAIT,
    SETTLE,
    SMALL,
    SUB_RCVHWM,
    WARM,
    handshake,
    pack,
    redis_address,
)
from broker.wire import protocol as p
from client.keyring import Keyring
from client.sockets import log_in

# ---- subscribers --------------------------------------------------------------------------------


def subscribers(
    results: Queue,
    ready: Queue,
    done: Event,
    kind: str,
    router: str,
    pub: str,
    rooms: list[str],
    expected: int,
    size: int,
    sample: bool,
    name: str = "sub",
) -> None:
    """One subscription per entry of ``rooms``, in this process; each expects ``expected``
    messages of its room. Stops when every one has all, or ``done`` (the sender finished) and
    nothing new came for ``GRACE`` (a broker subscriber first asks for what it misses)."""
    ctx = zmq.Context()
    subs: list[_Sub] = []
    poller = zmq.Poller()
    owner: dict[Any, _Sub] = {}
    for k, room in enumerate(rooms):
        topic = p.topic(room)
        if kind == "redis":
            s = socket.create_connection(redis_address(pub))
            s.sendall(pack(b"SUBSCRIBE", topic))
            sub = _Sub(room, s, expected, sample)
            sub.reader = _redis_reader(s)
        else:
            endpoint = pub
            dealer = None
            ring = Keyring()
            zsub = ctx.socket(zmq.SUB)
            if kind == "room":
                dealer = ctx.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.connect(router)
                welcome = handshake(dealer, f"{name}{k}", room, ring)
                endpoint = welcome.pub
                log_in(zsub, welcome)
            zsub.setsockopt(zmq.LINGER, 0)
            zsub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
            zsub.connect(endpoint)
            zsub.setsockopt(zmq.SUBSCRIBE, topic)
            sub = _Sub(room, zsub, expected, sample)
            sub.ring, sub.dealer = ring, dealer
            if dealer is not None:
                poller.register(dealer, zmq.POLLIN)
                owner[dealer] = sub
        poller.register(sub.sock, zmq.POLLIN)
        owner[sub.sock.fileno() if kind == "redis" else sub.sock] = sub  # a raw socket: its fd
        subs.append(sub)
    if kind in ("relay", "batch"):
        _warmed(subs, size)  # a relay cannot repair: every subscription is live before the clock
    else:
        time.sleep(SETTLE)  # Redis confirmed each SUBSCRIBE; the broker repairs what is missed
    ready.put("ready")
    cpu0 = time.process_time()
    total = expected * len(subs)
    first = last = 0.0
    last_progress = time.monotonic()
    done_at = 0.0
    next_beat = next_tail = time.monotonic() + HEARTBEAT
    handle = {"room": _room_sub, "relay": _relay_sub, "batch": _batch_sub, "redis": _redis_sub}
    on_ready = handle[kind]
    got = 0
    next_check = 0.0
    napping = not sample  # a flood: latency is not measured, waking per message costs CPU
    while True:
        events = poller.poll(50)
        delivered = False
        for sock, _ in events:
            s = owner[sock]
            if sock is s.dealer:
                _room_replies(s)
            else:
                on_ready(s, size)
                delivered = True
        now = time.monotonic()
        if delivered or (events and kind == "room"):  # a repair comes over the DEALER
            before, got = got, sum(s.got for s in subs)
            if got > before:
                last = now
                first = first or now
                last_progress = now
            if got >= total:
                break
            if napping and got - before < SMALL:  # let a per-message stream gather a little
                time.sleep(NAP)
        if now < next_check:  # the rest is bookkeeping: a few times a second is enough
            continue
        next_check = now + CHECK_EVERY
        if not done_at and done.is_set():
            done_at = now
        if done_at:
            quiet = now - last_progress
            if kind == "room" and now - done_at < REPAIR_WAIT:
                if quiet > 0.2 and now >= next_tail:  # the tail: ask for what is missing
                    next_tail = now + 0.2
                    for s in subs:
                        if s.got + s.gone < expected:
                            _fetch(s, s.missing() - 1, 0)
                if all(s.got + s.gone >= expected for s in subs):
                    break
            elif quiet > GRACE:
                break
        elif now - last_progress > FIRST_WAIT:
            break
        if kind == "room" and now >= next_beat:
            next_beat = now + HEARTBEAT
            ping = p.encode(p.Ping())
            for s in subs:
                assert s.dealer is not None
                s.dealer.send(ping)
    cpu = time.process_time() - cpu0
    results.put({
        "role": "subscribers",
        "delivered": got,
        "expected": total,
        "lost": sum(max(0, expected - s.got) for s in subs),
        "duplicates": sum(s.dups for s in subs),
        "repaired": sum(s.repaired for s in subs),
        "gone": sum(s.gone for s in subs),
        "first": first,
        "last": last,
        "cpu": cpu,
        "opening": sum(s.opening_ns for s in subs) / 1e9,
        "recv_ns": list(subs[0].recv_ns) if sample and subs and subs[0].recv_ns else [],
    })  # fmt: skip
    for s in subs:
        if kind == "redis":
            s.sock.close()
    ctx.destroy(linger=0)


def _warmed(subs: list[_Sub], size: int, wait: float = 60.0) -> None:
    """Until every subscription has read a warm-up message (counter ``WARM``: the parent sends
    them through the relay until every subscriber process is ready); what else came is dropped."""
    live: set[int] = set()
    deadline = time.monotonic() + wait
    while len(live) < len(subs):
        if time.monotonic() > deadline:
            raise TimeoutError("no warm-up message came through the relay")
        for k, s in enumerate(subs):
            if k in live or not s.sock.poll(10):
                continue
            while True:
                try:
                    s.sock.recv(NOBLOCK)
                except zmq.Again:
                    break
                data = s.sock.recv()
                counters = {int.from_bytes(data[i : i + COUNTER], "big")
                            for i in range(0, len(data), size)}  # fmt: skip
                if WARM in counters:
                    live.add(k)
