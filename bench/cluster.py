"""The three-broker family (``room-bench --cluster``): brokers a, b and c sharing rooms over a
private nats-server (JetStream, R1) and over a three-node NATS cluster (R3: ``natscluster``),
beside one broker without a backbone and the bare relay.

Each scenario runs once against each of the three deployments, with the same senders and
subscribers: one subscriber process per place ("a", "b", "c"), one sender process per writer.
On the single broker and the relay every place is that one process, so the load has the same
shape everywhere and the ratios compare like with like. Every deployment is fresh per scenario
(nats-server's store and the brokers' data dirs too), so CPU time and peak memory are that
scenario's alone. Nothing here imports NATS: the brokers do, in their own processes.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any, Final

from bench import load
from bench.natscluster import INSTALL, NatsCluster, find_nats
from bench.run import WAIT, Target, cpu_seconds, machine, peak_mb, percentiles, stop_process

NODES: Final = ("a", "b", "c")
ROOM: Final = "bench"
SIZE: Final = 32
KINDS: Final = ("cluster", "r3", "single", "relay")
"""``cluster``: one nats-server (R1); ``r3``: three, the stream and buckets on each (R3)."""
BACKBONES: Final = ("cluster", "r3")
FIGURES: Final = ("delivered", "expected", "lost", "repaired", "gone", "duplicates")
"""What each place's subscriber counts (``gone``: missed and no longer stored: lost for good)."""


@dataclass(frozen=True)
class ClusterScenario:
    name: str
    senders: tuple[str, ...]  # where each sender writes (one user each, all in one room)
    subs: tuple[str, ...]  # where each subscriber reads
    count: int  # messages per sender
    rate: float = 0.0  # per sender; 0: as fast as possible

    @property
    def sampled(self) -> bool:
        return self.rate > 0


