"""``room-web``'s server: the page's static files, and a WebSocket per browser tab (aiohttp).

Each WebSocket speaks the small JSON protocol of docs/web.md. Its first message opens a ``Tab``
(``hello``, or ``register`` a name first; ``client.web.signin``) or comes back to one (``resume``,
with the tab's token); later ones are what the user typed. What the tab shows goes out through a
``Socket``, which reads the tab's buffer at the pace of its browser, so a slow browser holds up
nobody else; a socket that floods the gateway is closed, and its page comes back with ``resume``
and gets what it missed from the tab's buffer.

Checks a browser cannot get around: the WebSocket's ``Origin`` must be this gateway's own host
or one of ``--allow-origin``; a frame may carry at most the broker's message limit (plus the
JSON around it); every response has a strict Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from broker.config import FRAME_OVERHEAD, Exit
from client.web import signin
from client.web.signin import count
from client.web.tab import Tab, Upstream, encode

SEND_QUEUE: Final = 100
"""Messages other than lines and state (a welcome, errors) queued for one WebSocket; a browser
that lets more pile up is closed (its page resumes)."""
FRAMES_PER_SECOND: Final = 20.0
FRAMES_BURST: Final = 60
"""Frames a browser may send at once, then per second; more closes its socket."""
WS_HEARTBEAT: Final = 20.0
"""Seconds between the gateway's WebSocket pings; a browser that does not answer within half of
it is gone (a closed tab says so at once; this finds a lost network). Long, so that a gateway
busy for a moment does not take its browsers for gone."""
OPEN_WAIT: Final = 10.0
"""Seconds a new WebSocket has to say ``hello``, ``register`` or ``resume`` (its page's own time:
not the time the gateway waits for the broker)."""
WEB: Final = "room-web"
"""The program's name, which starts every line it writes."""

CLOSE_SLOW: Final = 4001
CLOSE_FLOOD: Final = 4002
CLOSE_REPLACED: Final = 4003
CLOSE_RESTART: Final = 1012
"""WebSocket close codes (docs/web.md): too slow, flooding, another tab took over, restart."""

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC: Final = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/style.css": ("style.css", "text/css"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``room-web`` was started with, beyond the way to the broker."""

    max_message: int
    """The broker's ``--max-message``: a frame may carry this much text."""
    allow_origins: frozenset[str] = frozenset()
    max_sessions: int = 1000
    metrics: tuple[str, int] | None = None
    """Where to serve ``/metrics`` (``--metrics``), if anywhere."""

    @property
    def max_frame(self) -> int:
        """A legal message as JSON: every ``"`` and ``\\`` of its text written as two bytes."""
        return 2 * self.max_message + FRAME_OVERHEAD


@dataclass(slots=True)
class Counts:
    """What the gateway did since it started, for ``--metrics`` (``metrics``)."""

    sessions: int = 0
    """Tabs opened (``hello``, or a ``resume`` of a tab this gateway no longer holds)."""
    frames_in: int = 0
    """WebSocket messages from browsers."""
    frames_out: int = 0
    """WebSocket messages to browsers."""
    closes: dict[int, int] = field(default_factory=dict)
    """WebSockets ended, by close code (1006: no close frame, the connection was lost)."""


