"""What idle users cost one broker (issue 27): its CPU, and the delay they add to a message.

``python -m bench.idle [--users 2000] [--seconds 20] [--heartbeat 1] [--source DIR]`` starts
``room-broker start`` (the code of ``--source``, by default this checkout) on free loopback ports
with a fresh data dir, connects ``--users`` clients in one process of their own (each says hello,
then only pings once an interval at its own moment, as idle clients do, and reads what comes),
and, 15 s after all are welcomed, a canary in a room of its own that says something every 20 ms and
times each ``Say`` until its ``Ack``. It prints the broker's CPU (all its threads, from /proc, as
a share of one core) over ``--seconds`` with the idle users alone, then over ``--seconds`` more
with the canary: its delays (p50, p99, max) and how many exceeded 20 ms, the broker's count
of replies it dropped, and the turns of its loop that ran the heartbeat tick (timed by a prelude:
the tick and the flush of that turn): how many, their p99 and longest. ``--source`` runs another
tree's broker (e.g. an older commit, ``git archive``-d into a directory) with the same load, to
compare before and after. With ``--subscribe`` each user also holds a SUB on its room, as a client
does; ``--rest`` makes the idle phase that long instead, and the broker's RSS is sampled through
it every 0.5 s (first, last, lowest, highest, slope): issue 27's "no growth at rest" is
``--users 5000 --subscribe --rest 600``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import zmq

from bench.run import rss_mb
from broker.wire import protocol as p
from client.sockets import log_in

CANARY_EVERY = 0.02
SLOW_MS = 20.0
SETTLE = 15.0
"""Seconds from the last welcome to the first measure: the guard looks at a connection every 5 ms
in its first ``--hello-timeout`` (10 s), which would be counted as the users' cost."""


TIMED_TURNS = """
import atexit, json, time
from broker.chat.chat import Chat
from broker.loop.flush import BatchFlush
_tick, _flush, _ticked, _turns = Chat.tick, BatchFlush.run, [0.0], []
def _timed_tick(self, now):
    start = time.perf_counter()
    try:
        return _tick(self, now)
    finally:
        _ticked[0] += time.perf_counter() - start
def _timed_flush(self):
    start = time.perf_counter()
    _flush(self)
    if _ticked[0]:
        _turns.append((time.monotonic(), _ticked[0] + time.perf_counter() - start))
        _ticked[0] = 0.0
def _report():
    with open(TURNS_FILE, "w") as out:
        json.dump(_turns, out)
Chat.tick, BatchFlush.run = _timed_tick, _timed_flush
atexit.register(_report)
"""
"""Run before the broker: the time of each turn of its loop that ticked (the tick and the flush
after it), written to a file at exit."""


def idle_users(
    router: str,
    users: int,
    heartbeat: float,
    zmtp: float,
    subscribe: bool,
    ready: Queue,
    stop: Any,
) -> None:
    """``users`` DEALERs that say hello, then ping once an interval each at its own phase and
    read everything the broker sends them, until ``stop`` is set. With ``zmtp`` (seconds), each
    DEALER also sends ZMTP heartbeats at that interval, with a TTL of twice it. With
    ``subscribe``, each also holds a SUB on its room (``public``), as a client does."""
    ctx = zmq.Context()
    ctx.max_sockets = 2 * users + 64
    dealers = []
    for k in range(users):
        d = ctx.socket(zmq.DEALER)
        d.linger = 0
        if zmtp:
            d.heartbeat_ivl = int(zmtp * 1000)
            d.heartbeat_timeout = d.heartbeat_ttl = int(2 * zmtp * 1000)
        d.connect(router)
        d.send(p.encode(p.Hello(p.VERSION, f"idle{k}")))
        dealers.append(d)
    welcomed: set[int] = set()
    subs: list[zmq.Socket[bytes]] = []
    ping = p.encode(p.Ping())
    start = time.monotonic()
    sent_upto = 0  # pings are due for the users k with phase k / users of the interval
    rounds = 0
    told = False
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - start) / heartbeat * users)
        for j in range(sent_upto, due):
            with contextlib.suppress(zmq.Again):  # not connected yet: it pings next time
                dealers[j % users].send(ping, zmq.NOBLOCK)
        sent_upto = max(sent_upto, due)
        rounds += 1
        if rounds % 10 == 0 or not told:
            for k, d in enumerate(dealers):
                while d.poll(0):
                    welcome = _welcome(d.recv())
                    if welcome is not None and k not in welcomed:
                        welcomed.add(k)
                        if subscribe:  # as a client does: a SUB on its room, with its session
                            sub = ctx.socket(zmq.SUB)
                            sub.linger = 0
                            log_in(sub, welcome)
                            sub.connect(welcome.pub)
                            sub.subscribe(p.topic(welcome.room))
                            subs.append(sub)
            if not told and (len(welcomed) == users or now - start > 120):
                ready.put(len(welcomed))
                told = True
        time.sleep(0.005)
    ctx.destroy(linger=0)


