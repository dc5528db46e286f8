"""Echo: answers each room message that begins ``!echo `` with the rest of it, in the same room.

    python examples/echo_bot.py --server tcp://127.0.0.1:5555 --room ops --name echo

Anything else it ignores: other messages, its own, and the room's history (it answers only what
is said while it is there). Ctrl-C leaves the chat and ends it (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from client.bot import ChatError, Client, Disconnected, Message

PREFIX = "!echo "


async def echo(server: str, room: str, name: str) -> int:
    async with Client(server, name, room=room, history=0) as chat:
        print(f"echo_bot: {name} in {room}; say '{PREFIX}TEXT'", flush=True)
        async for event in chat:
            if isinstance(event, Message) and not event.own and event.text.startswith(PREFIX):
                try:
                    await chat.say(event.text.removeprefix(PREFIX), room=event.room)
                except ChatError as exc:  # refused (too fast, blocked...): say so, carry on
                    print(f"echo_bot: not echoed: {exc}", file=sys.stderr, flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="tcp://127.0.0.1:5555", help="the broker's ROUTER")
    parser.add_argument("--room", default="public", help="the room to echo in")
    parser.add_argument("--name", default="echo", help="the bot's user name")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the chat was left cleanly
        try:
            return asyncio.run(echo(args.server, args.room, args.name))
        except ChatError as exc:  # could not start, or the broker ended the session
            print(f"echo_bot: {exc}", file=sys.stderr)
            return exc.exit_code if isinstance(exc, Disconnected) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
