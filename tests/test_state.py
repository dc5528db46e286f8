"""The chat rules (broker.chat.chat.Chat), driven message by message with an explicit clock."""

from __future__ import annotations

from typing import Any

import pytest
from chat_helpers import PUB, T0, chat, hello, send

from broker.chat.chat import Chat, Settings, User
from broker.chat.outbox import LogEvent, Outbox
from broker.config import Limits
from broker.store.memory import MemoryStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p


def only_reply(out: Outbox, peer: bytes) -> Any:
    assert [q for q, _ in out.replies] == [peer], out.replies
    return out.replies[0][1]


def error_code(out: Outbox, peer: bytes) -> p.Code:
    msg = only_reply(out, peer)
    assert isinstance(msg, p.Error), msg
    assert msg.reason
    return msg.code


def refused_code(out: Outbox, peer: bytes, mid: int) -> p.Code:
    msg = only_reply(out, peer)
    assert isinstance(msg, p.Refused), msg
    assert msg.mid == mid
    assert msg.reason
    return msg.code


def joined(c: Chat, user: User, room: str, history: int = 0, now: float = T0) -> p.Joined:
    msg = only_reply(send(c, user, p.Join(room, history), now), user.peer)
    assert isinstance(msg, p.Joined), msg
    return msg


def say(c: Chat, user: User, text: str, mid: int = 0, now: float = T0) -> Outbox:
    return send(c, user, p.Say(text, mid), now)


# ---- hello -------------------------------------------------------------------------------------


def test_hello_welcomes_into_public_and_announces() -> None:
    c = chat(heartbeat=2.5)
    out = send(c, b"peer-a", p.Hello(p.VERSION, "alice"))
    welcome = only_reply(out, b"peer-a")
    assert isinstance(welcome, p.Welcome)
    assert (welcome.version, welcome.name, welcome.room) == (p.VERSION, "alice", p.LOBBY)
    assert welcome.pub == PUB
    assert welcome.heartbeat == 2.5
    assert welcome.blocked is False
    assert len(welcome.session) >= 16
    assert out.rooms == {p.LOBBY: [p.Presence(p.LOBBY, "alice", "entered")]}
    assert [(e.kind, e.room, e.user) for e in out.logs] == [("connect", p.LOBBY, "alice")]
    assert c.user_list() == [p.UserInfo("alice", p.LOBBY, False)]
    assert c.members[p.LOBBY] == {"alice"}


def test_every_session_secret_is_different() -> None:
    c = chat()
    secrets = set()
    for i in range(20):
        out = send(c, b"peer-%d" % i, p.Hello(p.VERSION, f"user{i}"))
        secrets.add(only_reply(out, b"peer-%d" % i).session)
    assert len(secrets) == 20


def test_welcome_says_when_the_user_is_blocked() -> None:
    store = MemoryStore()
    store.block("alice")
    c = chat(store)
    welcome = only_reply(send(c, b"a", p.Hello(p.VERSION, "alice")), b"a")
    assert welcome.blocked is True


def test_duplicate_name_is_name_taken() -> None:
    c = chat()
    alice = hello(c, "alice", b"a")
    out = send(c, b"b", p.Hello(p.VERSION, "alice"))
    assert error_code(out, b"b") is p.Code.NAME_TAKEN
    assert out.rooms == {}
    assert c.users["alice"] is alice
    assert alice.peer == b"a"
    assert b"b" not in c.by_peer


@pytest.mark.parametrize("name", ["", "al ice", "-alice", "_x", "a.b", "*", "a" * 33, "\u00e9"])
def test_bad_name_is_bad_name(name: str) -> None:
    c = chat()
    out = send(c, b"a", p.Hello(p.VERSION, name))
    assert error_code(out, b"a") is p.Code.BAD_NAME
    assert c.users == {}
    assert out.rooms == {}


def test_name_with_trailing_newline_is_bad_name() -> None:
    c = chat()
    out = send(c, b"a", p.Hello(p.VERSION, "alice\n"))
    assert error_code(out, b"a") is p.Code.BAD_NAME


@pytest.mark.parametrize("version", [0, p.VERSION + 1, -1])
def test_wrong_version_is_bad_version(version: int) -> None:
    c = chat()
    out = send(c, b"a", p.Hello(version, "alice"))
    assert error_code(out, b"a") is p.Code.BAD_VERSION
    assert c.users == {}


@pytest.mark.parametrize(
    "msg",
    [
        p.Join("x"),
        p.Leave(),
        p.Say("hi", 1),
        p.Sync(1),
        p.Fetch(p.LOBBY, 0),
        p.ListUsers(),
        p.ListRooms(),
    ],
)
def test_command_before_hello_is_hello_first(msg: Any) -> None:
    c = chat()
    out = send(c, b"a", msg)
    assert error_code(out, b"a") is p.Code.HELLO_FIRST
    assert out.rooms == {}
    assert c.store.last_seq(p.LOBBY) == 0


