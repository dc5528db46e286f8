"""The admin verbs as an admin sees them: each verb's arguments, options, help and usage.

Pure data, the one description of the control channel's verbs: ``room-ctl`` builds its click
commands from ``VERBS`` without loading the chat core, and the broker's handlers
(``commands.COMMANDS``) are mapped to the same names, checked when ``commands`` is imported.
A verb's ``args`` are required; its ``options`` may follow them (room-ctl shows them as
``--option``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.wire.protocol import LOBBY

AUDIT_SHOWN: Final = 20
"""Audit entries ``audit`` shows unless told otherwise."""
AUDIT_MAX: Final = 10_000
"""The most audit entries one ``audit`` shows."""
INVITE_HOURS: Final = 24
"""How long an invite code lasts unless told otherwise."""
INVITE_HOURS_MAX: Final = 24 * 365


def shown_args(command: str, args: list[str]) -> list[str]:
    """A request's arguments as the log and the audit show them: a verifier is not shown."""
    verb = VERBS.get(command)
    if verb is not None and verb.verifier and len(args) > len(verb.args):
        return [*args[: len(verb.args)], "(verifier)", *args[len(verb.args) + 1 :]]
    return args


def counted(n: int, one: str, many: str = "") -> str:
    """``1 room``, ``2 rooms``, ``0 rooms`` (``many``: the plural, when not ``one`` + s), for
    the replies of the verbs."""
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass(frozen=True, slots=True)
class Verb:
    args: tuple[str, ...]
    help: str
    options: tuple[str, ...] = ()
    """Optional, after the args: an upper-case one takes a value (``LIMIT``), a lower-case one
    is a flag that passes its own name (``all``)."""
    verifier: bool = False
    """room-ctl adds one more argument, the SCRAM verifier of a password (from ROOM_PASSWORD,
    or one it makes and prints once): the password never leaves room-ctl, and the broker's log
    and audit show ``(verifier)`` in its place."""

    def takes(self, count: int) -> bool:
        """Whether ``count`` arguments fit: every required one, and at most one per option."""
        required = len(self.args) + self.verifier
        return required <= count <= required + len(self.options)

    def usage(self, verb: str) -> str:
        shown = (f"[--{o}]" if o.islower() else f"[{o}]" for o in self.options)
        return " ".join((verb, *self.args, *shown))


VERBS: Final[dict[str, Verb]] = {
    "block": Verb(("USER",), "block USER: their room messages reach only the log"),
    "unblock": Verb(("USER",), "unblock USER"),
    "fire": Verb(("USER",), "disconnect USER (their client exits)"),
    "out": Verb(("USER",), f"move USER out of their room, back to {LOBBY}"),
    "remove": Verb(("ROOM",), f"delete ROOM and its history; its members go to {LOBBY}"),
    "private": Verb(("ROOM",), "make ROOM private (made if needed): only allowed users enter"),
    "open": Verb(("ROOM",), "make ROOM open again; whoever asked to join is let in"),
    "allow": Verb(("USER", "ROOM"), "let USER into private ROOM (at once, if USER asked)"),
    "deny": Verb(("USER", "ROOM"), "take USER off private ROOM's list, and out of it"),
    "requests": Verb((), "join requests waiting for the admin"),
    "reset": Verb((), f"disconnect every client and remove every room but {LOBBY}"),
    "close": Verb(
        (), "shut the broker down cleanly (--all: every broker on the backbone)", ("all",)
    ),
    "who": Verb((), "connected users, their rooms, and the blocklist"),
    "rooms": Verb((), "rooms with member counts; private ones with who may enter"),
    "stats": Verb((), "counters: clients, rooms, messages, rate, drops, uptime, size"),
    "audit": Verb((), f"the latest admin requests (LIMIT, default {AUDIT_SHOWN})", ("LIMIT",)),
    "invite": Verb(
        (),
        f"a one-time code for room-client register (valid HOURS, default {INVITE_HOURS})",
        ("HOURS",),
    ),
    "accounts": Verb((), "registered names: created, last login, banned"),
    "ban": Verb(("USER",), "ban USER's account: disconnected now, every login refused"),
    "unban": Verb(("USER",), "lift the ban of USER's account"),
    "register": Verb(
        ("USER",),
        "register USER with the password in ROOM_PASSWORD, or a new one printed once",
        verifier=True,
    ),
    "passwd": Verb(
        ("USER",),
        "set USER's password: ROOM_PASSWORD's, or a new one printed once",
        verifier=True,
    ),
}
"""Every verb the control channel knows (an unknown one is answered with this list)."""
