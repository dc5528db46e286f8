"""The client library for programs (client.bot), its examples and docs/bots.md's first example:
real brokers and clients over loopback, each example as its own process, every wait bounded."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from procs import WAIT, BrokerProc, ClientFactory, Proc, ctl

from broker.config import Exit
from broker.security.keys import KeyDir
from broker.wire import protocol as p
from client.bot import (
    Client,
    Code,
    Direct,
    Disconnected,
    Entered,
    Error,
    Event,
    History,
    Joined,
    JoinRequested,
    Left,
    Message,
    Notice,
    Refused,
)
from client.botevents import event_of
from client.core import Session
from client.effects import Answered, Effect, Line, Send

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
E = TypeVar("E")


# ---- helpers ---------------------------------------------------------------------------------


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 45.0) -> None:
    """Run an async scenario on a fresh event loop, bounded as a whole too."""
    asyncio.run(asyncio.wait_for(scenario(), timeout))


async def next_event(chat: Client, kind: type[E], where: Callable[[E], bool] = lambda e: True) -> E:
    """The next event of ``kind`` that ``where`` accepts, within ``WAIT`` (others passed over)."""
    async with asyncio.timeout(WAIT):
        async for event in chat:
            if isinstance(event, kind) and where(event):
                return event
    raise AssertionError(f"the events ended before a {kind.__name__}")


async def expect(proc: Proc, pattern: str) -> re.Match[str]:
    """``proc.expect`` off the event loop, which goes on serving the client meanwhile."""
    return await asyncio.to_thread(proc.expect, pattern)


def python_env() -> dict[str, str]:
    """This checkout first on the path: an example runs as ``python examples/X.py``."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *([path] if path else [])])}


@pytest.fixture
def programs() -> Iterator[Callable[..., Proc]]:
    """Starts a Python file as its own process (``python FILE ARGS``); all killed at the end."""
    started: list[Proc] = []

    def start(path: Path, *args: str) -> Proc:
        proc = Proc([sys.executable, str(path), *args], env=python_env())
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def interrupt(proc: Proc) -> int:
    """Ctrl-C: SIGINT, then the exit code."""
    proc.popen.send_signal(signal.SIGINT)
    return proc.wait()


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON; the status and the JSON answer."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# ---- what the session gives a program, in memory ------------------------------------------------

T0 = 1000.0


def in_room(answers: bool = True) -> Session:
    """A session in ``public``, welcomed, joined and announced."""
    s = Session("bot", history=0, rng=random.Random(7), answers=answers)
    welcome = p.Welcome(p.VERSION, "bot", p.LOBBY, "tcp://127.0.0.1:1", "secret", 1.0)
    s.on_server(welcome, T0)
    s.on_server(p.Joined(p.LOBBY, 0), T0)
    s.on_room([p.Synced(p.LOBBY, s.sync_nonce or 0, 0)], T0)
    return s


def events(effects: list[Effect]) -> list[Event]:
    return [e for e in (event_of(x) for x in effects if isinstance(x, Line)) if e is not None]


def test_a_session_for_a_program_says_how_each_message_was_answered() -> None:
    s = in_room()
    said, out = s.say("/not a command", T0)
    assert [e.msg for e in out if isinstance(e, Send)] == [p.Say("/not a command", said)]
    ack = p.Ack(said, p.LOBBY, 1)
    assert [e for e in s.on_server(ack, T0) if isinstance(e, Answered)] == [Answered(said, ack)]
    refused, _ = s.say("x" * 5000, T0)
    out = s.on_server(p.Refused(refused, p.Code.TOO_LONG, "too long"), T0)
    assert [e for e in out if isinstance(e, Answered)] == [
        Answered(refused, None, p.Code.TOO_LONG, "too long")
    ]
    assert events(out) == []  # the refusal is say's to raise, not an event
    told, _ = s.tell("carol", "psst", T0)
    out = s.on_server(p.Refused(told, p.Code.NOT_CONNECTED, "carol is not connected"), T0)
    assert [(e.mid, e.code) for e in out if isinstance(e, Answered)] == [
        (told, p.Code.NOT_CONNECTED)
    ]
    plain = in_room(answers=False)  # room-client's session: as before
    mid, _ = plain.say("hi", T0)
    assert not [e for e in plain.on_server(p.Ack(mid, p.LOBBY, 1), T0) if isinstance(e, Answered)]


