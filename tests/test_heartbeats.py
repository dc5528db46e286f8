"""Heartbeats spread over the interval (broker.chat.heartbeats): with 10,000 users, no call of
``Chat.tick`` does more than ``BEATS_PER_TURN`` users' work, every user is pinged once per
interval, and a silent one is dropped within the bound the protocol states (issue 27)."""

from __future__ import annotations

import itertools
from collections import defaultdict

import zmq
from chat_helpers import T0, chat, hello, send

from broker.chat.chat import Chat
from broker.chat.heartbeats import BEATS_PER_TURN, SLICES
from broker.security.gate import Gate
from broker.security.guard import KEYS_LOOKED_AT, Guard
from broker.wire import protocol as p

USERS = 10_000
INTERVAL = 1.0
LIVENESS = 5
STEP = INTERVAL / SLICES
"""How far a user's beat may stray from its own moment: calls come at most that far apart."""


class Driver:
    """Calls ``tick`` when it asks to be called (at once while it is behind, as the loop does),
    and records what each call sent: pings and goodbyes, by peer and time."""

    def __init__(self, c: Chat, now: float) -> None:
        self.c = c
        self.now = now
        self.next = c.tick(now)
        c.out.take()
        self.pings: dict[bytes, list[float]] = defaultdict(list)
        self.dropped: dict[bytes, float] = {}
        self.most = 0
        """The most users one call handled (pinged or dropped)."""
        self.calls = 0

    def run_until(self, until: float) -> None:
        while self.next <= until:
            self.now = max(self.now, self.next)
            self.next = self.c.tick(self.now)
            assert self.next >= self.now
            self.calls += 1
            handled = 0
            for peer, msg in self.c.out.take().replies:
                if isinstance(msg, p.Ping):
                    self.pings[peer].append(self.now)
                    handled += 1
                elif isinstance(msg, p.Goodbye):
                    assert msg.reason is p.Bye.TIMEOUT
                    self.dropped[peer] = self.now
                    handled += 1
            self.most = max(self.most, handled)
        self.now = until


def ping_all(c: Chat, now: float) -> None:
    """Every connected user says it is alive."""
    for user in list(c.users.values()):
        send(c, user, p.Ping(), now)


def test_ten_thousand_users_are_pinged_once_per_interval_a_bounded_share_at_a_time() -> None:
    c = chat(heartbeat=INTERVAL, liveness=LIVENESS)
    driver = Driver(c, T0)  # the loop's first tick, as the broker starts
    peers = [hello(c, f"u{i}", now=T0).peer for i in range(USERS)]  # all at once: a restart
    for k in range(1, 5):
        driver.run_until(T0 + k)
        ping_all(c, T0 + k)
    driver.run_until(T0 + 5)
    assert driver.most <= BEATS_PER_TURN
    assert driver.calls >= 4 * USERS // BEATS_PER_TURN  # the rounds took many short calls
    assert not driver.dropped
    for peer in peers:
        times = driver.pings[peer]
        assert times[0] <= T0 + 2 * INTERVAL  # the idle broker's next call was an interval on
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(times) >= 4 and all(abs(g - INTERVAL) <= STEP + 1e-6 for g in gaps), (
            peer,
            times,
        )
    # Spread over the interval: in each tenth of a second about a tenth of the users.
    per_slice = defaultdict(int)
    for times in driver.pings.values():
        for t in times:
            if T0 + 2 <= t < T0 + 4:
                per_slice[round((t - T0) / STEP)] += 1
    assert len(per_slice) == 2 * SLICES
    assert max(per_slice.values()) <= 1.2 * USERS / SLICES, per_slice


