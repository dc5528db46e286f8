"""Fuzz every socket of one live broker (with its SQLite store) with hypothesis: random frame
counts, sizes and bytes; integers from the whole MessagePack range; huge, deeply nested and lying
containers; every field of every message replaced by a value of another type; valid messages in
invalid orders; subscription junk on the PUB; raw bytes at the TCP level.

Throughout, a pair of users (the canary) chats, and each of its messages must be acknowledged and
published. The broker must never exit, never answer ``internal`` nor log an internal error, and
never send what its own protocol does not allow; at the end, its memory must be within 1.3 times
what it was after the warm-up. Examples are few and bounded, so that the whole file runs in CI in
well under a minute.
"""

from __future__ import annotations

import math
import socket as pysocket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import msgspec.inspect as mi
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from procs import MIDS, UNASKED, WAIT, BrokerProc, Canary, ClientFactory, Replies, ctl, socket

from broker.admin.commands import COMMANDS
from broker.security import keys
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RSS_RATIO_MAX = 1.3
"""The broker's resident memory after the fuzz over what it was after the warm-up. Measured over
some 35 runs, many on a loaded machine: 32.6 to 33.4 MiB after the warm-up, 33.0 to 37.4 MiB after
the fuzz (1.01x to 1.13x, mostly under 1.07x; the SQLite page cache alone may take 2 MiB, and a
history answer a few MiB while it lasts). 1.3x allows 10 MiB, over twice the worst growth seen: a
leak of 2 KiB per request (there are several thousand) fails it."""
CANARY_EVERY = 0.2
"""Seconds between the canary's messages: each of its two users says one every 0.4 s at most,
well within the broker's default rate limit, however fast the examples run."""

CLIENT_TAGS = [
    "hello", "join", "leave", "say", "sync", "fetch", "who", "rooms", "ping", "quit", "tell",
]  # fmt: skip
OTHER_TAGS = ["msg", "welcome", "error", "ctl", "ctlreply", "presence", "synced", "bye", ""]
ZMTP_SIGNATURE = b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f"
FRAME_MAX = 64 * 1024
TOO_BIG = b"\x00" * (FRAME_MAX + 1)
"""One byte over the broker's frame limit: the sender loses its connection (and reconnects). Only
ever sent alone, as a one-frame message on a socket that stays open: libzmq 4.3.5 aborts the
*sending* process when a connection it is closing is dropped in the middle of a multipart message
(zeromq/libzmq#3442). Every other frame of this file is under the limit by construction."""


# ---- values from the edges -----------------------------------------------------------------------

EDGE_INTS = sorted(
    {
        *(0, 1, 2, -1, -2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, -0x20, -0x21),
        *(p.HISTORY_MAX, p.HISTORY_MAX + 1, 2**31 - 1, 2**31, -(2**31), 2**32 - 1, 2**32),
        *(p.MAX_ID - 1, p.MAX_ID, p.MAX_ID + 1, -p.MAX_ID, -(p.MAX_ID + 1)),
        *(2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1, -(2**63) + 1, -(2**63)),
    }
)
"""The bounds of the protocol's ranges and of MessagePack's integer encodings."""

ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(min_value=-(2**63), max_value=2**64 - 1))
floats = st.one_of(
    st.floats(allow_nan=True), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308])
)
short_texts = st.one_of(
    st.sampled_from(["", "\n", "\0", "\u2028", "\x7f", "a\nb", "é", "\U0001f600"]),
    st.text(max_size=40),
)
huge_texts = st.builds(
    lambda n, c: c * (n // len(c.encode())),
    st.integers(1000, 60_000),
    st.sampled_from(["a", "\n", "é", "\U0001f600", "\0"]),
)
huge_bins = st.builds(bytes, st.integers(1000, 60_000))
exts = st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=16))
"""Extension types; code -1 is MessagePack's timestamp, which msgspec reads as a datetime."""


def _nested(depth: int, opener: bytes, leaf: bytes) -> msgspec.Raw:
    """A value nested ``depth`` deep, packed by hand (msgspec will not encode one that deep)."""
    return msgspec.Raw(opener * depth + leaf)