@pytest.mark.parametrize("msg", [p.Ping(), p.Quit()])
def test_ping_or_quit_before_hello_is_ignored(msg: Any) -> None:
    c = chat()
    out = send(c, b"a", msg)
    assert out.replies == [] and out.rooms == {}
    assert c.users == {}


def test_second_hello_is_already() -> None:
    c = chat()
    alice = hello(c, "alice", b"a")
    out = send(c, b"a", p.Hello(p.VERSION, "bob"))
    assert error_code(out, b"a") is p.Code.ALREADY
    assert set(c.users) == {"alice"}
    assert c.by_peer[b"a"] is alice


def test_resume_with_the_secret_moves_the_user_to_the_new_peer() -> None:
    c = chat()
    c.handle(b"old", p.Hello(p.VERSION, "alice"), T0)
    secret = c.out.take().replies[0][1].session
    alice = c.users["alice"]
    joined(c, alice, "x")
    say(c, alice, "before", 1)

    out = send(c, b"new", p.Hello(p.VERSION, "alice", secret), T0 + 1)
    assert out.replies[0] == (b"old", p.Goodbye(p.Bye.REPLACED, "this session resumed elsewhere"))
    peer, welcome = out.replies[1]
    assert len(out.replies) == 2
    assert peer == b"new"
    assert isinstance(welcome, p.Welcome)
    assert (welcome.name, welcome.room, welcome.session) == ("alice", "x", secret)
    assert out.rooms == {}  # the user never left the room
    assert c.users["alice"] is alice
    assert alice.peer == b"new"
    assert c.by_peer == {b"new": alice}

    ack = only_reply(say(c, alice, "after", 2, T0 + 1), b"new")
    assert ack == p.Ack(2, "x", 2)
    assert error_code(send(c, b"old", p.Say("stale", 3)), b"old") is p.Code.HELLO_FIRST


def test_resume_works_at_the_client_limit() -> None:
    c = chat(limits=Limits(max_clients=1))
    c.handle(b"old", p.Hello(p.VERSION, "alice"), T0)
    secret = c.out.take().replies[0][1].session
    out = send(c, b"new", p.Hello(p.VERSION, "alice", secret))
    assert isinstance(out.replies[-1][1], p.Welcome)


@pytest.mark.parametrize("secret", ["", "0" * 32, "wrong"])
def test_resume_with_a_wrong_secret_is_name_taken(secret: str) -> None:
    c = chat()
    alice = hello(c, "alice", b"old")
    out = send(c, b"new", p.Hello(p.VERSION, "alice", secret))
    assert error_code(out, b"new") is p.Code.NAME_TAKEN
    assert alice.peer == b"old"
    assert c.by_peer == {b"old": alice}


def test_resume_with_a_non_ascii_secret_is_name_taken() -> None:
    c = chat()
    hello(c, "alice", b"old")
    out = send(c, b"new", p.Hello(p.VERSION, "alice", "\u00e9"))
    assert error_code(out, b"new") is p.Code.NAME_TAKEN


def test_client_limit_is_full_until_someone_leaves() -> None:
    c = chat(limits=Limits(max_clients=2))
    hello(c, "alice")
    bob = hello(c, "bob")
    out = send(c, b"carol", p.Hello(p.VERSION, "carol"))
    assert error_code(out, b"carol") is p.Code.FULL
    assert "carol" not in c.users
    send(c, bob, p.Quit())
    hello(c, "carol")


# ---- join and leave ----------------------------------------------------------------------------


def test_join_creates_the_room_and_moves_the_user() -> None:
    c = chat()
    alice = hello(c, "alice")
    out = send(c, alice, p.Join("x"))
    assert only_reply(out, alice.peer) == p.Joined("x", 0, [], False)
    assert out.rooms == {
        p.LOBBY: [p.Presence(p.LOBBY, "alice", "left")],
        "x": [p.Presence("x", "alice", "entered")],
    }
    assert [(e.kind, e.room, e.user) for e in out.logs] == [("enter", "x", "alice")]
    assert alice.room == "x"
    assert c.members["x"] == {"alice"}
    assert "alice" not in c.members[p.LOBBY]
    assert "x" in c.store.rooms()
    assert p.RoomInfo("x", 1, 0) in c.room_list()


def test_joined_carries_the_room_seq_and_the_requested_history() -> None:
    c = chat()
    alice, bob = hello(c, "alice"), hello(c, "bob")
    joined(c, alice, "x")
    for i in range(1, 6):
        say(c, alice, f"m{i}", i, T0 + i)
    reply = joined(c, bob, "x", history=3)
    assert reply.room == "x"
    assert reply.seq == 5
    assert [(m.seq, m.sender, m.text) for m in reply.history] == [
        (3, "alice", "m3"),
        (4, "alice", "m4"),
        (5, "alice", "m5"),
    ]
    assert reply.forced is False