class Socket:
    """One WebSocket's sending side: the task that writes out its tab's lines, at the pace the
    browser reads them, and a few other messages (welcome, state, error) before them."""

    def __init__(self, ws: web.WebSocketResponse, counts: Counts) -> None:
        self.ws = ws
        self.counts = counts
        self.queue: deque[str] = deque()
        """Messages other than lines and state, sent before the next line."""
        self.state: str | None = None
        """The newest state not yet sent: an older one is replaced, never queued."""
        self.tab: Tab | None = None
        self.cursor = 0
        """The number of the last line of ``tab`` sent."""
        self.closing = False
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write())
        self._closer: asyncio.Task[bool] | None = None
        """The task closing the socket, once one is (held, so that it runs to its end)."""

    def send(self, text: str) -> None:
        """Queue ``text``; a socket that lets too many pile up is closed instead."""
        if self.closing:
            return
        if len(self.queue) >= SEND_QUEUE:
            self.close(CLOSE_SLOW, "too far behind")
            return
        self.queue.append(text)
        self._wake.set()

    def show_state(self, text: str) -> None:
        self.state = text
        self._wake.set()

    def follow(self, tab: Tab, after: int) -> None:
        """Send ``tab``'s lines numbered above ``after``, then each new one, then its end."""
        self.tab, self.cursor = tab, after
        self._wake.set()

    def notify(self) -> None:
        self._wake.set()

    def replaced(self) -> None:
        self.close(CLOSE_REPLACED, "continued in another tab")

    def close(self, code: int, reason: str) -> None:
        """Close now, whatever is unsent."""
        if self._closer is not None:
            return
        self.closing = True
        self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=code, message=reason.encode())
        )

    async def stop(self) -> None:
        """End the writer, and let a close that has begun finish: the handler's return ends the
        connection, and one cut while the browser still sends resets it, losing the close code
        the browser was about to read (the flood test saw 1006 for 4002). A browser that never
        answers the close is cut after aiohttp's close timeout."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        if self._closer is not None:
            with contextlib.suppress(Exception):
                await self._closer

    def _next(self) -> tuple[str | None, bool]:
        """What to send next, if anything, and whether it is the tab's end."""
        if self.queue:
            return self.queue.popleft(), False
        if self.state is not None:
            state, self.state = self.state, None
            return state, False
        tab = self.tab
        if tab is None:
            return None, False
        if self.cursor < tab.shown:
            self.cursor, text = tab.line_after(self.cursor)
            return text, False
        return tab.ended, tab.ended is not None

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await self._wake.wait()
                self._wake.clear()
                while (item := self._next())[0] is not None:
                    await self.ws.send_str(item[0])
                    self.counts.frames_out += 1
                    if item[1]:
                        self.closing = True
                        await self.ws.close()
                        return


