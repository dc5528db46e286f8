"""The connection to NATS and the thread it lives on, with the way back to the broker's loop.

The loop never waits for NATS on a hot path: it hands work over with ``soon`` and reads what
came back with ``take`` when ``wake_r`` is readable. ``call`` (wait for a result) is for the
start, the stop and rare admin changes (a block, a purge).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors

from broker.backbone.events import Event, LogNote
from broker.backbone.layout import CALL_TIMEOUT, MAKE_TIMEOUT, ORIGIN, UNREACHABLE, shown_urls
from broker.store.base import StoreError

T = TypeVar("T")

ELECTING = (
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
)
"""What nats-py raises while a stream has no leader: nothing was stored, try again."""


class Link:
    """The NATS connection, its asyncio thread, and the queue of events for the loop."""

    def __init__(self, urls: list[str], node: str, replicas: int) -> None:
        self._urls = urls
        self.replicas = replicas
        """Copies of the stream and of each bucket (R1 on one server, R3 on a cluster)."""
        self.url = shown_urls(urls)
        """The URLs to show: without the user and password they may carry."""
        self.node = node
        self.connected = False
        self.linked = 0.0
        """When the connection came back (monotonic): every lease looks lapsed for a while."""
        self.nc: Any = None
        self.js: Any = None
        self.kv: dict[str, Any] = {}
        self.events: deque[Event] = deque()
        self.wake_r, self._wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="backbone", daemon=True)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._last_error = ""

    # ---- from the broker's thread -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def call(self, coro: Awaitable[T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the backbone's thread and wait for it; ``StoreError`` if it fails."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except StoreError:
            raise
        except Exception as exc:
            future.cancel()
            raise StoreError(f"{UNREACHABLE} ({type(exc).__name__})") from None

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Hand ``fn(*args)`` to the backbone's thread without waiting."""
        self._loop.call_soon_threadsafe(fn, *args)

    def background(self, coro: Awaitable[Any]) -> None:
        """Run ``coro`` on the backbone's thread, from the broker's, without waiting."""
        self.soon(self.spawn, coro)

    def take(self) -> list[Event]:
        """Everything the backbone has said since the last call."""
        with contextlib.suppress(OSError):
            while self.wake_r.recv(4096):
                pass
        events = self.events
        taken = []
        while events:
            taken.append(events.popleft())
        return taken

    def stop(self, last: Callable[[], Awaitable[Any]]) -> None:
        """Run ``last`` on the thread (a farewell), then end the thread and the pipe."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self._stop(last), timeout=3.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=3.0)
        self.wake_r.close()
        self._wake_w.close()

    # ---- on the backbone's thread -------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``coro`` in the background, holding it until it is done (the loop does not)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def emit(self, event: Event) -> None:
        """Queue an event for the loop, waking it only when the queue was empty: the loop
        empties the wake-up pipe first and then the whole queue (``take``)."""
        events = self.events
        events.append(event)
        if len(events) == 1:
            with contextlib.suppress(OSError):  # a full pipe is already a wake-up
                self._wake_w.send(b"\0")

    async def connect(self) -> Any:
        """A connection that, once made, reconnects by itself for as long as it takes."""

        async def disconnected() -> None:
            if self.connected:
                self.connected = False
                line = f"backbone: lost {self.url}; room messages are refused meanwhile"
                self.emit(LogNote(line))

        async def reconnected() -> None:
            self.connected = True
            self.linked = time.monotonic()
            now = shown_urls([self.nc.connected_url.geturl()])
            self.emit(LogNote(f"backbone: reconnected to {now}"))

        async def error(exc: Exception) -> None:
            """nats-py reports every failed (re)connect here: the disconnect line says enough
            later on, but a start that fails says why (refused, or bad credentials)."""
            if not self._last_error:  # the first says why (a refusal, bad credentials)
                self._last_error = str(exc).strip() or type(exc).__name__

        self.nc = await nats.connect(
            servers=self._urls,
            name=f"room-broker {self.node}",
            connect_timeout=2,
            reconnect_time_wait=0.25,
            max_reconnect_attempts=-1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        self.connected = True
        self.js = self.nc.jetstream(timeout=CALL_TIMEOUT)
        return self.nc

    @staticmethod
    async def patient(make: Callable[[], Awaitable[T]]) -> T:
        """``make()``, made again while a stream or bucket has no leader (a NATS server of the
        cluster died and the others are electing one, usually within a few seconds): the
        caller's timeout bounds it. Not after a timeout: that request may have had its effect."""
        while True:
            try:
                return await make()
            except ELECTING:
                await asyncio.sleep(0.1)

    @staticmethod
    async def making(make: Callable[[], Awaitable[T]]) -> T:
        """``make()`` (creating a stream or bucket: the same again does no harm), made again
        while the cluster elects leaders or is slow to place replicas, for ``MAKE_TIMEOUT``."""
        deadline = time.monotonic() + MAKE_TIMEOUT
        while True:
            try:
                return await make()
            except (*ELECTING, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)

    async def bucket(self, name: str, ttl: float | None = None) -> Any:
        """Make (or open) a key-value bucket with ``replicas`` copies, kept in ``kv``. A bucket
        made before with another replica count is changed to this one (JetStream moves it)."""
        return await self.making(lambda: self._bucket(name, ttl))

    async def _bucket(self, name: str, ttl: float | None) -> Any:
        try:
            kv = await self.js.create_key_value(bucket=name, ttl=ttl, replicas=self.replicas)
        except nats.js.errors.BadRequestError:  # exists, made with other settings
            config = (await self.js.stream_info(f"KV_{name}")).config
            if config.num_replicas != self.replicas:
                config.num_replicas = self.replicas
                await self.js.update_stream(config)
            kv = await self.js.key_value(name)
        self.kv[name] = kv
        return kv

    @property
    def last_error(self) -> str:
        """Why the first connect failed, as nats-py said it ('' if it did not)."""
        return self._last_error

    async def publish(self, subject: str, body: bytes) -> None:
        """Best effort (presence, direct messages), like those on one broker."""
        with contextlib.suppress(Exception):
            await self.nc.publish(subject, body, headers={ORIGIN: self.node})

    async def _stop(self, last: Callable[[], Awaitable[Any]]) -> None:
        if self._tasks:  # releases and writes: let them finish
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await last()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        # nats-py leaves tasks of its own (consumer heartbeat checks): end them here, or the
        # interpreter complains about each at exit.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
