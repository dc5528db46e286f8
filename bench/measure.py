"""One scenario against one target, with the lean load generator (``lean``): the figures.

The target is a fresh process; the subscriber processes start first and say they are ready, then
the sender; when the sender has reported (every message sent, and acknowledged where the target
acknowledges), the subscribers are told, and finish once they have everything or nothing new
comes. The target's CPU time is read from /proc around the whole of it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any, Final

import zmq

from bench import canary, keys, lean, load, sender, subscriber
from broker.config import DEFAULT_LIMITS
from broker.wire.protocol import topic

if TYPE_CHECKING:
    from bench.run import Scenario

WAIT: Final = 120.0
FAN_OUT_PROCESSES: Final = 2
"""Subscriber processes when a scenario has more than one subscription (several per process)."""


VARIANTS: Final = {"control": "room", "keys": "room", "churn": "keys"}
"""The broker again, and what it is measured against. ``room``, the broker, runs without room
keys (``--no-room-keys``); ``control`` is the same broker again: the spread of its ratio is what
this machine can resolve between two runs of one thing; ``keys`` seals the PUB (``--room-keys``);
``churn`` is ``keys`` with a member leaving the room and coming back once a second (the key
changes twice a second)."""
SEALED: Final = ("keys", "churn")


def protocol(kind: str) -> str:
    """The target a kind is (a broker variant is a broker): room, relay, batch or redis."""
    return "room" if kind in VARIANTS else kind


def target_args(s: Scenario, kind: str) -> tuple[str, ...]:
    """What each target is started with: the broker durable (``--sync normal``) and with room
    keys on or off as its variant says, whatever the defaults are; the bare relay's PUB queue
    the broker's per subscriber, in bytes (``--subscriber-queue``), as its sends are one
    message each; the batching relay's the broker's in sends, as its sends are batches too."""
    if protocol(kind) == "room":
        return ("--sync", "normal", "--room-keys" if kind in SEALED else "--no-room-keys")
    if kind == "relay":
        one = s.size + len(topic("r0"))
        return ("--pub-hwm", str(DEFAULT_LIMITS.subscriber_queue // one))
    if kind == "batch":
        return ("--pub-hwm", str(DEFAULT_LIMITS.pub_hwm))
    return ()


def _split(items: list[str], parts: int) -> list[list[str]]:
    return [items[k::parts] for k in range(parts) if items[k::parts]]


def _collect(queue: Any, procs: list[Any], want: int, on_sender: Any) -> list[dict[str, Any]]:
    """``want`` reports; fails at once if a load process died without reporting."""
    got: list[dict[str, Any]] = []
    waited = 0.0
    while len(got) < want:
        try:
            result = queue.get(timeout=0.2)
        except Empty:
            waited += 0.2
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a load process failed (exit {dead[0].exitcode})") from None
            if waited > WAIT:
                raise RuntimeError(f"no report from the load in {WAIT:.0f} s") from None
            continue
        waited = 0.0
        if result["role"] == "sender":
            on_sender()
        got.append(result)
    return got


def _warm_up(router: str, rooms: list[str], size: int, ready: Any, processes: int) -> None:
    """Warm-up messages through a relay, every 20 ms, until every subscriber process has read
    one on each of its subscriptions (a relay's slow joiner would otherwise lose the start)."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(router)
    frames = [[topic(room), lean.body(lean.WARM, size)] for room in rooms]
    waiting = processes
    deadline = time.monotonic() + WAIT
    try:
        while waiting:
            if time.monotonic() > deadline:
                raise RuntimeError("the relay's subscribers never said they were ready")
            for f in frames:
                dealer.send_multipart(f)
            try:
                ready.get(timeout=0.02)
                waiting -= 1
            except Empty:
                pass
    finally:
        ctx.destroy(linger=0)


def idle(s: Scenario, target: Any) -> dict[str, Any]:
    """Connected clients that only heartbeat: what holding them costs the broker."""
    ctx = mp.get_context("spawn")
    results, ready = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=load.idle_clients,
                       args=(results, ready, target.router, s.idle, s.hold))  # fmt: skip
    proc.start()
    try:
        ready.get(timeout=WAIT)
        cpu0, t0 = target.cpu(), time.monotonic()
        report = _collect(results, [proc], 1, lambda: None)[0]
        busy = target.cpu() - cpu0
        percent = 100 * busy / (time.monotonic() - t0)
        return {"connected": report["connected"], "cpu_percent": percent,
                "peak_mb": target.peak_mb()}  # fmt: skip
    finally:
        proc.join(WAIT)