def test_silent_users_are_dropped_within_six_intervals_a_bounded_share_at_a_time() -> None:
    c = chat(heartbeat=INTERVAL, liveness=LIVENESS)
    driver = Driver(c, T0)
    users = [hello(c, f"u{i}", now=T0 + i / USERS) for i in range(USERS)]
    last_seen = {u.peer: u.last_seen for u in users}
    driver.run_until(T0 + 1)
    for u in users[: USERS // 2]:  # half of them speak once more, then all fall silent
        send(c, u, p.Ping(), T0 + 1.5)
        last_seen[u.peer] = T0 + 1.5
    driver.run_until(T0 + 1.5 + (LIVENESS + 1) * INTERVAL + STEP)
    assert driver.most <= BEATS_PER_TURN
    assert c.users == {} and c.by_peer == {}
    assert set(driver.dropped) == set(last_seen)
    for peer, at in driver.dropped.items():
        silent = at - last_seen[peer]
        assert LIVENESS * INTERVAL < silent <= (LIVENESS + 1) * INTERVAL + STEP, (peer, silent)
    assert not any(c.heartbeats.slots)  # the dropped left the wheel


def test_a_loop_that_stalled_owes_one_round_and_catches_up_in_bounded_calls() -> None:
    c = chat(heartbeat=INTERVAL, liveness=LIVENESS)
    driver = Driver(c, T0)
    for i in range(1_000):
        hello(c, f"u{i}", now=T0)
    driver.run_until(T0 + 1)
    ping_all(c, T0 + 3)
    driver.next = T0 + 3.05  # the loop was busy for two intervals: the next call comes late
    pinged_before = {peer: len(times) for peer, times in driver.pings.items()}
    driver.run_until(T0 + 3.05)  # what is owed: one round, not two, in calls of a bounded share
    assert driver.most <= BEATS_PER_TURN
    again = {peer: len(times) - pinged_before.get(peer, 0) for peer, times in driver.pings.items()}
    assert set(again.values()) == {1}
    assert len(again) == 1_000


def test_who_left_is_passed_over_and_who_came_back_has_one_place() -> None:
    c = chat(heartbeat=INTERVAL, liveness=LIVENESS)
    driver = Driver(c, T0)
    alice = hello(c, "alice", b"a1", now=T0)
    bob = hello(c, "bob", b"b1", now=T0)
    carol = hello(c, "carol", b"c1", now=T0)
    send(c, bob, p.Quit(), T0 + 0.1)
    hello(c, "bob", b"b2", now=T0 + 0.2)  # a new session: a new user, one place
    send(c, b"a2", p.Hello(p.VERSION, "alice", alice.session), T0 + 0.3)  # resumed elsewhere
    c.out.take()
    for k in range(1, 4):
        driver.run_until(T0 + k + 0.95)
        ping_all(c, T0 + k + 0.95)
    assert b"b1" not in driver.pings and b"a1" not in driver.pings
    assert [len(driver.pings[peer]) for peer in (b"a2", b"b2", carol.peer)] == [3, 3, 3]
    assert sum(map(len, c.heartbeats.slots)) == 3


def test_an_idle_broker_is_called_rarely() -> None:
    """With nobody connected, once an interval (its chores); with two users, a call a user's
    turn: never more often than every tenth of an interval."""
    c = chat(heartbeat=INTERVAL, liveness=LIVENESS)
    assert c.tick(T0) == T0 + INTERVAL
    hello(c, "alice", now=T0)
    hello(c, "bob", now=T0)
    nxt = c.tick(T0 + 0.1)
    assert T0 + 0.1 + STEP - 1e-9 <= nxt <= T0 + 0.1 + INTERVAL / 2


# ---- the guard's table of CURVE keys: forgotten a share at a time -------------------------------


def test_the_keys_of_gone_peers_are_forgotten_a_bounded_share_per_heartbeat() -> None:
    ctx = zmq.Context()
    guard = Guard(ctx, None, True, Gate(10, 100))
    try:
        peers = [b"peer%d" % i for i in range(USERS)]
        for peer in peers:
            assert not guard.key_taken(peer, "key-" + peer.decode())
        live = dict.fromkeys(peers[: USERS // 2])
        guard.tick(live)  # newcomers since the last tick: each looked at once
        assert len(guard._peer_keys) == USERS // 2
        gone = set(peers[: USERS // 10])
        live = {peer: None for peer in live if peer not in gone}
        ticks = 0
        while len(guard._peer_keys) > len(live):
            before = len(guard._peer_keys)
            guard.tick(live)
            ticks += 1
            assert before - len(guard._peer_keys) <= KEYS_LOOKED_AT
        assert set(guard._peer_keys) == set(live)
        assert ticks <= USERS // 2 // KEYS_LOOKED_AT + 1  # one turn around the table
        assert guard.key_taken(next(iter(live)), "another key")  # a live id, another key
    finally:
        guard.stop()
        ctx.destroy(linger=0)
