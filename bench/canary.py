"""The witnesses of ``bench.soak``: the canary pair that must keep chatting, a watch on the
broker's memory, and room-ctl's counters; the abusers are in ``bench.abuse``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import zmq

from bench import load, run
from broker.wire import protocol as p
from client.keyring import Keyring
from client.sockets import log_in

RSS_LIMIT_MB: Final = 300.0
"""The most memory the broker may hold under any of these attacks."""
CANARY_PACE: Final = 0.1
"""Seconds between the canary's messages."""
LOST_AFTER: Final = 10.0
"""A canary message not acknowledged and heard on both subscriptions by then is lost."""
SETUP_WAIT: Final = 60.0
"""Seconds an attacker may take to get ready (seeding a room, connecting), and to finish."""
COOLDOWN: Final = 3.0
"""Seconds the canary goes on chatting after the attack, before the broker's last RSS."""


# ---- the broker's memory, and room-ctl -----------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """A process's resident memory (VmRSS) in MB, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None  # a zombie has no VmRSS


def ctl_stats(control: str, data_dir: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """``room-ctl --json stats`` (the admin key from the broker's data dir): the broker's
    counters, or None if it did not answer in time."""
    argv = [sys.executable, "-c", "from client.ctl import main; main()",
            "--control", control, "--data-dir", data_dir, "--json", "stats"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return json.loads(out)["data"]["stats"] if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError):
        return None
    finally:
        run.stop_process(proc)


# ---- the canary ----------------------------------------------------------------------------------


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], router: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(router)
    return sock


def _drain(sock: zmq.Socket[bytes]) -> list[p.ServerMsg]:
    """Whatever the broker has sent ``sock`` so far, without waiting."""
    got: list[p.ServerMsg] = []
    while True:
        try:
            got += p.decode_server(sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            return got


class Canary:
    """Two users in one room, each with a subscription of its own, read with the room keys that
    user gets. ``chat`` has them take turns: one message, acknowledged to its speaker and heard
    on both subscriptions within ``LOST_AFTER``, or counted lost."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], router: str, room: str = "canary"
    ) -> None:
        self.room = room
        self.users = [_dealer(ctx, router) for _ in range(2)]
        self.rings = [Keyring() for _ in self.users]
        self.late: list[list[list[p.RoomEvent]]] = [[] for _ in self.users]
        """Bodies opened by a key that came after them, for each user."""
        welcomes = [
            load._handshake(user, f"canary{i + 1}", room, ring=self.rings[i])
            for i, user in enumerate(self.users)
        ]
        self.subs: list[zmq.Socket[bytes]] = []
        for welcome in welcomes:
            sub = ctx.socket(zmq.SUB)
            log_in(sub, welcome)
            sub.setsockopt(zmq.LINGER, 0)
            sub.connect(welcome.pub)
            sub.setsockopt(zmq.SUBSCRIBE, p.topic(room))
            self.subs.append(sub)
        for k in range(len(self.subs)):
            self._subscribed(k)
        self.said = 0
        self.delays_ns: list[int] = []
        self.lost: list[str] = []

    def _replies(self, k: int) -> list[p.ServerMsg]:
        """What the broker has sent user ``k`` so far; its room keys go on its ring."""
        got = _drain(self.users[k])
        for msg in got:
            if type(msg) is p.RoomKey:
                self.late[k] += self.rings[k].add(msg, time.monotonic())
        return got

    def _heard(self, k: int) -> list[p.RoomEvent]:
        """The room events on subscription ``k`` so far, opened with user ``k``'s keys (which
        ``_replies(k)`` takes)."""
        events = [e for batch in self.late[k] for e in batch]
        self.late[k].clear()
        while True:
            try:
                topic, body = self.subs[k].recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return events
            events += self.rings[k].open(topic, body, time.monotonic()) or []

    def _subscribed(self, k: int) -> None:
        """Sync until a Synced arrives on subscription ``k``: it has reached the PUB."""
        deadline = time.monotonic() + SETUP_WAIT
        nonce = 0
        while time.monotonic() < deadline:
            nonce += 1
            self.users[0].send(p.encode(p.Sync(nonce)))
            self.subs[k].poll(200)
            for j in range(len(self.users)):
                self._replies(j)
            if any(type(e) is p.Synced and e.nonce == nonce for e in self._heard(k)):
                return
        raise TimeoutError(f"the canary's subscription to {self.room} never heard the room")

    def chat(self) -> None:
        """One message; its delay (the later of its two arrivals) or its loss is recorded."""
        self.said += 1
        turn = self.said % 2
        speaker, other = self.users[turn], self.users[1 - turn]
        other.send(p.encode(p.Ping()))  # the one not speaking stays alive at the broker
        self._replies(1 - turn)
        text, mid = f"{self.room} {self.said}", self.said
        poller = zmq.Poller()
        for sock in (*self.users, *self.subs):
            poller.register(sock, zmq.POLLIN)
        acked = False
        heard: dict[int, int] = {}
        said = time.monotonic_ns()
        speaker.send(p.encode(p.Say(text, mid)))
        deadline = time.monotonic() + LOST_AFTER
        next_ping = time.monotonic() + 1.0
        while not acked or len(heard) < len(self.subs):
            left = deadline - time.monotonic()
            if left <= 0:
                self.lost.append(f"{text!r}: ack {acked}, heard on {len(heard)} of 2")
                return
            poller.poll(min(left, 0.5) * 1000)
            now = time.monotonic_ns()
            self._replies(1 - turn)
            for msg in self._replies(turn):
                if type(msg) is p.Ack and msg.mid == mid:
                    acked = True
                elif type(msg) is p.Refused and msg.mid == mid:
                    self.lost.append(f"{text!r}: refused, {msg.reason}")
                    return
            for k in range(len(self.subs)):
                if any(type(e) is p.Posted and e.text == text for e in self._heard(k)):
                    heard.setdefault(k, now)
            if time.monotonic() >= next_ping:  # a slow broker: neither user may fall silent
                next_ping = time.monotonic() + 1.0
                for user in self.users:
                    user.send(p.encode(p.Ping()))
                self._replies(1 - turn)
        self.delays_ns.append(max(heard.values()) - said)


class Watch:
    """While a scenario runs: the canary chats every ``CANARY_PACE`` seconds in one thread, and
    another samples the broker's VmRSS every 0.1 s."""

    def __init__(self, pid: int, canary: Canary) -> None:
        self.pid, self.canary = pid, canary
        self.rss: list[float] = []
        self.failure = ""
        self.broker_gone = False
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._chat, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]

    def start(self) -> None:
        self._sample_once()
        for t in self._threads:
            t.start()

    def _chat(self) -> None:
        try:
            while not self._stop.is_set():
                self.canary.chat()
                self._stop.wait(CANARY_PACE)
        except Exception as exc:  # reported, and the run fails
            self.failure = f"the canary failed: {type(exc).__name__}: {exc}"

    def _sample_once(self) -> None:
        mb = rss_mb(self.pid)
        if mb is None:
            self.broker_gone = True
        else:
            self.rss.append(mb)

    def _sample(self) -> None:
        while not self._stop.wait(0.1) and not self.broker_gone:
            self._sample_once()

    def stop(self) -> None:
        """Stop both threads (the canary's ends within ``LOST_AFTER``), then a last sample."""
        if self._stop.is_set():
            return
        self._stop.set()
        for t in self._threads:
            t.join(LOST_AFTER + 5)
        if any(t.is_alive() for t in self._threads):
            self.failure = self.failure or "the canary did not stop"
        self._sample_once()