def _welcome(body: bytes) -> p.Welcome | None:
    return next((m for m in p.decode_server(body) if isinstance(m, p.Welcome)), None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each of a process's threads, by name (libzmq's I/O thread is
    ``ZMQbg/IO/0``; names shared by several threads are summed)."""
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        seconds[name] = seconds.get(name, 0.0) + used
    return seconds


def stats(control: str, data_dir: str, source: str) -> dict[str, Any]:
    argv = [sys.executable, "-c", "from client.ctl import main; main()", "--control", control,
            "--data-dir", data_dir, "stats", "--json"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": source}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, cwd=data_dir)
    return json.loads(done.stdout)["data"]["stats"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(
    users: int,
    seconds: float,
    heartbeat: float,
    zmtp: float,
    source: str,
    subscribe: bool = False,
    rest: float | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": source, "PYTHONUNBUFFERED": "1"}
        turns_file = Path(tmp) / "turns.json"
        prelude = f"TURNS_FILE = {str(turns_file)!r}\n{TIMED_TURNS}\n"
        argv = [sys.executable, "-c", prelude + "from broker.cli import main; main()", "start",
                "--router", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                "--control", "tcp://127.0.0.1:0", "--data-dir", tmp, "--quiet",
                "--heartbeat", str(heartbeat), "--rate", "0", "--max-per-address", "30000",
                "--max-clients", "30000"]  # fmt: skip
        log = Path(tmp) / "broker.log"
        with log.open("w") as out:  # a file, not a pipe: nobody reads the connect lines
            # cwd: not this checkout, which ``python -c`` would put first on the path
            broker = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            m = None
            deadline = time.monotonic() + 20
            while m is None:
                assert broker.poll() is None and time.monotonic() < deadline, log.read_text()
                m = re.search(r"listening: router (\S+) pub (\S+) control (\S+)", log.read_text())
                time.sleep(0.05)
            router, control = m.group(1), m.group(3)
            spawn = mp.get_context("spawn")
            ready, stop = spawn.Queue(), spawn.Event()
            args = (router, users, heartbeat, zmtp, subscribe, ready, stop)
            load = spawn.Process(target=idle_users, args=args)
            load.start()
            try:
                welcomed = ready.get(timeout=180)
                started = time.monotonic()
                result = _measure(broker.pid, router, seconds, seconds if rest is None else rest)
                result["welcomed"] = welcomed
                result["stats"] = stats(control, tmp, source)
            finally:
                stop.set()
                load.join(30)
        finally:
            broker.terminate()
            broker.wait(20)
        if turns_file.exists():  # the turns that ticked, once every user was welcomed
            turns = [ms * 1000 for at, ms in json.loads(turns_file.read_text()) if at > started]
            result["tick_turns"] = len(turns)
            result["tick_turn_p99_ms"] = round(percentile(turns, 0.99), 2)
            result["tick_turn_max_ms"] = round(max(turns, default=0.0), 2)
    return result


def _measure(pid: int, router: str, seconds: float, rest: float) -> dict[str, Any]:
    """The broker's CPU and RSS over ``rest`` seconds with the idle users alone, then the
    canary's Say -> Ack delays and the broker's CPU over ``seconds``."""
    ctx = zmq.Context()
    try:
        d = ctx.socket(zmq.DEALER)
        d.linger = 0
        d.connect(router)
        d.send(p.encode(p.Hello(p.VERSION, "canary")))
        _until(d, p.Welcome)
        d.send(p.encode(p.Join("canary", 0)))
        _until(d, p.Joined)
        for _ in range(int(SETTLE * 2)):  # the load settles, the guard's young connections age
            d.send(p.encode(p.Ping()))
            time.sleep(0.5)
        cpu0, threads0, t0 = cpu_seconds(pid), thread_cpu(pid), time.monotonic()
        rss: list[tuple[float, float]] = []  # (seconds in, MB)
        while time.monotonic() - t0 < rest:  # idle users only (the canary pings)
            d.send(p.encode(p.Ping()))
            rss.append((time.monotonic() - t0, rss_mb(pid)))
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        idle_cpu = 100 * (cpu_seconds(pid) - cpu0) / elapsed
        by_thread = {
            name: round(100 * (used - threads0.get(name, 0.0)) / elapsed, 1)
            for name, used in thread_cpu(pid).items()
        }
        delays: list[float] = []
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        mid = 0
        while time.monotonic() - t0 < seconds:
            mid += 1
            sent = time.monotonic()
            d.send(p.encode(p.Say(f"canary {mid}", mid)))
            _until(d, p.Ack, lambda a, mid=mid: a.mid == mid)
            delays.append((time.monotonic() - sent) * 1000)
            time.sleep(max(0.0, CANARY_EVERY - (time.monotonic() - sent)))
        cpu = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    finally:
        ctx.destroy(linger=0)
    return {
        "rest_s": round(elapsed, 1),
        "rest_rss_mb": _rss_summary(rss),
        "idle_cpu_percent": round(idle_cpu, 1),
        "idle_cpu_by_thread": {name: pct for name, pct in by_thread.items() if pct >= 0.5},
        "cpu_percent_with_canary": round(cpu, 1),
        "canary": len(delays),
        "p50_ms": round(percentile(delays, 0.5), 2),
        "p99_ms": round(percentile(delays, 0.99), 2),
        "max_ms": round(max(delays), 2),
        "over_20ms": sum(1 for x in delays if x > SLOW_MS),
    }


def _rss_summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """First, last, lowest and highest RSS of the rest, its least-squares slope, the same of its
    second half (libzmq pages a connection's queues in as messages pass, up to about 64 KB
    each: the growth stops once they are all in), and one sample a minute."""
    values = [mb for _, mb in samples]
    half = samples[len(samples) // 2 :]
    return {
        "first": round(values[0], 1),
        "last": round(values[-1], 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "slope_mb_per_min": _slope(samples),
        "second_half": {
            "min": round(min(mb for _, mb in half), 1),
            "max": round(max(mb for _, mb in half), 1),
            "slope_mb_per_min": _slope(half),
        },
        "each_minute": [round(mb, 1) for t, mb in samples if t % 60 < 0.5],
    }


def _slope(samples: list[tuple[float, float]]) -> float:
    """MB a minute, least squares."""
    n = len(samples)
    mean_t, mean_v = sum(t for t, _ in samples) / n, sum(mb for _, mb in samples) / n
    spread = sum((t - mean_t) ** 2 for t, _ in samples) or 1.0
    return round(60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / spread, 3)


def _until(d: zmq.Socket[bytes], kind: type, wanted: Any = None) -> Any:
    deadline = time.monotonic() + 30
    seen: list[Any] = []
    while time.monotonic() < deadline:
        if d.poll(1000):
            for msg in p.decode_server(d.recv()):
                if isinstance(msg, kind) and (wanted is None or wanted(msg)):
                    return msg
                seen = [*seen[-5:], msg]
    raise AssertionError(f"no {kind.__name__} within 30 s; last seen: {seen}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--client-zmtp", type=float, default=0.0)
    parser.add_argument("--source", default=str(Path(__file__).resolve().parent.parent))
    parser.add_argument("--subscribe", action="store_true", help="each user holds a SUB too")
    parser.add_argument("--rest", type=float, help="seconds of the idle phase (--seconds)")
    args = parser.parse_args()
    result = run(
        args.users,
        args.seconds,
        args.heartbeat,
        args.client_zmtp,
        args.source,
        args.subscribe,
        args.rest,
    )
    s = result.pop("stats")
    result["drops"] = s.get("drops")
    result["clients_at_end"] = s.get("clients")
    head = {"users": args.users, "heartbeat": args.heartbeat, "client_zmtp": args.client_zmtp,
            "subscribe": args.subscribe}  # fmt: skip
    print(json.dumps({**head, **result}))


if __name__ == "__main__":
    main()
