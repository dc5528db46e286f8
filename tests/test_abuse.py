"""Bounded under abuse (issue 17), end to end: real broker processes with their SQLite store, and
clients that misbehave on purpose.

Each test runs a pair of users chatting throughout in a room of their own (the canary): every one
of their messages must be acknowledged and reach both their subscriptions, each within a second
of being said. A second thread reads the broker's resident memory (VmRSS) all along. The figures
(the canary's slowest message, the broker's memory, the attackers' rates) are printed: run with
``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from procs import MIDS, WAIT, BrokerProc, Canary, Listener, Proc, Raw, Replies, ctl, unconnected

from bench.abuse import STOPPED_SUBSCRIBERS
from broker.wire import protocol as p

MB = 1024 * 1024
RSS_LIMIT = 300 * MB
"""The most memory the broker may hold under any of these attacks."""
CANARY_DELAY = 1.0
"""Seconds the canary's slowest message may take from its Say to both its subscriptions."""
CANARY_PACE = 0.1
"""Seconds between the canary's messages."""
TEXT_4K = "abuse " * 666 + "abcd"  # 4000 bytes: near the default --max-message of 4096

QUIET = "--quiet"
NO_RATE = ("--rate", "0")


def rss(pid: int) -> int:
    """The resident memory of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


# ---- the canary, timed, and the broker's memory, sampled -----------------------------------------


class TimedCanary(Canary):
    """The canary pair, each message timed from its Say to its arrival on both subscriptions."""

    def timed_chat(self) -> float:
        """One message, acknowledged to its sender and published to both; returns the seconds
        from the Say until both subscriptions had it."""
        self.said += 1
        speaker, other = self.users[self.said % 2], self.users[1 - self.said % 2]
        other.send(p.Ping())
        while other.recv(0) is not None:  # the broker's pings to it: keep its queue short
            pass
        text, mid = f"{self.room} timed {self.said}", next(MIDS)
        said = time.monotonic()
        speaker.send(p.Say(text, mid))
        for listener in self.listeners:  # the last to hear it gives the time
            wanted = lambda e: isinstance(e, p.Posted) and e.text == text  # noqa: E731
            assert listener.heard(wanted, WAIT), f"canary message {self.said} was not published"
        heard = time.monotonic()
        ack = speaker.expect(p.Ack | p.Refused)
        assert isinstance(ack, p.Ack) and ack.mid == mid, ack
        assert ack.room == self.room, ack
        return heard - said


class Watch:
    """While an attack runs: the canary chats every ``CANARY_PACE`` seconds in one thread, and
    another samples the broker's VmRSS every 0.1 s. ``stop`` (or leaving the ``with``) raises
    what went wrong in the canary."""

    def __init__(
        self, broker: BrokerProc, canary: TimedCanary, delay_limit: float = CANARY_DELAY
    ) -> None:
        self.broker, self.canary, self.delay_limit = broker, canary, delay_limit
        self.delays: list[float] = []
        self.rss: list[int] = []
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._said = threading.Condition()
        self._threads = [
            threading.Thread(target=self._chat, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]

    def __enter__(self) -> Watch:
        self.rss.append(rss(self.broker.popen.pid))
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(check=exc[0] is None)

    def _chat(self) -> None:
        try:
            while not self._stop.is_set():
                delay = self.canary.timed_chat()
                with self._said:
                    self.delays.append(delay)
                    self._said.notify_all()
                self._stop.wait(CANARY_PACE)
        except BaseException as exc:
            with self._said:
                self.failure = exc
                self._said.notify_all()

    def chatted(self, count: int) -> None:
        """Wait until the canary has said ``count`` more messages (its thread owns its sockets:
        no other thread may use them meanwhile)."""
        with self._said:
            wanted = len(self.delays) + count
            done = self._said.wait_for(
                lambda: len(self.delays) >= wanted or self.failure is not None,
                timeout=count * (CANARY_PACE + CANARY_DELAY) + WAIT,
            )
        assert done and self.failure is None, f"the canary stopped: {self.failure}"

    def _sample(self) -> None:
        pid = self.broker.popen.pid
        while not self._stop.wait(0.1):
            try:
                self.rss.append(rss(pid))
            except (OSError, AssertionError):
                return  # the broker is gone: the test says why

    def rss_now(self) -> int:
        return rss(self.broker.popen.pid)

    def stop(self, check: bool = True) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for t in self._threads:
            t.join(WAIT + 1)
        if check:
            self.check()

    def check(self) -> None:
        """The canary has lost nothing so far, was never slow, and the broker stayed small."""
        if self.failure is not None:
            raise AssertionError(f"the canary failed: {self.failure}") from self.failure
        assert self.delays, "the canary never chatted"
        slowest = max(self.delays)
        assert slowest < self.delay_limit, (
            f"the canary's slowest message took {slowest:.3f}s (limit {self.delay_limit}s)"
        )
        assert max(self.rss) < RSS_LIMIT, f"broker RSS reached {max(self.rss) / MB:.1f} MB"

    def report(self, what: str) -> str:
        delays = sorted(self.delays) or [0.0]
        line = (
            f"{what}: canary {len(self.delays)} messages, none lost, median "
            f"{delays[len(delays) // 2] * 1000:.0f} ms, slowest {delays[-1] * 1000:.0f} ms; "
            f"broker RSS {self.rss[0] / MB:.1f} MB "
            f"at start, {max(self.rss) / MB:.1f} MB at most, {self.rss[-1] / MB:.1f} MB last"
        )
        print(line)
        return line


# ---- processes ---------------------------------------------------------------------------------


@pytest.fixture
def started() -> Iterator[list[Proc]]:
    """Processes a test starts; brokers are stopped (SIGTERM), and every one is killed at
    teardown (SIGKILL works on a stopped process too)."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            if isinstance(proc, BrokerProc) and proc.popen.poll() is None:
                with contextlib.suppress(AssertionError):
                    proc.stop()
            proc.kill()