def scenarios(quick: bool) -> list[ClusterScenario]:
    """Counts are messages per sender; quick ones take a second or so each."""
    q = 25 if quick else 1
    return [
        ClusterScenario("cluster 1->3", ("a",), NODES, 50_000 // q),
        ClusterScenario("cluster 2 writers", ("a", "b"), NODES, 25_000 // q),
        ClusterScenario("cluster lat 1k/s", ("a",), ("a", "b"), 500 if quick else 5_000, 1_000),
    ]


class Nats:
    """A private ``nats-server -js`` on a free loopback port, its store in ``store``."""

    def __init__(self, binary: str, store: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"nats://127.0.0.1:{port}"
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not start on port {port}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Deployment:
    """What a scenario runs against: the cluster (nats-server and brokers a, b, c), one broker
    without a backbone, or the relay; ``place`` maps a, b, c to a process's endpoints."""

    def __init__(self, kind: str, workdir: Path, nats: str | None) -> None:
        self.kind = kind
        self.proto = "relay" if kind == "relay" else "room"
        self.nats: Nats | None = None
        self.r3: NatsCluster | None = None
        self.targets: dict[str, Target] = {}
        try:
            if kind in BACKBONES:
                assert nats is not None
                if kind == "r3":
                    self.r3 = NatsCluster(workdir / "nats", nats)
                    urls = self.r3.urls
                else:
                    self.nats = Nats(nats, workdir / "nats-store", workdir / "nats.log")
                    urls = self.nats.url
                for node in NODES:  # started at once, then waited for
                    extra = ("--backbone", urls, "--node-id", node)
                    self.targets[node] = Target("room", workdir, f"broker-{node}", extra, False)
                for target in self.targets.values():
                    target.ready()
            else:
                target = Target(self.proto, workdir)
                self.targets = dict.fromkeys(NODES, target)
        except BaseException:
            self.stop()
            raise

    def place(self, node: str) -> tuple[str, str]:
        target = self.targets[node]
        return target.router, target.pub

    def pids(self) -> dict[str, int]:
        """The processes that do the work, by name (the relay's or broker's, nats-server's)."""
        if self.kind not in BACKBONES:
            return {self.kind: self.targets["a"].proc.pid}
        pids = {node: t.proc.pid for node, t in self.targets.items()}
        if self.nats is not None:
            pids["nats"] = self.nats.proc.pid
        if self.r3 is not None:
            for server in self.r3.nodes:
                assert server.proc is not None
                pids[f"nats-{server.name}"] = server.proc.pid
        return pids

    def stop(self) -> None:
        for target in {id(t): t for t in self.targets.values()}.values():
            target.stop()
        if self.nats is not None:
            self.nats.stop()
        if self.r3 is not None:
            self.r3.stop()


def measure(s: ClusterScenario, dep: Deployment) -> dict[str, Any]:
    """One scenario against one deployment: per place, what its subscriber got and how fast."""
    ctx = mp.get_context("spawn")
    ready, send_queue = ctx.Queue(), ctx.Queue()
    expected = s.count * len(s.senders)
    started: list[Any] = []

    def start(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        proc = ctx.Process(target=target, args=args, kwargs=kwargs)
        proc.start()
        started.append(proc)

    ok = False
    try:
        sub_queues = []
        for k, node in enumerate(s.subs):
            router, pub = dep.place(node)
            sub_queues.append(queue := ctx.Queue())
            args = (queue, ready, dep.proto, router, pub, [ROOM], expected, s.sampled)
            start(load.subscribers, args, {"name": f"sub{node}{k}-"})
        for _ in s.subs:
            _get(ready, "", started)
        pids = dep.pids()
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for j, node in enumerate(s.senders):
            router, _ = dep.place(node)
            args = (send_queue, dep.proto, router, [ROOM], s.count, SIZE, s.rate)
            start(load.sender, args, {"name": f"w{node}{j}-", "first": j * s.count,
                                      "ack_wait": WAIT})  # fmt: skip
        sent = [_get(send_queue, "sender", started) for _ in s.senders]
        got = [_get(queue, "subscribers", started) for queue in sub_queues]
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
        peak = {name: peak_mb(pid) for name, pid in pids.items()}
        ok = True
    finally:
        for proc in started:  # they have reported: only their exit is left
            proc.join(10 if ok else 0)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    start = min(x["start"] for x in sent)
    total_sent = sum(x["sent"] for x in sent)
    places: dict[str, Any] = {}
    for node, g in zip(s.subs, got, strict=True):
        place = {key: g[key] for key in FIGURES}
        place["rate"] = g["delivered"] / max(g["last"] - start, 1e-9)
        if s.sampled and g["latencies"]:
            place["latency_ms"] = percentiles(g["latencies"])
            place["latencies_us"] = [x // 1000 for x in g["latencies"]]
        places[node] = place
    figures: dict[str, Any] = {
        "places": places,
        **{key: sum(p[key] for p in places.values())
           for key in FIGURES},
        "rate": min(p["rate"] for p in places.values()),  # the slowest place sets the pace
        "cpu_us_per_msg": 1e6 * sum(cpu.values()) / max(1, total_sent),
        "cpu_us_per_msg_by_process": {k: 1e6 * v / max(1, total_sent) for k, v in cpu.items()},
        "peak_mb": sum(peak.values()),
        "peak_mb_by_process": peak,
    }  # fmt: skip
    if dep.proto == "room":
        figures["acked"] = sum(x["acked"] for x in sent)
        figures["refused"] = sum(x["refused"] for x in sent)
    return figures


def _get(queue: Any, role: str, procs: list[Any]) -> Any:
    """The next report on ``queue`` (``role`` "": a ready signal); fails at once if a load
    process died without reporting, rather than after ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            result = queue.get(timeout=0.2)
            break
        except Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a load process failed (exit {dead[0].exitcode})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {role or 'ready'} report in {WAIT:.0f} s") from None
    if role and result.get("role") != role:
        raise RuntimeError(f"expected a {role} result, got {result}")
    return result


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    return a["rate"] / b["rate"] if b.get("rate") else None


def run(
    quick: bool, only: list[str] | None = None, echo: Any = print, nats: str | None = None
) -> dict[str, Any]:
    """Every cluster scenario against the three deployments; returns the whole report."""
    nats = nats or find_nats()
    if nats is None:
        raise RuntimeError(f"nats-server not found (beside Python, PATH, /usr/sbin): {INSTALL}")
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "scenarios": [], "cluster": []}
    with tempfile.TemporaryDirectory(prefix="room-bench-cluster-") as tmp:
        for s in scenarios(quick):
            if only and s.name not in only:
                continue
            entry: dict[str, Any] = {"name": s.name, "senders": list(s.senders),
                                     "subscribers": list(s.subs), "count": s.count * len(s.senders),
                                     "rate": s.rate}  # fmt: skip
            for kind in KINDS:
                workdir = Path(tmp) / re.sub(r"\W+", "_", s.name) / kind
                workdir.mkdir(parents=True)
                dep = Deployment(kind, workdir, nats)
                try:
                    entry[kind] = measure(s, dep)
                finally:
                    dep.stop()
            entry["ratio_single"] = _ratio(entry["cluster"], entry["single"])
            entry["ratio_relay"] = _ratio(entry["cluster"], entry["relay"])
            entry["ratio_r3_single"] = _ratio(entry["r3"], entry["single"])
            if s.sampled:
                entry["added_ms"] = added_latency(s, entry)
                entry["r3_added_ms"] = added_latency(s, entry, "r3")
            report["cluster"].append(entry)
            echo(entry)
    return report


def added_latency(
    s: ClusterScenario, entry: dict[str, Any], kind: str = "cluster"
) -> dict[str, float] | None:
    """What the backbone (``kind``: R1 or R3) adds at the farthest place (b: sent on a, read on
    b), p50 and p99."""
    far = s.subs[-1]
    cluster = entry[kind]["places"][far].get("latency_ms")
    single = entry["single"]["places"][far].get("latency_ms")
    if not cluster or not single:
        return None
    return {q: cluster[q] - single[q] for q in ("p50", "p99")}


# ---- the table ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


HEADER = (
    f"{'scenario':<18} {'target':<8} {'a msg/s':>9} {'b msg/s':>9} {'c msg/s':>9}"
    f" {'lost':>6} {'repair':>7} {'dup':>5} {'cpu us':>7} {'MB':>6}\n"
    "(msg/s: delivered per second to the subscriber on broker a, b, c; cpu us per message sent"
    " and MB: every process of the target, nats-server included)"
)


def rows(entry: dict[str, Any]) -> str:
    """A scenario: a line per deployment, then the ratios (and for a latency one, the
    percentiles at each place and what the backbone adds)."""
    senders = "+".join(entry["senders"])
    lines = []
    for kind in KINDS:
        f = entry[kind]
        places = f["places"]
        rates = " ".join(f"{_fmt(places[n]['rate'] if n in places else None):>9}" for n in NODES)
        name = entry["name"] if kind == "cluster" else (f"  sent on {senders}" if kind == "single"
                                                        else "")  # fmt: skip
        lines.append(
            f"{name:<18} {kind:<8} {rates} {f['lost']:>6} {f['repaired']:>7}"
            f" {f['duplicates']:>5} {f['cpu_us_per_msg']:>7.1f} {f['peak_mb']:>6.0f}"
        )
    if "added_ms" not in entry:  # a flood: how the cluster's pace compares
        lines.append(
            f"{'':<18} cluster/single {_fmt(entry['ratio_single'], '.3f')}x"
            f"  r3/single {_fmt(entry.get('ratio_r3_single'), '.3f')}x"
            f"  cluster/relay {_fmt(entry['ratio_relay'], '.3f')}x"
        )
    else:  # paced: the rates are the pace; the latencies are the figures
        for kind in KINDS:
            places = entry[kind]["places"]
            text = "  ".join(
                f"{n}: " + "/".join(f"{v:.2f}" for v in places[n]["latency_ms"].values())
                for n in entry["subscribers"]
                if "latency_ms" in places[n]
            )
            lines.append(f"{'':<18} {kind:<8} latency ms p50/p99/p99.9 {text}")
        for kind, key in (("R1", "added_ms"), ("R3", "r3_added_ms")):
            added = entry.get(key)
            if added:
                lines.append(
                    f"{'':<18} backbone {kind} adds (a->b vs one broker):"
                    f" p50 {added['p50']:+.2f} ms, p99 {added['p99']:+.2f} ms"
                )
    return "\n".join(lines)