_depths = st.integers(2, 20_000)  # at most 60 KB: under the frame limit, however deep
_leaves = st.sampled_from([b"\xc0", b"\x01", b"\xa1x", b"\x90", b"\x80"])
deep_arrays = st.builds(_nested, _depths, st.sampled_from([b"\x91", b"\xdc\x00\x01"]), _leaves)
deep_maps = st.builds(_nested, _depths, st.just(b"\x81\xa1k"), _leaves)
lying = st.builds(
    lambda head, tail: msgspec.Raw(head + tail),
    st.sampled_from(
        [
            b"\xdd\xff\xff\xff\xff",  # array32 of 4 G items
            b"\xdf\xff\xff\xff\xff",  # map32 of 4 G pairs
            b"\xdb\xff\xff\xff\xff",  # str32 of 4 GB
            b"\xc6\xff\xff\xff\xff",  # bin32 of 4 GB
            b"\xc9\xff\xff\xff\xff\x01",  # ext32 of 4 GB
            b"\xcf\x00\x00",  # a uint64 cut short
            b"\xc1",  # the one byte MessagePack never uses
        ]
    ),
    st.binary(max_size=20),
)
"""Headers that promise more than the frame holds."""
_items = st.one_of(ints, st.none(), st.booleans(), st.text(alphabet="ab\n", max_size=3))
huge_lists = st.builds(lambda n, item: [item] * n, st.integers(100, 6000), _items)
huge_maps = st.builds(lambda n: {f"k{i}": i for i in range(n)}, st.integers(100, 3000))