def test_the_session_lines_become_typed_events() -> None:
    s = in_room()
    out = s.on_room([p.Presence(p.LOBBY, "carol", p.PresenceKind.ENTERED)], T0)
    out += s.on_room([p.Posted(p.LOBBY, 1, T0, "carol", "hi")], T0)
    out += s.on_server(p.Told("carol", "bot", "psst", T0), T0)
    out += s.on_room([p.Presence(p.LOBBY, "carol", p.PresenceKind.LEFT)], T0)
    out += s.on_room([p.Presence(p.LOBBY, "dave", p.PresenceKind.BLOCKED)], T0)
    out += s.on_server(p.Error(p.Code.BUSY, "slow down", "fetch"), T0)
    assert events(out) == [
        Entered(p.LOBBY, "carol"),
        Message(p.LOBBY, "carol", "hi", T0, 1, False),
        Direct("carol", "bot", "psst", T0, False),
        Left(p.LOBBY, "carol"),
        Notice("dave was blocked", "blocked", p.LOBBY, "dave"),
        Error(p.Code.BUSY, "slow down", "fetch"),
    ]
    join = s.join("ops", T0)
    assert [e.msg for e in join if isinstance(e, Send)] == [p.Join("ops", 0)]
    out = s.on_server(p.Joined("ops", 1, [p.Posted("ops", 1, T0, "erin", "old")]), T0)
    out += s.on_room([p.Synced("ops", s.sync_nonce or 0, 1)], T0)
    assert events(out) == [
        Notice("history ops (1 message)", "history", "ops"),
        History("ops", "erin", "old", T0, 1, False),
        Joined("ops"),
    ]


# ---- the library -----------------------------------------------------------------------------


def test_join_say_tell_and_their_refusals(broker: BrokerProc, clients: ClientFactory) -> None:
    alice = clients.join("alice", "ops")

    async def scenario() -> None:
        async with Client(broker.router, "bot") as chat:
            assert (chat.name, chat.room, chat.state) == ("bot", "public", "connected")
            assert await chat.join("ops") == Joined("ops")
            assert chat.room == "ops"
            ack = await chat.say("hello ops")
            assert (ack.room, ack.seq) == ("ops", 1)
            await expect(alice, r"^\[ops\] bot: hello ops$")
            mine = await next_event(chat, Message)
            assert (mine.sender, mine.text, mine.seq, mine.own) == ("bot", "hello ops", 1, True)

            for text, code in [("x" * 5000, Code.TOO_LONG), ("two\nlines", Code.BAD_TEXT)]:
                with pytest.raises(Refused) as refused:
                    await chat.say(text)
                assert refused.value.code is code
            with pytest.raises(Refused) as refused:
                await chat.join("no room!")
            assert refused.value.code is Code.BAD_ROOM

            await chat.tell("alice", "psst")
            await expect(alice, r"^\[@alice\] bot: psst$")
            with pytest.raises(Refused) as refused:
                await chat.tell("nobody", "hello?")
            assert refused.value.code is Code.NOT_CONNECTED

            alice.send("/msg bot a word alone")
            told = await next_event(chat, Direct, lambda e: not e.own)
            assert (told.sender, told.to, told.text) == ("alice", "bot", "a word alone")
            alice.send("hello bot")
            said = await next_event(chat, Message, lambda e: not e.own)
            assert (said.room, said.sender, said.text, said.seq) == ("ops", "alice", "hello bot", 2)

            blocked = await asyncio.to_thread(ctl, broker, "block", "bot")
            assert blocked.returncode == 0, blocked.stderr
            with pytest.raises(Refused) as refused:
                await chat.say("can anyone hear me?")
            assert refused.value.code is Code.BLOCKED

            assert await chat.leave() == Joined("public")
            assert chat.room == "public"
        await expect(alice, r"^\* bot left ops$")  # the bot was in ops until it left for public

    run(scenario)


