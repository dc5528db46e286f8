"""Room keys (``--room-keys``): the PUB carries nothing a non-member can read, an ex-member
cannot open what is sent after it left, and a newcomer cannot open what was sent before."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import running_broker
from cryptography.exceptions import InvalidTag
from procs import MIDS, WAIT, ctl, socket, subscriber

from broker.security.roomkeys import epoch_of, open_sealed
from broker.wire import protocol as p


class Member:
    """A bare client that keeps every room key it is given, and a SUB of its own."""

    def __init__(self, ctx: zmq.Context, broker: Any, name: str, session: str = "") -> None:
        self.sock = socket(ctx, zmq.DEALER, broker.router)
        self.keys: dict[int, bytes] = {}
        self.frames: list[tuple[bytes, bytes]] = []
        self.send(p.Hello(p.VERSION, name, session))
        self.welcome = self.expect(p.Welcome)
        assert self.welcome.sealed
        self.sub = subscriber(ctx, broker.pub, self.welcome)  # a session's: it may connect
        self.sub.subscribe(b"")  # everything: what it may read is up to the keys

    def send(self, msg: p.ClientMsg) -> None:
        self.sock.send(p.encode(msg))

    def expect(self, kind: type, timeout: float = WAIT) -> Any:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(left * 1000):
                break
            batch = p.decode_server(self.sock.recv())
            for msg in batch:  # the whole batch first: a key may follow what we wait for
                if isinstance(msg, p.RoomKey):
                    self.keys[msg.epoch] = msg.key
                assert isinstance(msg, kind) or not isinstance(msg, p.Error | p.Goodbye), msg
            found = [msg for msg in batch if isinstance(msg, kind)]
            if found:
                return found[0]
        raise AssertionError(f"no {kind.__name__} within {timeout}s")

    def join(self, room: str) -> None:
        self.send(p.Join(room))
        self.expect(p.Joined)

    def say(self, text: str) -> p.Ack:
        self.send(p.Say(text, next(MIDS)))
        return self.expect(p.Ack)

    def capture(self, seconds: float = 0.3) -> list[tuple[bytes, bytes]]:
        """What the SUB received until it was quiet for ``seconds``."""
        got = []
        while self.sub.poll(seconds * 1000):
            got.append(tuple(self.sub.recv_multipart()))
        self.frames += got
        return got

    def opens(self, topic: bytes, sealed: bytes) -> list[p.RoomEvent] | None:
        """The events, if any key this member ever held opens the frame."""
        for key in self.keys.values():
            try:
                return p.decode_room(open_sealed(key, topic, sealed))
            except InvalidTag:
                continue
        return None

    def close(self) -> None:
        self.sock.close(0)
        self.sub.close(0)


def texts(events: list[p.RoomEvent] | None) -> list[str]:
    return [e.text for e in events or [] if isinstance(e, p.Posted)]


@pytest.fixture
def keyed(tmp_path: Path):
    """A broker as started by default: room keys are on."""
    with running_broker(tmp_path / "data", "--rate", "0") as broker:
        yield broker


def test_a_spy_on_every_topic_reads_no_text(keyed: Any, ctx: zmq.Context) -> None:
    """A user of its own session (strangers cannot subscribe at all: test_guard), modified to
    subscribe to every topic, hears ops's sends and opens none."""
    alice = Member(ctx, keyed, "alice")
    spy_user = Member(ctx, keyed, "spy")
    spy = spy_user.sub  # subscribed to everything, in public
    try:
        alice.join("ops")
        deadline = time.monotonic() + WAIT
        while not alice.capture(0.1):  # the SUBs are live once they hear anything
            alice.send(p.Sync(next(MIDS)))
            assert time.monotonic() < deadline
        for i in range(5):
            alice.say(f"secret plan {i}")
        captured = []
        while spy.poll(300):
            captured.append(spy.recv_multipart())
        assert captured, "the spy heard nothing at all"
        for _topic, body in captured:
            assert b"secret plan" not in body
            with pytest.raises(p.ProtocolError):
                p.decode_room(body)  # not MessagePack: sealed
        opened = [alice.opens(t, b) for t, b in alice.capture()]
        assert [t for events in opened for t in texts(events)] == [
            f"secret plan {i}" for i in range(5)
        ]
    finally:
        alice.close()
        spy_user.close()


REMOVALS = {
    "out": (("out", "mallory"), p.Joined),  # back in public
    "deny": (("deny", "mallory", "ops"), p.Joined),  # off the private room's list, and out
    "fire": (("fire", "mallory"), p.Goodbye),  # disconnected
}