scalars = st.one_of(st.none(), st.booleans(), ints, floats, short_texts, st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
big_values = st.one_of(huge_texts, huge_bins, huge_lists, huge_maps, deep_arrays, deep_maps, lying)

KINDS: dict[str, st.SearchStrategy[Any]] = {
    "nil": st.none(),
    "bool": st.booleans(),
    "int": ints,
    "float": floats,
    "str": st.one_of(short_texts, huge_texts),
    "bin": st.one_of(st.binary(max_size=40), huge_bins),
    "array": st.one_of(st.lists(values, max_size=4), huge_lists, deep_arrays),
    "map": st.one_of(
        st.dictionaries(st.text(max_size=8), values, max_size=3), huge_maps, deep_maps
    ),
    "ext": exts,
}
"""Values by their MessagePack type, each at most about 60 KB."""

ACCEPTS: dict[type, set[str]] = {
    mi.IntType: {"int"},
    mi.FloatType: {"int", "float"},
    mi.StrType: {"str"},
    mi.EnumType: {"str"},  # every enum of the protocol is a string enum
    mi.BoolType: {"bool"},
    mi.BytesType: {"bin"},  # RoomKey.key
    mi.ListType: {"array"},
    mi.AnyType: set(KINDS),
    mi.StructType: {"array"},  # a nested message (Stats.stats)
    mi.UnionType: {"array", "nil"},  # CtlReply.data: a tagged listing, or nil
}
"""What MessagePack types a field of each kind accepts (the tag is a ``str``)."""


# ---- every message, each field of it wrong ------------------------------------------------------

TEMPLATES: dict[type, p._Msg] = {
    type(msg): msg
    for msg in (
        p.Hello(p.VERSION, "fz"),
        p.Join("games", 1),
        p.Leave(),
        p.Say("hi", 1),
        p.Sync(1),
        p.Fetch(p.LOBBY, 0, 0, 10),
        p.ListUsers(p.LOBBY),
        p.ListRooms(),
        p.Ping(p.LOBBY, 1),
        p.Quit(),
        p.Tell("fz", "hi", 1),
        p.Posted(p.LOBBY, 1, 1.5, "fz", "hi"),
        p.Welcome(p.VERSION, "fz", p.LOBBY, "tcp://127.0.0.1:1", "s", 1.0, False),
        p.Joined(p.LOBBY, 1, [], False),
        p.Ack(1, p.LOBBY, 1),
        p.Refused(1, p.Code.BLOCKED, "no"),
        p.Error(p.Code.BAD_FRAME, "no", "say"),
        p.Notice("hi"),
        p.Messages(p.LOBBY, [], 1),
        p.UserInfo("fz", p.LOBBY, False),
        p.RoomInfo(p.LOBBY, 1, 1),
        p.Users([]),
        p.Rooms([]),
        p.Told("fz", "fz", "hi", 1.5),
        p.Goodbye(p.Bye.CLOSED, "bye"),
        p.Presence(p.LOBBY, "fz", "entered"),
        p.Synced(p.LOBBY, 1, 1),
        cp.CtlRequest(1, "who", []),
        cp.CtlReply(1, True, "ok", "", None),
        cp.UserList([p.UserInfo("fz", p.LOBBY, False)], ["fz"]),
        cp.RoomList([p.RoomInfo(p.LOBBY, 1, 1)]),
        cp.Counters(1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 1.5, 0),
        cp.Stats(cp.Counters(1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 1.5, 0)),
        cp.AuditRow(1.5, "fz", "K", "who", [], True, "ok"),
        cp.AuditLog([]),
        p.JoinRequested("fz"),
        p.RoomKey("fz", 1, bytes(32)),
        cp.JoinRequest("fz", "fz", 1.5),
        cp.RequestList([]),
        p.Login(p.VERSION, "fz", "n,,n=fz,r=abc"),
        p.Prove("c=biws,r=abc,p=cHJvb2Y="),
        p.Register(p.VERSION, "fz", "", bytes(12), 4096, bytes(32), bytes(32)),
        p.Challenge("r=abc,s=c2FsdA==,i=4096"),
        p.Verified("v=c2lnbmF0dXJl"),
        p.Registered("fz"),
        cp.AccountInfo("fz", 1.5, 0.0, False),
        cp.AccountList([]),
        cp.Invite("c0de", 1.5),
    )
}
"""A valid example of every message of the protocol."""
CLIENT_TYPES = set(get_args(p.ClientMsg))


def test_every_message_has_a_template() -> None:
    """A message added to the protocol is fuzzed too, once it has a template here."""
    assert set(TEMPLATES) == set(p._Msg.__subclasses__())


def _slots(cls: type) -> list[tuple[type, int, set[str]]]:
    """Each place of ``cls``'s array (the tag, each field, one past the end) and the MessagePack
    types that would be right there."""
    fields = mi.type_info(cls).fields
    return [
        (cls, 0, {"str"}),
        *((cls, i, ACCEPTS[type(f.type)]) for i, f in enumerate(fields, start=1)),
        (cls, len(fields) + 1, set()),  # no value is right one past the end
    ]


SLOTS = [slot for cls in TEMPLATES for slot in _slots(cls) if set(KINDS) - slot[2]]


def _replaced(cls: type, index: int, value: Any) -> bytes:
    raw = msgspec.msgpack.decode(p.encode(TEMPLATES[cls]))
    if index < len(raw):
        raw[index] = value
    else:
        raw.append(value)
    return msgspec.msgpack.encode(raw)


def _expected_reason(cls: type, index: int) -> str:
    """What the reason of the bad frame must name: the place of the wrong value, or the length."""
    if cls not in CLIENT_TYPES:
        return "`$[0]`"  # not a tag a client may send: wrong at once
    if index == len(mi.type_info(cls).fields) + 1:
        return "at most length"
    return f"`$[{index}]`"


@st.composite
def wrong_fields(draw: st.DrawFn) -> tuple[bytes, str]:
    """A message of any struct with one place holding a value of another type, and what the
    broker's bad-frame reason must name."""
    cls, index, right = draw(st.sampled_from(SLOTS))
    kind = draw(st.sampled_from(sorted(set(KINDS) - right)))
    return _replaced(cls, index, draw(KINDS[kind])), _expected_reason(cls, index)


def _packed(tag: Any, items: list[Any]) -> bytes:
    return msgspec.msgpack.encode([tag, *items])


wire_like = st.builds(
    lambda tag, items, big: _packed(tag, [*items, big] if big is not None else items),
    st.one_of(st.sampled_from(CLIENT_TAGS + OTHER_TAGS), st.text(max_size=10), ints),
    st.lists(st.one_of(values, ints), max_size=5),
    st.one_of(st.none(), big_values),
)
"""A MessagePack array that starts with a known tag: decodes far enough to be checked field by
field (one big value at most keeps it under the frame limit)."""

names = st.one_of(
    st.sampled_from(["public", "games", "alice", "bob", "a" * 32, "a" * 33, "pub\0", "x y", ""]),
    st.text(max_size=40),
)


def _or_any(low: int, high: int) -> st.SearchStrategy[int]:
    """Mostly in range (to reach the handlers), often at its edges, else any integer at all."""
    return st.one_of(st.sampled_from([low, high]), st.integers(low, high), ints)


ids, counts, limits = _or_any(0, p.MAX_ID), _or_any(0, p.HISTORY_MAX), _or_any(1, p.HISTORY_MAX)
printable = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=200
)
scram_texts = st.one_of(
    st.sampled_from(["n,,n=alice,r=abc", "c=biws,r=abc,p=cHJvb2Y=", "x" * 1025]),
    st.text(max_size=60),
)
"""SCRAM messages: valid-looking, too long, or anything (small: the guard counts the bytes)."""
secrets_ = st.one_of(st.just(""), st.text(max_size=p.SESSION_MAX + 16))
typed = st.one_of(
    st.builds(p.Hello, st.one_of(st.just(p.VERSION), _or_any(0, 0xFFFF)), names, secrets_),
    st.builds(p.Join, names, counts),
    st.builds(p.Leave),
    st.builds(p.Say, st.one_of(printable, st.text(max_size=200), huge_texts), ids),
    st.builds(p.Sync, ids),
    st.builds(p.Fetch, names, ids, ids, limits),
    st.builds(p.ListUsers, names),
    st.builds(p.ListRooms),
    st.builds(p.Ping, names, ids),
    st.builds(p.Quit),
    st.builds(p.Tell, names, st.one_of(printable, st.text(max_size=200)), ids),
    st.builds(p.Login, _or_any(0, 0xFFFF), names, scram_texts),
    st.builds(p.Prove, scram_texts),
    st.builds(
        p.Register,
        _or_any(0, 0xFFFF),
        names,
        secrets_,
        st.binary(max_size=80),
        _or_any(0, 20_000_000),
        st.binary(max_size=40),
        st.binary(max_size=40),
    ),
).map(p.encode)
"""Messages of the right shape with values in their ranges, at their edges and beyond (the
structs encode any value; their constraints are only checked at decode)."""

