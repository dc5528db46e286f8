"""The real programs as child processes, over real sockets, with a timeout on every wait.

Every process is started through the same Python as the tests, reads no terminal, and is killed at
teardown if it has not exited. Every wait has a timeout, so no test can hang.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import zmq

from broker.wire import protocol as p
from client.keyring import Keyring
from client.sockets import log_in

WAIT = 10.0
"""Seconds any single expectation may take before the test fails."""

_LISTENING = re.compile(r'listening: router ([^\s"]+) pub ([^\s"]+) control ([^\s"]+)')
"""The broker's first line, as text or inside a JSON status record."""


def _cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-c", f"from {module} import main; main()", *args]


class Proc:
    """A child process whose output lines are collected by a thread, to wait on with timeouts."""

    def __init__(self, argv: list[str], *, stdin: bool = False, env: dict[str, str] | None = None):
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        """Output lines, then None at the end of the output (the process has ended)."""
        self.ended = False
        self.seen: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self.lines), daemon=True),
            threading.Thread(target=self._collect_err, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: queue.Queue[str | None]) -> None:
        for line in stream:
            sink.put(line.rstrip("\n"))
        sink.put(None)

    def _collect_err(self) -> None:
        for line in self.popen.stderr:
            self.err.append(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait for an output line matching ``pattern`` (a regex, searched); return its match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; saw {self.seen[-15:]}; "
                    f"stderr {self.err[-5:]}"
                )
            try:
                line = None if self.ended else self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:  # no line can come now: say so at once, not at the deadline
                self.ended = True
                self._threads[1].join(WAIT)
                raise AssertionError(
                    f"no line matching {pattern!r}: the output ended (exit code "
                    f"{self.popen.poll()}); saw {self.seen[-15:]}; stderr {self.err[-5:]}"
                )
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m

    def started(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """``expect`` the line that says the process is up; if it never comes, the process is
        killed before the failure is raised: nobody else holds it to stop it."""
        try:
            return self.expect(pattern, timeout)
        except AssertionError:
            self.kill()
            raise

    def drain(self, quiet: float = 0.3) -> list[str]:
        """Collect lines until none arrives for ``quiet`` seconds."""
        got: list[str] = []
        while True:
            try:
                line = None if self.ended else self.lines.get(timeout=quiet)
            except queue.Empty:
                return got
            if line is None:
                self.ended = True
                return got
            self.seen.append(line)
            got.append(line)

    def wait(self, timeout: float = WAIT) -> int:
        """The exit code; by then ``err`` holds every line the process wrote to stderr."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit within {timeout}s") from None
        self._threads[1].join(WAIT)  # the stderr reader ends at end of file, just after exit
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()


ANY_PORT = "tcp://127.0.0.1:0"


def broker_argv(
    data_dir: Path,
    *extra: str,
    router: str = ANY_PORT,
    pub: str = ANY_PORT,
    control: str = ANY_PORT,
) -> list[str]:
    """The command line of ``room-broker start`` (free loopback ports unless given)."""
    return _cmd(
        "broker.cli", "start", "--router", router, "--pub", pub, "--control", control,
        "--data-dir", str(data_dir), *extra,
    )  # fmt: skip


class BrokerProc(Proc):
    """``room-broker start`` on free loopback ports, or on the endpoints given."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        router: str = ANY_PORT,
        pub: str = ANY_PORT,
        control: str = ANY_PORT,
        start_wait: float = WAIT,
    ):
        """``start_wait``: seconds until it listens (a broker on a NATS cluster that has just
        started waits for its leaders first)."""
        self.data_dir, self.extra, self.env, self.start_wait = data_dir, extra, env, start_wait
        argv = broker_argv(data_dir, *extra, router=router, pub=pub, control=control)
        super().__init__(argv, env=env)
        m = self.started(_LISTENING.pattern, start_wait)
        self.router, self.pub, self.control = m.group(1), m.group(2), m.group(3)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def kill9(self) -> None:
        """SIGKILL: no goodbyes, no last commit; only what was committed survives."""
        assert self.popen.poll() is None, "the broker had already exited"
        self.kill()

    def restart(self, *extra: str) -> BrokerProc:
        """A new broker on the same endpoints and data dir (after ``kill9`` or ``stop``);
        the same extra arguments unless others are given."""
        return BrokerProc(
            self.data_dir, *(extra or self.extra), env=self.env,
            router=self.router, pub=self.pub, control=self.control, start_wait=self.start_wait,
        )  # fmt: skip


