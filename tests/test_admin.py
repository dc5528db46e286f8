"""Admin commands (broker.admin.commands): every verb of VERBS through dispatch, and refusals."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from chat_helpers import T0, chat, hello, send

from broker.admin.commands import dispatch
from broker.admin.verbs import VERBS
from broker.chat.chat import Chat, User
from broker.store.base import AuditEntry
from broker.store.memory import MemoryStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

OPEN = {"private": False, "allowed": []}
"""What ``rooms`` says of an open room."""


def in_room(c: Chat, user: User, room: str, messages: int = 0) -> None:
    send(c, user, p.Join(room))
    for i in range(messages):
        send(c, user, p.Say(f"m{i}"))


def ctl(c: Chat, command: str, *args: str, rid: int = 7) -> cp.CtlReply:
    """The reply to one request, its ``data`` as ``room-ctl --json`` shows it (``cp.plain``:
    maps and lists); the typed listings themselves are checked in test_ctl.py."""
    reply = dispatch(c, cp.CtlRequest(rid, command, list(args)), T0 + 1)
    assert reply.id == rid
    # Every reply, data included, must survive the wire.
    assert cp.decode_ctl_reply(p.encode(reply)) == reply
    return msgspec.structs.replace(reply, data=cp.plain(reply.data))


def ok(reply: cp.CtlReply) -> str:
    assert reply.ok, reply
    assert reply.code == ""
    assert reply.message
    return reply.message


def refused(reply: cp.CtlReply) -> str:
    assert not reply.ok, reply
    assert reply.message
    return reply.code


def test_the_table_holds_exactly_the_tested_verbs() -> None:
    verbs = {"block", "unblock", "fire", "out", "remove", "reset", "close", "who", "rooms"}
    verbs |= {"private", "open", "allow", "deny", "requests"}
    verbs |= {"audit", "stats"}
    verbs |= {"invite", "accounts", "ban", "unban", "register", "passwd"}  # test_accounts
    assert set(VERBS) == verbs
    for name, command in VERBS.items():
        assert command.help, name
        assert all(arg.isupper() for arg in command.args), name
        assert all(o.isupper() or (o.isalpha() and o.islower()) for o in command.options), name


# ---- block / unblock ---------------------------------------------------------------------------


def test_block_a_connected_user() -> None:
    c = chat()
    alice = hello(c, "alice")
    in_room(c, alice, "x")
    message = ok(ctl(c, "block", "alice"))
    assert "alice" in message
    assert "not connected" not in message
    assert "alice" in c.store.blocked()
    out = c.out.take()
    assert out.rooms == {"x": [p.Presence("x", "alice", "blocked")]}
    said = send(c, alice, p.Say("hi", 1))
    assert said.replies[0][1].code is p.Code.BLOCKED
    assert said.rooms == {}
    assert ctl(c, "who").data["users"] == [
        {"name": "alice", "room": "x", "blocked": True, "account": False}
    ]


def test_block_a_user_who_is_not_connected_holds_when_they_connect() -> None:
    c = chat()
    message = ok(ctl(c, "block", "bob"))
    assert "not connected" in message
    assert c.out.take().rooms == {}
    c.handle(b"b", p.Hello(p.VERSION, "bob"), T0)
    assert c.out.take().replies[0][1].blocked is True
    refusal = send(c, b"b", p.Say("hi", 1)).replies[0][1]
    assert refusal.code is p.Code.BLOCKED


def test_block_twice_says_already_blocked() -> None:
    c = chat()
    hello(c, "alice")
    ctl(c, "block", "alice")
    c.out.take()
    assert "already" in ok(ctl(c, "block", "alice"))
    assert c.out.take().rooms == {}
    assert c.store.blocked() == {"alice"}


def test_unblock_a_connected_user() -> None:
    c = chat()
    alice = hello(c, "alice")
    ctl(c, "block", "alice")
    c.out.take()
    assert "unblocked alice" in ok(ctl(c, "unblock", "alice"))
    out = c.out.take()
    assert out.rooms == {p.LOBBY: [p.Presence(p.LOBBY, "alice", "unblocked")]}
    assert len(out.replies) == 1
    peer, notice = out.replies[0]
    assert peer == alice.peer
    assert isinstance(notice, p.Notice)
    assert "unblocked" in notice.text
    assert c.store.blocked() == set()
    assert send(c, alice, p.Say("free", 2)).replies == [(alice.peer, p.Ack(2, p.LOBBY, 1))]


def test_unblock_someone_not_blocked_changes_nothing() -> None:
    c = chat()
    hello(c, "alice")
    assert "not blocked" in ok(ctl(c, "unblock", "alice"))
    out = c.out.take()
    assert out.rooms == {} and out.replies == []


def test_unblock_a_user_who_is_not_connected() -> None:
    c = chat()
    ctl(c, "block", "bob")
    ok(ctl(c, "unblock", "bob"))
    assert c.store.blocked() == set()
    out = c.out.take()
    assert out.rooms == {} and out.replies == []


# ---- fire --------------------------------------------------------------------------------------


def test_fire_says_goodbye_and_removes_the_user() -> None:
    c = chat()
    alice = hello(c, "alice", b"a")
    hello(c, "bob")
    in_room(c, alice, "x")
    assert "alice" in ok(ctl(c, "fire", "alice"))
    out = c.out.take()
    assert out.replies == [(b"a", p.Goodbye(p.Bye.FIRED, "the admin disconnected you"))]
    assert out.rooms == {"x": [p.Presence("x", "alice", "fired")]}
    assert set(c.users) == {"bob"}
    assert b"a" not in c.by_peer
    assert "x" not in c.members  # empty, and nothing was said in it
    assert send(c, b"a", p.Say("hi")).replies[0][1].code is p.Code.HELLO_FIRST
    hello(c, "alice", b"a2")  # the name is free


def test_fire_of_an_unknown_user_is_no_such_user() -> None:
    c = chat()
    hello(c, "alice")
    assert refused(ctl(c, "fire", "bob")) == p.Code.NO_SUCH_USER
    assert set(c.users) == {"alice"}
    out = c.out.take()
    assert out.replies == [] and out.rooms == {}


# ---- out ---------------------------------------------------------------------------------------


def test_out_moves_the_user_back_to_public() -> None:
    c = chat()
    alice = hello(c, "alice")
    in_room(c, alice, "x", messages=2)
    assert "alice" in ok(ctl(c, "out", "alice"))
    out = c.out.take()
    assert out.replies == [(alice.peer, p.Joined(p.LOBBY, 0, [], forced=True))]
    assert out.rooms == {
        "x": [p.Presence("x", "alice", "out"), p.Presence("x", "alice", "left")],
        p.LOBBY: [p.Presence(p.LOBBY, "alice", "entered")],
    }
    assert alice.room == p.LOBBY
    assert c.members["x"] == set()
    assert "alice" in c.members[p.LOBBY]


def test_out_of_a_user_already_in_public_does_nothing() -> None:
    c = chat()
    alice = hello(c, "alice")
    assert "already in public" in ok(ctl(c, "out", "alice"))
    out = c.out.take()
    assert out.replies == [] and out.rooms == {}
    assert alice.room == p.LOBBY


def test_out_of_an_unknown_user_is_no_such_user() -> None:
    c = chat()
    assert refused(ctl(c, "out", "ghost")) == p.Code.NO_SUCH_USER


# ---- reset / close -----------------------------------------------------------------------------


def test_reset_ends_every_session_and_removes_every_room_but_public() -> None:
    c = chat(rate=0)
    alice, bob, carol = hello(c, "alice"), hello(c, "bob"), hello(c, "carol")
    in_room(c, alice, "x", messages=3)
    in_room(c, bob, "y", messages=1)
    send(c, carol, p.Say("in the lobby"))
    ctl(c, "block", "dave")
    c.out.take()

    message = ok(ctl(c, "reset"))
    assert "3" in message
    out = c.out.take()
    byes = {peer: msg for peer, msg in out.replies}
    assert set(byes) == {alice.peer, bob.peer, carol.peer}
    assert len(out.replies) == 3
    assert all(msg.reason is p.Bye.RESET for msg in byes.values())
    assert c.users == {} and c.by_peer == {}
    assert set(c.members) == {p.LOBBY}
    assert c.members[p.LOBBY] == set()
    assert c.store.rooms() == [p.LOBBY]
    assert c.store.last_seq("x") == 0
    assert c.store.last_seq(p.LOBBY) == 0
    assert c.store.blocked() == {"dave"}
    assert ctl(c, "rooms").data == {"rooms": [{"name": p.LOBBY, "members": 0, "seq": 0, **OPEN}]}

    # Life goes on: a room made again starts from seq 1.
    alice = hello(c, "alice")
    in_room(c, alice, "x")
    assert send(c, alice, p.Say("again", 1)).replies == [(alice.peer, p.Ack(1, "x", 1))]


def test_close_sets_closing() -> None:
    c = chat()
    hello(c, "alice")
    assert c.closing is False
    ok(ctl(c, "close"))
    assert c.closing is True


# ---- who / rooms -------------------------------------------------------------------------------


def test_who_lists_users_and_the_blocklist() -> None:
    c = chat()
    alice = hello(c, "alice")
    hello(c, "bob")
    in_room(c, alice, "x")
    ctl(c, "block", "zed")
    ctl(c, "block", "bob")
    reply = ctl(c, "who")
    assert "2 users" in ok(reply)
    assert reply.data == {
        "users": [
            {"name": "alice", "room": "x", "blocked": False, "account": False},
            {"name": "bob", "room": p.LOBBY, "blocked": True, "account": False},
        ],
        "blocked": ["bob", "zed"],
    }


def test_who_with_nobody_connected() -> None:
    reply = ctl(chat(), "who")
    assert "0 users" in ok(reply)
    assert reply.data == {"users": [], "blocked": []}


def test_rooms_lists_members_and_seq() -> None:
    c = chat()
    alice, bob = hello(c, "alice"), hello(c, "bob")
    hello(c, "carol")
    in_room(c, alice, "x", messages=4)
    in_room(c, bob, "x")
    reply = ctl(c, "rooms")
    assert "2 rooms" in ok(reply)
    assert reply.data == {
        "rooms": [
            {"name": p.LOBBY, "members": 1, "seq": 0, **OPEN},
            {"name": "x", "members": 2, "seq": 4, **OPEN},
        ]
    }


def test_counts_of_one_are_in_the_singular() -> None:
    c = chat(rate=0)
    c.counters.started = T0
    alice = hello(c, "alice")
    assert ok(ctl(c, "who")) == "1 user connected"
    assert ok(ctl(c, "rooms")) == "1 room"
    assert ok(ctl(c, "private", "vip"))
    send(c, alice, p.Join("vip"))
    assert ok(ctl(c, "requests")) == "1 join request waiting"
    send(c, alice, p.Leave())
    send(c, alice, p.Say("one"))
    assert ok(ctl(c, "stats")) == "up 1s, 1 client, 1 message"
    assert ok(ctl(c, "reset")) == "reset: 1 client disconnected, every room but public removed"
    assert ok(ctl(c, "who")) == "0 users connected"


# ---- refusals ----------------------------------------------------------------------------------


def test_unknown_command() -> None:
    c = chat()
    reply = ctl(c, "kick", "alice")
    assert refused(reply) == p.Code.UNKNOWN_COMMAND
    assert "kick" in reply.message
    assert all(verb in reply.message for verb in VERBS)


@pytest.mark.parametrize(
    "args",
    [
        ("block",),
        ("block", "alice", "bob"),
        ("unblock",),
        ("fire",),
        ("out", "alice", "x"),
        ("reset", "now"),
        ("close", "now"),
        ("who", "x"),
        ("rooms", "x"),
        ("audit", "1", "2"),
    ],
)
def test_wrong_arg_count_is_bad_args_and_does_nothing(args: tuple[str, ...]) -> None:
    c = chat()
    alice = hello(c, "alice")
    in_room(c, alice, "x")
    reply = ctl(c, *args)
    assert refused(reply) == p.Code.BAD_ARGS
    assert "usage" in reply.message
    assert args[0] in reply.message
    assert c.users == {"alice": alice}
    assert alice.room == "x"
    assert c.closing is False
    assert c.store.blocked() == set()
    out = c.out.take()
    assert out.replies == [] and out.rooms == {}


@pytest.mark.parametrize("verb", ["block", "unblock", "fire", "out"])
@pytest.mark.parametrize("name", ["", "a b", "-alice", "*", "a" * 33, "al\u00efce"])
def test_invalid_user_name_is_bad_args(verb: str, name: str) -> None:
    c = chat()
    hello(c, "alice")
    reply = ctl(c, verb, name)
    assert refused(reply) == p.Code.BAD_ARGS
    assert c.store.blocked() == set()
    assert set(c.users) == {"alice"}


# ---- audit -------------------------------------------------------------------------------------


def test_audit_lists_the_latest_entries_oldest_first() -> None:
    store = MemoryStore()
    c = chat(store)
    for i in range(25):
        store.audit(AuditEntry(T0 + i, "admin", "K" * 40, "block", (f"u{i}",), i != 3, f"m{i}"))
    reply = ctl(c, "audit")
    assert ok(reply) == "20 audit entries, oldest first"
    rows = reply.data["audit"]
    assert [r["args"] for r in rows] == [[f"u{i}"] for i in range(5, 25)]
    assert rows[0] == {
        "ts": T0 + 5,
        "admin": "admin",
        "key": "K" * 40,
        "command": "block",
        "args": ["u5"],
        "ok": True,
        "message": "m5",
    }
    few = ctl(c, "audit", "2")
    assert ok(few) == "2 audit entries, oldest first"
    assert [r["message"] for r in few.data["audit"]] == ["m23", "m24"]
    assert ok(ctl(c, "audit", "1")) == "1 audit entry, oldest first"
    assert ctl(chat(), "audit").data == {"audit": []}


@pytest.mark.parametrize("limit", ["0", "-1", "x", "10001", "1.5", ""])
def test_audit_limit_must_be_a_positive_number(limit: str) -> None:
    reply = ctl(chat(), "audit", limit)
    assert refused(reply) == p.Code.BAD_ARGS
    assert "LIMIT" in reply.message


def test_stats_counts_clients_rooms_and_messages() -> None:
    c = chat(rate=0)
    c.counters.started = T0 - 10
    alice = hello(c, "alice")
    hello(c, "bob")
    in_room(c, alice, "games", messages=3)
    c.store.block("bob")
    send(c, c.users["bob"], p.Say("spam"))
    c.tick(T0)
    stats = ok_data(ctl(c, "stats"))["stats"]
    assert stats["clients"] == 2
    assert stats["rooms"] == 2
    assert stats["messages_in"] == 3
    assert stats["refused"] == 1
    assert stats["blocked"] == 1
    assert stats["uptime_seconds"] == 11.0
    assert stats["database_bytes"] == 0


def ok_data(reply: cp.CtlReply) -> Any:
    ok(reply)
    return reply.data


def test_close_takes_the_all_flag_and_nothing_else() -> None:
    c = chat()
    assert ok(ctl(c, "close", "all")) and c.closing
    assert refused(ctl(chat(), "close", "now")) == p.Code.BAD_ARGS
    assert VERBS["close"].usage("close") == "close [--all]"