tag_swapped = st.builds(
    lambda msg, tag: _packed(tag, msgspec.msgpack.decode(p.encode(msg))[1:]),
    st.sampled_from(list(TEMPLATES.values())),
    st.sampled_from(CLIENT_TAGS),
)
"""A message's fields under another message's tag."""

bodies = st.one_of(
    st.binary(max_size=3000),
    wire_like,
    typed,
    tag_swapped,
    wrong_fields().map(lambda t: t[0]),
    lying.map(bytes),
    deep_arrays.map(bytes),
)
frames = st.lists(st.one_of(bodies, st.binary(max_size=100)), min_size=1, max_size=5)
router_frames = st.one_of(
    typed.map(lambda body: [body]),  # one message of the right shape: on to the handlers
    bodies.map(lambda body: [body]),
    frames,
    st.just([TOO_BIG]),
)


# ---- one broker for the whole file ---------------------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Live:
    """The broker under fuzz, a probe that proves it answers, the canary that proves it serves,
    and its memory after the warm-up."""

    def __init__(self, broker: BrokerProc, ctx: zmq.Context) -> None:
        self.broker = broker
        self.ctx = ctx
        self.probe = Replies(self.socket(zmq.DEALER, broker.router))
        kd = keys.KeyDir.of(broker.data_dir)
        public, secret = keys.load_secret(kd.admin_secret)
        self.admin = {
            "public": public,
            "secret": secret,
            "server": keys.load_public(kd.broker_public),
        }
        self.canary: Canary | None = None
        self.chatted = time.monotonic()
        self.rss_start = 0

    def chat(self) -> None:
        """The canary says something now (it must not be silent for a heartbeat timeout)."""
        assert self.canary is not None
        try:
            self.canary.chat()
        except AssertionError as exc:  # what the broker said lately tells why
            said = [*self.broker.seen, *self.broker.lines.queue][-20:]
            raise AssertionError(f"{exc}; the broker's last lines: {said}") from exc
        self.chatted = time.monotonic()

    def socket(self, kind: int, endpoint: str, **curve: bytes) -> zmq.Socket:
        sock = socket(self.ctx, kind, endpoint, **curve)
        sock.sndtimeo = int(WAIT * 1000)  # a send that cannot go fails the test, never hangs it
        return sock

    def check(self) -> None:
        """The broker process runs and answers a request (an unknown peer's ListRooms), and the
        canary chats (every ``CANARY_EVERY`` seconds)."""
        assert self.broker.popen.poll() is None, f"the broker exited: {self.broker.err[-5:]}"
        self.probe.sock.send(p.encode(p.ListRooms()))
        reply = self.probe.expect(p.Error)
        assert reply.code == p.Code.HELLO_FIRST, reply
        if time.monotonic() - self.chatted >= CANARY_EVERY:
            self.chat()