class ClientProc(Proc):
    """``room-client join`` in piped mode."""

    def __init__(self, server: str, name: str, *extra: str, env: dict[str, str] | None = None):
        super().__init__(
            _cmd("client.cli", "join", "--server", server, "--name", name, *extra),
            stdin=True,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def close_input(self) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.close()


class ClientFactory:
    """Starts clients against one broker; ``join`` waits until the client is in its room."""

    def __init__(self, broker: BrokerProc):
        self.broker = broker
        self.started: list[ClientProc] = []

    def start(self, name: str, *extra: str, password: str | None = None) -> ClientProc:
        """``password``: the account's, in ROOM_PASSWORD (a registered name)."""
        # The broker's data dir: a --curve broker's key is found there, and never the user's own.
        env = {"ROOM_DATA_DIR": str(self.broker.data_dir)}
        if password is not None:
            env["ROOM_PASSWORD"] = password
        client = ClientProc(self.broker.router, name, *extra, env=env)
        self.started.append(client)
        return client

    def join(self, name: str, room: str = "public", *extra: str) -> ClientProc:
        client = self.start(name, "--room", room, *extra)
        client.expect(rf"^\* joined {re.escape(room)}$")
        return client

    def kill_all(self) -> None:
        for c in self.started:
            c.kill()


def ctl(
    broker: BrokerProc | str,
    *args: str,
    timeout: float = WAIT,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``room-ctl`` against a broker (or a control endpoint) and return what it did. It finds
    the admin key in the broker's data dir (or ``data_dir``), as on the broker's host."""
    endpoint = broker if isinstance(broker, str) else broker.control
    home = data_dir or (None if isinstance(broker, str) else broker.data_dir)
    where = ["--data-dir", str(home)] if home is not None else []
    argv = _cmd("client.ctl", "--control", endpoint, *where, *args)
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


UNASKED = (p.Ping, p.RoomKey)
"""What the broker sends a client that answers no request: heartbeats, and room keys (they
follow a room's members at each send)."""


class Replies:
    """The broker's replies on one raw DEALER, one message at a time (a body is a batch). The
    room keys among them go on ``ring``, so that a raw SUB beside this DEALER can read a
    sealing broker's PUB (``Listener``); bodies a key opens late wait in ``opened``."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.pending: deque[p.ServerMsg] = deque()
        self.ring = Keyring()
        self.opened: deque[list[p.RoomEvent]] = deque()

    def next(self, timeout: float = WAIT) -> p.ServerMsg | None:
        """The next message within ``timeout``, or None."""
        if not self.pending:
            if not self.sock.poll(timeout * 1000):
                return None
            self._take(self.sock.recv())
        return self.pending.popleft()

    def pump(self) -> None:
        """Read what has arrived, keeping it for ``next``: the keys among it reach ``ring``."""
        while self.sock.poll(0):
            self._take(self.sock.recv())

    def _take(self, body: bytes) -> None:
        for msg in p.decode_server(body):
            if isinstance(msg, p.Welcome):
                self.ring.sealed = msg.sealed
            elif isinstance(msg, p.RoomKey):
                self.opened.extend(self.ring.add(msg, time.monotonic()))
            self.pending.append(msg)

    def expect(self, kinds: type | tuple[type, ...], timeout: float = WAIT) -> p.ServerMsg:
        """The next message of ``kinds``, skipping others (heartbeats, notices)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.next(left)
            if isinstance(msg, kinds):
                return msg
        raise AssertionError(f"no {kinds} from the broker within {timeout}s")


def unconnected(ctx: zmq.Context, kind: int, **curve: bytes) -> zmq.Socket:
    """A socket with linger 0; ``curve`` gives public, secret and server keys (else plain)."""
    sock = ctx.socket(kind)
    sock.linger = 0
    if curve:
        sock.curve_publickey = curve["public"]
        sock.curve_secretkey = curve["secret"]
        sock.curve_serverkey = curve["server"]
    return sock


def socket(ctx: zmq.Context, kind: int, endpoint: str, **curve: bytes) -> zmq.Socket:
    """A connected socket; ``curve`` gives public, secret and server keys (else plain)."""
    sock = unconnected(ctx, kind, **curve)
    sock.connect(endpoint)
    return sock


MIDS = itertools.count(1)
"""Message ids for raw clients, unique across a test run."""


class Raw:
    """A bare DEALER that says hello, and then sends and waits for protocol messages."""

    def __init__(self, ctx: zmq.Context, router: str, name: str, room: str = p.LOBBY):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.rcvhwm = 0  # keep every Ack of a flood
        self.sock.sndtimeo = int(WAIT * 1000)  # a send never blocks a test for long
        self.sock.connect(router)
        self.replies = Replies(self.sock)
        self.send(p.Hello(p.VERSION, name))
        welcome = self.expect(p.Welcome)
        assert isinstance(welcome, p.Welcome)
        self.welcome = welcome
        """What a subscriber of this session logs in with (``subscriber``)."""
        if room != p.LOBBY:
            self.send(p.Join(room))
            self.expect(p.Joined)

    def send(self, msg: p.ClientMsg) -> None:
        self.sock.send(p.encode(msg))

    def recv(self, timeout: float) -> p.ServerMsg | None:
        """The next message within ``timeout``, or None."""
        return self.replies.next(timeout)

    def expect(self, kind: type, timeout: float = WAIT) -> p.ServerMsg:
        """Wait for a message of ``kind``, skipping others (heartbeats, notices)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(min(left, 0.1))
            if isinstance(msg, kind):
                return msg
            assert not isinstance(msg, p.Error | p.Goodbye), msg
            self.send(p.Ping())  # stay alive at the broker while waiting
        raise AssertionError(f"no {kind.__name__} within {timeout}s")

    def say(self, text: str, mid: int = 0) -> p.Ack:
        self.send(p.Say(text, mid or next(MIDS)))
        ack = self.expect(p.Ack | p.Refused)
        assert isinstance(ack, p.Ack), ack
        return ack

    def history(self, room: str = p.LOBBY) -> list[p.Posted]:
        """Every stored message of ``room``, oldest first."""
        got: list[p.Posted] = []
        while True:
            self.send(p.Fetch(room, after=got[-1].seq if got else 0))
            batch = self.expect(p.Messages)
            assert isinstance(batch, p.Messages)
            if not batch.messages:
                return got
            got += batch.messages

    def subscriber(self, ctx: zmq.Context, pub: str) -> zmq.Socket:
        """A SUB of this session (logged in with its name and secret), connected to ``pub``."""
        return subscriber(ctx, pub, self.welcome)

    def close(self) -> None:
        self.sock.close(0)


def subscriber(ctx: zmq.Context, pub: str, welcome: p.Welcome) -> zmq.Socket:
    """A SUB of the session ``welcome`` began, connected to ``pub``: only a session's
    subscribers pass the PUB's handshake."""
    sock = unconnected(ctx, zmq.SUB)
    log_in(sock, welcome)
    sock.connect(pub)
    return sock


class Listener:
    """A raw SUB on ``room`` beside ``user``'s DEALER, live when made: it reads the room's
    events as a member does, opened with the keys ``user`` gets (a sealing broker sends them on
    the DEALER), and pings for ``user`` so that it is never dropped as silent. ``user`` must be
    in ``room``, and stays open as long as this is read."""

    def __init__(self, ctx: zmq.Context, pub: str, user: Raw, room: str) -> None:
        self.user, self.room = user, room
        self.sub = user.subscriber(ctx, pub)
        self.sub.rcvhwm = 0
        self.sub.subscribe(p.topic(room))
        self._pinged = time.monotonic()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:  # Sync until a Synced arrives: the slow joiner
            nonce = next(MIDS)
            user.send(p.Sync(nonce))
            if self.heard(lambda e, n=nonce: isinstance(e, p.Synced) and e.nonce == n, 0.2):
                return
        raise AssertionError(f"no subscription to {room} within {WAIT}s")

    def events(self, timeout: float) -> list[p.RoomEvent] | None:
        """The events of the next readable body within ``timeout``, or None."""
        deadline = time.monotonic() + timeout
        replies = self.user.replies
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.user.sock, zmq.POLLIN)
        while True:
            replies.pump()
            if replies.opened:
                return replies.opened.popleft()
            now = time.monotonic()
            if now - self._pinged > 0.5:
                self.user.send(p.Ping())
                self._pinged = now
            left = deadline - now
            if left <= 0:
                return None
            if self.sub in dict(poller.poll(min(left, 0.5) * 1000)):
                topic, body = self.sub.recv_multipart()
                events = replies.ring.open(topic, body, time.monotonic())
                if events is not None:
                    return events

    def heard(self, wanted: Callable[[p.RoomEvent], bool], timeout: float) -> bool:
        """Whether an event ``wanted`` arrives within ``timeout`` (others are passed over)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            events = self.events(left)
            if events is not None and any(wanted(e) for e in events):
                return True
        return False

    def posted(self, count: int, timeout: float = WAIT) -> list[p.Posted]:
        """The next ``count`` room messages (presence and markers passed over)."""
        got: list[p.Posted] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            events = self.events(deadline - time.monotonic())
            assert events is not None, f"{len(got)} of {count} messages arrived"
            got += [e for e in events if isinstance(e, p.Posted)]
        return got

    def close(self) -> None:
        self.sub.close(0)


def assert_all_acknowledged_stored_once(
    history: list[p.Posted], acked: dict[int, p.Ack], sent: dict[int, str]
) -> list[str]:
    """Every acknowledged message is stored under its number, numbering is dense, and the
    writer's messages are stored once each; returns the writer's texts in order."""
    stored = {m.seq: m for m in history}
    for mid, ack in acked.items():
        assert stored[ack.seq].text == sent[mid], f"acknowledged {sent[mid]} lost"
    assert sorted(stored) == list(range(1, len(stored) + 1))
    written = [m.text for m in stored.values() if m.sender == "writer"]
    assert len(written) == len(set(written)), "a message was stored twice"
    return written


# ---- a broker with a prelude, and a chatting pair ------------------------------------------------


class PreludedBroker(BrokerProc):
    """``room-broker start`` run after some Python (``prelude``) in the same process: a test can
    monkeypatch the broker's code, e.g. to make one handler raise."""

    def __init__(
        self,
        data_dir: Path,
        prelude: str,
        *extra: str,
        env: dict[str, str] | None = None,
        router: str = ANY_PORT,
        pub: str = ANY_PORT,
        control: str = ANY_PORT,
    ):
        self.data_dir, self.extra, self.env, self.prelude = data_dir, extra, env, prelude
        argv = broker_argv(data_dir, *extra, router=router, pub=pub, control=control)
        argv[2] = f"{prelude}\n{argv[2]}"  # after "python -c": the code that runs main()
        Proc.__init__(self, argv, env=env)
        m = self.started(_LISTENING.pattern)
        self.router, self.pub, self.control = m.group(1), m.group(2), m.group(3)

    def restart(self, *extra: str) -> PreludedBroker:
        return PreludedBroker(
            self.data_dir, self.prelude, *(extra or self.extra), env=self.env,
            router=self.router, pub=self.pub, control=self.control,
        )  # fmt: skip


class Canary:
    """Two users in one room, each with a live subscription: ``chat`` has them take turns saying
    something, and checks that it is acknowledged and published to both. The one not speaking
    pings, so that neither is ever dropped as silent."""

    def __init__(
        self, ctx: zmq.Context, broker: BrokerProc, room: str = "canary", prefix: str = "canary"
    ) -> None:
        self.room = room
        self.users = [Raw(ctx, broker.router, f"{prefix}{i}", room) for i in (1, 2)]
        self.listeners = [Listener(ctx, broker.pub, user, room) for user in self.users]
        self.said = 0

    def chat(self) -> p.Ack:
        """One message, acknowledged to its sender and published to both; returns the Ack."""
        self.said += 1
        speaker, other = self.users[self.said % 2], self.users[1 - self.said % 2]
        other.send(p.Ping())
        text = f"{self.room} still chatting {self.said}"
        ack = speaker.say(text)
        for listener in self.listeners:
            heard = listener.heard(
                lambda e: isinstance(e, p.Posted) and (e.seq, e.text) == (ack.seq, text), WAIT
            )
            assert heard, f"{text!r} (seq {ack.seq}) was acknowledged but not published"
        return ack

    def ping(self) -> None:
        """Both users show they are alive (a test busy elsewhere for seconds calls this)."""
        for user in self.users:
            user.send(p.Ping())

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
        for user in self.users:
            user.close()


# ---- room-web ------------------------------------------------------------------------------------


class WebProc(Proc):
    """``room-web`` for one broker, on a free loopback port unless ``listen`` names one;
    ``url`` is the page's address from its first line."""

    def __init__(self, broker: BrokerProc, *extra: str, listen: str = "127.0.0.1:0"):
        self.broker, self.extra = broker, extra
        env = {"ROOM_DATA_DIR": str(broker.data_dir)}  # a --curve broker's key is found there
        argv = _cmd("client.web.cli", "--listen", listen, "--server", broker.router, *extra)
        super().__init__(argv, env=env)
        self.url = self.started(r"open (http://\S+/) in a browser").group(1)
        self.listen = self.url.removeprefix("http://").rstrip("/")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait()

    def restart(self) -> WebProc:
        """A new ``room-web`` on the same port (after ``stop``)."""
        return WebProc(self.broker, *self.extra, listen=self.listen)
