"""Admin commands: one small handler per verb, in one explicit table.

A handler takes the chat, its arguments and the time, acts, and returns the reply. It raises
``AdminError`` for a request it refuses; the dispatcher turns that into an error reply. What a
verb takes and how it is shown (its args, options, help and usage) is ``broker.admin.verbs``, shared
with room-ctl; ``COMMANDS`` maps the same verbs to their handlers, checked at import. The
broker's I/O layer records every request in the audit log after dispatch (``audit`` reads it).
"""

from __future__ import annotations

from broker.admin import accountverbs
from broker.admin.results import AdminError, Handler, Result
from broker.admin.verbs import AUDIT_MAX, AUDIT_SHOWN, VERBS, counted
from broker.chat.chat import Chat, User
from broker.store.base import StoreError
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

__all__ = ["COMMANDS", "AdminError", "Handler", "Result", "dispatch"]


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
    chat.goodbye(user.peer, p.Bye.FIRED, "the admin disconnected you")
    chat.remove(user, now, "fired by the admin", what=p.PresenceKind.FIRED, end_session=True)
    return Result(f"fired {user.name}")


def out(chat: Chat, args: list[str], now: float) -> Result:
    user = _connected(chat, args)
    room = user.room
    if room == p.LOBBY:
        return Result(f"{user.name} is already in {p.LOBBY}")
    if chat.access.is_private(room):  # off its list too: the admin must allow them again
        chat.deny(user.name, room, now, tell=False)  # the forced Joined tells them
        return Result(f"put {user.name} out of {room}, and off its list (private)")
    chat.out.publish(room, p.Presence(room, user.name, p.PresenceKind.OUT))
    chat.move(user, p.LOBBY, now)
    return Result(f"put {user.name} out of {room}")


def _room(args: list[str], at: int = 0) -> str:
    room = args[at]
    if not p.valid_name(room):
        raise AdminError(p.Code.BAD_ARGS, f"invalid room {room!r}: use {p.NAME_RULE}")
    return room


def _private(chat: Chat, args: list[str], at: int, verb: str) -> str:
    """The private room named at ``args[at]``; for any other, a refusal that says why, and a
    command to run only where it would work."""
    room = _room(args, at)
    if room == p.LOBBY:
        raise AdminError(p.Code.BAD_ARGS, f"{p.LOBBY} is never private: everyone may enter it")
    if chat.access.is_private(room):
        return room
    if room not in chat.members:
        if verb == "allow":
            hint = f"`room-ctl private {room}` makes it, private"
        else:
            hint = "check `room-ctl rooms`"
        raise AdminError(p.Code.BAD_ARGS, f"there is no room {room!r}: {hint}")
    if verb == "open":
        raise AdminError(p.Code.BAD_ARGS, f"{room} is open already: anyone may enter it")
    raise AdminError(
        p.Code.BAD_ARGS,
        f"{room} is open, not private: anyone may enter it (`room-ctl private {room}` first)",
    )


def private(chat: Chat, args: list[str], now: float) -> Result:
    room = _room(args)
    if room == p.LOBBY:
        raise AdminError(p.Code.BAD_ARGS, f"{p.LOBBY} cannot be private: everyone lands there")
    if chat.access.is_private(room):
        return Result(f"{room} was already private")
    allowed = chat.make_private(room, now)
    who = f"; allowed (in it now): {', '.join(sorted(allowed))}" if allowed else ""
    return Result(f"{room} is private{who}")


def open_room(chat: Chat, args: list[str], now: float) -> Result:
    room = _private(chat, args, 0, "open")
    moved = chat.make_open(room, now)
    who = f"; let in who asked: {', '.join(moved)}" if moved else ""
    return Result(f"{room} is open{who}")


def allow(chat: Chat, args: list[str], now: float) -> Result:
    name, room = _name(args), _private(chat, args, 1, "allow")
    done = chat.allow(name, room, now)
    if done.moved:
        return Result(f"allowed {name} into {room}; {name} asked, and is in it now")
    if done.asked and chat.store.holder(name):
        return Result(
            f"allowed {name} into {room}; {name} asked, and goes in on the broker they are on"
        )
    if done.asked:
        return Result(
            f"allowed {name} into {room}; {name} asked but is not connected: "
            f"`/join {room}` lets them in"
        )
    if done.was_allowed:
        return Result(f"{name} was already allowed into {room}")
    return Result(f"allowed {name} into {room} ahead: {name} had not asked")


def deny(chat: Chat, args: list[str], now: float) -> Result:
    name, room = _name(args), _private(chat, args, 1, "deny")
    done = chat.deny(name, room, now)
    if done.put_out:
        return Result(f"denied {name} {room}, and put {name} out of it")
    if done.asked or done.was_allowed:
        return Result(f"denied {name} {room}")
    return Result(f"{name} had not asked and was not allowed into {room}: nothing to deny")