def drain(sock: zmq.Socket) -> None:
    """Read whatever the broker sent back, so that no queue grows on either side; each reply
    must be a batch of valid server messages, and none an internal error."""
    while sock.poll(0):
        for msg in p.decode_server(sock.recv()):
            assert not (isinstance(msg, p.Error) and msg.code == p.Code.INTERNAL), msg


WRONG = {"nil": None, "bool": True, "int": 2**64 - 1, "float": 0.5, "str": "x", "array": []}


def warm_up(live: Live) -> None:
    """Every code path once, and every kind of fuzz a little, before memory is measured. The
    processes first: the canary starts after them, so that it is never silent for long."""
    clients = ClientFactory(live.broker)
    try:
        warm = clients.join("warmup")
        warm.send("warm")
        warm.expect(r"^\[public\] warmup: warm$")
        warm.send("/join warm")
        warm.expect(r"^\* joined warm$")
        warm.send("/exit")
        assert warm.wait() == 0
    finally:
        clients.kill_all()
    assert ctl(live.broker, "who").returncode == 0
    live.canary = Canary(live.ctx, live.broker)
    replies = Replies(live.socket(zmq.DEALER, live.broker.router))
    try:
        for cls, index, right in SLOTS:  # each place of each message, wrong
            kind = next(k for k in WRONG if k not in right)
            replies.sock.send(_replaced(cls, index, WRONG[kind]))
        replies.sock.send(_packed("say", ["a" * 60_000, 2**64 - 1]))
        for raw in (b"\x91" * 60_000 + b"\xc0", b"\xdd\xff\xff\xff\xff"):
            replies.sock.send(_packed("say", [msgspec.Raw(raw), 1]))
        for _ in range(len(SLOTS) + 3):
            error = replies.next()
            assert isinstance(error, p.Error) and error.code == p.Code.BAD_FRAME, error
        replies.sock.send_multipart([b"a", b"b"])
        replies.sock.send(TOO_BIG)  # last and alone: nothing is half sent when the broker drops us
        live.check()
    finally:
        replies.sock.close(linger=0)
    live.chat()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    # The fuzzers are abusive by design: the guard may cut one off (it sends more than any
    # client may, or never says hello), and must not refuse its address when it reconnects.
    broker = BrokerProc(tmp_path_factory.mktemp("fuzz") / "data", "--quiet", "--evict-for", "0")
    ctx = zmq.Context()
    try:
        state = Live(broker, ctx)
        warm_up(state)
        state.check()
        state.rss_start = rss(broker.popen.pid)
        yield state
    finally:
        ctx.destroy(linger=0)
        try:
            code = broker.stop()
        finally:
            broker.kill()
    assert code == 0, broker.err[-10:]  # a clean stop, after all that


FUZZERS = 3


@pytest.fixture(scope="module")
def dealers(live: Live) -> list[zmq.Socket]:
    """A connection per fuzzing user, and one more for frames over the limit (each costs its
    connection, and a user is known by its connection)."""
    return [live.socket(zmq.DEALER, live.broker.router) for _ in range(FUZZERS + 1)]