@pytest.mark.parametrize("removal", REMOVALS)
def test_who_leaves_cannot_open_what_follows_and_who_comes_cannot_open_what_was(
    keyed: Any, ctx: zmq.Context, removal: str
) -> None:
    """Mallory, a modified client, keeps its SUB on every topic and every key it was given."""
    alice, mallory, carol = (Member(ctx, keyed, n) for n in ("alice", "mallory", "carol"))
    command, answer = REMOVALS[removal]
    try:
        for member in (alice, mallory):
            member.join("ops")
        if removal == "deny":
            assert ctl(keyed, "private", "ops").returncode == 0  # alice and mallory are in it
            assert ctl(keyed, "allow", "carol", "ops").returncode == 0
        alice.say("while mallory is in")
        mallory.capture()
        assert any("while mallory is in" in texts(mallory.opens(t, b)) for t, b in mallory.frames)
        before_carol = [(t, b) for t, b in alice.capture() if t == p.topic("ops")]
        assert ctl(keyed, *command).returncode == 0
        mallory.expect(answer)
        for i in range(10):
            alice.say(f"after mallory left {i}")
        after = [(t, b) for t, b in mallory.capture() if t == p.topic("ops")]
        assert after, "mallory's SUB heard nothing more of ops"
        assert all(mallory.opens(t, b) is None for t, b in after)
        carol.join("ops")
        alice.say("with carol")
        carol.capture()
        assert any("with carol" in texts(carol.opens(t, b)) for t, b in carol.frames)
        assert before_carol and all(carol.opens(t, b) is None for t, b in before_carol)
        epochs = {epoch_of(b) for t, b in after}
        assert epochs.isdisjoint(mallory.keys)  # never given the keys sent after it left
    finally:
        for member in (alice, mallory, carol):
            member.close()


def test_a_resumed_session_reads_its_room_at_once_and_its_old_connection_does_not(
    keyed: Any, ctx: zmq.Context
) -> None:
    """A new DEALER resumes alice's session while the old one is still connected: the key of
    her room comes in the batch of the Welcome, opens what is said from then on, and the old
    connection (replaced) holds no key that does."""
    alice, bob = Member(ctx, keyed, "alice"), Member(ctx, keyed, "bob")
    resumed = None
    try:
        for member in (alice, bob):
            member.join("ops")
        bob.say("before the resume")
        alice.capture()
        sock = socket(ctx, zmq.DEALER, keyed.router)
        sock.send(p.encode(p.Hello(p.VERSION, "alice", alice.welcome.session)))
        assert sock.poll(WAIT * 1000), "no answer to the resuming hello"
        batch = p.decode_server(sock.recv())
        sock.close(0)
        assert isinstance(batch[0], p.Welcome) and batch[0].room == "ops", batch
        keys = [m for m in batch if isinstance(m, p.RoomKey)]
        assert [k.room for k in keys] == ["ops"], batch  # with the Welcome, not later
        assert alice.expect(p.Goodbye).reason is p.Bye.REPLACED
        resumed = Member.__new__(Member)  # the new connection, as a bare member
        resumed.keys = {keys[0].epoch: keys[0].key}
        resumed.frames = []
        bob.say("after the resume")
        frames = [(t, b) for t, b in alice.capture() if t == p.topic("ops")]
        assert frames, "the SUB heard nothing of ops"
        assert any("after the resume" in texts(resumed.opens(t, b)) for t, b in frames)
        assert all(alice.opens(t, b) is None for t, b in frames)  # the replaced connection
    finally:
        alice.close()
        bob.close()


def test_a_join_of_ones_own_room_brings_its_current_key(keyed: Any, ctx: zmq.Context) -> None:
    """A client that lost its key asks again with Join(its room): the Joined brings it."""
    alice = Member(ctx, keyed, "alice")
    try:
        alice.join("ops")
        alice.say("first")
        held = dict(alice.keys)
        alice.keys.clear()
        alice.send(p.Join("ops"))
        alice.expect(p.Joined)
        assert alice.keys and set(alice.keys.items()) <= set(held.items())
        alice.say("second")
        frames = [(t, b) for t, b in alice.capture() if t == p.topic("ops")]
        assert any("second" in texts(alice.opens(t, b)) for t, b in frames)
    finally:
        alice.close()


def test_keys_are_new_after_a_restart(tmp_path: Path, ctx: zmq.Context) -> None:
    seen: set[bytes] = set()
    for _ in range(2):
        with running_broker(tmp_path / "data", "--room-keys") as broker:
            alice = Member(ctx, broker, "alice")
            alice.join("ops")
            assert alice.keys and seen.isdisjoint(alice.keys.values())
            seen |= set(alice.keys.values())
            alice.close()


