"""Seen: answers ``!seen NAME`` with when it last saw NAME speak or enter, by direct message.

    python examples/seen_bot.py --server tcp://127.0.0.1:5555 --room ops --name seen

It remembers what it reads: the room's history that comes when it joins (so it knows who spoke
before it came), then every message and everyone who enters. Ask in the room or by direct
message (``/msg seen !seen bob``); the answer is a direct message to the asker, so the room is
not flooded. Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from client.bot import ChatError, Client, Direct, Entered, History, Message

ASK = "!seen "


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


async def seen(server: str, room: str, name: str, history: int) -> None:
    last: dict[str, str] = {}  # per user name, the last thing it was seen doing
    async with Client(server, name, room=room, history=history) as chat:
        print(f"seen_bot: {name} in {room}; ask '{ASK}NAME'", flush=True)
        async for event in chat:
            match event:
                case Message(own=False) | History(own=False):
                    last[event.sender] = f"in {event.room} at {when(event.ts)}: {event.text}"
                case Entered():
                    last[event.user] = f"entering {event.room} at {when(time.time())}"
            if isinstance(event, Message | Direct) and not event.own and event.text.startswith(ASK):
                who = event.text.removeprefix(ASK).strip()
                answer = f"{who} was last seen {last[who]}" if who in last else None
                with contextlib.suppress(ChatError):  # the asker left meanwhile
                    await chat.tell(event.sender, answer or f"I have not seen {who}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="tcp://127.0.0.1:5555", help="the broker's ROUTER")
    parser.add_argument("--room", default="public", help="the room to watch")
    parser.add_argument("--name", default="seen", help="the bot's user name")
    parser.add_argument("--history", type=int, default=100, help="messages read on joining")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(seen(args.server, args.room, args.name, args.history))
        except ChatError as exc:
            print(f"seen_bot: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