# ---- the sockets ---------------------------------------------------------------------------------


@settings(FUZZ, max_examples=500)
@given(
    batch=st.lists(st.tuples(st.integers(0, FUZZERS - 1), router_frames), min_size=1, max_size=8)
)
def test_fuzz_router(live: Live, dealers: list[zmq.Socket], batch: list[tuple[int, list[bytes]]]):
    for i, sock in enumerate(dealers[:FUZZERS]):  # a user (again, after a fuzzed Quit), or already
        sock.send(p.encode(p.Hello(p.VERSION, f"fuzzer{i}")))
    for which, parts in batch:
        if parts == [TOO_BIG]:
            dealers[FUZZERS].send(TOO_BIG)
            continue
        assert len(parts) == 1 or max(map(len, parts)) <= FRAME_MAX, "see TOO_BIG"
        dealers[which].send_multipart(parts)
    live.check()
    for sock in dealers:
        drain(sock)


@settings(FUZZ, max_examples=250)
@given(batch=st.lists(wrong_fields(), min_size=1, max_size=6))
def test_every_field_of_every_message_with_a_value_of_another_type_is_a_bad_frame(
    live: Live, batch: list[tuple[bytes, str]]
):
    """Exactly one ``bad_frame`` per message, naming the place of the wrong value."""
    replies = Replies(live.socket(zmq.DEALER, live.broker.router))
    try:
        for body, _ in batch:
            replies.sock.send(body)
        for _, where in batch:
            error = replies.next()
            assert isinstance(error, p.Error), error
            assert (error.code, error.request) == (p.Code.BAD_FRAME, ""), error
            assert where in error.reason, error.reason
        live.check()
    finally:
        replies.sock.close(linger=0)


# ---- valid messages in invalid orders ------------------------------------------------------------

ORDER_ROOMS = [p.LOBBY, "games", "no room!"]
STEPS = [
    "hello", "hello-bad-session", "hello-bad-version", "quit", "ping", "say", "leave", "sync",
    "who", "rooms", "tell-self", "tell-absent",
]  # fmt: skip
Sig = tuple[Any, ...]


def sig(msg: p.ServerMsg) -> Sig:
    """What the model predicts of a reply: its kind, and the code and request of an error."""
    if isinstance(msg, p.Error):
        return ("Error", msg.code, msg.request)
    if isinstance(msg, p.Refused):
        return ("Refused", msg.code)
    return (type(msg).__name__,)


