"""Scenarios: each runs once against the real broker and once against the bare relay, in one run.

Every target is a fresh process on random loopback ports (the broker with a fresh data dir and
durability on), so its CPU time and peak memory are read from /proc for that scenario alone.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import keys, load

CLK_TCK = os.sysconf("SC_CLK_TCK")
WAIT = 120.0


@dataclass(frozen=True)
class Scenario:
    name: str
    senders: int  # rooms written to, one sending user each
    subs_per_room: int
    count: int  # messages in all
    size: int = 32
    rate: float = 0.0  # 0: as fast as possible
    idle: int = 0  # for the idle scenario: connected clients, nothing sent
    hold: float = 0.0
    keys: bool = False  # the broker seals the PUB (--room-keys); the relay cannot
    churn: bool = False  # a member leaves the room and comes back once a second (keys change)


def scenarios(quick: bool) -> list[Scenario]:
    q = 10 if quick else 1
    return [
        Scenario("1->1", 1, 1, 200_000 // q),
        Scenario("1->10", 1, 10, 50_000 // q),
        Scenario("1->1 keys", 1, 1, 200_000 // q, keys=True),
        Scenario("1->10 keys", 1, 10, 50_000 // q, keys=True),
        Scenario("1->100", 1, 100, 10_000 // q),
        Scenario("1->100 keys", 1, 100, 10_000 // q, keys=True),
        Scenario("1->100 churn", 1, 100, 10_000 // q, keys=True, churn=True),
        Scenario("10 rooms", 10, 1, 200_000 // q),
        Scenario("latency 1k/s", 1, 1, 5_000 // q, rate=1_000),
        Scenario("latency 10k/s", 1, 1, 50_000 // q, rate=10_000),
        Scenario("1000 idle", 0, 0, 0, idle=1000 // q, hold=10.0 / (3 if quick else 1)),
    ]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_mb(pid: int) -> float:
    """A running process's peak resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if it has not gone after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Target:
    """A broker or a relay process, and what it cost."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        label: str = "",
        extra: tuple[str, ...] = (),
        wait: bool = True,
    ) -> None:
        """Start it; ``label`` names its log and data dir when several share a workdir (the
        cluster's brokers), ``extra`` goes on the broker's command line, and ``wait`` False
        leaves the wait for its endpoints to ``ready`` (several then start at once)."""
        self.kind = kind
        self.label = label or kind
        # We read through a handle of our own: seeking the one the child writes through would
        # move its offset too, and it would overwrite its first line (seen in CI).
        self.log_path = workdir / f"{self.label}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        if kind == "room":
            any_port = "tcp://127.0.0.1:0"
            data = workdir / (f"data-{label}" if label else "data")
            argv = [sys.executable, "-c", "from broker.cli import main; main()", "start",
                    "--router", any_port, "--pub", any_port, "--control", any_port,
                    "--data-dir", str(data), "--rate", "0", *extra]  # fmt: skip
            self.pattern = r"listening: router (\S+) pub (\S+)"
        else:
            argv = [sys.executable, "-c", "from bench.relay import main; main()"]
            self.pattern = r"relay (\S+) (\S+)"
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait for the line that gives its endpoints."""
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = self.output()
            m = re.search(self.pattern, text)
            if m:
                self.router, self.pub = m.group(1), m.group(2)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the {self.label} did not start: {last[0]}")

    def output(self) -> str:
        """What it has printed so far."""
        return self.log_path.read_text(errors="replace")

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def peak_mb(self) -> float:
        return peak_mb(self.proc.pid)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def _get(queue: Any, role: str) -> dict[str, Any]:
    result = queue.get(timeout=WAIT)
    if result.get("role") != role:
        raise RuntimeError(f"expected a {role} result, got {result}")
    return result


def _keys_flag(s: Scenario, kind: str) -> tuple[str, ...]:
    """The broker seals the PUB only in the scenarios about keys; the relay cannot."""
    if kind != "room":
        return ()
    return ("--room-keys",) if s.keys else ("--no-room-keys",)


def run_one(s: Scenario, kind: str, workdir: Path) -> dict[str, Any]:
    """One scenario against one target; the figures of that pairing."""
    ctx = mp.get_context("spawn")
    target = Target(kind, workdir, extra=_keys_flag(s, kind))
    try:
        results, ready = ctx.Queue(), ctx.Queue()
        if s.idle:
            if kind != "room":
                return {}
            cpu0 = target.cpu()
            proc = ctx.Process(target=load.idle_clients,
                               args=(results, ready, target.router, s.idle, s.hold))  # fmt: skip
            proc.start()
            ready.get(timeout=WAIT)
            cpu0, t0 = target.cpu(), time.monotonic()
            idle = _get(results, "idle")
            busy = target.cpu() - cpu0
            proc.join(WAIT)
            percent = 100 * busy / (time.monotonic() - t0)
            return {"connected": idle["connected"], "cpu_percent": percent,
                    "peak_mb": target.peak_mb()}  # fmt: skip
        rooms = [f"r{k}" for k in range(s.senders)]
        sub_rooms = [room for room in rooms for _ in range(s.subs_per_room)]
        per_room = s.count // s.senders
        sample = s.rate > 0
        args = (results, ready, kind, target.router, target.pub, sub_rooms, per_room, sample)
        subs = ctx.Process(target=load.subscribers, args=args)
        subs.start()
        ready.get(timeout=WAIT)
        churn, stop_churn = None, ctx.Event()
        if s.churn and kind == "room":
            churn = ctx.Process(target=keys.churner,
                                args=(target.router, rooms[0], stop_churn, results))  # fmt: skip
            churn.start()
        cpu0 = target.cpu()
        send = ctx.Process(target=load.sender, args=(
            results, kind, target.router, rooms, per_room * s.senders, s.size, s.rate))  # fmt: skip
        send.start()
        first, second = _get_any(results), _get_any(results)
        sent = first if first["role"] == "sender" else second
        got = second if first["role"] == "sender" else first
        cpu = target.cpu() - cpu0
        send.join(WAIT)
        subs.join(WAIT)
        removals = 0
        if churn is not None:
            stop_churn.set()
            removals = _get(results, "churner")["removals"]
            churn.join(WAIT)
        elapsed = max(got["last"] - sent["start"], 1e-9)
        figures = {
            "delivered": got["delivered"],
            "expected": got["expected"],
            "rate": got["delivered"] / elapsed,
            "lost": got["lost"],
            "repaired": got["repaired"],
            "duplicates": got["duplicates"],
            "cpu_us_per_msg": 1e6 * cpu / max(1, sent["sent"]),
            "peak_mb": target.peak_mb(),
        }
        if kind == "room":
            figures["acked"], figures["refused"] = sent["acked"], sent["refused"]
        if churn is not None:
            figures["removals"] = removals
        if sample and got["latencies"]:
            figures["latency_ms"] = percentiles(got["latencies"])
            figures["latencies_us"] = [x // 1000 for x in got["latencies"]]
        return figures
    finally:
        target.stop()


def _get_any(queue: Any) -> dict[str, Any]:
    return queue.get(timeout=WAIT)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999)}


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}  # fmt: skip


def run(quick: bool, only: list[str] | None = None, echo: Any = print) -> dict[str, Any]:
    """Every scenario against both targets; returns the whole report."""
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "scenarios": []}
    with tempfile.TemporaryDirectory(prefix="room-bench-") as tmp:
        for s in scenarios(quick):
            if only and s.name not in only:
                continue
            workdir = Path(tmp) / re.sub(r"\W+", "_", s.name)
            workdir.mkdir()
            room = run_one(s, "room", workdir)
            relay = run_one(s, "relay", workdir)
            ratio = room["rate"] / relay["rate"] if relay.get("rate") else None
            entry = {"name": s.name, "ratio": ratio, "room": room, "relay": relay,
                     "count": s.count, "rate": s.rate}  # fmt: skip
            report["scenarios"].append(entry)
            echo(entry)
    return report