def start_broker(started: list[Proc], tmp_path: Path, *extra: str) -> BrokerProc:
    broker = BrokerProc(tmp_path / "data", QUIET, *extra)
    started.append(broker)
    return broker


def stop_cleanly(broker: BrokerProc) -> None:
    assert broker.stop() == 0, broker.err[-10:]
    assert not any("Traceback" in line for line in broker.err), broker.err[-10:]


def ctl_json(broker: BrokerProc, *args: str) -> dict:
    done = ctl(broker, "--json", *args)
    assert done.returncode == 0, (done.stdout, done.stderr)
    reply = json.loads(done.stdout)
    assert reply["ok"], reply
    return reply


def seed(ctx: zmq.Context, broker: BrokerProc, room: str, count: int, text: str) -> float:
    """``count`` messages of ``text`` said in ``room`` (200 at a time unacknowledged, so that a
    broker without a rate limit takes them as fast as it stores them); returns the seconds."""
    writer = Raw(ctx, broker.router, "seeder", room)
    began = time.monotonic()
    sent = acked = 0
    while acked < count:
        while sent < count and sent - acked < 200:
            writer.send(p.Say(text, next(MIDS)))
            sent += 1
        msg = writer.expect(p.Ack | p.Refused)
        assert isinstance(msg, p.Ack), msg
        acked += 1
    writer.close()
    return time.monotonic() - began


# ---- 1. a fetcher that never reads ---------------------------------------------------------------