def test_history_then_who_enters_and_leaves(broker: BrokerProc, clients: ClientFactory) -> None:
    bob = clients.join("bob", "ops")
    for text in ("first", "second"):
        bob.send(text)
        bob.expect(rf"^\[ops\] bob: {text}$")

    async def scenario() -> None:
        async with Client(broker.router, "bot", room="ops", history=10) as chat:
            events: list[Event] = []
            while not events or not isinstance(events[-1], Joined):
                events.append(await next_event(chat, object))
            said = [(e.sender, e.text, e.seq) for e in events if isinstance(e, History)]
            assert said == [("bob", "first", 1), ("bob", "second", 2)]
            assert events[-1] == Joined("ops")
            assert not [e for e in events if isinstance(e, Message)]

            carol = clients.join("carol", "ops")
            assert await next_event(chat, Entered) == Entered("ops", "carol")
            carol.close_input()
            assert await next_event(chat, Left) == Left("ops", "carol")
            assert await asyncio.to_thread(carol.wait) == 0

    run(scenario)


def test_a_name_taken_is_refused_with_its_code(broker: BrokerProc, clients: ClientFactory) -> None:
    clients.join("alice")

    async def scenario() -> None:
        with pytest.raises(Refused) as refused:
            async with Client(broker.router, "alice"):
                pass
        assert refused.value.code is Code.NAME_TAKEN

    run(scenario)


def test_a_registered_name_logs_in_with_its_password(broker: BrokerProc) -> None:
    env = {"ROOM_PASSWORD": "correct horse battery"}
    made = ctl(broker, "register", "deployer", env=env)
    assert made.returncode == 0, made.stderr

    async def scenario() -> None:
        for password, code in ((None, Code.LOGIN_FIRST), ("wrong", Code.BAD_PASSWORD)):
            with pytest.raises(Refused) as refused:
                async with Client(broker.router, "deployer", password=password):
                    pass
            assert refused.value.code is code, refused.value
        async with Client(broker.router, "deployer", password=env["ROOM_PASSWORD"]) as chat:
            assert chat.name == "deployer" and chat.state == "connected"
            await chat.say("logged in")
            said = await next_event(chat, Message, lambda m: m.text == "logged in")
            assert said.sender == "deployer"
        who = ctl(broker, "accounts").stdout
        assert re.search(r"^deployer\s", who, re.M), who

    run(scenario)


def test_a_private_room_waits_for_the_admin(broker: BrokerProc, clients: ClientFactory) -> None:
    clients.join("alice", "ops")
    made = ctl(broker, "private", "ops")
    assert made.returncode == 0, made.stderr

    async def scenario() -> None:
        async with Client(broker.router, "bot") as chat:
            with pytest.raises(JoinRequested) as requested:
                await chat.join("ops")
            assert requested.value.room == "ops" and chat.room == "public"
            allowed = await asyncio.to_thread(ctl, broker, "allow", "bot", "ops")
            assert allowed.returncode == 0, allowed.stderr
            assert await next_event(chat, Joined, lambda e: e.room == "ops") == Joined("ops")
            assert (await chat.say("let in")).room == "ops"

    run(scenario)


def test_an_encrypting_broker_with_its_key(curve_broker: BrokerProc) -> None:
    key = KeyDir.of(curve_broker.data_dir).broker_public

    async def scenario() -> None:
        async with Client(curve_broker.router, "bot", server_key=str(key)) as chat:
            assert (await chat.say("sealed and encrypted")).seq == 1
            said = await next_event(chat, Message)
            assert (said.text, said.own) == ("sealed and encrypted", True)

    run(scenario)


def test_the_admin_firing_the_bot_ends_its_events(broker: BrokerProc) -> None:
    async def scenario() -> None:
        async with Client(broker.router, "bot") as chat:
            fired = await asyncio.to_thread(ctl, broker, "fire", "bot")
            assert fired.returncode == 0, fired.stderr
            with pytest.raises(Disconnected) as ended:
                async with asyncio.timeout(WAIT):
                    async for _ in chat:  # what came before, then the end
                        pass
            assert ended.value.exit_code == Exit.FIRED
            with pytest.raises(Disconnected):
                await chat.say("still here?")

    run(scenario)