@pytest.mark.parametrize(("history", "expected"), [(0, []), (2, [4, 5]), (50, [1, 2, 3, 4, 5])])
def test_join_history_is_at_most_what_was_asked(history: int, expected: list[int]) -> None:
    c = chat()
    alice, bob = hello(c, "alice"), hello(c, "bob")
    joined(c, alice, "x")
    for i in range(5):
        say(c, alice, f"m{i}")
    assert [m.seq for m in joined(c, bob, "x", history).history] == expected


def test_join_of_the_current_room_announces_nothing() -> None:
    c = chat()
    alice = hello(c, "alice")
    joined(c, alice, "x")
    out = send(c, alice, p.Join("x"))
    assert only_reply(out, alice.peer) == p.Joined("x", 0)
    assert out.rooms == {}


def test_leave_returns_to_public() -> None:
    c = chat()
    alice = hello(c, "alice")
    joined(c, alice, "x")
    out = send(c, alice, p.Leave())
    assert only_reply(out, alice.peer) == p.Joined(p.LOBBY, 0)
    assert out.rooms == {
        "x": [p.Presence("x", "alice", "left")],
        p.LOBBY: [p.Presence(p.LOBBY, "alice", "entered")],
    }
    assert alice.room == p.LOBBY
    assert "x" not in c.members  # empty, and nothing was said in it: gone
    assert "alice" in c.members[p.LOBBY]


def test_leave_in_public_stays_quietly() -> None:
    c = chat()
    alice = hello(c, "alice")
    out = send(c, alice, p.Leave())
    assert only_reply(out, alice.peer) == p.Joined(p.LOBBY, 0)
    assert out.rooms == {}


INVALID_ROOMS = ["", "a b", "a.b", "*", ">", "x>", "x\0", "-x", "_x", "a" * 33, "r\u00e9"]


@pytest.mark.parametrize("room", INVALID_ROOMS)
def test_invalid_room_is_bad_room(room: str) -> None:
    c = chat()
    alice = hello(c, "alice")
    out = send(c, alice, p.Join(room))
    assert error_code(out, alice.peer) is p.Code.BAD_ROOM
    assert out.rooms == {}
    assert alice.room == p.LOBBY
    assert room not in c.members
    assert c.store.rooms() == [p.LOBBY]


@pytest.mark.parametrize("room", INVALID_ROOMS)
def test_fetch_of_an_invalid_room_is_bad_room(room: str) -> None:
    c = chat()
    alice = hello(c, "alice")
    assert error_code(send(c, alice, p.Fetch(room, 0)), alice.peer) is p.Code.BAD_ROOM


def test_room_limit_is_full_for_new_rooms_only() -> None:
    c = chat(limits=Limits(max_rooms=2))  # the lobby counts
    alice, bob = hello(c, "alice"), hello(c, "bob")
    joined(c, alice, "a")
    out = send(c, bob, p.Join("b"))
    assert error_code(out, bob.peer) is p.Code.FULL
    assert out.rooms == {}
    assert bob.room == p.LOBBY
    assert "b" not in c.members
    assert joined(c, bob, "a").room == "a"


# ---- say ---------------------------------------------------------------------------------------


def test_say_stores_publishes_and_acks() -> None:
    c = chat()
    alice = hello(c, "alice")
    joined(c, alice, "x")
    out = say(c, alice, "hello world", 7, T0 + 1)
    assert out.rooms == {"x": [p.Posted("x", 1, T0 + 1, "alice", "hello world")]}
    assert only_reply(out, alice.peer) == p.Ack(7, "x", 1)
    assert out.logs == [LogEvent(T0 + 1, "msg", "x", "alice", "hello world")]
    assert c.store.recent("x", 10) == [p.Posted("x", 1, T0 + 1, "alice", "hello world")]


def test_seq_increases_per_room_independently() -> None:
    c = chat(rate=0)
    alice, bob, carol = hello(c, "alice"), hello(c, "bob"), hello(c, "carol")
    joined(c, alice, "x")
    joined(c, bob, "y")
    acks = []
    for user in (alice, bob, alice, carol, alice, bob):
        acks.append(only_reply(say(c, user, "hi"), user.peer))
    assert [(a.room, a.seq) for a in acks] == [
        ("x", 1),
        ("y", 1),
        ("x", 2),
        (p.LOBBY, 1),
        ("x", 3),
        ("y", 2),
    ]
    assert (c.store.last_seq("x"), c.store.last_seq("y"), c.store.last_seq(p.LOBBY)) == (3, 2, 1)


