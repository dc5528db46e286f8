"""The wire format (broker.wire.protocol): round trips, strict decoding, topics, names."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

# ---- samples of every message type -------------------------------------------------------------

POSTED = p.Posted("lobby2", 7, 1_700_000_000.25, "alice", "h\u00e9llo \U0001f44b")

CLIENT_MSGS: list[Any] = [
    p.Hello(p.VERSION, "alice"),
    p.Hello(p.VERSION, "alice", "0123abcd"),
    p.Join("room-1"),
    p.Join("room-1", 20),
    p.Leave(),
    p.Say("hi there"),
    p.Say("h\u00e9llo", 42),
    p.Sync(99),
    p.Fetch("room-1", 3),
    p.Fetch("room-1", 3, 9, 50),
    p.ListUsers(),
    p.ListUsers("room-1"),
    p.ListRooms(),
    p.Ping(),
    p.Ping("room-1", 12),
    p.Quit(),
    p.Tell("bob", "psst", 9),
    p.Login(p.VERSION, "alice", "n,,n=alice,r=abc"),
    p.Prove("c=biws,r=abcdef,p=cHJvb2Y="),
    p.Register(p.VERSION, "alice", "", bytes(16), 4096, bytes(32), bytes(32)),
    p.Register(p.VERSION, "alice", "invite-code", bytes(12), 100_000, bytes(32), bytes(32)),
]

SERVER_MSGS: list[Any] = [
    p.Welcome(p.VERSION, "alice", p.LOBBY, "tcp://127.0.0.1:1", "s3cr3t", 1.5),
    p.Welcome(p.VERSION, "alice", "room-1", "tcp://127.0.0.1:1", "s3cr3t", 1.5, True),
    p.Joined("room-1", 0),
    p.Joined("room-1", 7, [POSTED], True),
    p.Ack(42, "room-1", 7),
    p.Refused(42, p.Code.RATE_LIMITED, "slow down"),
    p.Error(p.Code.NAME_TAKEN, "the name is taken"),
    p.Notice("you are unblocked"),
    p.Messages("room-1", []),
    p.Messages("room-1", [POSTED, POSTED], 5),
    p.Users([p.UserInfo("alice", p.LOBBY, False), p.UserInfo("bob", "room-1", True)]),
    p.Rooms([p.RoomInfo(p.LOBBY, 2, 0), p.RoomInfo("room-1", 1, 7)]),
    p.Goodbye(p.Bye.FIRED, "the admin disconnected you"),
    p.Told("alice", "bob", "psst", 1.5),
    p.JoinRequested("secret"),
    p.RoomKey("secret", 7, bytes(32)),
    p.Users([p.UserInfo("alice", p.LOBBY, False, True)]),
    p.Challenge("r=abcdef,s=c2FsdA==,i=4096"),
    p.Verified("v=c2lnbmF0dXJl"),
    p.Registered("alice"),
    p.Ping("room-1", 3),
    POSTED,
]

ROOM_BATCHES: list[Any] = [
    [],
    [POSTED],
    [POSTED, p.Presence("room-1", "bob", "entered"), p.Synced("room-1", 5, 7)],
]

CTL_REQUESTS: list[Any] = [
    cp.CtlRequest(1, "who"),
    cp.CtlRequest(2, "block", ["alice"]),
]

CTL_REPLIES: list[Any] = [
    cp.CtlReply(1, True, "blocked alice"),
    cp.CtlReply(2, False, "alice is not connected", p.Code.NO_SUCH_USER.value),
    cp.CtlReply(3, True, "1 users", "", cp.UserList([p.UserInfo("a", p.LOBBY, False)], ["n"])),
    cp.CtlReply(4, True, "1 rooms", "", cp.RoomList([p.RoomInfo(p.LOBBY, 1, 2)])),
    cp.CtlReply(
        5, True, "up 2s", "", cp.Stats(cp.Counters(1, 1, 0, 1, 0, 2, 3, 0, 0, 0, 0.5, 0, 0, 2.0, 0))
    ),
    cp.CtlReply(
        6,
        True,
        "1 audit entry",
        "",
        cp.AuditLog([cp.AuditRow(1.5, "a", "K", "who", [], True, "ok")]),
    ),
    cp.CtlReply(7, True, "1 request", "", cp.RequestList([cp.JoinRequest("secret", "bob", 1.5)])),
    cp.CtlReply(8, True, "1 rooms", "", cp.RoomList([p.RoomInfo("s", 1, 2, True, ["bob"])])),
    cp.CtlReply(9, True, "1 account", "", cp.AccountList([cp.AccountInfo("a", 1.5, 0.0, True)])),
    cp.CtlReply(10, True, "invite made", "", cp.Invite("c0de", 1.5)),
]

# Nested-only structs: they travel inside Users and Rooms, and the listings inside CtlReply.
NESTED = {p.UserInfo, p.RoomInfo, cp.UserList, cp.RoomList, cp.Stats, cp.Counters, cp.AuditLog}
NESTED |= {cp.AuditRow, cp.RequestList, cp.JoinRequest, cp.AccountList, cp.AccountInfo, cp.Invite}


def _ids(msgs: list[Any]) -> list[str]:
    return [type(m).__name__ for m in msgs]


def test_samples_cover_every_message_type() -> None:
    sampled = {type(m) for m in (*CLIENT_MSGS, *SERVER_MSGS, *CTL_REQUESTS, *CTL_REPLIES)}
    sampled |= {type(e) for batch in ROOM_BATCHES for e in batch}
    assert sampled | NESTED == set(p._Msg.__subclasses__())


# ---- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", CLIENT_MSGS, ids=_ids(CLIENT_MSGS))
def test_client_message_round_trip(msg: Any) -> None:
    decoded = p.decode_client(p.encode(msg))
    assert decoded == msg
    assert type(decoded) is type(msg)


@pytest.mark.parametrize("msg", SERVER_MSGS, ids=_ids(SERVER_MSGS))
def test_server_message_round_trip(msg: Any) -> None:
    [decoded] = p.decode_server(p.encode([msg]))
    assert decoded == msg
    assert type(decoded) is type(msg)


def test_server_batch_keeps_order_and_types() -> None:
    batch = [p.Ack(1, "r", 1), p.Ping("r", 1), p.Ack(2, "r", 2), p.Notice("hi")]
    assert p.decode_server(p.encode(batch)) == batch


def test_a_lone_server_message_is_not_a_batch() -> None:
    assert_bad_frame(p.decode_server, p.encode(p.Ack(1, "r", 1)))


@pytest.mark.parametrize("batch", ROOM_BATCHES)
def test_room_batch_round_trip(batch: list[Any]) -> None:
    decoded = p.decode_room(p.encode(batch))
    assert decoded == batch
    assert [type(e) for e in decoded] == [type(e) for e in batch]


@pytest.mark.parametrize("msg", CTL_REQUESTS)
def test_ctl_request_round_trip(msg: cp.CtlRequest) -> None:
    assert cp.decode_ctl_request(p.encode(msg)) == msg


@pytest.mark.parametrize("msg", CTL_REPLIES)
def test_ctl_reply_round_trip(msg: cp.CtlReply) -> None:
    assert cp.decode_ctl_reply(p.encode(msg)) == msg


def test_enum_fields_decode_as_enums() -> None:
    [refused, bye] = p.decode_server(
        p.encode([p.Refused(1, p.Code.BLOCKED, "no"), p.Goodbye(p.Bye.RESET, "reset")])
    )
    assert refused.code is p.Code.BLOCKED
    assert bye.reason is p.Bye.RESET


def test_a_message_is_an_array_led_by_its_tag() -> None:
    assert msgspec.msgpack.decode(p.encode(p.Hello(1, "al"))) == ["hello", 1, "al", ""]
    assert msgspec.msgpack.decode(p.encode(p.Leave())) == ["leave"]


def test_omitted_trailing_defaults_are_filled_in() -> None:
    body = msgspec.msgpack.encode(["join", "room-1"])
    assert p.decode_client(body) == p.Join("room-1", 0)


# ---- strict decoding ---------------------------------------------------------------------------

DECODERS: dict[str, Callable[[bytes], Any]] = {
    "client": p.decode_client,
    "server": p.decode_server,
    "room": p.decode_room,
    "ctl_request": cp.decode_ctl_request,
    "ctl_reply": cp.decode_ctl_reply,
}


def _pack(*items: Any) -> bytes:
    return msgspec.msgpack.encode(list(items))


def assert_bad_frame(decode: Callable[[bytes], Any], body: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        decode(body)
    assert info.value.code is p.Code.BAD_FRAME
    assert info.value.reason
    assert str(info.value) == info.value.reason
    return info.value


GARBAGE = [
    b"",
    b"\xc1",  # a byte MessagePack never uses
    b"not msgpack at all",
    b"\x00",
    b"\xff\xff\xff\xff",
    msgspec.msgpack.encode({"t": "hello", "version": 1, "name": "x"}),  # a map, not an array
    msgspec.msgpack.encode("hello"),
    _pack(None),
]


@pytest.mark.parametrize("which", list(DECODERS))
@pytest.mark.parametrize("body", GARBAGE)
def test_garbage_is_bad_frame(which: str, body: bytes) -> None:
    assert_bad_frame(DECODERS[which], body)


@pytest.mark.parametrize("msg", CLIENT_MSGS, ids=_ids(CLIENT_MSGS))
def test_truncated_client_body_is_bad_frame(msg: Any) -> None:
    body = p.encode(msg)
    for cut in range(len(body)):
        assert_bad_frame(p.decode_client, body[:cut])


def test_trailing_bytes_are_bad_frame() -> None:
    assert_bad_frame(p.decode_client, p.encode(p.Leave()) + b"\x00")


@pytest.mark.parametrize(
    "body",
    [
        _pack("nope"),
        _pack("HELLO", 1, "alice", ""),
        _pack("welcome", 1, "a", "public", "tcp://x", "s", 1.0, False),
        _pack("ctl", 1, "who", []),
        _pack(1, 1, "alice"),
    ],
)
def test_unknown_tag_is_bad_frame(body: bytes) -> None:
    assert_bad_frame(p.decode_client, body)


@pytest.mark.parametrize(
    "body",
    [
        _pack("hello", "1", "alice", ""),  # version as text
        _pack("hello", True, "alice", ""),  # bool is not an int
        _pack("hello", 1.0, "alice", ""),
        _pack("hello", 1, 7, ""),
        _pack("hello", 1, b"alice", ""),  # bin is not str
        _pack("hello", 1, None, ""),
        _pack("hello", 1),  # a required field missing
        _pack("join", ["room"], 0),
        _pack("join", "room", "20"),
        _pack("say", 5, 1),
        _pack("say", "hi", 1.5),
        _pack("say", "hi", 1, "extra"),  # unknown trailing field
        _pack("sync"),
        _pack("sync", "1"),
        _pack("fetch", "room", None),
        _pack("leave", 1),
        _pack("quit", None),
        _pack("ping", "room", -1.0),
        _pack("who", 3),
    ],
)
def test_wrong_field_types_are_bad_frame(body: bytes) -> None:
    assert_bad_frame(p.decode_client, body)


@pytest.mark.parametrize("which", ["client", "ctl_request", "ctl_reply"])
def test_empty_array_is_bad_frame(which: str) -> None:
    assert_bad_frame(DECODERS[which], _pack())


@pytest.mark.parametrize("which", ["server", "room"])
def test_empty_batch_is_valid(which: str) -> None:
    assert DECODERS[which](_pack()) == []


SERVER_ONLY = [m for m in SERVER_MSGS if not isinstance(m, p.Ping)]  # Ping travels both ways


@pytest.mark.parametrize("msg", SERVER_ONLY, ids=_ids(SERVER_ONLY))
def test_server_message_fed_to_decode_client_is_bad_frame(msg: Any) -> None:
    assert_bad_frame(p.decode_client, p.encode(msg))


CLIENT_ONLY = [m for m in CLIENT_MSGS if not isinstance(m, p.Ping)]


@pytest.mark.parametrize("msg", CLIENT_ONLY, ids=_ids(CLIENT_ONLY))
def test_client_message_fed_to_decode_server_is_bad_frame(msg: Any) -> None:
    assert_bad_frame(p.decode_server, p.encode([msg]))


def test_ping_is_understood_both_ways() -> None:
    body = p.encode(p.Ping("room-1", 3))
    assert p.decode_client(body) == p.Ping("room-1", 3)
    assert p.decode_server(p.encode([p.Ping("room-1", 3)])) == [p.Ping("room-1", 3)]


@pytest.mark.parametrize(
    "body",
    [
        p.encode(POSTED),  # one event, not a list of them
        p.encode([p.Say("hi")]),
        p.encode([POSTED, p.Ack(1, "r", 1)]),
        p.encode([p.Presence("r", "bob", 3)]),
    ],
)
def test_bad_room_batches_are_bad_frame(body: bytes) -> None:
    assert_bad_frame(p.decode_room, body)


@pytest.mark.parametrize(
    "body",
    [
        p.encode(cp.CtlReply(1, True, "x")),
        p.encode(p.Hello(1, "alice")),
        _pack("ctl", "1", "who", []),
        _pack("ctl", 1, "block", ["alice", 3]),
        _pack("ctl", 1, "block", "alice"),
    ],
)
def test_bad_ctl_requests_are_bad_frame(body: bytes) -> None:
    assert_bad_frame(cp.decode_ctl_request, body)


@pytest.mark.parametrize(
    "body",
    [
        _pack("error", "no_such_code", "x"),
        _pack("refused", 1, "BLOCKED", "x"),
        _pack("bye", "kicked", "x"),
        _pack("joined", "r", 1, [["msg", "r", 1, "when", "a", "b"]], False),
    ],
)
def test_bad_server_fields_are_bad_frame(body: bytes) -> None:
    assert_bad_frame(p.decode_server, b"\x91" + body)  # a one-item batch


@pytest.mark.parametrize(
    ("which", "body"),
    [
        ("client", b"\x91\xa1\xff"),  # the tag itself is invalid UTF-8: three bytes
        ("client", b"\x94\xa5hello\x01\xa2\xff\xfe\xa0"),  # Hello.name
        ("client", b"\x93\xa3say\xa1\xff\x01"),  # Say.text
        ("ctl_request", b"\x94\xa3ctl\x01\xa1\xff\x90"),  # CtlRequest.command
        ("ctl_request", b"\x94\xa3ctl\x01\xa3who\x91\xa1\xff"),  # CtlRequest.args[0]
    ],
)
def test_invalid_utf8_in_a_string_is_bad_frame(which: str, body: bytes) -> None:
    assert_bad_frame(DECODERS[which], body)


# ---- decoding never raises anything but ProtocolError ------------------------------------------

CLIENT_TYPES = tuple(type(m) for m in CLIENT_MSGS)
TAGS = [
    "hello",
    "join",
    "leave",
    "say",
    "sync",
    "fetch",
    "who",
    "rooms",
    "ping",
    "quit",
    "ctl",
    "ctlreply",
    "msg",
    "welcome",
    "bye",
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=16)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
_tagged = st.builds(
    lambda tag, rest: [tag, *rest],
    st.sampled_from(TAGS) | st.text(max_size=8),
    st.lists(_values, max_size=6),
)
structured_bodies = (_tagged | _values).map(msgspec.msgpack.encode)


def _decode_checked(decode: Callable[[bytes], Any], kinds: tuple[type, ...], body: bytes) -> None:
    try:
        msg = decode(body)
    except p.ProtocolError as exc:
        assert exc.code is p.Code.BAD_FRAME
        return
    assert isinstance(msg, kinds)
    assert decode(p.encode(msg)) == msg


@settings(deadline=None)
@given(body=structured_bodies)
def test_decode_of_well_formed_msgpack_raises_only_protocol_error(body: bytes) -> None:
    _decode_checked(p.decode_client, CLIENT_TYPES, body)
    _decode_checked(cp.decode_ctl_request, (cp.CtlRequest,), body)


@settings(deadline=None)
@example(body=b"\x91\xa1\xff")
@given(body=st.binary(max_size=64) | structured_bodies)
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(body: bytes) -> None:
    _decode_checked(p.decode_client, CLIENT_TYPES, body)
    _decode_checked(cp.decode_ctl_request, (cp.CtlRequest,), body)


# ---- topics ------------------------------------------------------------------------------------


def test_topic_of_a_room_is_not_a_prefix_of_a_longer_room() -> None:
    assert not p.topic("public").startswith(p.topic("pub"))
    assert p.topic("pub") != p.topic("public")[: len(p.topic("pub"))]


def test_topic_round_trip() -> None:
    assert p.topic("room-1") == b"room-1\0"
    assert p.room_of_topic(p.topic("room-1")) == "room-1"


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", fullmatch=True)


@given(a=_names, b=_names)
def test_no_topic_is_a_prefix_of_another(a: str, b: str) -> None:
    if a != b:
        assert not p.topic(b).startswith(p.topic(a))
    assert p.room_of_topic(p.topic(a)) == a


# ---- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["a", "Z", "7", "alice", "Bob_2", "x-y_z", "a" * 32, "0" * 32, "room-1", "a_", "a-"],
)
def test_valid_name_accepts(name: str) -> None:
    assert p.valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 33,
        "al ice",
        " alice",
        "alice ",
        "a.b",
        "*",
        "a*",
        ">",
        "a>",
        "a\0",
        "\0",
        "-alice",
        "_alice",
        "a/b",
        "a\tb",
        "\u00e9",  # e acute
        "alic\u00e9",
        "\uff41",  # fullwidth a
        "\u0661",  # Arabic-Indic digit one
        "a\u200b",  # zero-width space
        "\nalice",
        "alice\n",
        "a" * 32 + "\n",
    ],
)
def test_valid_name_rejects(name: str) -> None:
    assert not p.valid_name(name)


_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


@example(name="alice\n")
@given(name=st.text(max_size=40) | _names | _names.map(lambda n: n + "\n"))
def test_valid_name_is_exactly_the_name_rule(name: str) -> None:
    assert p.valid_name(name) == bool(_RULE.fullmatch(name))


# ---- errors ------------------------------------------------------------------------------------


def test_protocol_error_carries_code_and_reason() -> None:
    exc = p.ProtocolError(p.Code.BAD_FRAME, "undecodable")
    assert exc.code is p.Code.BAD_FRAME
    assert exc.reason == str(exc) == "undecodable"


def test_codes_are_plain_strings_on_the_wire() -> None:
    raw = msgspec.msgpack.decode(p.encode(p.Error(p.Code.NAME_TAKEN, "x")))
    assert raw == ["error", "name_taken", "x", ""]  # the request tag, "" when none


# ---- integer ranges ----------------------------------------------------------------------------

OUT_OF_RANGE = [-1, -(2**63), p.MAX_ID + 1, 2**63, 2**64 - 1]
"""Integers MessagePack can carry that no field of the protocol accepts."""


def _with(msg: Any, field: str, value: Any) -> bytes:
    """``msg`` encoded with ``field`` replaced by ``value`` (as a peer could send it)."""
    raw = msgspec.msgpack.decode(p.encode(msg))
    raw[1 + msg.__struct_fields__.index(field)] = value
    return msgspec.msgpack.encode(raw)


ID_FIELDS = [
    (p.Say("hi", 1), "mid"),
    (p.Tell("bob", "hi", 1), "mid"),
    (p.Sync(1), "nonce"),
    (p.Fetch("r", 1, 2, 3), "after"),
    (p.Fetch("r", 1, 2, 3), "upto"),
    (p.Ping("r", 1), "seq"),
]


@pytest.mark.parametrize("value", OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("msg", "field"), ID_FIELDS, ids=[f"{type(m).__name__}.{f}" for m, f in ID_FIELDS]
)
def test_ids_out_of_range_are_bad_frame(msg: Any, field: str, value: int) -> None:
    assert_bad_frame(p.decode_client, _with(msg, field, value))


@pytest.mark.parametrize(
    ("msg", "field"), ID_FIELDS, ids=[f"{type(m).__name__}.{f}" for m, f in ID_FIELDS]
)
def test_ids_at_the_edges_of_their_range_decode(msg: Any, field: str) -> None:
    for value in (0, p.MAX_ID):
        assert getattr(p.decode_client(_with(msg, field, value)), field) == value


@pytest.mark.parametrize(
    ("msg", "field", "bad"),
    [
        (p.Join("r", 5), "history", [-1, p.HISTORY_MAX + 1]),
        (p.Fetch("r", 0, 0, 5), "limit", [0, -1, p.HISTORY_MAX + 1]),
        (p.Hello(p.VERSION, "a"), "version", [-1, 0x10000, 2**63]),
        (p.Hello(p.VERSION, "a"), "session", ["x" * (p.SESSION_MAX + 1)]),
    ],
)
def test_counts_and_versions_out_of_range_are_bad_frame(
    msg: Any, field: str, bad: list[Any]
) -> None:
    for value in bad:
        assert_bad_frame(p.decode_client, _with(msg, field, value))


def test_control_request_id_out_of_range_is_bad_frame() -> None:
    for value in OUT_OF_RANGE:
        assert_bad_frame(cp.decode_ctl_request, _with(cp.CtlRequest(1, "who"), "id", value))


def test_error_names_the_request_it_answers() -> None:
    error = p.Error(p.Code.BAD_ROOM, "no", "join")
    assert p.decode_server(p.encode([error])) == [error]
    assert p.Error(p.Code.BAD_FRAME, "x").request == ""
