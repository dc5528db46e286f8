"""Scenarios, each against the real broker and the references in one run: the bare relay, the
batching relay, and Redis pub/sub when redis-server is on the machine.

Every target is a fresh process on random loopback ports (the broker with a fresh data dir and
durability on), so its CPU time and peak memory are read from /proc for that scenario alone. The
load is the same for every target (``lean``; ``measure`` runs one pairing).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import measure
from bench.measure import VARIANTS, WAIT, percentiles

__all__ = ["WAIT", "Scenario", "Target", "machine", "percentiles", "run"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    senders: int  # rooms written to, one sending user each
    subs_per_room: int
    count: int  # messages in all
    size: int = 62
    rate: float = 0.0  # 0: as fast as possible
    idle: int = 0  # for the idle scenario: connected clients, nothing sent
    hold: float = 0.0
    variants: tuple[str, ...] = ()  # the broker again, as ``measure.VARIANTS`` says, each round


def scenarios(quick: bool) -> list[Scenario]:
    q = 10 if quick else 1
    return [
        Scenario("1->1", 1, 1, 200_000 // q, variants=("control", "keys")),
        Scenario("1->10", 1, 10, 50_000 // q, variants=("control", "keys")),
        Scenario("1->100", 1, 100, 120_000 // q, variants=("control", "keys", "churn")),
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
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    """A running process's resident memory now (VmRSS), from /proc."""
    return _status_mb(pid, "VmRSS:")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
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


def redis_binary() -> str | None:
    """redis-server, if this machine has it (Debian's ``redis-server`` package)."""
    return shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")


def _free_port() -> int:
    """A free loopback port for redis-server, which cannot be told to pick one and say which."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Target:
    """A broker, a relay or redis-server process, and what it cost."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        label: str = "",
        extra: tuple[str, ...] = (),
        wait: bool = True,
    ) -> None:
        """Start it; ``label`` names its log and data dir when several share a workdir (the
        cluster's brokers), ``extra`` goes on its command line, and ``wait`` False leaves the
        wait for its endpoints to ``ready`` (several then start at once). ``kind``: room, relay
        (bare), batch (the batching relay) or redis."""
        self.kind = kind
        self.label = label or kind
        # We read through a handle of our own: seeking the one the child writes through would
        # move its offset too, and it would overwrite its first line (seen in CI).
        self.log_path = workdir / f"{self.label}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.address = self.control = ""
        self.data = workdir / (f"data-{label}" if label else "data")  # the broker's
        if kind == "room":
            any_port = "tcp://127.0.0.1:0"
            argv = [sys.executable, "-c", "from broker.cli import main; main()", "start",
                    "--router", any_port, "--pub", any_port, "--control", any_port,
                    "--data-dir", str(self.data), "--rate", "0", *extra]  # fmt: skip
            self.pattern = r"listening: router (\S+) pub (\S+) control (\S+)"
        elif kind == "redis":
            port = _free_port()
            self.address = f"127.0.0.1:{port}"
            argv = [redis_binary() or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", *extra]  # fmt: skip
            self.pattern = r"Ready to accept connections"
        else:
            argv = [sys.executable, "-c", "from bench.relay import main; main()", *extra]
            if kind == "batch":
                argv.append("--batch")
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
                if self.address:
                    self.router = self.pub = self.address
                else:
                    self.router, self.pub = m.group(1), m.group(2)
                if self.kind == "room":
                    self.control = m.group(3)
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


def machine() -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}  # fmt: skip


def run(
    quick: bool, only: list[str] | None = None, echo: Any = print, rounds: int = 1
) -> dict[str, Any]:
    """Every scenario against every target, ``rounds`` times, interleaved (broker, its variants,
    relays, Redis, then again; the broker and its variants in turn first, so a drift in the
    machine's speed falls on every side of a pair): each figure is the median round's, each
    ratio the median of the rounds' ratios, and lost and duplicated the most any round saw."""
    redis = redis_binary() is not None and _have_redis_client()
    refs = ["relay", "batch"] + (["redis"] if redis else [])
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "rounds": rounds,
                              "targets": ["room", *refs], "notes": [], "scenarios": []}  # fmt: skip
    if not redis:
        report["notes"].append(NO_REDIS if redis_binary() is None else NO_REDIS_CLIENT)
    with tempfile.TemporaryDirectory(prefix="room-bench-") as tmp:
        for s in scenarios(quick):
            if only and s.name not in only:
                continue
            base = Path(tmp) / re.sub(r"\W+", "_", s.name)
            brokers = ["room", *s.variants]
            kinds = brokers if s.idle else [*brokers, *refs]
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for r in range(rounds):
                turn = r % len(brokers)
                for kind in brokers[turn:] + brokers[:turn] + kinds[len(brokers) :]:
                    runs[kind].append(run_one(s, kind, measure.workdir_for(base, kind, r)))
            entry: dict[str, Any] = {"name": s.name, "count": s.count, "rate": s.rate}
            for kind in kinds:
                entry[kind] = _median(runs[kind])
            if not s.idle:
                entry["ratios"] = {k: _median_ratio(runs["room"], runs[k]) for k in refs}
                entry["ratio"] = entry["ratios"]["relay"]
                entry["variants"] = {
                    v: _median_ratio(runs[v], runs[VARIANTS[v]]) for v in s.variants
                }
            report["scenarios"].append(entry)
            echo(entry)
    return report


NO_REDIS = "redis-server is not on this machine: no Redis column (apt install redis-server)"
NO_REDIS_CLIENT = "redis-py and hiredis are not installed: no Redis column (pip install '.[bench]')"


def _have_redis_client() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("redis", "hiredis"))


def run_one(s: Scenario, kind: str, workdir: Path) -> dict[str, Any]:
    """One scenario against one target (a broker variant is a broker), started fresh for it."""
    target = Target(measure.protocol(kind), workdir, label=kind, extra=measure.target_args(s, kind))
    try:
        return measure.idle(s, target) if s.idle else measure.flow(s, kind, target)
    finally:
        target.stop()


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if "rate" not in runs[0]:
        return runs[len(runs) // 2]
    ordered = sorted(runs, key=lambda f: f["rate"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rates"] = [f["rate"] for f in runs]
    chosen["rounds"] = [{key: f[key] for key in ROUND_KEYS if key in f} for f in runs]
    for key in ("lost", "duplicates"):
        chosen[key] = max(f[key] for f in runs)
    if "keys" in chosen:  # what keys cost: each figure the median round's
        chosen["keys"] = {
            k: sorted(f["keys"][k] for f in runs)[len(runs) // 2] for k in chosen["keys"]
        }
    return chosen


ROUND_KEYS = ("rate", "lost", "duplicates", "repaired", "cpu_us_per_msg", "latency_ms", "keys")
"""What the report keeps of every round, beside the median round's figures."""


def _median_ratio(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> float | None:
    """The median over rounds of ours/theirs, each round's pair run one after the other."""
    ratios = sorted(a["rate"] / b["rate"] for a, b in zip(ours, theirs, strict=True) if b["rate"])
    return ratios[len(ratios) // 2] if ratios else None
