"""``room-bench --web``: what ``room-web`` costs. One broker, one gateway, many WebSocket clients
(aiohttp, in a process of their own: no browsers) in ``public``, and a terminal-protocol sender
(``load.sender``) paced at a rate. Each WebSocket client checks that it gets every message once
and in order; the figures are deliveries per second, latency from the sender to the WebSocket
clients (the text carries its send time), and the gateway's memory and CPU per session.

A WebSocket the gateway closes for falling behind comes back with ``resume``, as the page does,
and must still see every message once: a lost or repeated message counts against the gateway.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import load
from bench.run import (
    WAIT,
    Target,
    cpu_seconds,
    machine,
    peak_mb,
    percentiles,
    rss_mb,
    stop_process,
)

CLIENT_PROCESSES: Final = 2
"""Processes the WebSocket clients are spread over: one alone falls behind before the gateway."""
CONNECT_BATCH: Final = 50
"""WebSockets opened at once while the clients connect."""
IDLE_END: Final = 60.0
"""A client stops this long after its last message: a gateway that fell behind has time to
catch up, and what has not come by then counts as lost."""


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    count: int  # messages sent
    rate: float  # messages per second from the one sender


def scenarios(quick: bool) -> list[Scenario]:
    if quick:
        return [Scenario("20 ws, 20/s", 20, 100, 20.0)]
    return [
        Scenario("200 ws, 10/s", 200, 300, 10.0),
        Scenario("200 ws, 25/s", 200, 500, 25.0),
        Scenario("200 ws, 50/s", 200, 1000, 50.0),
    ]


class Gateway:
    """A ``room-web`` process for the broker at ``router``, on a free port."""

    def __init__(self, workdir: Path, router: str) -> None:
        self.log_path = workdir / "room-web.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-c", "from client.web.cli import main; main()",
                "--listen", "127.0.0.1:0", "--server", router]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = re.search(r"open (http://\S+/) in a browser", self.log_path.read_text())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"room-web did not start: {self.log_path.read_text().strip()[-200:]}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


# ---- the WebSocket clients (in their own process) -----------------------------------------------


class Client:
    """One WebSocket client: says hello, then records every message of the sender."""

    def __init__(self, name: str, count: int) -> None:
        self.name = name
        self.seen = bytearray(count)
        self.delivered = self.duplicates = self.disorder = self.reconnects = 0
        self.last_seq = 0
        self.after = 0  # the number of the last line seen, for a resume
        self.token = ""
        self.latencies: list[int] = []
        self.last_at = 0.0
        self.joined = asyncio.Event()
        self.notices: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    async def run(self, http: Any, url: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(http, url, stop)
            except Exception as exc:  # a connection refused or cut under load: come back
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.1)

    async def _session(self, http: Any, url: str, stop: asyncio.Event) -> None:
        async with http.ws_connect(url, max_msg_size=0) as ws:
            if self.token:
                self.reconnects += 1
                resume = {"t": "resume", "token": self.token, "after": self.after}
                await ws.send_str(json.dumps(resume))
            else:
                await ws.send_str(json.dumps({"t": "hello", "name": self.name}))
            reader = asyncio.ensure_future(self._read(ws))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            stopped.cancel()

    async def _read(self, ws: Any) -> None:
        async for msg in ws:
            if msg.type.name != "TEXT":
                break
            m = json.loads(msg.data)
            if m["t"] == "welcome":
                self.token = m["token"]
            elif m["t"] == "line":
                self.after = m["n"]
                self._line(m)
            elif m["t"] in ("end", "error"):  # a session the gateway could not keep
                text = f"{m['t']}: {m['text']}"
                self.notices[text] = self.notices.get(text, 0) + 1

    def _line(self, m: dict[str, Any]) -> None:
        if m["kind"] == "notice" and m["text"] == "joined public":
            self.joined.set()
        elif m["kind"] in ("notice", "error") and "entered" not in m["text"]:
            self.notices[m["text"]] = self.notices.get(m["text"], 0) + 1
        if m["kind"] != "message" or not m["sender"].startswith("sender"):
            return
        now = time.monotonic_ns()
        index, sent_ns = map(int, m["text"].split(maxsplit=2)[:2])
        if m["seq"] <= self.last_seq:
            self.disorder += 1
        self.last_seq = max(self.last_seq, m["seq"])
        if self.seen[index]:
            self.duplicates += 1
            return
        self.seen[index] = 1
        self.delivered += 1
        self.latencies.append(now - sent_ns)
        self.last_at = time.monotonic()


def ws_clients(
    results: Any, ready: Any, go: Any, url: str, names: list[str], messages: int
) -> None:
    asyncio.run(_ws_clients(results, ready, go, url, names, messages))


async def _ws_clients(
    results: Any, ready: Any, go: Any, url: str, names: list[str], messages: int
) -> None:
    import aiohttp

    ws_url = url.replace("http://", "ws://") + "ws"
    clients = [Client(name, messages) for name in names]
    count = len(clients)
    stop = asyncio.Event()
    # No connection limit: each WebSocket holds one for its whole life (the default is 100).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = []
        for start in range(0, count, CONNECT_BATCH):
            batch = clients[start : start + CONNECT_BATCH]
            tasks += [asyncio.ensure_future(c.run(http, ws_url, stop)) for c in batch]
            await asyncio.wait_for(asyncio.gather(*(c.joined.wait() for c in batch)), WAIT)
        ready.put("ready")
        await asyncio.to_thread(go.get, True, WAIT)  # the sender has started
        while True:
            await asyncio.sleep(0.2)
            if all(c.delivered >= messages for c in clients):
                break
            last = max((c.last_at for c in clients), default=0.0)
            if last and time.monotonic() - last > IDLE_END:
                break
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [x for c in clients for x in c.latencies]
    results.put({
        "role": "ws",
        "delivered": sum(c.delivered for c in clients),
        "expected": count * messages,
        "duplicates": sum(c.duplicates for c in clients),
        "disorder": sum(c.disorder for c in clients),
        "reconnects": sum(c.reconnects for c in clients),
        "last": max(c.last_at for c in clients),
        "latencies": latencies,
        "notices": _merged(c.notices for c in clients),
        "errors": _merged(c.errors for c in clients),
    })  # fmt: skip


def _summed(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The reports of the client processes as one."""
    counted = ("delivered", "expected", "duplicates", "disorder", "reconnects")
    got: dict[str, Any] = {key: sum(part[key] for part in parts) for key in counted}
    got["last"] = max(part["last"] for part in parts)
    latencies = [x for part in parts for x in part["latencies"]]
    got["latency_ms"] = percentiles(latencies) if latencies else {}
    got["notices"] = _merged(part["notices"] for part in parts)
    got["errors"] = _merged(part["errors"] for part in parts)
    return got