def test_a_retried_mid_is_acked_again_and_not_stored() -> None:
    c = chat()
    alice = hello(c, "alice")
    first = only_reply(say(c, alice, "once", 5), alice.peer)
    say(c, alice, "other", 6)
    out = say(c, alice, "once", 5)
    assert only_reply(out, alice.peer) == first == p.Ack(5, p.LOBBY, 1)
    assert out.rooms == {}
    assert out.logs == []
    assert c.store.last_seq(p.LOBBY) == 2


def test_a_retry_after_reconnecting_is_acked_again_and_not_stored() -> None:
    c = chat(heartbeat=1.0, liveness=3)
    alice = hello(c, "alice", b"old")
    first = only_reply(say(c, alice, "once", 5), b"old")
    c.tick(T0 + 10)  # the connection died: the session is dropped
    c.out.take()
    alice = hello(c, "alice", b"new", now=T0 + 11)
    out = say(c, alice, "once", 5, T0 + 11)
    assert only_reply(out, b"new") == first
    assert out.rooms == {}
    assert c.store.last_seq(p.LOBBY) == 1


def test_mid_zero_means_no_id_and_is_never_deduplicated() -> None:
    c = chat()
    alice = hello(c, "alice")
    say(c, alice, "same")
    out = say(c, alice, "same")
    assert only_reply(out, alice.peer) == p.Ack(0, p.LOBBY, 2)


def test_a_blocked_user_is_refused_and_logged_but_not_published() -> None:
    c = chat()
    alice = hello(c, "alice")
    c.store.block("alice")
    out = say(c, alice, "let me out", 3, T0 + 2)
    assert refused_code(out, alice.peer, 3) is p.Code.BLOCKED
    assert out.rooms == {}
    assert out.logs == [LogEvent(T0 + 2, "blocked", p.LOBBY, "alice", "let me out")]
    assert c.store.last_seq(p.LOBBY) == 0


def test_a_refused_mid_is_not_remembered() -> None:
    c = chat()
    alice = hello(c, "alice")
    c.store.block("alice")
    say(c, alice, "hi", 3)
    c.store.unblock("alice")
    assert only_reply(say(c, alice, "hi", 3), alice.peer) == p.Ack(3, p.LOBBY, 1)


def test_text_over_the_byte_limit_is_too_long() -> None:
    c = chat(limits=Limits(max_message=10))
    alice = hello(c, "alice")
    assert only_reply(say(c, alice, "a" * 10, 1), alice.peer) == p.Ack(1, p.LOBBY, 1)
    out = say(c, alice, "a" * 11, 2)
    assert refused_code(out, alice.peer, 2) is p.Code.TOO_LONG
    assert out.rooms == {}
    # The limit is in UTF-8 bytes: six two-byte characters are twelve bytes.
    assert refused_code(say(c, alice, "\u00e9" * 6, 3), alice.peer, 3) is p.Code.TOO_LONG
    assert c.store.last_seq(p.LOBBY) == 1


@pytest.mark.parametrize(
    "text",
    [
        "",
        "two\nlines",
        "a\rb",
        "tab\there",
        "\0",
        "bell\x07",
        "\x1b[31mred",
        "del\x7f",
        "\x85",
        "line\u2028sep",
        "para\u2029sep",
    ],
)
def test_empty_or_control_text_is_refused(text: str) -> None:
    c = chat()
    alice = hello(c, "alice")
    out = say(c, alice, text, 9)
    assert refused_code(out, alice.peer, 9) is p.Code.BAD_TEXT
    assert out.rooms == {}
    assert c.store.last_seq(p.LOBBY) == 0


def test_printable_unicode_is_accepted() -> None:
    c = chat()
    alice = hello(c, "alice")
    text = "h\u00e9llo \u4e16\u754c \U0001f44b"
    out = say(c, alice, text, 1)
    assert out.rooms[p.LOBBY][0].text == text


def test_rate_limit_allows_a_burst_then_one_per_interval() -> None:
    c = chat(rate=10, burst=3)
    alice = hello(c, "alice", now=T0)
    now = T0 + 1
    for mid in (1, 2, 3):
        assert isinstance(only_reply(say(c, alice, "hi", mid, now), alice.peer), p.Ack)
    out = say(c, alice, "hi", 4, now)
    assert refused_code(out, alice.peer, 4) is p.Code.RATE_LIMITED
    assert out.rooms == {}
    assert only_reply(say(c, alice, "hi", 4, now + 0.1), alice.peer) == p.Ack(4, p.LOBBY, 4)
    assert refused_code(say(c, alice, "hi", 5, now + 0.1), alice.peer, 5) is p.Code.RATE_LIMITED


def test_rate_limit_refuses_before_the_interval_is_over() -> None:
    c = chat(rate=10, burst=1)
    alice = hello(c, "alice", now=T0)
    assert isinstance(only_reply(say(c, alice, "hi", 1, T0), alice.peer), p.Ack)
    out = say(c, alice, "hi", 2, T0 + 0.09)
    assert refused_code(out, alice.peer, 2) is p.Code.RATE_LIMITED