class Session:
    """What one connection should get for each message, by the protocol's rules: a model."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.helloed = False
        self.room = p.LOBBY

    def step(self, step: str | tuple[str, str]) -> tuple[p.ClientMsg, list[Sig]]:
        msg = self._message(step)
        tag = type(msg).__struct_config__.tag
        if isinstance(msg, p.Hello):
            if self.helloed:
                return msg, [("Error", p.Code.ALREADY, "hello")]
            if msg.session:
                return msg, [("Error", p.Code.BAD_SESSION, "hello")]
            if msg.version != p.VERSION:
                return msg, [("Error", p.Code.BAD_VERSION, "hello")]
            self.helloed, self.room = True, p.LOBBY
            return msg, [("Welcome",)]
        if isinstance(msg, p.Ping):
            return msg, []
        if not self.helloed:
            return msg, [] if isinstance(msg, p.Quit) else [("Error", p.Code.HELLO_FIRST, tag)]
        return msg, self._helloed(msg)

    def _helloed(self, msg: p.ClientMsg) -> list[Sig]:
        match msg:
            case p.Quit():
                self.helloed = False
                return []
            case p.Sync():
                return []  # answered on the room's topic
            case p.Say():
                return [("Ack",)]
            case p.Tell(to=to) if to == self.name:
                return [("Told",), ("Ack",)]
            case p.Tell():
                return [("Refused", p.Code.NOT_CONNECTED)]
            case p.Leave():
                self.room = p.LOBBY
                return [("Joined",)]
            case p.Join(room=room) | p.Fetch(room=room) if not p.valid_name(room):
                return [("Error", p.Code.BAD_ROOM, type(msg).__struct_config__.tag)]
            case p.Join(room=room):
                self.room = room
                return [("Joined",)]
            case p.Fetch(room=room) if room != self.room:
                return [("Error", p.Code.NOT_MEMBER, "fetch")]
            case p.Fetch():
                return [("Messages",)]
            case p.ListUsers():
                return [("Users",)]
            case p.ListRooms():
                return [("Rooms",)]
        raise AssertionError(f"no rule for {msg}")

    def _message(self, step: str | tuple[str, str]) -> p.ClientMsg:
        if isinstance(step, tuple):
            what, room = step
            return p.Join(room) if what == "join" else p.Fetch(room, 0, limit=1)
        return {
            "hello": lambda: p.Hello(p.VERSION, self.name),
            "hello-bad-session": lambda: p.Hello(p.VERSION, self.name, "f" * 32),
            "hello-bad-version": lambda: p.Hello(p.VERSION + 1, self.name),
            "quit": p.Quit,
            "ping": p.Ping,
            "say": lambda: p.Say("in order?", next(MIDS)),
            "leave": p.Leave,
            "sync": lambda: p.Sync(next(MIDS)),
            "who": p.ListUsers,
            "rooms": p.ListRooms,
            "tell-self": lambda: p.Tell(self.name, "to me", next(MIDS)),
            "tell-absent": lambda: p.Tell("nobody-here", "to no one", next(MIDS)),
        }[step]()


steps = st.lists(
    st.one_of(
        st.sampled_from(STEPS),
        st.tuples(st.sampled_from(["join", "fetch"]), st.sampled_from(ORDER_ROOMS)),
    ),
    min_size=1,
    max_size=12,
)


@settings(FUZZ, max_examples=200)
@given(plan=steps)
def test_valid_messages_in_any_order_get_the_answers_the_protocol_says(
    live: Live, plan: list[str | tuple[str, str]]
):
    """Say before Hello, Hello twice, Quit then Say...: each message, and a ListRooms after it
    (a marker: Rooms, or hello_first), is answered in order exactly as the model says."""
    session = Session(f"zz-order-{next(MIDS)}")
    replies = Replies(live.socket(zmq.DEALER, live.broker.router))
    try:
        expected: list[Sig] = []
        for step in plan:
            msg, answers = session.step(step)
            marker, marked = session.step("rooms")
            replies.sock.send(p.encode(msg))
            replies.sock.send(p.encode(marker))
            expected += answers + marked
        got: list[Sig] = []
        while len(got) < len(expected):
            reply = replies.next()
            assert reply is not None, f"after {got}, nothing more within {WAIT}s"
            if not isinstance(reply, UNASKED):  # not modelled (test_roomkeys checks keys)
                got.append(sig(reply))
        assert got == expected
        replies.sock.send(p.encode(p.Quit()))
        live.check()
    finally:
        replies.sock.close(linger=0)


# ---- control, PUB and raw TCP --------------------------------------------------------------------

HARMFUL = {"close", "reset"}
"""Commands that end the fuzz: the broker shuts down, or every client (the canary too) is
disconnected."""


def _harmless(parts: list[bytes]) -> list[bytes]:
    """Control frames, with a decodable request for a harmful command renamed, and one about a
    canary user about nobody: an admin may do anything to the broker but end it."""
    out = []
    for part in parts:
        try:
            request = cp.decode_ctl_request(part)
        except p.ProtocolError:
            out.append(part)
            continue
        command = f"not-{request.command}" if request.command in HARMFUL else request.command
        args = ["nobody" if a.startswith("canary") else a for a in request.args]
        out.append(p.encode(cp.CtlRequest(request.id, command, args)))
    return out


ctl_requests = st.builds(
    cp.CtlRequest,
    ints,
    st.one_of(st.sampled_from(sorted(COMMANDS)), st.text(max_size=20)),
    st.one_of(
        st.lists(st.one_of(names, st.text(max_size=10)), max_size=3),
        st.builds(lambda args, big: [*args, big], st.lists(names, max_size=2), huge_texts),
    ),
).map(p.encode)
ctl_bodies = st.one_of(
    ctl_requests,
    bodies,
    st.builds(
        lambda index, value: _replaced(cp.CtlRequest, index, value),
        st.integers(0, 4),
        st.one_of(*KINDS.values()),
    ),
)
ctl_frames = st.one_of(frames, st.tuples(st.just(b""), ctl_bodies).map(list))


def drain_control(sock: zmq.Socket) -> None:
    while sock.poll(0):
        parts = sock.recv_multipart()
        assert len(parts) == 2 and parts[0] == b"", parts
        reply = cp.decode_ctl_reply(parts[1])
        assert reply.code != p.Code.INTERNAL, reply


@FUZZ
@given(batch=st.lists(ctl_frames, min_size=1, max_size=6))
def test_fuzz_control_as_the_admin(live: Live, batch: list[list[bytes]]):
    """With the admin's key, every frame reaches the control decoder."""
    sock = live.socket(zmq.DEALER, live.broker.control, **live.admin)
    try:
        for parts in batch:
            parts = _harmless(parts)
            assert max(map(len, parts)) <= FRAME_MAX, "see TOO_BIG"
            sock.send_multipart(parts)
        live.check()
        drain_control(sock)
    finally:
        sock.close(linger=0)


