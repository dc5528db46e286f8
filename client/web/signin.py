"""Signing a browser tab in: the page's first frame (``hello``, ``register`` or ``resume``)
checked, a name registered when the page asks, and a refused start in one line for the form.

A password comes in a ``hello`` or ``register`` frame and goes only to the ``Tab``, which drops it
once its handshake is over, and for ``register`` to ``client.account.register``, run in a thread:
it derives the SCRAM verifier (PBKDF2, about 50 ms) and waits for the broker's answer on a
blocking socket, neither of which the gateway's loop may do. Nothing here logs it or keeps it, and
``Request`` leaves it out of its ``repr`` (a traceback, a debug print).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from broker.wire.protocol import LOBBY, MAX_ID, NAME_RULE, SESSION_MAX, Code, valid_name
from client import account
from client.core import PROG
from client.effects import Stop
from client.web.tab import Tab, Upstream

PASSWORD_MAX: Final = 1024
"""Characters of a password the gateway takes (a frame may carry far more)."""
INVITE_MAX: Final = 256
"""Characters of an invite code (``room-ctl invite`` makes short ones)."""


@dataclass(frozen=True, slots=True)
class Request:
    """What a page's first frame asks for, checked."""

    kind: str
    """``hello`` (a new session), ``register`` (an account, then a session) or ``resume``."""
    name: str
    room: str
    password: str | None = field(default=None, repr=False)
    invite: str = field(default="", repr=False)
    secret: str = field(default="", repr=False)
    """A ``resume``'s broker session, continued when the gateway does not know the tab."""
    last: int = 0
    """A ``resume``'s newest ``seq`` shown in ``room``."""


def count(value: object) -> int:
    """A line number or sequence number from the page, or 0."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return value
    return 0


def request(data: dict[str, Any]) -> Request | str:
    """What a page's first frame asks for, or why it cannot be done (one line for the form)."""
    kind, name = data.get("t"), data.get("name")
    if kind not in ("hello", "register", "resume"):
        return "say hello first"
    if not isinstance(name, str) or not valid_name(name):
        return f"not a valid name: use {NAME_RULE}"
    room = data.get("room")
    room = room if isinstance(room, str) and valid_name(room) else LOBBY
    if kind == "resume":
        secret = data.get("secret")
        secret = secret if isinstance(secret, str) and len(secret) <= SESSION_MAX else ""
        return Request(kind, name, room, secret=secret, last=count(data.get("seq")))
    password = data.get("password") or None
    if password is not None and (not isinstance(password, str) or len(password) > PASSWORD_MAX):
        return f"not a valid password: use at most {PASSWORD_MAX} characters"
    if kind == "hello":
        return Request(kind, name, room, password)
    if password is None:
        return "registering a name needs a password"
    invite = data.get("invite") or ""
    if not isinstance(invite, str) or len(invite) > INVITE_MAX:
        return "not a valid invite code"
    return Request(kind, name, room, password, invite.strip())


async def start(upstream: Upstream, req: Request, on_gone: Callable[[Tab], None]) -> Tab | str:
    """A tab whose session has started, or why there is none (one line for the form)."""
    if req.kind == "register" and (refused := await _register(upstream, req)) is not None:
        return refused
    tab = Tab(
        upstream,
        req.name,
        req.room,
        secret=req.secret,
        last=req.last,
        password=req.password,
        on_gone=on_gone,
    )
    stop = await tab.start()
    if stop is not None and req.secret:  # the broker no longer holds that session: a new one
        tab = Tab(upstream, req.name, req.room, last=req.last, on_gone=on_gone)
        stop = await tab.start()
    return tab if stop is None else refusal(stop, req.name)


def refusal(stop: Stop, name: str) -> str:
    """Why a session did not start, in one line: ``room-client``'s words, but the form's where
    those point at ``room-client`` (a prompt, ``ROOM_PASSWORD``, ``room-client register``)."""
    match stop.cause:
        case Code.LOGIN_FIRST:
            return f"{name} is a registered name: enter its password"
        case Code.UNKNOWN_ACCOUNT:
            return f"{name} is not registered, and only registered names may chat here"
    return stop.error.removeprefix(f"{PROG}: ")


async def _register(upstream: Upstream, req: Request) -> str | None:
    """Register ``req.name`` at the first broker of the list, as ``room-client register`` does;
    why not, in one line, or None."""
    assert req.password is not None
    loop = asyncio.get_running_loop()
    server, curve = upstream.servers[0], upstream.curve
    try:
        await loop.run_in_executor(
            None, account.register, server, req.name, req.invite, req.password, curve
        )
    except account.Failed as exc:
        return f"not registered: {exc}"
    return None