def test_rate_limit_burst_is_a_cap_however_long_the_silence() -> None:
    c = chat(rate=10, burst=3)
    alice = hello(c, "alice", now=T0)
    now = T0 + 3600
    for mid in (1, 2, 3):
        assert isinstance(only_reply(say(c, alice, "hi", mid, now), alice.peer), p.Ack)
    assert refused_code(say(c, alice, "hi", 4, now), alice.peer, 4) is p.Code.RATE_LIMITED


def test_refused_messages_cost_no_tokens() -> None:
    c = chat(rate=10, burst=1, limits=Limits(max_message=5))
    alice = hello(c, "alice")
    say(c, alice, "", 1)
    say(c, alice, "too long", 2)
    assert isinstance(only_reply(say(c, alice, "ok", 3), alice.peer), p.Ack)


def test_rate_zero_is_unlimited() -> None:
    c = chat(rate=0, burst=1)
    alice = hello(c, "alice")
    for mid in range(1, 201):
        assert only_reply(say(c, alice, "hi", mid), alice.peer) == p.Ack(mid, p.LOBBY, mid)


# ---- fetch, sync, lists ------------------------------------------------------------------------


def _room_with(c: Chat, user: User, room: str, count: int) -> None:
    joined(c, user, room)
    for i in range(1, count + 1):
        say(c, user, f"m{i}", i)


def fetch(c: Chat, user: User, msg: p.Fetch) -> p.Messages:
    reply = only_reply(send(c, user, msg), user.peer)
    assert isinstance(reply, p.Messages)
    assert reply.room == msg.room
    return reply


@pytest.mark.parametrize(
    ("msg", "seqs"),
    [
        (p.Fetch("x", 3, 6), [4, 5, 6]),
        (p.Fetch("x", 8), [9, 10]),
        (p.Fetch("x", 0), list(range(1, 11))),
        (p.Fetch("x", 3, 0, 2), [4, 5]),
        (p.Fetch("x", 10), []),
        (p.Fetch("x", 50), []),
        (p.Fetch("x", 6, 3), []),
        (p.Fetch("x", 8, 99), [9, 10]),
        (p.Fetch("x", 0, 0, 1), [1]),
    ],
)
def test_fetch_returns_the_requested_range(msg: p.Fetch, seqs: list[int]) -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    _room_with(c, alice, "x", 10)
    joined(c, bob, "x")
    reply = fetch(c, bob, msg)
    assert [m.seq for m in reply.messages] == seqs
    assert all(m.room == "x" and m.sender == "alice" for m in reply.messages)
    assert [m.text for m in reply.messages] == [f"m{s}" for s in seqs]
    assert reply.first == 1


def test_fetch_reports_the_oldest_kept_as_first() -> None:
    c = chat(MemoryStore(keep=5), rate=0)
    alice = hello(c, "alice")
    _room_with(c, alice, "x", 10)
    reply = fetch(c, alice, p.Fetch("x", 2))
    assert reply.first == 6
    assert [m.seq for m in reply.messages] == [6, 7, 8, 9, 10]


def test_fetch_returns_at_most_its_limit_of_a_thousand() -> None:
    c = chat(rate=0)
    alice = hello(c, "alice")
    _room_with(c, alice, "x", 1005)
    reply = fetch(c, alice, p.Fetch("x", 0, 0, p.HISTORY_MAX))
    assert len(reply.messages) == 1000
    assert reply.messages[-1].seq == 1000


@pytest.mark.parametrize("room", ["x", "nowhere"])
def test_fetch_of_a_room_the_user_is_not_in_is_refused_and_creates_nothing(room: str) -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    _room_with(c, alice, "x", 3)
    out = send(c, bob, p.Fetch(room, 0))
    error = only_reply(out, bob.peer)
    assert error == p.Error(
        p.Code.NOT_MEMBER, f"you are not in {room}: join it to read its history", "fetch"
    )
    assert "nowhere" not in c.members
    assert "nowhere" not in c.store.rooms()


def test_sync_publishes_synced_with_the_room_seq_on_the_room_topic() -> None:
    c = chat()
    alice = hello(c, "alice")
    _room_with(c, alice, "x", 2)
    out = send(c, alice, p.Sync(42))
    assert out.rooms == {"x": [p.Synced("x", 42, 2)]}
    assert out.replies == []