def test_a_fetcher_that_never_reads_fills_only_its_own_bounded_queue(
    tmp_path: Path, ctx: zmq.Context, started: list[Proc]
):
    """1,000 messages of 4 KB (4 MB of history); an attacker asks for all of it 5,000 times
    (20 GB of answers, were they not bounded) and reads nothing. Its queue at the broker fills
    and stays bounded in bytes; the broker's memory stays small, the canary chats, room-ctl
    answers; once the attacker is gone, everything is served as before."""
    broker = start_broker(started, tmp_path, *NO_RATE)  # history costs no tokens: no other bound
    canary = TimedCanary(ctx, broker)
    with Watch(broker, canary) as watch:
        took = seed(ctx, broker, "big", 1000, TEXT_4K)
        print(f"seeded 1000 messages of 4000 bytes in {took:.1f}s")

        attacker = unconnected(ctx, zmq.DEALER)
        attacker.rcvhwm = 1  # libzmq holds one message for it...
        attacker.rcvbuf = 4096  # ...and the kernel a few KB: the broker's queue takes the rest
        attacker.sndtimeo = int(WAIT * 1000)
        attacker.connect(broker.router)
        replies = Replies(attacker)
        attacker.send(p.encode(p.Hello(p.VERSION, "attacker")))
        replies.expect(p.Welcome)
        attacker.send(p.encode(p.Join("big", 0)))
        joined = replies.expect(p.Joined)
        assert isinstance(joined, p.Joined) and joined.seq == 1000, joined

        # In bursts of 100, 50 ms apart: most turns of the broker's loop then see a Fetch it
        # may answer (256 KiB), so that the queue fills with answers, not only with refusals.
        began = time.monotonic()
        fetch = p.encode(p.Fetch("big", 0, 0, 1000))
        for burst in range(50):
            for _ in range(100):
                attacker.send(fetch)
            while time.monotonic() < began + 0.05 * (burst + 1):
                time.sleep(0.005)
        print(f"the attacker sent 5000 Fetches in {time.monotonic() - began:.2f}s")

        # The attacker stays connected (pinging, never reading) while the broker works
        # through its fetches; room-ctl is answered meanwhile.
        asked = 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            attacker.send(p.encode(p.Ping()))
            t0 = time.monotonic()
            done = ctl(broker, "--json", "stats")
            took = time.monotonic() - t0
            assert done.returncode == 0, (done.returncode, done.stderr)
            assert took < 5.0, f"room-ctl stats took {took:.1f}s"  # room-ctl's own timeout
            stats = json.loads(done.stdout)["data"]["stats"]
            asked += 1
            print(
                f"room-ctl stats in {took:.2f}s: fetched {stats['fetched']}, "
                f"drops {stats['drops']}, broker RSS {watch.rss_now() / MB:.1f} MB"
            )
        assert asked >= 3, asked
        during = max(watch.rss)
        watch.check()
        users = {u["name"] for u in ctl_json(broker, "who")["data"]["users"]}
        assert "attacker" in users, users  # never dropped: it pinged all along
        assert stats["drops"] > 0, "the attacker's queue never filled: the test proves nothing"

        # What the broker had queued for the attacker: bounded by --client-queue (4 MiB) and
        # the kernel's buffers. Reading it now is not needed for the broker; it is the figure.
        queued = Counter[str]()
        while (frame := _recv_within(attacker, 0.5)) is not None:
            queued["bytes"] += len(frame)
            for msg in p.decode_server(frame):
                queued[msg.code.value if isinstance(msg, p.Error) else type(msg).__name__] += 1
        print(f"still queued for the attacker: {dict(queued)}")
        assert queued["bytes"] < 16 * MB, queued
        attacker.close(0)

        # The broker serves as before: a newcomer reads the whole room.
        reader = Raw(ctx, broker.router, "reader", "big")
        history = reader.history("big")
        assert [m.seq for m in history] == list(range(1, 1001))
        reader.close()
        after_deadline = time.monotonic() + 1.0
        while time.monotonic() < after_deadline:
            watch.check()
            time.sleep(0.1)
    watch.report("non-reading fetcher")
    print(f"broker RSS during the attack at most {during / MB:.1f} MB")
    canary.close()
    stop_cleanly(broker)


def _recv_within(sock: zmq.Socket, timeout: float) -> bytes | None:
    return sock.recv() if sock.poll(timeout * 1000) else None


# ---- 2. stopped subscribers in a flooded room ----------------------------------------------------


