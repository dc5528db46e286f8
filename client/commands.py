"""The slash commands a user types (``/join``, ``/who``, ``/msg``...), each handed to the part of
the session it concerns; ``HELP`` lists them for ``/help`` and the terminal's completion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from broker.config import HISTORY
from broker.wire.protocol import LOBBY, NAME_RULE, ListRooms, ListUsers, valid_name
from client.delivery import Delivery
from client.effects import Effect
from client.lines import failure, table
from client.outbox import Outbox
from client.roster import Roster

HELP: Final = (
    ("/join ROOM", "move to ROOM (it is created if new)"),
    ("/leave", f"go back to {LOBBY}"),
    ("/rooms", "list the rooms and their member counts"),
    ("/who [ROOM]", "list who is connected, everywhere or in ROOM"),
    ("/msg USER TEXT", "send TEXT to USER alone (a direct message, not stored)"),
    ("/history [N]", f"show the last N messages of this room (default {HISTORY})"),
    ("/passwd", "change your account's password (asked for on the terminal)"),
    ("/help", "show this list"),
    ("/exit", "leave the chat (also Ctrl-D)"),
    ("//text", "send a message that starts with /"),
)


PASSWD_ELSEWHERE: Final = (
    "/passwd asks for the new password on a terminal: use room-client join there "
    "(or ask the admin: room-ctl passwd NAME)"
)


class Commands:
    """Checks a command's arguments, then asks the part that does it; ``leave`` is ``/exit``."""

    def __init__(
        self,
        delivery: Delivery,
        roster: Roster,
        outbox: Outbox,
        leave: Callable[[float], list[Effect]],
    ) -> None:
        self.delivery = delivery
        self.roster = roster
        self.outbox = outbox
        self.leave = leave

    def run(self, line: str, now: float) -> list[Effect]:
        """One line that starts with ``/`` (but not ``//``)."""
        command, *args = line.split()
        match command, args:
            case "/join", [room]:
                if not valid_name(room):
                    return [failure(f"not a room name: {room!r} (a name is {NAME_RULE})")]
                return [self.delivery.join(room, now)]
            case "/join", _:
                return [failure("usage: /join ROOM")]
            case "/leave", []:
                return [self.delivery.leave(now)]
            case "/rooms", []:
                return [self.roster.ask(ListRooms(), now)]
            case "/who", []:
                return [self.roster.ask(ListUsers(room=""), now)]
            case "/who", [room]:
                if not valid_name(room):
                    return [failure(f"not a room name: {room!r} (a name is {NAME_RULE})")]
                return [self.roster.ask(ListUsers(room=room), now)]
            case "/msg", _:
                return self._tell(line, now)
            case "/history", [] | [_]:
                return self._history(args, now)
            case "/help", []:
                return [*table(list(HELP))]
            case "/exit" | "/quit", []:
                return self.leave(now)
            case "/passwd", _:  # the terminal's front end asks for the password itself
                return [failure(PASSWD_ELSEWHERE)]
            case (("/leave" | "/rooms" | "/who" | "/help" | "/exit" | "/quit" | "/history"), _):
                usage = next((u for u, _ in HELP if u.split()[0] == command), command)
                return [failure(f"usage: {usage}")]
        return [failure(f"unknown command {command}: try /help")]

    def _tell(self, line: str, now: float) -> list[Effect]:
        """``/msg USER TEXT``: the text keeps its own spacing."""
        parts = line.split(None, 2)
        if len(parts) < 3 or not parts[2].strip():
            return [failure("usage: /msg USER TEXT")]
        to, text = parts[1].removeprefix("@"), parts[2]
        if not valid_name(to):
            return [failure(f"not a user name: {to!r} (a name is {NAME_RULE})")]
        return self.outbox.tell(to, text, now)

    def _history(self, args: list[str], now: float) -> list[Effect]:
        """``/history [N]``."""
        try:
            count = int(args[0]) if args else HISTORY
        except ValueError:
            count = 0
        if count <= 0:
            return [failure("usage: /history [N] with N a positive number")]
        return self.delivery.fetch_history(count, now)