def test_list_users_and_rooms() -> None:
    c = chat()
    alice, bob = hello(c, "alice"), hello(c, "bob")
    hello(c, "carol")
    c.store.block("carol")
    _room_with(c, alice, "x", 3)
    users = only_reply(send(c, bob, p.ListUsers()), bob.peer)
    assert users == p.Users(
        [
            p.UserInfo("alice", "x", False),
            p.UserInfo("bob", p.LOBBY, False),
            p.UserInfo("carol", p.LOBBY, True),
        ]
    )
    in_x = only_reply(send(c, bob, p.ListUsers("x")), bob.peer)
    assert in_x == p.Users([p.UserInfo("alice", "x", False)])
    rooms = only_reply(send(c, bob, p.ListRooms()), bob.peer)
    assert rooms == p.Rooms([p.RoomInfo(p.LOBBY, 2, 0), p.RoomInfo("x", 1, 3)])


# ---- heartbeats, quit --------------------------------------------------------------------------


def test_tick_drops_silent_users_and_pings_the_others() -> None:
    c = chat(heartbeat=1.0, liveness=3)
    alice, bob = hello(c, "alice", now=T0), hello(c, "bob", now=T0)
    _room_with(c, bob, "x", 2)
    send(c, alice, p.Join("y"), T0)
    send(c, bob, p.Ping(), T0 + 2.5)

    c.tick(T0 + 3.5)
    out = c.out.take()
    assert (alice.peer, p.Goodbye(p.Bye.TIMEOUT, "no heartbeat from you")) in out.replies
    assert (bob.peer, p.Ping("x", 2)) in out.replies
    assert len(out.replies) == 2
    assert out.rooms == {"y": [p.Presence("y", "alice", "left")]}
    assert [(e.kind, e.user) for e in out.logs] == [("disconnect", "alice")]
    assert set(c.users) == {"bob"}
    assert alice.peer not in c.by_peer
    assert "alice" not in c.members.get("y", set())
    hello(c, "alice", b"again", now=T0 + 4)  # the name is free again


def test_tick_keeps_a_user_silent_for_exactly_the_limit() -> None:
    c = chat(heartbeat=1.0, liveness=3)
    alice = hello(c, "alice", now=T0)
    c.tick(T0 + 3.0)
    assert only_reply(c.out.take(), alice.peer) == p.Ping(p.LOBBY, 0)
    assert "alice" in c.users


def test_any_message_counts_as_a_heartbeat() -> None:
    c = chat(heartbeat=1.0, liveness=3)
    alice = hello(c, "alice", now=T0)
    send(c, alice, p.ListRooms(), T0 + 2)
    c.tick(T0 + 4)
    assert "alice" in c.users


def test_quit_frees_the_name() -> None:
    c = chat()
    alice = hello(c, "alice", b"a")
    joined(c, alice, "x")
    out = send(c, alice, p.Quit(), T0 + 1)
    assert out.replies == []
    assert out.rooms == {"x": [p.Presence("x", "alice", "left")]}
    assert [(e.kind, e.room, e.user) for e in out.logs] == [("disconnect", "x", "alice")]
    assert c.users == {} and c.by_peer == {}
    assert "x" not in c.members
    assert error_code(send(c, b"a", p.Join("x")), b"a") is p.Code.HELLO_FIRST
    hello(c, "alice", b"b")


# ---- outbox ------------------------------------------------------------------------------------


def test_outbox_groups_events_per_room_in_order_and_take_empties_it() -> None:
    box = Outbox()
    first, second = p.Presence("x", "a", "entered"), p.Presence("x", "b", "entered")
    box.publish("x", first)
    box.publish("y", p.Presence("y", "a", "left"))
    box.publish("x", second)
    box.reply(b"a", p.Notice("hi"))
    box.log(T0, "admin", text="who")
    taken = box.take()
    assert taken.rooms == {"x": [first, second], "y": [p.Presence("y", "a", "left")]}
    assert taken.replies == [(b"a", p.Notice("hi"))]
    assert taken.logs == [LogEvent(T0, "admin", "", "", "who")]
    assert (box.replies, box.rooms, box.logs) == ([], {}, [])


# ---- direct messages ----------------------------------------------------------------------------


def test_tell_reaches_the_target_and_echoes_to_the_sender() -> None:
    c = chat()
    alice, bob = hello(c, "alice"), hello(c, "bob")
    hello(c, "carol")
    out = send(c, alice, p.Tell("bob", "psst", 5))
    told = p.Told("alice", "bob", "psst", T0)
    assert (bob.peer, told) in out.replies
    assert (alice.peer, told) in out.replies
    assert (alice.peer, p.Ack(5, "", 0)) in out.replies
    assert {peer for peer, _ in out.replies} == {alice.peer, bob.peer}
    assert out.rooms == {}
    assert c.store.last_seq(p.LOBBY) == 0


def test_tell_follows_the_block_and_rate_rules() -> None:
    c = chat(rate=10, burst=1)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    send(c, alice, p.Tell("bob", "one", 1))
    assert refused_code(send(c, alice, p.Tell("bob", "two", 2)), alice.peer, 2) == (
        p.Code.RATE_LIMITED
    )
    c.store.block("bob")
    out = send(c, bob, p.Tell("alice", "hi", 3), now=T0 + 5)
    assert refused_code(out, bob.peer, 3) == p.Code.BLOCKED
    assert [e.kind for e in out.logs] == ["blocked"]


