"""Soak: the abuse scenarios of issue 17 ("Bounded under abuse") for as long as you like.

``tests/test_abuse.py`` and ``tests/test_connections.py`` run each attack for seconds; this runs
each for ``--seconds`` (default 60) against a fresh ``room-broker start`` (temporary data dir,
free loopback ports, ``--rate 0 --quiet``), with a canary pair chatting throughout: two users in
one room take turns, and every message is timed from its Say until both their subscriptions have
it. A thread samples the broker's VmRSS every 0.1 s. One line per scenario; the exit code is 1 if
the canary lost a message, the broker's RSS went over 300 MB or a scenario failed, else 0::

    python -m bench.soak [--seconds N] [--only SCENARIO]...

Scenarios: ``fetcher`` (a client asks for a room of 4 KB messages again and again and never
reads), ``stopped-subs`` (20 subscriptions in a SIGSTOPped process, their room flooded with 4 KB
messages), ``room-flood`` (Joins of new room names as fast as they go), ``connections`` (2,000
silent DEALER connections opened, counted by the broker, closed, again and again).

Every attacker runs in a process of its own, so that it never takes the canary's GIL.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from bench import load, run
from bench.abuse import (
    FLOOD,
    STOPPED_SUBSCRIBERS,
    STUCK,
    _connector,
    _entry,
    _fetcher,
    _flooder,
    _roomer,
    stop_stopped,
)
from bench.canary import (
    COOLDOWN,
    RSS_LIMIT_MB,
    SETUP_WAIT,
    Canary,
    Watch,
    _dealer,
    _drain,
    ctl_stats,
)
from broker.wire import protocol as p


@dataclass
class Env:
    """What a scenario works with, and what it started (stopped by ``soak_one``)."""

    ctx: zmq.Context[zmq.Socket[bytes]]
    target: run.Target
    control: str
    data_dir: str
    seconds: float
    workdir: Path
    children: list[Any] = field(default_factory=list)  # multiprocessing processes
    popens: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _next_result(results: Any, proc: Any, deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        try:
            got: dict[str, Any] = results.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                try:
                    got = results.get(timeout=1.0)
                except queue.Empty:
                    raise RuntimeError(f"the attacker exited ({proc.exitcode})") from None
            else:
                continue
        if "error" in got:
            raise RuntimeError(f"the attacker failed: {got['error']}")
        return got
    raise TimeoutError("the attacker did not answer in time")


def attack(env: Env, body: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """An attacker (``body``) in a process of its own, for ``env.seconds`` once it is ready;
    its figures."""
    spawn = mp.get_context("spawn")
    results = spawn.Queue()
    proc = spawn.Process(
        target=_entry, args=(results, body, env.target.router, env.seconds, *args), daemon=True
    )
    env.children.append(proc)
    proc.start()
    _next_result(results, proc, time.monotonic() + SETUP_WAIT)  # ready
    figures = _next_result(results, proc, time.monotonic() + env.seconds + 2 * SETUP_WAIT)
    proc.join(10)
    return figures


def fetcher_scenario(env: Env) -> str:
    got = attack(env, _fetcher)
    stats = ctl_stats(env.control, env.data_dir)
    drops = "?" if stats is None else f"{stats['drops']:,}"
    return (f"{got['requests']:,} Fetches of the whole 4 MB room sent ({got['rate']:,.0f}/s; "
            f"send queue full {got['full']:,} times), broker dropped {drops} replies")  # fmt: skip


def stopped_subs_scenario(env: Env) -> str:
    room = "flooded"
    with open(env.workdir / "stuck.log", "wb") as err:
        stuck = subprocess.Popen(
            [sys.executable, "-c", STOPPED_SUBSCRIBERS, env.target.router, env.target.pub,
             str(STUCK), p.topic(room).hex(), str(SETUP_WAIT + env.seconds + SETUP_WAIT)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    env.popens.append(stuck)
    waker = _dealer(env.ctx, env.target.router)  # the room is heard on every subscription
    try:
        load._handshake(waker, "waker", room)
        deadline = time.monotonic() + SETUP_WAIT
        line = b""
        nonce = 0
        assert stuck.stdout is not None
        while not line and time.monotonic() < deadline and stuck.poll() is None:
            nonce += 1
            waker.send(p.encode(p.Sync(nonce)))
            _drain(waker)
            if select.select([stuck.stdout], [], [], 0.2)[0]:
                line = stuck.stdout.readline().strip()
        if line != b"ready":
            raise RuntimeError(f"the {STUCK} subscribers never heard the room: {line!r}")
    finally:
        waker.close(0)
    os.kill(stuck.pid, signal.SIGSTOP)
    got = attack(env, _flooder)
    rate = got["acked"] / got["seconds"]
    return (f"{got['acked']:,} messages of 4 KB acknowledged ({rate:,.0f}/s, "
            f"{rate * 4000 / 2**20:.1f} MB/s; refused {got['refused']:,}) "
            f"to {STUCK} stopped subscribers")  # fmt: skip


def room_flood_scenario(env: Env) -> str:
    got = attack(env, _roomer)
    answers = got["got"]
    return (f"{got['sent']:,} Joins of new rooms ({got['rate']:,.0f}/s, all answered "
            f"{got['handled_in']:.1f} s after the first), "
            f"{answers.get('Joined', 0)} rooms made, {answers.get('rate_limited', 0):,} "
            f"refused (rate_limited), {got['rooms']} rooms listed at the end")  # fmt: skip


def connections_scenario(env: Env) -> str:
    got = attack(env, _connector, env.control, env.data_dir)
    slow = f"; {', '.join(got['slow'])}" if got["slow"] else ""
    return (f"{got['waves']} waves of {FLOOD:,} silent connections ({got['opened']:,} opened "
            f"and closed), broker counted up to {got['peak']:,}{slow}")  # fmt: skip


SCENARIOS: Final[dict[str, Callable[[Env], str]]] = {
    "fetcher": fetcher_scenario,
    "stopped-subs": stopped_subs_scenario,
    "room-flood": room_flood_scenario,
    "connections": connections_scenario,
}


@dataclass
class Outcome:
    name: str
    rss: list[float]  # MB: start, samples..., end
    delays_ns: list[int]
    lost: list[str]
    abuser: str
    failure: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure and not self.lost and max(self.rss or [0.0]) <= RSS_LIMIT_MB

    def line(self) -> str:
        rss = (f"{self.rss[0]:.0f}/{max(self.rss):.0f}/{self.rss[-1]:.0f} MB"
               if self.rss else "-")  # fmt: skip
        said = len(self.delays_ns) + len(self.lost)
        if self.delays_ns:
            q = run.percentiles(self.delays_ns)
            delay = f"{q['p50']:.1f}/{q['p99']:.1f}/{max(self.delays_ns) / 1e6:.1f} ms"
        else:
            delay = "-"
        text = (f"{self.name:<12} {'ok' if self.ok else 'FAIL':<4} RSS start/peak/end {rss}; "
                f"canary {said} msgs, {len(self.lost)} lost, delay p50/p99/max {delay}; "
                f"{self.abuser}")  # fmt: skip
        over = max(self.rss or [0.0]) > RSS_LIMIT_MB
        too_big = f"broker RSS over {RSS_LIMIT_MB:.0f} MB" if over else ""
        for what in [self.failure, too_big, *self.lost[:3]]:
            if what:
                text += f"\n{'':<17} {what}"
        return text


def soak_one(name: str, seconds: float) -> Outcome:
    """One scenario against a broker of its own, in a data dir of its own; everything it
    started is stopped, however it ends."""
    outcome = Outcome(name, [], [], [], "-")
    with tempfile.TemporaryDirectory(prefix="room-soak-") as tmp:
        workdir = Path(tmp)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        target: run.Target | None = None
        watch: Watch | None = None
        env: Env | None = None
        try:
            target = run.Target("room", workdir, extra=("--quiet",))
            control = re.search(r"control (\S+)", target.output())
            if control is None:
                raise RuntimeError("the broker did not say its control endpoint")
            env = Env(ctx, target, control.group(1), str(workdir / "data"), seconds, workdir)
            canary = Canary(ctx, target.router)
            watch = Watch(target.proc.pid, canary)
            watch.start()
            outcome.abuser = SCENARIOS[name](env)
            time.sleep(COOLDOWN)
        except Exception as exc:
            outcome.failure = f"{type(exc).__name__}: {exc}"
        finally:
            if watch is not None:
                watch.stop()
                outcome.rss, outcome.failure = watch.rss, outcome.failure or watch.failure
                outcome.delays_ns, outcome.lost = watch.canary.delays_ns, watch.canary.lost
                if watch.broker_gone:
                    outcome.failure = outcome.failure or "the broker exited during the scenario"
            if env is not None:
                for child in env.children:
                    if child.is_alive():
                        child.terminate()  # SIGTERM
                        child.join(5)
                    if child.is_alive():
                        child.kill()
                        child.join(5)
                for popen in env.popens:
                    stop_stopped(popen)
            ctx.destroy(linger=0)
            if target is not None:
                target.stop()
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="The abuse scenarios of issue 17 against a real broker, each for N seconds, "
        "with a canary pair chatting throughout. Exit code 1 if the canary lost a message or "
        f"the broker's RSS went over {RSS_LIMIT_MB:.0f} MB.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="per scenario (default 60)")
    parser.add_argument(
        "--only", action="append", choices=list(SCENARIOS), help="run only this (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be above 0")
    names = [name for name in SCENARIOS if not args.only or name in args.only]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through every finally, as Ctrl-C
    m = run.machine()
    print(f"soak: {args.seconds:g} s per scenario; {m['cpu']}, {m['cores']} cores, "
          f"Python {m['python']}", flush=True)  # fmt: skip
    ok = True
    for name in names:
        outcome = soak_one(name, args.seconds)
        print(outcome.line(), flush=True)
        ok = ok and outcome.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