@FUZZ
@given(
    messages=st.lists(
        st.one_of(
            st.tuples(st.sampled_from([b"\x00", b"\x01"]), st.binary(max_size=60)).map(
                lambda t: t[0] + t[1]
            ),
            st.binary(max_size=1500),  # no command byte, or longer than any topic
        ),
        min_size=1,
        max_size=8,
    )
)
def test_fuzz_pub_subscriptions(live: Live, messages: list[bytes]):
    """Subscriptions are inbound messages on the PUB: junk, oversized, endless (un)subscribes."""
    xsub = live.socket(zmq.XSUB, live.broker.pub)
    try:
        for message in messages:
            xsub.send(message)
        live.check()
    finally:
        xsub.close(linger=0)


raw_bytes = st.tuples(
    st.sampled_from([b"", ZMTP_SIGNATURE, ZMTP_SIGNATURE + b"\x03\x00NULL" + b"\0" * 16]),
    st.binary(max_size=600),
).map(lambda t: t[0] + t[1])


def _tcp(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


@settings(FUZZ, max_examples=150)
@given(junk=st.lists(st.tuples(st.integers(0, 2), raw_bytes), min_size=1, max_size=3))
def test_fuzz_raw_tcp_on_every_port(live: Live, junk: list[tuple[int, bytes]]):
    """Bytes that are not ZMTP (or only start like it) at each port, plain or CURVE."""
    endpoints = [live.broker.router, live.broker.pub, live.broker.control]
    for which, data in junk:
        with pysocket.create_connection(_tcp(endpoints[which]), timeout=WAIT) as conn:
            conn.sendall(data)
    live.check()


# ---- and afterwards ------------------------------------------------------------------------------


def test_after_the_fuzz_the_broker_still_serves_and_memory_is_bounded(live: Live):
    clients = ClientFactory(live.broker)
    try:
        # Names no strategy produces: the fuzz may have blocked or taken "alice" and "bob".
        first = clients.join("omega1")
        live.chat()  # between processes, each slow to start on a loaded machine
        second = clients.join("omega2")
        live.chat()
        first.send("after the storm")
        second.expect(r"^\[public\] omega1: after the storm$")
        second.send("/join calm")
        second.expect(r"^\* joined calm$")
        assert ctl(live.broker, "who").returncode == 0
    finally:
        clients.kill_all()
    live.chat()
    before, after = live.rss_start, rss(live.broker.popen.pid)
    print(
        f"broker RSS: {before / 2**20:.1f} MiB after the warm-up, {after / 2**20:.1f} MiB after "
        f"the fuzz ({after / before:.2f}x)"
    )
    assert after <= RSS_RATIO_MAX * before, f"{before} -> {after} bytes"
    assert live.broker.popen.poll() is None, live.broker.err[-5:]
    assert not any("Traceback" in line for line in live.broker.err), live.broker.err[-10:]
    live.broker.drain(0)
    internal = [line for line in live.broker.seen if "internal error" in line]
    assert not internal, internal[:3]
