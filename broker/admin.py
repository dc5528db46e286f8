"""Admin commands: one small handler per verb, in one explicit table.

A handler takes the chat, its arguments and the time, acts, and returns the reply. It raises
``AdminError`` for a request it refuses; the dispatcher turns that into an error reply. A verb's
``args`` are required; its ``options`` may follow them (room-ctl shows them as ``--option``).
The broker's I/O layer records every request in the audit log after dispatch (``audit`` reads it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol as p
from .state import Chat, User
from .store import StoreError

AUDIT_SHOWN = 20
"""Audit entries ``audit`` shows unless told otherwise."""
AUDIT_MAX = 10_000


class AdminError(Exception):
    def __init__(self, code: p.Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Result:
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class Command:
    run: Callable[[Chat, list[str], float], Result]
    args: tuple[str, ...]
    help: str
    options: tuple[str, ...] = ()
    """Optional, after the args: an upper-case one takes a value (``LIMIT``), a lower-case one
    is a flag that passes its own name (``all``)."""

    def usage(self, verb: str) -> str:
        shown = (f"[--{o}]" if o.islower() else f"[{o}]" for o in self.options)
        return " ".join((verb, *self.args, *shown))


def _name(args: list[str]) -> str:
    name = args[0]
    if not p.valid_name(name):
        raise AdminError(p.Code.BAD_ARGS, f"invalid user name {name!r}: use {p.NAME_RULE}")
    return name


def _connected(chat: Chat, args: list[str]) -> User:
    name = _name(args)
    user = chat.users.get(name)
    if user is None:
        raise AdminError(p.Code.NO_SUCH_USER, f"{name} is not connected: check `room-ctl who`")
    return user


def block(chat: Chat, args: list[str], now: float) -> Result:
    name = _name(args)
    if not chat.store.block(name):
        return Result(f"{name} was already blocked")
    chat.blocked_changed(name, True)
    if name in chat.users:
        return Result(f"blocked {name}")
    if chat.store.holder(name):
        return Result(f"blocked {name} (connected to another broker)")
    return Result(f"blocked {name} (not connected: the block holds when they connect)")


def unblock(chat: Chat, args: list[str], now: float) -> Result:
    name = _name(args)
    if not chat.store.unblock(name):
        return Result(f"{name} was not blocked")
    chat.blocked_changed(name, False)
    return Result(f"unblocked {name}")


def fire(chat: Chat, args: list[str], now: float) -> Result:
    user = _connected(chat, args)
    chat.out.reply(user.peer, p.Goodbye(p.Bye.FIRED, "the admin disconnected you"))
    chat.remove(user, now, "fired by the admin", what=p.PresenceKind.FIRED, end_session=True)
    return Result(f"fired {user.name}")


def out(chat: Chat, args: list[str], now: float) -> Result:
    user = _connected(chat, args)
    room = user.room
    if room == p.LOBBY:
        return Result(f"{user.name} is already in {p.LOBBY}")
    chat.out.publish(room, p.Presence(room, user.name, p.PresenceKind.OUT))
    chat.move(user, p.LOBBY, now)
    return Result(f"put {user.name} out of {room}")


def remove(chat: Chat, args: list[str], now: float) -> Result:
    room = args[0]
    if room == p.LOBBY:
        raise AdminError(
            p.Code.BAD_ARGS, f"{p.LOBBY} cannot be removed: it is where everyone lands"
        )
    if room not in chat.members:
        raise AdminError(p.Code.BAD_ARGS, f"there is no room {room!r}: check `room-ctl rooms`")
    moved = chat.remove_room(room, now)
    who = f"; moved to {p.LOBBY}: {', '.join(moved)}" if moved else ""
    return Result(f"removed {room} and its history{who}")


def reset(chat: Chat, args: list[str], now: float) -> Result:
    count = len(chat.users)
    chat.reset(now)
    return Result(f"reset: {count} clients disconnected, every room but {p.LOBBY} removed")


def close(chat: Chat, args: list[str], now: float) -> Result:
    if args and args[0] != "all":
        raise AdminError(p.Code.BAD_ARGS, "usage: close [--all]")
    chat.closing = True
    return Result("broker closing")


def who(chat: Chat, args: list[str], now: float) -> Result:
    users = chat.user_list()
    blocked = sorted(chat.store.blocked())
    data = {"users": [_fields(u) for u in users], "blocked": blocked}
    return Result(f"{len(users)} users connected", data)


def rooms(chat: Chat, args: list[str], now: float) -> Result:
    listing = chat.room_list()
    return Result(f"{len(listing)} rooms", {"rooms": [_fields(r) for r in listing]})


def stats(chat: Chat, args: list[str], now: float) -> Result:
    c = chat.counters
    uptime = now - c.started if c.started else 0.0
    data = {
        "clients": len(chat.users),
        "connections": c.connections,
        "unnamed_connections": max(0, c.connections - len(chat.users)),
        "rooms": len(chat.members),
        "blocked": len(chat.store.blocked()),
        "messages_in": c.accepted,
        "messages_out": c.published,
        "fetched": c.fetched,
        "direct": c.direct,
        "refused": c.refused,
        "messages_per_second": round(c.rate, 1),
        "drops": c.dropped_replies,
        "bad_frames": c.bad_frames,
        "uptime_seconds": round(uptime, 1),
        "database_bytes": chat.store.size(),
    }
    text = f"up {uptime:.0f}s, {len(chat.users)} clients, {c.accepted} messages"
    return Result(text, {"stats": data})


def audit(chat: Chat, args: list[str], now: float) -> Result:
    text = args[0] if args else str(AUDIT_SHOWN)
    if not text.isdigit() or not 1 <= int(text) <= AUDIT_MAX:
        raise AdminError(p.Code.BAD_ARGS, f"LIMIT must be a number from 1 to {AUDIT_MAX}")
    entries = chat.store.audit_log(int(text))
    rows = [
        {
            "ts": e.ts,
            "admin": e.admin,
            "key": e.key,
            "command": e.command,
            "args": list(e.args),
            "ok": e.ok,
            "message": e.message,
        }
        for e in entries
    ]
    noun = "entry" if len(rows) == 1 else "entries"
    return Result(f"{len(rows)} audit {noun}, oldest first", {"audit": rows})


def _fields(struct: Any) -> dict[str, Any]:
    return {f: getattr(struct, f) for f in struct.__struct_fields__}


COMMANDS: dict[str, Command] = {
    "block": Command(block, ("USER",), "block USER: their room messages reach only the log"),
    "unblock": Command(unblock, ("USER",), "unblock USER"),
    "fire": Command(fire, ("USER",), "disconnect USER (their client exits)"),
    "out": Command(out, ("USER",), f"move USER out of their room, back to {p.LOBBY}"),
    "remove": Command(
        remove, ("ROOM",), f"delete ROOM and its history; its members go to {p.LOBBY}"
    ),
    "reset": Command(reset, (), "disconnect every client and remove every room but the lobby"),
    "close": Command(
        close, (), "shut the broker down cleanly (--all: every broker on the backbone)", ("all",)
    ),
    "who": Command(who, (), "connected users, their rooms, and the blocklist"),
    "rooms": Command(rooms, (), "rooms with member counts"),
    "stats": Command(stats, (), "counters: clients, rooms, messages, rate, drops, uptime, size"),
    "audit": Command(
        audit, (), f"the latest admin requests (LIMIT, default {AUDIT_SHOWN})", ("LIMIT",)
    ),
}


def dispatch(chat: Chat, request: p.CtlRequest, now: float) -> p.CtlReply:
    """Run one control request; any refusal becomes an error reply, never an exception."""
    command = COMMANDS.get(request.command)
    try:
        if command is None:
            known = ", ".join(COMMANDS)
            raise AdminError(
                p.Code.UNKNOWN_COMMAND, f"unknown command {request.command!r}: use one of {known}"
            )
        if not len(command.args) <= len(request.args) <= len(command.args) + len(command.options):
            raise AdminError(p.Code.BAD_ARGS, f"usage: {command.usage(request.command)}")
        result = command.run(chat, request.args, now)
    except AdminError as exc:
        return p.CtlReply(request.id, False, exc.message, exc.code.value)
    except StoreError as exc:  # the backbone did not answer: nothing changed
        return p.CtlReply(request.id, False, str(exc), p.Code.UNAVAILABLE.value)
    return p.CtlReply(request.id, True, result.message, "", result.data)