def requests(chat: Chat, args: list[str], now: float) -> Result:
    rows = [cp.JoinRequest(room, user, r.ts) for room, user, r in chat.access.waiting()]
    return Result(f"{counted(len(rows), 'join request')} waiting", cp.RequestList(rows))


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
    disconnected = counted(count, "client")
    return Result(f"reset: {disconnected} disconnected, every room but {p.LOBBY} removed")


def close(chat: Chat, args: list[str], now: float) -> Result:
    if args and args[0] != "all":
        raise AdminError(p.Code.BAD_ARGS, "usage: close [--all]")
    chat.closing = True
    return Result("broker closing")


def who(chat: Chat, args: list[str], now: float) -> Result:
    users = chat.user_list()
    data = cp.UserList(users, sorted(chat.store.blocked()))
    return Result(f"{counted(len(users), 'user')} connected", data)


def rooms(chat: Chat, args: list[str], now: float) -> Result:
    listing = chat.room_list(allowed=True)
    return Result(counted(len(listing), "room"), cp.RoomList(listing))


def stats(chat: Chat, args: list[str], now: float) -> Result:
    c = chat.counters
    uptime = now - c.started if c.started else 0.0
    counters = cp.Counters(
        clients=len(chat.users),
        connections=c.connections,
        unnamed_connections=max(0, c.connections - len(chat.users)),
        rooms=len(chat.members),
        blocked=len(chat.store.blocked()),
        messages_in=c.accepted,
        messages_out=c.published,
        fetched=c.fetched,
        direct=c.direct,
        refused=c.refused,
        messages_per_second=round(c.rate, 1),
        drops=c.dropped_replies,
        bad_frames=c.bad_frames,
        uptime_seconds=round(uptime, 1),
        database_bytes=chat.store.size(),
        sealing_ms=round(c.sealing * 1000, 3),
    )
    clients, messages = counted(len(chat.users), "client"), counted(c.accepted, "message")
    text = f"up {uptime:.0f}s, {clients}, {messages}"
    return Result(text, cp.Stats(counters))


def audit(chat: Chat, args: list[str], now: float) -> Result:
    text = args[0] if args else str(AUDIT_SHOWN)
    if not text.isdigit() or not 1 <= int(text) <= AUDIT_MAX:
        raise AdminError(p.Code.BAD_ARGS, f"LIMIT must be a number from 1 to {AUDIT_MAX}")
    rows = [
        cp.AuditRow(e.ts, e.admin, e.key, e.command, list(e.args), e.ok, e.message)
        for e in chat.store.audit_log(int(text))
    ]
    entries = counted(len(rows), "audit entry", "audit entries")
    return Result(f"{entries}, oldest first", cp.AuditLog(rows))


COMMANDS: dict[str, Handler] = {
    "block": block,
    "unblock": unblock,
    "fire": fire,
    "out": out,
    "remove": remove,
    "private": private,
    "open": open_room,
    "allow": allow,
    "deny": deny,
    "requests": requests,
    "reset": reset,
    "close": close,
    "who": who,
    "rooms": rooms,
    "stats": stats,
    "audit": audit,
    "invite": accountverbs.invite,
    "accounts": accountverbs.accounts,
    "ban": accountverbs.ban,
    "unban": accountverbs.unban,
    "register": accountverbs.register,
    "passwd": accountverbs.passwd,
}
"""The handler of each verb of ``verbs.VERBS``: the same names, or this module does not load."""

if _unpaired := set(COMMANDS) ^ set(VERBS):
    raise AssertionError(f"VERBS and COMMANDS differ on {sorted(_unpaired)}")


def dispatch(chat: Chat, request: cp.CtlRequest, now: float) -> cp.CtlReply:
    """Run one control request; any refusal becomes an error reply, never an exception."""
    verb = VERBS.get(request.command)
    try:
        if verb is None:
            known = ", ".join(VERBS)
            raise AdminError(
                p.Code.UNKNOWN_COMMAND, f"unknown command {request.command!r}: use one of {known}"
            )
        if not verb.takes(len(request.args)):
            raise AdminError(p.Code.BAD_ARGS, f"usage: {verb.usage(request.command)}")
        result = COMMANDS[request.command](chat, request.args, now)
    except AdminError as exc:
        return cp.CtlReply(request.id, False, exc.message, exc.code.value)
    except StoreError as exc:  # the backbone did not answer: nothing changed
        return cp.CtlReply(request.id, False, str(exc), p.Code.UNAVAILABLE.value)
    return cp.CtlReply(request.id, True, result.message, "", result.data)