def test_stopped_subscribers_in_a_flooded_room_cost_a_bounded_queue_each(
    tmp_path: Path, ctx: zmq.Context, started: list[Proc]
):
    """20 subscriptions to a room, in a process that is then stopped (SIGSTOP), while a sender
    floods that room with 4 KB messages as fast as the broker acknowledges them. The PUB's queue
    for each is bounded (--subscriber-queue): the broker's memory stays small, and the canary,
    in another room, chats."""
    broker = start_broker(started, tmp_path, *NO_RATE)
    canary = TimedCanary(ctx, broker)
    room = "flooded"
    flooder = Raw(ctx, broker.router, "flooder", room)
    argv = [broker.router, broker.pub, "20", p.topic(room).hex(), str(3 * WAIT)]  # held that long
    stuck = Proc([sys.executable, "-c", STOPPED_SUBSCRIBERS, *argv], stdin=True)
    started.append(stuck)
    deadline = time.monotonic() + WAIT
    while True:  # the room is heard on every one of the 20 subscriptions, then they stop
        flooder.send(p.Sync(next(MIDS)))
        with contextlib.suppress(queue.Empty):
            if stuck.lines.get(timeout=0.2) == "ready":
                break
        assert time.monotonic() < deadline, f"the subscribers never heard the room: {stuck.err}"
    os.kill(stuck.popen.pid, signal.SIGSTOP)

    with Watch(broker, canary) as watch:
        window, acked, sent = 200, 0, 0
        began = time.monotonic()
        until = began + 15.0
        while time.monotonic() < until:
            while sent - acked < window:
                flooder.send(p.Say(TEXT_4K, next(MIDS)))
                sent += 1
            msg = flooder.expect(p.Ack | p.Refused)
            assert isinstance(msg, p.Ack), msg
            acked += 1
        while acked < sent:
            msg = flooder.expect(p.Ack | p.Refused)
            assert isinstance(msg, p.Ack), msg
            acked += 1
        elapsed = time.monotonic() - began
        rate = acked / elapsed
        print(
            f"flooder: {acked} messages of 4000 bytes in {elapsed:.1f}s = {rate:,.0f}/s "
            f"({rate * 4000 / MB:.1f} MB/s) to 20 stopped subscribers"
        )
        end_rss = watch.rss_now()
        print(f"broker RSS after the flood {end_rss / MB:.1f} MB")
        assert end_rss < RSS_LIMIT

        # The room itself still works for a live subscriber: the stuck ones block nobody.
        Listener(ctx, broker.pub, flooder, room).close()  # it hears a Sync, or it fails
    watch.report("stopped subscribers")
    stuck.kill()
    canary.close()
    stop_cleanly(broker)
    shutil.rmtree(broker.data_dir)  # the flood's database: hundreds of MB not worth keeping


# ---- 3. a flood of new rooms ---------------------------------------------------------------------


def test_a_flood_of_new_rooms_is_rate_limited_and_leaves_no_rooms_behind(
    tmp_path: Path, ctx: zmq.Context, started: list[Proc]
):
    """An attacker joins 100,000 new room names as fast as it can. It creates --new-rooms (10)
    and is refused the rest (rate_limited); each room it left empty is gone. Another user can
    still create a room, before and after a restart, and the room list stays short. (Without
    --rate 0 the guard would cut the flood's connection first: test_guard.)"""
    broker = start_broker(started, tmp_path, *NO_RATE)
    canary = TimedCanary(ctx, broker)
    with Watch(broker, canary) as watch:
        attacker = Raw(ctx, broker.router, "roomer")
        got = Counter[str]()

        def take(timeout: float = 0) -> p.ServerMsg | None:
            msg = attacker.recv(timeout)
            if msg is not None:
                got[msg.code.value if isinstance(msg, p.Error) else type(msg).__name__] += 1
            return msg

        began = time.monotonic()
        for i in range(100_000):
            attacker.send(p.Join(f"flood{i}", 0))
            if i % 256 == 0:  # read loosely: what has come, without waiting
                while take() is not None:
                    pass
        sent_in = time.monotonic() - began
        # Every Join is handled once a later request of the attacker's is answered.
        deadline = time.monotonic() + 20
        answered = False
        while not answered and time.monotonic() < deadline:
            attacker.send(p.ListRooms())
            asked = time.monotonic()
            while not answered and time.monotonic() - asked < 2:
                answered = isinstance(take(0.2), p.Rooms)
        assert answered, f"the broker did not get through the joins: {dict(got)}"
        handled_in = time.monotonic() - began
        print(
            f"room flood: 100000 Joins sent in {sent_in:.1f}s ({100_000 / sent_in:,.0f}/s), "
            f"all handled in {handled_in:.1f}s; the attacker read {dict(got)}"
        )
        assert 10 <= got["Joined"] <= 12, got  # --new-rooms 10 a minute, a little refilled
        assert got["rate_limited"] > 0, got

        second = Raw(ctx, broker.router, "second", "mine")  # expects Joined
        rooms = {r["name"] for r in ctl_json(broker, "rooms")["data"]["rooms"]}
        print(f"rooms after the flood: {sorted(rooms)}")
        assert {"public", "canary", "mine"} <= rooms
        assert len(rooms) <= 5, rooms  # plus the attacker's current room
        second.close()
        attacker.close()
    watch.report("room flood")
    canary.close()
    stop_cleanly(broker)

    again = broker.restart()
    started.append(again)
    canary = TimedCanary(ctx, again, room="canary2")
    with Watch(again, canary) as watch:
        second = Raw(ctx, again.router, "second", "mine-again")  # expects Joined
        rooms = {r["name"] for r in ctl_json(again, "rooms")["data"]["rooms"]}
        print(f"rooms after the restart: {sorted(rooms)}")
        assert {"public", "canary2", "mine-again"} <= rooms
        assert len(rooms) <= 6, rooms
        second.close()
    watch.report("room flood, after the restart")
    canary.close()
    stop_cleanly(again)