def _merged(counts: Any) -> dict[str, int]:
    """Notices the clients saw, and how many of them did: a lost broker, lines missed."""
    merged: dict[str, int] = {}
    for notices in counts:
        for text, n in notices.items():
            merged[text] = merged.get(text, 0) + n
    return merged


# ---- one scenario -------------------------------------------------------------------------------


def run_one(s: Scenario, workdir: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    broker = Target("room", workdir)
    gateway: Gateway | None = None
    try:
        gateway = Gateway(workdir, broker.router)
        pid = gateway.proc.pid
        base_mb = rss_mb(pid)
        results, ready, go = ctx.Queue(), ctx.Queue(), ctx.Queue()
        names = [f"w{k}" for k in range(s.clients)]
        procs = [
            ctx.Process(target=ws_clients,
                        args=(results, ready, go, gateway.url, names[k::CLIENT_PROCESSES], s.count))
            for k in range(CLIENT_PROCESSES)
        ]  # fmt: skip
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=WAIT * 2)
        joined_mb = rss_mb(pid)
        cpu0 = cpu_seconds(pid)
        send = ctx.Process(target=load.sender, args=(results, "room", broker.router, ["public"]),
                           kwargs={"count": s.count, "size": 64, "rate": s.rate})  # fmt: skip
        send.start()
        for _ in procs:
            go.put("go")
        reports = [results.get(timeout=WAIT * 10) for _ in range(len(procs) + 1)]
        cpu = cpu_seconds(pid) - cpu0
        [sent] = [r for r in reports if r["role"] == "sender"]
        got = _summed([r for r in reports if r["role"] == "ws"])
        send.join(WAIT)
        for proc in procs:
            proc.join(WAIT)
        elapsed = max(got["last"] - sent["start"], 1e-9)
        return {
            "name": s.name,
            "clients": s.clients,
            "sent": sent["sent"],
            "acked": sent["acked"],
            "delivered": got["delivered"],
            "expected": got["expected"],
            "lost": got["expected"] - got["delivered"],
            "duplicates": got["duplicates"],
            "disorder": got["disorder"],
            "reconnects": got["reconnects"],
            "notices": got["notices"],
            "errors": got["errors"],
            "rate": got["delivered"] / elapsed,
            "latency_ms": got["latency_ms"],
            "cpu_us_per_delivery": 1e6 * cpu / max(1, got["delivered"]),
            "cpu_percent": 100 * cpu / elapsed,
            "mb_per_session": (joined_mb - base_mb) / s.clients,
            "mb_per_session_after": (rss_mb(pid) - base_mb) / s.clients,
            "peak_mb": peak_mb(pid),
        }
    finally:
        if gateway is not None:
            gateway.stop()
        broker.stop()


HEADER: Final = (
    f"{'scenario':<15} {'deliv/s':>8} {'lost':>5} {'dup':>4} {'order':>5} {'resume':>6}"
    f" {'p50 ms':>7} {'p99 ms':>7} {'cpu us':>7} {'cpu %':>6} {'MB/sess':>8} {'after':>6}"
    f" {'peak MB':>8}"
)


def row(e: dict[str, Any]) -> str:
    lat = e["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
    return (
        f"{e['name']:<15} {e['rate']:>8,.0f} {e['lost']:>5} {e['duplicates']:>4}"
        f" {e['disorder']:>5} {e['reconnects']:>6} {lat['p50']:>7.1f} {lat['p99']:>7.1f}"
        f" {e['cpu_us_per_delivery']:>7.1f} {e['cpu_percent']:>6.0f} {e['mb_per_session']:>8.3f}"
        f" {e['mb_per_session_after']:>6.3f} {e['peak_mb']:>8.0f}"
    )


def run(quick: bool, echo: Any = print) -> dict[str, Any]:
    """Every scenario; returns the whole report."""
    report: dict[str, Any] = {"machine": machine(), "quick": quick, "scenarios": []}
    with tempfile.TemporaryDirectory(prefix="room-bench-web-") as tmp:
        for s in scenarios(quick):
            workdir = Path(tmp) / re.sub(r"\W+", "_", s.name)
            workdir.mkdir()
            entry = run_one(s, workdir)
            report["scenarios"].append(entry)
            echo(entry)
    return report
