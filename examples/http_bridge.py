"""HTTP bridge: what an alerting system POSTs is said in a room.

    python examples/http_bridge.py --server tcp://127.0.0.1:5555 --name alerts \\
        --listen 127.0.0.1:8080
    curl -d '{"room": "ops", "text": "disk full on db1"}' http://127.0.0.1:8080/say

``POST /say`` with the JSON object ``{"room": ROOM, "text": TEXT}`` answers 200 and
``{"room": ROOM, "seq": N}`` once the message is stored (N is its number in the room); 400 and
``{"error": WHY}`` when the body is not such an object; a refusal's ``{"code", "reason"}`` (the
protocol's code: ``too_long``, ``bad_text``, ``bad_room``...) with 429 for ``rate_limited``, 503
for ``unavailable`` (also when the broker does not answer within 10 s: the message may still be
stored later), else 422; 403 for a private room, 503 once the session is over. Ctrl-C or
SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from client.bot import ChatError, Client, Code, JoinRequested, Refused

SAY_WAIT = 10.0
"""Seconds a request waits for the broker's answer."""
STATUS = {Code.RATE_LIMITED: 429, Code.UNAVAILABLE: 503}
"""HTTP status of a refusal by its code; any other refusal is 422."""


def handler(chat: Client) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def say(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict) or set(body) != {"room", "text"}:
            return web.json_response({"error": 'expected {"room": ..., "text": ...}'}, status=400)
        room, text = body["room"], body["text"]
        if not isinstance(room, str) or not isinstance(text, str):
            return web.json_response({"error": "room and text must be strings"}, status=400)
        try:
            async with asyncio.timeout(SAY_WAIT):
                ack = await chat.say(text, room=room)
        except Refused as exc:
            answer = {"code": str(exc.code), "reason": exc.reason}
            return web.json_response(answer, status=STATUS.get(exc.code, 422))
        except TimeoutError:
            answer = {"code": str(Code.UNAVAILABLE), "reason": "no answer from the broker"}
            return web.json_response(answer, status=503)
        except JoinRequested as exc:  # a private room the bridge is not allowed in
            return web.json_response({"error": exc.reason}, status=403)
        except ChatError as exc:  # the session is over (the admin fired the bridge...)
            return web.json_response({"error": exc.reason}, status=503)
        return web.json_response({"room": ack.room, "seq": ack.seq})

    return say


async def bridge(server: str, name: str, host: str, port: int) -> None:
    async with Client(server, name, history=0) as chat:
        app = web.Application()
        app.router.add_post("/say", handler(chat))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound = runner.addresses[0][1]
            print(f"http_bridge: POST to http://{host}:{bound}/say (as {name})", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="tcp://127.0.0.1:5555", help="the broker's ROUTER")
    parser.add_argument("--name", default="alerts", help="the bridge's user name")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (port 0: any)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(bridge(args.server, args.name, host, int(port)))
        except (ChatError, OSError) as exc:  # no broker, or the port is taken
            print(f"http_bridge: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