# ---- 4. room-ctl remove ------------------------------------------------------------------------


def test_room_ctl_remove_moves_the_members_out_and_deletes_the_history(
    tmp_path: Path, ctx: zmq.Context, started: list[Proc]
):
    """``room-ctl remove ROOM`` (and ``--json``): the members land in public (a forced Joined),
    the history is gone (the name starts again at 0), the audit log has it; the lobby and an
    unknown room are refused in one line, exit code 1."""
    broker = start_broker(started, tmp_path)
    canary = TimedCanary(ctx, broker)
    with Watch(broker, canary) as watch:
        alice = Raw(ctx, broker.router, "alice", "doomed")
        bob = Raw(ctx, broker.router, "bob", "doomed")
        for i in range(5):
            (alice if i % 2 else bob).say(f"doomed {i}")
        carol = Raw(ctx, broker.router, "carol", "doomed2")
        carol.say("also doomed")

        done = ctl(broker, "remove", "doomed")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "removed doomed and its history; moved to public: alice, bob"
        for user in (alice, bob):
            moved = user.expect(p.Joined)
            assert isinstance(moved, p.Joined)
            assert (moved.room, moved.forced, moved.history) == ("public", True, []), moved

        done = ctl(broker, "remove", "--json", "doomed2")  # --json after the verb, too
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert (reply["ok"], reply["code"]) == (True, ""), reply
        assert reply["message"] == "removed doomed2 and its history; moved to public: carol"
        moved = carol.expect(p.Joined)
        assert isinstance(moved, p.Joined) and (moved.room, moved.forced) == ("public", True)

        rooms = {r["name"] for r in ctl_json(broker, "rooms")["data"]["rooms"]}
        assert not {"doomed", "doomed2"} & rooms, rooms

        # The name is free again, and the history went with the room.
        alice.send(p.Join("doomed", 100))
        back = alice.expect(p.Joined)
        assert isinstance(back, p.Joined)
        assert (back.room, back.seq, back.history, back.forced) == ("doomed", 0, [], False)
        assert alice.history("doomed") == []
        alice.say("a new start")
        assert [m.seq for m in alice.history("doomed")] == [1]

        audit = ctl_json(broker, "audit", "--limit", "50")["data"]["audit"]
        removes = [(e["command"], e["args"], e["ok"]) for e in audit if e["command"] == "remove"]
        assert removes == [("remove", ["doomed"], True), ("remove", ["doomed2"], True)], audit

        # The lobby cannot be removed: one line, exit code 1, with or without --json.
        refused = ctl(broker, "remove", "public")
        assert refused.returncode == 1, refused
        assert refused.stdout == ""
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith("room-ctl: public cannot be removed"), refused.stderr
        print(f"remove public: {refused.stderr.strip()}")
        refused = ctl(broker, "remove", "--json", "public")
        assert refused.returncode == 1, refused
        reply = json.loads(refused.stdout)
        assert (reply["ok"], reply["code"]) == (False, "bad_args"), reply

        unknown = ctl(broker, "remove", "nowhere")
        assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1, unknown
        print(f"remove nowhere: {unknown.stderr.strip()}")

        audit = ctl_json(broker, "audit", "--limit", "50")["data"]["audit"]
        failed = [e for e in audit if e["command"] == "remove" and not e["ok"]]
        assert [e["args"] for e in failed] == [["public"], ["public"], ["nowhere"]], failed
        # Everyone left in a room still chats.
        bob.say("still here")
        for user in (alice, bob, carol):
            user.close()
    watch.report("room-ctl remove")
    canary.close()
    stop_cleanly(broker)