def test_the_terminal_client_chats_through_a_sealing_broker(tmp_path: Path) -> None:
    """room-client holds its room keys: alice and bob chat in a sealed room, bob leaves and
    comes back, and every line arrives once, in order."""
    from conftest import client_factory

    with (
        running_broker(tmp_path / "data", "--room-keys", "--rate", "0") as broker,
        client_factory(broker) as clients,
    ):
        alice = clients.join("alice", "ops")
        bob = clients.join("bob", "ops")
        alice.send("hello bob")
        bob.expect(r"^\[ops\] alice: hello bob$")
        bob.send("/leave")
        bob.expect(r"^\* joined public$")
        alice.send("while bob was out")
        alice.expect(r"^\[ops\] alice: while bob was out$")  # stored before bob asks to join
        bob.send("/join ops")
        bob.expect(r"^\[ops\] alice: while bob was out$")  # history, over the DEALER
        bob.expect(r"^\* joined ops$")
        for i in range(20):
            alice.send(f"line {i}")
        for i in range(20):
            bob.expect(rf"^\[ops\] alice: line {i}$")
        bob.send("back")
        alice.expect(r"^\[ops\] bob: back$")
        carol = clients.join("carol")  # the key of the room one lands in comes with Welcome
        carol.send("hello public")
        bob.send("/join public")
        bob.expect(r"^\[public\] carol: hello public$")


def test_a_sealed_body_opens_as_the_protocol_document_says() -> None:
    """docs/protocol.md, with nothing of ours: epoch (8 bytes) || nonce (12) || AES-256-GCM
    ciphertext and tag, the associated data the topic frame || epoch; no nonce twice."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from broker.security.roomkeys import RoomKeys

    keys = RoomKeys()
    topic = p.topic("ops")
    body = p.encode([p.Posted("ops", 1, 1.0, "alice", "hi")])
    first = keys.seal("ops", topic, frozenset({"bob"}), body)
    second = keys.seal("ops", topic, frozenset({"bob"}), body)
    ((room, epoch, key, holders),) = keys.new_keys()
    assert (room, holders, len(key)) == ("ops", frozenset({"bob"}), 32)
    for sealed in (first, second):
        assert sealed[:8] == epoch.to_bytes(8, "big")
        assert AESGCM(key).decrypt(sealed[8:20], sealed[20:], topic + sealed[:8]) == body
    assert first[8:20] != second[8:20]
    with pytest.raises(InvalidTag):  # another room's topic: not this room's body
        AESGCM(key).decrypt(first[8:20], first[20:], p.topic("other") + first[:8])


def test_a_keyring_holds_a_body_until_its_key_comes_and_drops_what_it_cannot_open() -> None:
    from broker.security.roomkeys import RoomKeys
    from client.keyring import HOLD, Keyring

    keys = RoomKeys()
    topic = p.topic("ops")
    body = p.encode([p.Posted("ops", 1, 1.0, "alice", "hi")])
    sealed = keys.seal("ops", topic, frozenset({"bob"}), body)
    ((_, epoch, key, _),) = keys.new_keys()
    ring = Keyring()
    ring.sealed = True
    assert ring.open(topic, sealed, 0.0) is None  # held: no key yet
    assert [texts(e) for e in ring.add(p.RoomKey("ops", epoch, key), 0.5)] == [["hi"]]
    assert texts(ring.open(topic, sealed, 0.6)) == ["hi"]
    assert ring.open(p.topic("other"), sealed, 0.6) is None  # another room's topic: no
    later = keys.seal("ops", topic, frozenset({"bob", "carol"}), body)  # a new key
    assert ring.open(topic, later, 1.0) is None
    ring.expire(1.0 + HOLD)
    ((_, epoch2, key2, _),) = keys.new_keys()
    assert ring.add(p.RoomKey("ops", epoch2, key2), 3.0) == []  # expired: a gap to repair
    plain = Keyring()
    assert texts(plain.open(topic, body, 0.0)) == ["hi"]


def test_fifty_joins_and_leaves_during_a_flood_lose_nothing_for_a_member(
    tmp_path: Path, ctx: zmq.Context
) -> None:
    """Every join and leave changes the room's key while 2,000 messages flood it: a member
    still shows every one of them once, in order (a body that came before its key is held
    until the key comes, or repaired by number)."""
    from conftest import client_factory
    from procs import Raw

    count = 2_000
    with (
        running_broker(tmp_path / "data", "--room-keys", "--rate", "0") as broker,
        client_factory(broker) as clients,
    ):
        member = clients.join("member", "flood", "--history", "0")
        flooder = Raw(ctx, broker.router, "flooder", "flood")
        churn = Raw(ctx, broker.router, "churn")
        texts_sent = [f"f{i:05d}" for i in range(count)]
        for i, text in enumerate(texts_sent):
            flooder.send(p.Say(text, next(MIDS)))
            if i % 40 == 0:  # 50 times: in, then out again
                churn.send(p.Join("flood") if i % 80 == 0 else p.Leave())
        for _ in texts_sent:
            flooder.expect(p.Ack)
        member.expect(rf"^\[flood\] flooder: {texts_sent[-1]}$", timeout=30)
        member.drain(0.3)
        prefix = "[flood] flooder: "
        shown = [line[len(prefix) :] for line in member.seen if line.startswith(prefix)]
        assert shown == texts_sent
        assert not any("lost" in line for line in member.seen)
        flooder.close()
        churn.close()