def test_tell_to_someone_not_connected_is_refused() -> None:
    c = chat()
    alice = hello(c, "alice")
    assert refused_code(send(c, alice, p.Tell("ghost", "hi", 4)), alice.peer, 4) == (
        p.Code.NOT_CONNECTED
    )


# ---- sessions ----------------------------------------------------------------------------------


def test_every_error_names_the_request_it_answers() -> None:
    c = chat()
    alice = hello(c, "alice")
    error = only_reply(send(c, alice, p.Join("bad room")), alice.peer)
    assert (error.code, error.request) == (p.Code.BAD_ROOM, "join")
    error = only_reply(send(c, b"stranger", p.Join("x")), b"stranger")
    assert (error.code, error.request) == (p.Code.HELLO_FIRST, "join")


def test_a_session_outlives_its_connection_until_it_ends() -> None:
    c = chat(heartbeat=1.0, liveness=2)
    send(c, b"p1", p.Hello(p.VERSION, "alice"))
    secret = c.users["alice"].session
    c.tick(T0 + 10)  # silent too long: dropped, the name is free, the session is kept
    c.out.take()
    assert "alice" not in c.users
    welcome = only_reply(send(c, b"p2", p.Hello(p.VERSION, "alice", secret)), b"p2")
    assert isinstance(welcome, p.Welcome) and welcome.session == secret
    send(c, b"p2", p.Quit())  # /exit ends it
    error = only_reply(send(c, b"p3", p.Hello(p.VERSION, "alice", secret)), b"p3")
    assert (error.code, error.request) == (p.Code.BAD_SESSION, "hello")
    assert "alice" not in c.users


def test_a_wrong_session_secret_is_refused_not_replaced() -> None:
    c = chat()
    error = only_reply(send(c, b"p1", p.Hello(p.VERSION, "alice", "f" * 32)), b"p1")
    assert error.code is p.Code.BAD_SESSION
    assert "alice" not in c.users
    welcome = only_reply(send(c, b"p1", p.Hello(p.VERSION, "alice")), b"p1")
    assert isinstance(welcome, p.Welcome)  # a new session is one Hello away


def test_a_new_session_for_a_free_name_ends_the_old_one() -> None:
    c = chat()
    send(c, b"p1", p.Hello(p.VERSION, "alice"))
    old = c.users["alice"].session
    c.remove(c.users["alice"], T0, "timed out")
    send(c, b"p2", p.Hello(p.VERSION, "alice"))  # someone else takes the free name
    send(c, b"p2", p.Quit())
    error = only_reply(send(c, b"p3", p.Hello(p.VERSION, "alice", old)), b"p3")
    assert error.code is p.Code.BAD_SESSION


def test_fire_and_reset_end_the_session() -> None:
    from broker.admin.commands import dispatch

    for command in ("fire", "reset"):
        c = chat()
        send(c, b"p1", p.Hello(p.VERSION, "alice"))
        secret = c.users["alice"].session
        args = ["alice"] if command == "fire" else []
        assert dispatch(c, cp.CtlRequest(1, command, args), T0).ok
        c.out.take()
        error = only_reply(send(c, b"p2", p.Hello(p.VERSION, "alice", secret)), b"p2")
        assert error.code is p.Code.BAD_SESSION, command


# ---- bounded answers ---------------------------------------------------------------------------


def test_one_batch_answers_a_client_at_most_about_answer_bytes_of_history() -> None:
    from broker.config import ANSWER_BYTES

    c = chat(rate=0, limits=Limits(max_message=4096))
    alice = hello(c, "alice")
    _room_with(c, alice, "x", 0)
    for i in range(200):
        say(c, alice, f"{i:04d}" + "y" * 4000, i + 1)
    c.handle(alice.peer, p.Fetch("x", 0), T0)  # 200 x 4 KB asked: about 64 fit
    c.handle(alice.peer, p.Fetch("x", 100), T0)  # the same batch: nothing is left for it
    out = c.out.take()
    first, second = (msg for _, msg in out.replies)
    assert isinstance(first, p.Messages)
    assert 0 < len(first.messages) < 200
    assert [m.seq for m in first.messages] == list(range(1, len(first.messages) + 1))
    assert sum(len(m.text) for m in first.messages) <= ANSWER_BYTES
    assert second == p.Error(p.Code.BUSY, second.reason, "fetch")
    again = fetch(c, alice, p.Fetch("x", len(first.messages)))  # the next batch: the rest
    assert again.messages[0].seq == len(first.messages) + 1


