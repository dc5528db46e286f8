"""Private rooms: a join becomes a request, the admin allows or denies, and the lists last."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chat_helpers import T0, chat, hello, send

from broker.admin.commands import dispatch
from broker.chat.chat import Chat, Settings
from broker.store.sqlstore import SQLiteStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p


def ctl(c: Chat, command: str, *args: str) -> cp.CtlReply:
    return dispatch(c, cp.CtlRequest(1, command, list(args)), T0)


def replies(c: Chat, peer: bytes) -> list[Any]:
    return [m for q, m in c.out.take().replies if q == peer]


def test_a_join_of_a_private_room_becomes_a_request_that_allow_answers() -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    send(c, alice, p.Join("vip"))
    assert ctl(c, "private", "vip").ok  # alice is in it: she stays allowed
    send(c, alice, p.Say("for members", 1))
    assert send(c, bob, p.Join("vip", 5)).replies == [(bob.peer, p.JoinRequested("vip"))]
    assert bob.room == p.LOBBY and "bob" not in c.members["vip"]
    listing = ctl(c, "requests")
    assert [(r.room, r.user) for r in listing.data.requests] == [("vip", "bob")]
    reply = ctl(c, "allow", "bob", "vip")
    assert reply.ok and "is in it now" in reply.message
    joined = [m for m in replies(c, bob.peer) if isinstance(m, p.Joined)]
    assert [(j.room, [m.text for m in j.history]) for j in joined] == [("vip", ["for members"])]
    assert bob.room == "vip" and ctl(c, "requests").data.requests == []


def test_deny_and_out_take_a_user_off_the_list_and_out() -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    send(c, alice, p.Join("vip"))
    send(c, bob, p.Join("vip"))
    assert ctl(c, "private", "vip").ok
    assert ctl(c, "deny", "bob", "vip").ok
    assert (bob.peer, p.Joined(p.LOBBY, 0, [], True)) in c.out.take().replies
    assert bob.room == p.LOBBY
    assert send(c, bob, p.Join("vip")).replies == [(bob.peer, p.JoinRequested("vip"))]
    assert ctl(c, "out", "alice").ok
    c.out.take()
    assert alice.room == p.LOBBY
    assert send(c, alice, p.Join("vip")).replies == [(alice.peer, p.JoinRequested("vip"))]
    (room,) = [r for r in ctl(c, "rooms").data.rooms if r.name == "vip"]
    assert room.private and room.allowed == []


def test_open_lets_the_waiting_in_and_public_is_never_private() -> None:
    c = chat(rate=0)
    bob = hello(c, "bob")
    assert ctl(c, "private", "vip").ok
    send(c, bob, p.Join("vip"))
    assert ctl(c, "open", "vip").ok
    assert bob.room == "vip"
    refused = ctl(c, "private", p.LOBBY)
    assert not refused.ok and refused.code == p.Code.BAD_ARGS.value
    assert not ctl(c, "allow", "bob", "nowhere").ok  # not a private room


def notices(c: Chat, peer: bytes) -> list[str]:
    return [m.text for m in replies(c, peer) if isinstance(m, p.Notice)]


def test_deny_of_a_request_tells_the_requester() -> None:
    c = chat(rate=0)
    bob = hello(c, "bob")
    assert ctl(c, "private", "vip").ok
    send(c, bob, p.Join("vip"))
    reply = ctl(c, "deny", "bob", "vip")
    assert reply.ok and reply.message == "denied bob vip"
    assert notices(c, bob.peer) == ["the admin denied your request to join vip"]
    assert bob.room == p.LOBBY and ctl(c, "requests").data.requests == []


def test_deny_of_a_member_tells_him_he_is_back_in_public() -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    send(c, alice, p.Join("vip"))
    send(c, bob, p.Join("vip"))
    assert ctl(c, "private", "vip").ok
    c.out.take()
    assert ctl(c, "deny", "bob", "vip").message == "denied bob vip, and put bob out of it"
    told = replies(c, bob.peer)
    assert told[0] == p.Notice(f"the admin denied you access to vip: you were moved to {p.LOBBY}")
    assert p.Joined(p.LOBBY, 0, [], True) in told and bob.room == p.LOBBY
    assert notices(c, alice.peer) == []


def test_deny_of_an_allowed_user_elsewhere_tells_him_and_out_tells_no_more_than_before() -> None:
    c = chat(rate=0)
    alice, bob = hello(c, "alice"), hello(c, "bob")
    assert ctl(c, "private", "vip").ok
    assert ctl(c, "allow", "bob", "vip").ok
    assert ctl(c, "deny", "bob", "vip").message == "denied bob vip"
    assert notices(c, bob.peer) == ["the admin denied you access to vip"]
    ctl(c, "allow", "alice", "vip")
    send(c, alice, p.Join("vip"))
    c.out.take()
    assert ctl(c, "out", "alice").ok  # off the list too, told by the forced Joined as before
    assert notices(c, alice.peer) == []


def test_deny_of_someone_who_neither_asked_nor_was_allowed_says_so() -> None:
    c = chat(rate=0)
    carol = hello(c, "carol")
    assert ctl(c, "private", "vip").ok
    c.out.take()
    reply = ctl(c, "deny", "carol", "vip")
    assert reply.ok
    assert reply.message == "carol had not asked and was not allowed into vip: nothing to deny"
    assert replies(c, carol.peer) == []


def test_allow_says_whether_the_user_had_asked() -> None:
    c = chat(rate=0)
    hello(c, "carol")
    assert ctl(c, "private", "vip").ok
    first = ctl(c, "allow", "carol", "vip")
    assert first.ok and first.message == "allowed carol into vip ahead: carol had not asked"
    again = ctl(c, "allow", "carol", "vip")
    assert again.ok and again.message == "carol was already allowed into vip"
    dave = hello(c, "dave")
    send(c, dave, p.Join("vip"))
    c.handle(dave.peer, p.Quit(), T0)
    away = ctl(c, "allow", "dave", "vip")
    assert (
        away.message
        == "allowed dave into vip; dave asked but is not connected: `/join vip` lets them in"
    )


SUGGESTED = re.compile(r"`room-ctl ([^`]+)`")


@pytest.mark.parametrize(
    "request_",
    [
        ("allow", "bob", p.LOBBY),
        ("deny", "bob", p.LOBBY),
        ("open", p.LOBBY),
        ("allow", "bob", "nowhere"),
        ("deny", "bob", "nowhere"),
        ("open", "nowhere"),
        ("allow", "bob", "games"),
        ("deny", "bob", "games"),
        ("open", "games"),
    ],
)
def test_a_refusal_suggests_only_a_command_that_works(request_: tuple[str, ...]) -> None:
    c = chat(rate=0)
    bob = hello(c, "bob")
    send(c, bob, p.Join("games"))
    send(c, bob, p.Say("something said", 1))  # the room stays when bob leaves
    send(c, bob, p.Leave())
    refused = ctl(c, *request_)
    assert not refused.ok and refused.code == p.Code.BAD_ARGS.value
    for suggested in SUGGESTED.findall(refused.message):
        done = ctl(c, *suggested.split())
        assert done.ok, (refused.message, done.message)
    if request_[-1] == p.LOBBY:
        assert "never private" in refused.message and "room-ctl" not in refused.message


def test_private_rooms_their_lists_and_requests_survive_a_restart(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "room.db")
    c = Chat(store, Settings("tcp://127.0.0.1:1", rate=0))
    alice, bob = hello(c, "alice"), hello(c, "bob")
    send(c, alice, p.Join("vip"))
    ctl(c, "private", "vip")
    send(c, bob, p.Join("vip"))
    store.commit()
    store.close()
    store = SQLiteStore(tmp_path / "room.db")
    c = Chat(store, Settings("tcp://127.0.0.1:1", rate=0))
    assert c.access.private == {"vip": {"alice"}}
    assert list(c.access.requests["vip"]) == ["bob"]
    carol = hello(c, "carol")
    assert send(c, carol, p.Join("vip")).replies == [(carol.peer, p.JoinRequested("vip"))]
    store.close()


def test_end_to_end_a_request_allowed_deny_and_a_restart(tmp_path: Path) -> None:
    """Real processes: alice in a private room, bob asks, the admin allows and denies (bob and
    dave, denied, are told); the room, its list and a pending request are still there after
    the broker restarts."""
    import json

    from conftest import client_factory, running_broker
    from procs import ctl as room_ctl

    with running_broker(tmp_path / "data") as broker, client_factory(broker) as clients:
        alice = clients.join("alice", "vip")
        assert room_ctl(broker, "private", "vip").returncode == 0
        alice.send("members only")
        alice.expect(r"^\[vip\] alice: members only$")
        bob = clients.join("bob")
        bob.send("/join vip")
        bob.expect(r"^\* vip is private: your request to join was sent to the admin$")
        asked = json.loads(room_ctl(broker, "requests", "--json").stdout)
        assert [(r["room"], r["user"]) for r in asked["data"]["requests"]] == [("vip", "bob")]
        done = room_ctl(broker, "allow", "bob", "vip")
        assert done.returncode == 0 and "is in it now" in done.stdout
        bob.expect(r"^\[vip\] alice: members only$")  # the history his /join asked for
        bob.expect(r"^\* joined vip$")
        alice.send("welcome bob")
        bob.expect(r"^\[vip\] alice: welcome bob$")
        assert room_ctl(broker, "deny", "bob", "vip").returncode == 0
        bob.expect(r"^\* the admin denied you access to vip: you were moved to public$")
        bob.expect(r"^\* you were put out of vip$")
        dave = clients.join("dave")
        dave.send("/join vip")
        dave.expect(r"^\* vip is private")
        done = room_ctl(broker, "deny", "dave", "vip")
        assert (done.returncode, done.stdout) == (0, "denied dave vip\n")
        dave.expect(r"^\* the admin denied your request to join vip$")
        done = room_ctl(broker, "deny", "erin", "vip")
        assert done.returncode == 0 and "had not asked and was not allowed" in done.stdout
        carol = clients.join("carol")
        carol.send("/join vip")
        carol.expect(r"^\* vip is private")
        rooms = json.loads(room_ctl(broker, "rooms", "--json").stdout)["data"]["rooms"]
        assert {r["name"]: (r["private"], r["allowed"]) for r in rooms}["vip"] == (True, ["alice"])
    with running_broker(tmp_path / "data") as broker:
        rooms = json.loads(room_ctl(broker, "rooms", "--json").stdout)["data"]["rooms"]
        assert {r["name"]: (r["private"], r["allowed"]) for r in rooms}["vip"] == (True, ["alice"])
        asked = json.loads(room_ctl(broker, "requests", "--json").stdout)["data"]["requests"]
        assert [(r["room"], r["user"]) for r in asked] == [("vip", "carol")]