class Bucket:
    """A token bucket: ``take`` is False once a browser sends faster than it may."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def origin_allowed(request: web.Request, allowed: frozenset[str]) -> bool:
    """A browser's WebSocket must come from a page of this host (or of ``--allow-origin``);
    a client that sends no ``Origin`` is no browser, and no page can use it against a user."""
    origin = request.headers.get("Origin")
    if origin is None or origin.rstrip("/") in allowed:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


class Gateway:
    """The tabs, and the aiohttp application that serves them."""

    def __init__(self, upstream: Upstream, settings: Settings) -> None:
        self.upstream = upstream
        self.settings = settings
        self.tabs: dict[str, Tab] = {}
        self.sockets: set[Socket] = set()
        self.counts = Counts()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_headers])
        for path in STATIC:
            app.router.add_get(path, self._static)
        app.router.add_get("/favicon.ico", _no_content)
        app.router.add_get("/ws", self._websocket)
        return app

    async def close(self) -> None:
        """Tell every page the gateway restarts, and drop every session without ``Quit``."""
        for sock in list(self.sockets):
            sock.close(CLOSE_RESTART, "the gateway is restarting")
        await asyncio.gather(*(tab.close() for tab in list(self.tabs.values())))

    # ---- HTTP ---------------------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.Response:
        name, kind = STATIC[request.path]
        body = resources.files(__package__).joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not origin_allowed(request, self.settings.allow_origins):
            raise web.HTTPForbidden(text="room-web: WebSocket from another site refused\n")
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_frame, heartbeat=WS_HEARTBEAT)
        await ws.prepare(request)
        counts = self.counts
        sock = Socket(ws, counts)
        self.sockets.add(sock)
        tab: Tab | None = None
        bucket = Bucket(FRAMES_PER_SECOND, FRAMES_BURST)
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OPEN_WAIT) as opening:
                    async for msg in ws:
                        counts.frames_in += 1
                        if msg.type is not WSMsgType.TEXT:
                            break  # binary, or an error such as a frame over the limit
                        if not bucket.take():
                            sock.close(CLOSE_FLOOD, "too many messages")
                            break
                        data = _parse(msg.data)
                        if tab is None:
                            del msg  # it and ``data`` may hold a password: held no longer
                            # The page's time stops while an open waits for the broker (a
                            # registration, a login: each has its own timeout).
                            left = (opening.when() or 0.0) - loop.time()
                            opening.reschedule(None)
                            tab = await self._open(data, sock)
                            data = {}
                            if tab is None:
                                opening.reschedule(loop.time() + left)
                        elif data.get("t") == "input" and isinstance(data.get("text"), str):
                            tab.feed(data["text"])
        finally:
            self.sockets.discard(sock)
            if tab is not None:
                tab.detach(sock)
            await sock.stop()
            code = 1000 if ws.close_code is None else ws.close_code  # open: aiohttp closes it
            counts.closes[code] = counts.closes.get(code, 0) + 1
        return ws

    # ---- opening a tab ------------------------------------------------------------------------

    async def _open(self, data: dict[str, Any], sock: Socket) -> Tab | None:
        """``hello``, ``register`` or ``resume`` (``client.web.signin``): the tab, attached to
        ``sock``; None (and an ``error`` sent) if there is none yet."""
        token = data.get("token")
        if data.get("t") == "resume" and isinstance(token, str) and token in self.tabs:
            tab = self.tabs[token]
            tab.attach(sock, count(data.get("after")))
            return tab
        req = signin.request(data)
        if isinstance(req, str):
            sock.send(_error(req))
            return None
        if len(self.tabs) >= self.settings.max_sessions:
            sock.send(_error("the gateway is full: try again later"))
            return None
        started = await signin.start(self.upstream, req, self._forget)
        if isinstance(started, str):
            sock.send(_error(started))
            return None
        self.tabs[started.token] = started
        self.counts.sessions += 1
        started.attach(sock, 0)
        return started

    def _forget(self, tab: Tab) -> None:
        if self.tabs.get(tab.token) is tab:
            del self.tabs[tab.token]


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error(text: str) -> str:
    return encode({"t": "error", "text": text})


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(HEADERS)
        raise
    if not response.prepared:  # a WebSocket has sent its headers already
        response.headers.update(HEADERS)
    return response


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


# ---- running it ---------------------------------------------------------------------------------


def serve(host: str, port: int, upstream: Upstream, settings: Settings) -> int:
    """Serve until SIGINT or SIGTERM; the exit code."""
    try:
        return asyncio.run(_serve(host, port, upstream, settings))
    except KeyboardInterrupt:
        return int(Exit.OK)


async def _serve(host: str, port: int, upstream: Upstream, settings: Settings) -> int:
    gateway = Gateway(upstream, settings)
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        print(f"{WEB}: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return int(Exit.ERROR)
    exporter: web.AppRunner | None = None
    if settings.metrics is not None:
        from client.web import metrics  # only with --metrics: prometheus_client

        try:
            exporter, url = await metrics.serve(gateway, *settings.metrics)
        except OSError as exc:
            await runner.cleanup()
            mhost, mport = settings.metrics
            at = f"[{mhost}]:{mport}" if ":" in mhost else f"{mhost}:{mport}"
            why = os.strerror(exc.errno) if exc.errno else exc.strerror  # asyncio's is long
            print(f"{WEB}: cannot serve metrics on {at}: {why}", file=sys.stderr)
            return int(Exit.ERROR)
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    where = ", ".join(upstream.servers)
    print(f"{WEB}: open http://{shown}:{bound}/ in a browser (broker {where})", flush=True)
    if exporter is not None:
        print(f"{WEB}: metrics at {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await gateway.close()
        await runner.cleanup()
        if exporter is not None:
            await exporter.cleanup()
        upstream.ctx.destroy(linger=0)
    return int(Exit.OK)