def test_history_costs_from_the_rate_budget_and_a_stalled_peer_gets_none() -> None:
    c = chat(rate=10, burst=30)
    alice = hello(c, "alice")
    _room_with(c, alice, "x", 0)
    c.settings = Settings(PUB, rate=0)
    for i in range(200):
        say(c, alice, "z" * 4000, i + 1)
    c.settings = Settings(PUB, rate=10, burst=30)
    alice.tokens = 30.0
    codes = [
        type(only_reply(send(c, alice, p.Fetch("x", 0)), alice.peer)).__name__ for _ in range(12)
    ]
    assert codes[0] == "Messages" and codes[-1] == "Error"  # 256 KiB costs 4 tokens: 30 go fast
    c.stalled.add(alice.peer)
    alice.tokens = 30.0
    assert error_code(send(c, alice, p.Fetch("x", 0)), alice.peer) is p.Code.BUSY
    c.stalled.discard(alice.peer)
    assert isinstance(only_reply(send(c, alice, p.Fetch("x", 0)), alice.peer), p.Messages)


def test_join_history_keeps_the_newest_that_fit() -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    _room_with(c, alice, "x", 0)
    for i in range(300):
        say(c, alice, "w" * 4000, i + 1)
    got = joined(c, bob, "x", history=1000)
    assert 0 < len(got.history) < 300
    assert got.history[-1].seq == 300
    assert [m.seq for m in got.history] == list(range(301 - len(got.history), 301))


# ---- rooms come and go -------------------------------------------------------------------------


def test_a_room_goes_when_its_last_member_leaves_unless_something_was_said_in_it() -> None:
    c = chat(rate=0)
    alice = hello(c, "alice")
    joined(c, alice, "quiet")
    joined(c, alice, "spoken")
    assert "quiet" not in c.members and "quiet" not in c.store.rooms()
    say(c, alice, "hello", 1)
    send(c, alice, p.Leave())
    assert "spoken" in c.members and "spoken" in c.store.rooms()


def test_the_room_cap_counts_rooms_someone_is_in() -> None:
    c = chat(rate=0, limits=Limits(max_rooms=3, new_rooms=5000))
    alice, bob, _carol = hello(c, "alice"), hello(c, "bob"), hello(c, "carol")
    for i in range(1000):  # a flood of new names: each goes when alice moves on
        joined(c, alice, f"r{i}")
    joined(c, bob, "mine")  # public (carol), r999 (alice) and mine (bob) are in use
    assert error_code(send(c, alice, p.Join("more")), alice.peer) is p.Code.FULL
    joined(c, bob, "r999")  # mine goes; a room is free again
    joined(c, alice, "more")


def test_creating_rooms_is_rate_limited_per_user() -> None:
    c = chat(rate=0, limits=Limits(new_rooms=3))
    alice, bob = hello(c, "alice"), hello(c, "bob")
    for i in range(3):
        joined(c, alice, f"r{i}")
    assert error_code(send(c, alice, p.Join("r3")), alice.peer) is p.Code.RATE_LIMITED
    joined(c, bob, "r3")  # another user still may
    joined(c, alice, "r3")  # and joining a room that is costs nothing
    joined(c, alice, "r4", now=T0 + 20)  # a minute refills new_rooms: 20 s one


def test_remove_moves_the_members_out_and_deletes_the_history() -> None:
    from broker.admin.commands import dispatch

    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    _room_with(c, alice, "x", 3)
    joined(c, bob, "x")
    reply = dispatch(c, cp.CtlRequest(1, "remove", ["x"]), T0)
    assert reply.ok, reply
    out = c.out.take()
    assert (alice.peer, p.Joined(p.LOBBY, 0, [], True)) in out.replies
    assert alice.room == bob.room == p.LOBBY
    assert "x" not in c.members and "x" not in c.store.rooms() and c.store.last_seq("x") == 0
    assert not dispatch(c, cp.CtlRequest(2, "remove", [p.LOBBY]), T0).ok
    assert not dispatch(c, cp.CtlRequest(3, "remove", ["nowhere"]), T0).ok


def test_retention_prunes_past_the_newest_kept_and_first_stays_truthful(tmp_path) -> None:
    from broker.store.sqlstore import SQLiteStore

    store = SQLiteStore(tmp_path / "room.db")
    c = Chat(store, Settings(PUB, limits=Limits(keep_messages=5, keep_days=1), rate=0))
    alice = hello(c, "alice")
    _room_with(c, alice, "x", 12)
    store.commit()
    c.prune(3, T0)  # at most 3 a call: bounded work
    c.prune(1000, T0)
    store.commit()
    reply = fetch(c, alice, p.Fetch("x", 0))
    assert [m.seq for m in reply.messages] == [8, 9, 10, 11, 12] and reply.first == 8
    c.prune(1000, T0 + 86_400 + 1)  # a day later every message is too old
    store.commit()
    reply = fetch(c, alice, p.Fetch("x", 0))
    assert reply.messages == [] and reply.first == 13
    store.close()