def test_the_bot_resumes_when_the_broker_restarts(
    broker: BrokerProc, clients: ClientFactory
) -> None:
    alice = clients.join("alice", "ops")
    restarted: list[BrokerProc] = []

    async def scenario() -> None:
        async with Client(broker.router, "bot", room="ops") as chat:
            await next_event(chat, Joined)
            await asyncio.to_thread(broker.stop)
            lost = await next_event(chat, Notice, lambda e: e.what == "reconnecting")
            assert "restarting" in lost.text
            away = asyncio.create_task(chat.say("said while the broker was away"))
            restarted.append(await asyncio.to_thread(broker.restart))
            await next_event(chat, Notice, lambda e: e.what == "reconnected")
            assert await next_event(chat, Joined) == Joined("ops")
            ack = await asyncio.wait_for(away, WAIT)
            assert ack.room == "ops"
            await expect(alice, r"^\[ops\] bot: said while the broker was away$")

            alice.send("welcome back")  # alice resumes too (her client sends it once it has)
            said = await next_event(chat, Message, lambda e: not e.own)
            assert (said.sender, said.text, said.seq) == ("alice", "welcome back", ack.seq + 1)
            assert (await chat.say("and on we go")).seq == ack.seq + 2
            await expect(alice, r"^\[ops\] bot: and on we go$")

    try:
        run(scenario)
        assert alice.seen.count("[ops] bot: said while the broker was away") == 1
    finally:
        for proc in restarted:
            proc.stop()
            proc.kill()


# ---- the examples ------------------------------------------------------------------------------


def test_echo_bot_echoes_what_begins_with_echo_and_ends_on_ctrl_c(
    broker: BrokerProc, clients: ClientFactory, programs: Callable[..., Proc]
) -> None:
    alice = clients.join("alice", "ops")
    alice.send("!echo said before the bot came")
    alice.expect(r"^\[ops\] alice: !echo said before the bot came$")
    bot = programs(
        EXAMPLES / "echo_bot.py", "--server", broker.router, "--room", "ops", "--name", "echo"
    )
    bot.started(r"^echo_bot: echo in ops")
    alice.expect(r"^\* echo entered ops$")

    for line in ("not for the bot", "!echo hello, world", "!echo !echo again", "!echo done"):
        alice.send(line)
    alice.expect(r"^\[ops\] echo: done$")
    echoed = [line for line in alice.seen if line.startswith("[ops] echo: ")]
    # Not its own "!echo again", nor the history, nor what is not a command.
    assert echoed == ["[ops] echo: hello, world", "[ops] echo: !echo again", "[ops] echo: done"]

    assert interrupt(bot) == 0
    assert not [line for line in bot.err if "Traceback" in line], bot.err
    alice.expect(r"^\* echo left ops$")  # it left the chat: the name is free


def test_http_bridge_says_what_is_posted(
    broker: BrokerProc, clients: ClientFactory, programs: Callable[..., Proc]
) -> None:
    alice = clients.join("alice", "alerts")
    bridge = programs(
        EXAMPLES / "http_bridge.py",
        *("--server", broker.router, "--name", "bridge", "--listen", "127.0.0.1:0"),
    )
    url = bridge.started(r"^http_bridge: POST to (http://\S+/say)").group(1)

    def say(body: object) -> tuple[int, dict[str, Any]]:
        return post(url, json.dumps(body).encode())

    first = say({"room": "alerts", "text": "disk full on db1"})
    assert first == (200, {"room": "alerts", "seq": 1})
    alice.expect(r"^\[alerts\] bridge: disk full on db1$")
    assert say({"room": "alerts", "text": "and on db2"}) == (200, {"room": "alerts", "seq": 2})
    alice.expect(r"^\[alerts\] bridge: and on db2$")
    assert say({"room": "ops", "text": "elsewhere"}) == (200, {"room": "ops", "seq": 1})

    assert post(url, b"{not json")[0] == 400
    assert say({"room": "alerts"})[0] == 400
    assert say(["alerts", "text"])[0] == 400
    assert say({"room": "alerts", "text": 5})[0] == 400
    for body, code in [
        ({"room": "alerts", "text": "two\nlines"}, "bad_text"),
        ({"room": "alerts", "text": "x" * 5000}, "too_long"),
        ({"room": "not a room", "text": "hi"}, "bad_room"),
    ]:
        status, answer = say(body)
        assert (status, answer["code"]) == (422, code), answer

    assert ctl(broker, "private", "secret").returncode == 0
    assert say({"room": "secret", "text": "let me in"})[0] == 403

    assert say({"room": "alerts", "text": "still here"}) == (200, {"room": "alerts", "seq": 3})
    alice.expect(r"^\[alerts\] bridge: still here$")
    assert interrupt(bridge) == 0
    assert not [line for line in bridge.err if "Traceback" in line], bridge.err


