"""room-ctl apart from the chat core: what it loads, the verbs it is built from, the typed listings
a reply carries, and how it shows them. In memory, except one child Python that imports room-ctl."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import msgspec
import pytest
from chat_helpers import T0, chat, hello, send

from broker.admin.commands import COMMANDS, dispatch
from broker.admin.verbs import VERBS
from broker.logfmt import stamp as log_stamp
from broker.store.base import AuditEntry
from broker.store.memory import MemoryStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p
from client import ctl

ROOT = Path(__file__).resolve().parent.parent

CHAT_CORE = {
    "broker.chat.chat",
    "broker.admin.commands",
    "broker.store.base",
    "broker.store.sqlstore",
    "broker.loop.server",
}


def test_room_ctl_loads_no_chat_core() -> None:
    code = "import client.ctl, sys; print(sorted(m for m in sys.modules if m.startswith('broker')))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout))
    assert not loaded & CHAT_CORE, sorted(loaded & CHAT_CORE)
    assert not any(m.startswith("broker.backbone") for m in loaded), sorted(loaded)
    assert {"broker.wire.protocol", "broker.admin.verbs"} <= loaded


def test_the_handlers_are_the_verbs() -> None:
    assert list(COMMANDS) == list(VERBS)


def test_room_ctl_has_one_command_per_verb_with_its_args_and_options() -> None:
    assert set(ctl.main.commands) == set(VERBS)
    for name, verb in VERBS.items():
        command = ctl.main.commands[name]
        assert command.help == verb.help
        args = [q.name for q in command.params if isinstance(q, click.Argument)]
        assert args == [a.lower() for a in verb.args], name
        flags = {q.opts[0] for q in command.params if isinstance(q, click.Option)}
        assert flags == {f"--{o.lower()}" for o in verb.options} | {"--json"}, name


# ---- the typed listings ------------------------------------------------------------------------


def _reply(c, command: str, *args: str) -> cp.CtlReply:
    """The reply as room-ctl receives it: through the wire and its decoder."""
    reply = dispatch(c, cp.CtlRequest(3, command, list(args)), T0 + 1)
    assert reply.ok, reply
    return cp.decode_ctl_reply(p.encode(reply))


def test_who_decodes_into_a_user_list() -> None:
    c = chat()
    hello(c, "bob")
    alice = hello(c, "alice")
    send(c, alice, p.Join("x"))
    c.store.block("zed")
    data = _reply(c, "who").data
    assert data == cp.UserList(
        [p.UserInfo("alice", "x", False), p.UserInfo("bob", p.LOBBY, False)], ["zed"]
    )


def test_rooms_decodes_into_a_room_list() -> None:
    c = chat()
    alice = hello(c, "alice")
    send(c, alice, p.Join("x"))
    send(c, alice, p.Say("hi"))
    data = _reply(c, "rooms").data
    assert data == cp.RoomList([p.RoomInfo(p.LOBBY, 0, 0), p.RoomInfo("x", 1, 1)])


def test_stats_decodes_into_typed_counters() -> None:
    c = chat()
    hello(c, "alice")
    data = _reply(c, "stats").data
    assert isinstance(data, cp.Stats)
    assert isinstance(data.stats, cp.Counters)
    assert data.stats.clients == 1
    assert isinstance(data.stats.messages_per_second, float)
    assert isinstance(data.stats.uptime_seconds, float)


def test_audit_decodes_into_rows() -> None:
    store = MemoryStore()
    store.audit(AuditEntry(T0, "admin", "K" * 40, "block", ("bob",), True, "blocked bob"))
    data = _reply(chat(store), "audit").data
    assert data == cp.AuditLog(
        [cp.AuditRow(T0, "admin", "K" * 40, "block", ["bob"], True, "blocked bob")]
    )


@pytest.mark.parametrize("verb", ["block", "reset", "close"])
def test_other_verbs_carry_no_data(verb: str) -> None:
    args = ["bob"] if verb == "block" else []
    assert _reply(chat(), verb, *args).data is None


def test_a_listing_with_an_unknown_tag_is_a_bad_frame() -> None:
    body = msgspec.msgpack.encode(["ctlreply", 1, True, "m", "", ["ctlnews", []]])
    with pytest.raises(p.ProtocolError) as caught:
        cp.decode_ctl_reply(body)
    assert caught.value.code is p.Code.BAD_FRAME


def test_plain_is_the_json_shape_of_room_ctl() -> None:
    """``--json`` prints each listing as a map of its fields, without tags, as before the types."""
    users = cp.UserList([p.UserInfo("alice", "x", True)], ["alice"])
    assert cp.plain(users) == {
        "users": [{"name": "alice", "room": "x", "blocked": True, "account": False}],
        "blocked": ["alice"],
    }
    assert cp.plain(cp.RoomList([p.RoomInfo("x", 2, 9)])) == {
        "rooms": [{"name": "x", "members": 2, "seq": 9, "private": False, "allowed": []}]
    }
    row = cp.AuditRow(1.5, "", "K", "", [], False, "refused")
    assert cp.plain(cp.AuditLog([row])) == {
        "audit": [
            {
                "ts": 1.5,
                "admin": "",
                "key": "K",
                "command": "",
                "args": [],
                "ok": False,
                "message": "refused",
            }
        ]
    }
    counters = cp.plain(cp.Stats(COUNTERS))["stats"]
    assert list(counters) == list(cp.Counters.__struct_fields__)
    assert cp.plain(None) is None


# ---- how room-ctl shows them -------------------------------------------------------------------

COUNTERS = cp.Counters(
    clients=2,
    connections=3,
    unnamed_connections=1,
    rooms=1,
    blocked=0,
    messages_in=12_345,
    messages_out=20,
    fetched=0,
    direct=1,
    refused=0,
    messages_per_second=1.5,
    drops=0,
    bad_frames=0,
    uptime_seconds=3_725.0,
    database_bytes=3 * 1024 * 1024,
    sealing_ms=12.5,
)


def test_render_who_names_the_blocked_who_are_not_connected() -> None:
    users = [p.UserInfo("alice", "games", False), p.UserInfo("bob", p.LOBBY, True)]
    assert ctl.render(cp.UserList(users, ["bob", "zed"])) == [
        "USER   ROOM    STATUS",
        "alice  games",
        "bob    public  blocked",
        "blocked, not connected: zed",
    ]


def test_render_rooms() -> None:
    rooms = [p.RoomInfo(p.LOBBY, 1, 0), p.RoomInfo("games", 12, 345)]
    assert ctl.render(cp.RoomList(rooms)) == [
        "ROOM    MEMBERS  MESSAGES",
        "public  1        0",
        "games   12       345",
    ]


def test_render_stats_in_field_order_for_people() -> None:
    lines = ctl.render(cp.Stats(COUNTERS))
    assert lines[0].split() == ["COUNTER", "VALUE"]
    rows = {line[:21].strip(): line[21:].strip() for line in lines[1:]}
    assert list(rows) == [
        "clients",
        "connections",
        "unnamed connections",
        "rooms",
        "blocked",
        "messages in",
        "messages out",
        "fetched",
        "direct",
        "refused",
        "messages per second",
        "drops",
        "bad frames",
        "uptime",
        "database size",
        "sealing ms",
    ]
    assert rows["messages in"] == "12,345"
    assert rows["sealing ms"] == "12.5"
    assert rows["uptime"] == "1h 02m 05s"
    assert rows["database size"] == "3.0 MiB"
    assert len({len(line) for line in lines}) == 1, "values are right-aligned"


def test_render_audit() -> None:
    rows = [
        cp.AuditRow(0.25, "admin", "ABCDEFGHIJ", "block", ["bob"], True, "blocked bob"),
        cp.AuditRow(61.0, "", "ZYXWVUTSRQ", "", [], False, "not an admin"),
    ]
    assert ctl.render(cp.AuditLog(rows)) == [
        "TIME                      ADMIN      KEY       COMMAND               RESULT",
        "1970-01-01T00:00:00.250Z  admin      ABCDEFGH  block bob             ok: blocked bob",
        "1970-01-01T00:01:01.000Z  (refused)  ZYXWVUTS  (unreadable request)  failed: not an admin",
    ]


def test_render_of_no_listing_is_nothing() -> None:
    assert ctl.render(None) == []


def test_render_of_an_empty_listing_has_no_header() -> None:
    assert ctl.render(cp.UserList([], [])) == []
    assert ctl.render(cp.UserList([], ["zed"])) == ["blocked, not connected: zed"]
    assert ctl.render(cp.RoomList([])) == []
    assert ctl.render(cp.RequestList([])) == []
    assert ctl.render(cp.AuditLog([])) == []


@pytest.mark.parametrize("ts", [0.0, 1.999, 1_767_225_600.25, T0 + 0.0005])
def test_room_ctl_writes_times_as_the_broker_log_does(ts: float) -> None:
    assert ctl.stamp(ts) == log_stamp(ts)
