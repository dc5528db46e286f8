"""Where an admin command runs when brokers share a backbone, and how the answers combine.

Pure code: the broker's I/O layer asks ``plan`` before it dispatches, sends the request over the
bus when the plan says so, and hands the answers to ``merge``. A single broker never calls this.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

from broker.admin.verbs import counted
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

EVERYWHERE = frozenset({"who", "rooms"})
"""Commands every broker answers for its own users and rooms. (``reset`` runs here, and reaches
the others through the backbone's epoch: see ``plugin.BackbonePlugin.control``.)"""
ROUTED = frozenset({"fire", "out", "deny"})
"""Commands that run on the broker holding the user."""
ALL_FLAG = "all"
"""``close --all``: every broker closes, not just the one asked."""


@dataclass(frozen=True, slots=True)
class Plan:
    """``node`` set: send to that broker only. ``every``: ask every other broker, then run here
    too and merge. Neither: run here alone."""

    node: str = ""
    every: bool = False


HERE = Plan()


def plan(request: cp.CtlRequest, local: Container[str], holder: Callable[[str], str]) -> Plan:
    """``local``: the users this broker holds; ``holder``: the node that holds a name, or ''."""
    command, args = request.command, request.args
    if command in EVERYWHERE or (command == "close" and ALL_FLAG in args):
        return Plan(every=True)
    if command in ROUTED and args and args[0] not in local:
        node = holder(args[0])
        if node:
            return Plan(node=node)
    return HERE


def merge(request: cp.CtlRequest, here: cp.CtlReply, others: list[cp.CtlReply]) -> cp.CtlReply:
    """One reply from this broker's and the others' answers to the same request."""
    replies = [here, *others]
    if not all(r.ok for r in replies):
        failed = next(r for r in replies if not r.ok)
        return cp.CtlReply(here.id, False, failed.message, failed.code, failed.data)
    brokers = counted(len(replies), "broker")
    match request.command:
        case "who":
            users = _users(replies)
            text = f"{counted(len(users.users), 'user')} connected on {brokers}"
            return cp.CtlReply(here.id, True, text, "", users)
        case "rooms":
            rooms = _rooms(replies)
            text = f"{counted(len(rooms.rooms), 'room')} on {brokers}"
            return cp.CtlReply(here.id, True, text, "", rooms)
        case _:
            return cp.CtlReply(here.id, True, f"{here.message} (on {brokers})", "", here.data)


def _users(replies: list[cp.CtlReply]) -> cp.UserList:
    """Every broker's users in name order; the blocklist is shared, so this broker's is all."""
    lists = [r.data for r in replies if isinstance(r.data, cp.UserList)]
    users = sorted((u for listing in lists for u in listing.users), key=lambda u: u.name)
    here = replies[0].data
    return cp.UserList(users, here.blocked if isinstance(here, cp.UserList) else [])


def _rooms(replies: list[cp.CtlReply]) -> cp.RoomList:
    """Each room once: the members of every broker added up, the highest sequence number seen."""
    rooms: dict[str, p.RoomInfo] = {}
    for r in replies:
        for room in r.data.rooms if isinstance(r.data, cp.RoomList) else []:
            seen = rooms.get(room.name, p.RoomInfo(room.name, 0, 0))
            members, seq = seen.members + room.members, max(seen.seq, room.seq)
            rooms[room.name] = p.RoomInfo(room.name, members, seq)
    return cp.RoomList([rooms[name] for name in sorted(rooms)])