def test_seen_bot_answers_from_history_and_what_it_saw(
    broker: BrokerProc, clients: ClientFactory, programs: Callable[..., Proc]
) -> None:
    bob = clients.join("bob", "ops")
    bob.send("the plan is ready")
    bob.expect(r"^\[ops\] bob: the plan is ready$")
    bob.close_input()
    assert bob.wait() == 0
    bot = programs(
        EXAMPLES / "seen_bot.py", "--server", broker.router, "--room", "ops", "--name", "seen"
    )
    bot.started(r"^seen_bot: seen in ops")

    carol = clients.join("carol", "ops")
    carol.send("!seen bob")  # bob spoke before the bot came: its history says so
    carol.expect(r"^\[@carol\] seen: bob was last seen in ops at [-\d: ]+UTC: the plan is ready$")
    dave = clients.join("dave", "ops")
    dave.send("/msg seen !seen carol")  # asked by direct message
    dave.expect(r"^\[@dave\] seen: carol was last seen in ops at [-\d: ]+UTC: !seen bob$")
    clients.join("erin", "ops")
    dave.send("!seen erin")  # in the room: after erin's entering, on the bot's one subscription
    dave.expect(r"^\[@dave\] seen: erin was last seen entering ops at [-\d: ]+UTC$")
    dave.send("!seen zed")
    dave.expect(r"^\[@dave\] seen: I have not seen zed$")
    assert interrupt(bot) == 0


def test_examples_are_short_files_that_say_what_they_do() -> None:
    files = sorted(EXAMPLES.glob("*.py"))
    assert [f.name for f in files] == ["echo_bot.py", "http_bridge.py", "seen_bot.py"]
    for file in files:
        text = file.read_text()
        assert text.startswith('"""') and len(text.splitlines()) <= 120, file.name


# ---- docs/bots.md --------------------------------------------------------------------------------


def test_the_first_example_of_docs_bots_md_runs_as_written(
    broker: BrokerProc, clients: ClientFactory, programs: Callable[..., Proc], tmp_path: Path
) -> None:
    page = (ROOT / "docs" / "bots.md").read_text()
    first = re.search(r"^```python\n(.*?)^```$", page, re.S | re.M)
    assert first is not None, "docs/bots.md has no Python example"
    assert page.index("## A five-line bot") < first.start()
    code = first.group(1)
    assert code.count("tcp://127.0.0.1:5555") == 1
    script = tmp_path / "pingbot.py"
    script.write_text(code.replace("tcp://127.0.0.1:5555", broker.router))

    alice = clients.join("alice")
    bot = programs(script)
    bot.started(r"^pingbot is in public$")
    alice.send("ping")
    alice.expect(r"^\[public\] pingbot: pong$")
    alice.send("pong")  # not answered: the next answer is to the next ping
    alice.send("ping")
    alice.expect(r"^\[public\] pingbot: pong$")
    assert [line for line in alice.seen if line.startswith("[public] pingbot:")] == [
        "[public] pingbot: pong"
    ] * 2
    assert bot.popen.poll() is None and not bot.err, bot.err