def flow(s: Scenario, variant: str, target: Any) -> dict[str, Any]:
    """Senders and subscribers against ``target``; what was delivered, how fast, at what cost."""
    kind = protocol(variant)
    ctx = mp.get_context("spawn")
    rooms = [f"r{k}" for k in range(s.senders)]
    sub_rooms = [room for room in rooms for _ in range(s.subs_per_room)]
    per_room = s.count // s.senders
    sample = s.rate > 0
    results, ready, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    groups = _split(sub_rooms, 1 if len(sub_rooms) == 1 else FAN_OUT_PROCESSES)
    procs = []
    try:
        for j, group in enumerate(groups):
            args = (results, ready, done, kind, target.router, target.pub, group, per_room,
                    s.size, sample, f"sub{j}-")  # fmt: skip
            procs.append(ctx.Process(target=subscriber.subscribers, args=args))
            procs[-1].start()
        if kind in ("relay", "batch"):
            _warm_up(target.router, rooms, s.size, ready, len(groups))
        else:
            for _ in groups:
                ready.get(timeout=WAIT)
        churning = variant == "churn"
        churned, stop_churn = ctx.Queue(), ctx.Event()
        if churning:
            args = (target.router, rooms[0], stop_churn, churned)
            procs.append(ctx.Process(target=keys.churner, args=args))
            procs[-1].start()
        cpu0 = target.cpu()
        args = (results, kind, target.router, rooms, per_room * s.senders, s.size, s.rate, sample)
        procs.append(ctx.Process(target=sender.sender, args=args))
        procs[-1].start()
        reports = _collect(results, procs, len(groups) + 1, done.set)
        cpu = target.cpu() - cpu0
        stop_churn.set()
        removals = churned.get(timeout=WAIT)["removals"] if churning else 0
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    sent = next(r for r in reports if r["role"] == "sender")
    subs = [r for r in reports if r["role"] == "subscribers"]
    subs_cpu = sum(r["cpu"] for r in subs)
    delivered = sum(r["delivered"] for r in subs)
    last = max(r["last"] for r in subs)
    elapsed = max(last - sent["start"], 1e-9)
    figures: dict[str, Any] = {
        "delivered": delivered,
        "expected": sum(r["expected"] for r in subs),
        "rate": delivered / elapsed,
        **{key: sum(r[key] for r in subs) for key in ("lost", "duplicates", "repaired", "gone")},
        "cpu_us_per_msg": 1e6 * cpu / max(1, sent["sent"]),
        "peak_mb": target.peak_mb(),
        "load_us": {
            "sender": 1e6 * sent["cpu"] / max(1, sent["sent"]),
            "subscribers": 1e6 * subs_cpu / max(1, delivered),
        },
    }
    if kind in ("room", "redis"):
        figures["acked"], figures["refused"] = sent["acked"], sent["refused"]
    if variant in SEALED:
        figures["keys"] = _keys_cost(target, cpu + sent["cpu"] + subs_cpu, sent["sent"], subs)
    if churning:
        figures["removals"] = removals
    if sample:
        sent_ns, recv_ns = sent["sent_ns"], subs[0]["recv_ns"]
        lat = [recv_ns[q] - sent_ns[q - 1] for q in range(1, len(recv_ns)) if recv_ns[q]]
        if lat:
            figures["latency_ms"] = percentiles(lat)
            figures["latencies_us"] = [x // 1000 for x in lat]
    return figures


def _keys_cost(target: Any, cpu: float, sent: int, subs: list[dict[str, Any]]) -> dict[str, float]:
    """What room keys cost in this run, timed where it is spent: the broker's sealing
    (``room-ctl stats``, read after the run) and the subscribers' opening, in us a message sent,
    and their ``share`` of all the CPU time the run took (the broker's, the sender's and the
    subscribers'). The share does not move with the machine's speed as a rate does, since both
    sides of it do."""
    stats = canary.ctl_stats(target.control, str(target.data)) or {}
    sealing = stats.get("sealing_ms", 0.0) / 1000
    opening = sum(r["opening"] for r in subs)
    return {"seal_us": 1e6 * sealing / max(1, sent), "open_us": 1e6 * opening / max(1, sent),
            "share": (sealing + opening) / max(cpu, 1e-9)}  # fmt: skip


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999)}


def workdir_for(base: Path, kind: str, round_: int) -> Path:
    path = base / f"{kind}-{round_}"
    path.mkdir(parents=True)
    return path
