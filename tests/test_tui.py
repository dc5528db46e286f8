"""The interactive client: its styling and completion in memory, then the real program on a real
pseudo-terminal (tmux), asserting on what the screen shows."""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
from procs import WAIT, BrokerProc, ClientFactory, ctl
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from broker.config import HEARTBEAT
from broker.wire import protocol as p
from client.core import Session
from client.effects import Kind, Line
from client.tui import ChatCompleter, fragments, sender_style, status

NOW = 1_700_000_000.0


def plain(frags: list[tuple[str, str]]) -> str:
    return "".join(text for _, text in frags)


def styles_of(frags: list[tuple[str, str]], text: str) -> list[str]:
    return [style for style, t in frags if t == text]


# ---- in memory --------------------------------------------------------------------------------


def test_a_message_shows_local_time_then_the_piped_line() -> None:
    line = Line(Kind.MESSAGE, "hi there", room="public", sender="bob", ts=NOW)
    hhmm = time.strftime("%H:%M", time.localtime(NOW))
    assert plain(fragments(line, "alice", NOW)) == f"{hhmm} [public] bob: hi there"
    assert styles_of(fragments(line, "alice", NOW), "bob") == [sender_style("bob")]


def test_sender_colours_are_stable_and_differ() -> None:
    assert sender_style("bob") == sender_style("bob")
    names = ["alice", "bob", "carol", "dave", "erin", "frank"]
    assert len({sender_style(n) for n in names}) >= 4


def test_own_messages_are_bold_and_mentions_highlighted() -> None:
    own = fragments(Line(Kind.MESSAGE, "x", room="r", sender="alice", ts=NOW, own=True), "alice")
    assert all("bold" in s or "own" in s for s in styles_of(own, "alice") + styles_of(own, "x"))
    text = "hey @alice, and @alice2 and mail@alice and @ALICE"
    frags = fragments(Line(Kind.MESSAGE, text, room="r", sender="bob", ts=NOW), "alice")
    mentions = [t for s, t in frags if s == "class:mention"]
    assert mentions == ["@alice", "@ALICE"]
    assert plain(frags).endswith(text)


def test_history_is_marked_and_dim_and_an_old_day_shows_its_date() -> None:
    old = NOW - 3 * 86400
    frags = fragments(Line(Kind.HISTORY, "then", room="r", sender="bob", ts=old), "alice", NOW)
    assert plain(frags).startswith("~ " + time.strftime("%m-%d %H:%M", time.localtime(old)))
    assert all("history" in s for s, t in frags if t in ("bob", "then", "[r] "))


def test_direct_messages_and_notices() -> None:
    told = Line(Kind.DIRECT, "psst", sender="bob", to="alice", ts=NOW)
    assert plain(fragments(told, "alice", NOW)).endswith("[@alice] bob: psst")
    notice = Line(Kind.NOTICE, "bob entered public")
    assert fragments(notice, "alice") == [("class:notice", "* bob entered public")]
    control = Line(Kind.MESSAGE, "\x1b[2Jgone", room="r", sender="bob", ts=NOW)
    assert "\x1b" not in plain(fragments(control, "alice"))


def _session() -> Session:
    s = Session("alice", rng=random.Random(1), track=True)
    s.on_server(p.Welcome(p.VERSION, "alice", "public", "tcp://x:1", "s", HEARTBEAT), NOW)
    s.on_server(p.Joined("public", 0), NOW)
    s.on_room([p.Synced("public", s.sync_nonce, 0)], NOW)
    users = [p.UserInfo(n, r, False) for n, r in (("alice", "public"), ("bob", "public"))]
    s.on_server(p.Users([*users, p.UserInfo("bill", "games", False)]), NOW)
    s.on_server(p.Rooms([p.RoomInfo("games", 1, 0), p.RoomInfo("gardening", 0, 0)]), NOW)
    return s


def test_the_status_bar_reads_the_session() -> None:
    s = _session()
    assert plain(status(s)) == " alice | public | 2 members: alice, bob | connected "
    assert plain(status(s, width=40)) == " alice | public | 2 members | connected "
    s.on_room([p.Presence("public", "alice", "blocked")], NOW)
    assert plain(status(s)).endswith("| connected | blocked ")
    s.tick(NOW + s.lost_after + 1)
    assert "reconnecting" in plain(status(s))


def completions(s: Session, text: str) -> list[str]:
    found = ChatCompleter(s).get_completions(
        Document(text), CompleteEvent(completion_requested=True)
    )
    return [text[: len(text) + c.start_position] + c.text for c in found]


def test_completion_of_commands_rooms_and_users() -> None:
    s = _session()
    assert completions(s, "/jo") == ["/join "]
    assert completions(s, "/h") == ["/history ", "/help"]
    assert completions(s, "/join ga") == ["/join games", "/join gardening"]
    assert completions(s, "/who p") == ["/who public"]
    assert completions(s, "/msg b") == ["/msg bill ", "/msg bob "]
    assert completions(s, "hello @bo") == ["hello @bob"]
    assert completions(s, "hello bo") == []
    assert completions(s, "//x") == []


# ---- on a real terminal -----------------------------------------------------------------------


def needs_tmux() -> None:
    """Skip without tmux; but fail under CI, which installs it (Debian's tmux package)."""
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs tmux (Debian's tmux package)")
        pytest.skip("tmux is not installed (apt install tmux)")


class Screen:
    """``room-client join`` in a tmux pane of its own: keys in, the visible screen out."""

    def __init__(self, argv: list[str], env: dict[str, str], width: int = 80, height: int = 20):
        self.dir = tempfile.mkdtemp(prefix="room-tmux-")  # short: a socket path has a limit
        self.tmux = ["tmux", "-S", os.path.join(self.dir, "sock"), "-f", os.devnull]
        # The pane keeps the exit code on screen, so a test that fails can show it.
        command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *argv])
        shell = f'{command}; echo "[exited $?]"; sleep {WAIT * 6:g}'
        size = ["-x", str(width), "-y", str(height)]
        self._tmux("new-session", "-d", "-s", "chat", *size, shell)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [*self.tmux, *args], capture_output=True, text=True, timeout=WAIT, check=True
        )
        return done.stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "chat")

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.text().splitlines()]

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)

    def key(self, *names: str) -> None:
        self._tmux("send-keys", "-t", "chat", *names)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "chat", "-x", str(width), "-y", str(height))

    def wait(self, check: str | Callable[[list[str]], bool], timeout: float = WAIT) -> list[str]:
        """The screen once ``check`` (a regex searched line by line, or a predicate) holds and
        the prompt is drawn: while printing, prompt_toolkit erases the prompt for a moment."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            found = check(lines) if callable(check) else any(re.search(check, x) for x in lines)
            if found and self.prompt(lines):
                return lines
            if time.monotonic() > deadline:
                shown = "\n".join(lines)
                raise AssertionError(f"screen never showed {check!r} in {timeout}s:\n{shown}")
            time.sleep(0.05)

    def prompt(self, lines: list[str] | None = None) -> str:
        """The input line: the last line that starts with the prompt ("" while none is)."""
        found = [line for line in (lines or self.lines()) if re.match(r"^\[[\w-]+\] \w+>", line)]
        return found[-1] if found else ""

    def status(self, lines: list[str] | None = None) -> str:
        return [line for line in (lines or self.lines()) if line.strip()][-1]

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=WAIT)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def terminal(broker: BrokerProc) -> Iterator[Callable[..., Screen]]:
    """Starts interactive clients in tmux against ``broker``; every one is stopped."""
    needs_tmux()
    screens: list[Screen] = []

    def start(name: str, *extra: str, width: int = 80, height: int = 20) -> Screen:
        argv = [sys.executable, "-c", "from client.cli import main; main()", "join"]
        argv += ["--server", broker.router, "--name", name, *extra]
        env = {"ROOM_DATA_DIR": str(broker.data_dir)}
        screen = Screen(argv, env, width, height)
        screens.append(screen)
        return screen

    try:
        yield start
    finally:
        for screen in screens:
            screen.close()


def test_a_burst_and_a_resize_leave_the_half_typed_line_intact(
    broker: BrokerProc, clients: ClientFactory, terminal: Callable[..., Screen]
):
    bob = clients.join("bob")
    alice = terminal("alice")
    alice.wait(r"^\* joined public$")
    lines = alice.wait(lambda ls: "2 members" in alice.status(ls))
    bar = r" alice \| public \| 2 members: alice, bob \| connected"
    assert re.fullmatch(bar, alice.status(lines))
    assert alice.prompt(lines) == "[public] alice>"

    alice.type("half typ")
    for n in range(1, 26):
        bob.send(f"burst {n}")
    lines = alice.wait(r"\[public\] bob: burst 25$")
    assert alice.prompt(lines) == "[public] alice> half typ"
    assert re.search(r"^\d\d:\d\d \[public\] bob: burst 24$", "\n".join(lines), re.M)

    alice.resize(50, 14)
    bob.send("after the resize")

    def redrawn(ls: list[str]) -> bool:  # the line is printed a moment before the bar is drawn
        after = any(line.endswith("bob: after the resize") for line in ls)
        return after and alice.status(ls).startswith(" alice | public")

    lines = alice.wait(redrawn)
    assert alice.prompt(lines) == "[public] alice> half typ"
    assert alice.status(lines).startswith(" alice | public | 2 members")

    alice.type("ed line")
    alice.key("Enter")
    bob.expect(r"^\[public\] alice: half typed line$")
    lines = alice.wait(r"\[public\] alice: half typed line$")
    assert alice.prompt(lines) == "[public] alice>"

    assert ctl(broker, "block", "alice").returncode == 0
    alice.wait(lambda ls: alice.status(ls).endswith("| connected | blocked"))
    alice.key("Up")  # input history
    alice.wait(lambda ls: alice.prompt(ls) == "[public] alice> half typed line")


def test_tab_completes_a_room_and_a_direct_message_reaches_only_its_target(
    broker: BrokerProc, clients: ClientFactory, terminal: Callable[..., Screen]
):
    bob = clients.join("bob", "gamesnight")
    carol = clients.join("carol")
    alice = terminal("alice")
    alice.wait(r"^\* joined public$")
    alice.wait(lambda ls: "2 members" in alice.status(ls))  # the listings have come

    alice.type("/join gam")
    alice.key("Tab")
    alice.wait(lambda ls: alice.prompt(ls) == "[public] alice> /join gamesnight")
    alice.key("Enter")
    alice.wait(r"^\* joined gamesnight$")
    bob.expect(r"^\* alice entered gamesnight$")
    alice.wait(lambda ls: "| gamesnight | 2 members: alice, bob |" in alice.status(ls))

    alice.type("/msg ca")
    alice.key("Tab")
    alice.wait(lambda ls: alice.prompt(ls) == "[gamesnight] alice> /msg carol")
    alice.type("psst @carol")
    alice.key("Enter")
    carol.expect(r"^\[@carol\] alice: psst @carol$")
    alice.wait(r"^\d\d:\d\d \[@carol\] alice: psst @carol$")
    alice.type("/help")
    alice.key("Enter")
    alice.wait(r"^\* /msg USER TEXT +send TEXT to USER alone")
    bob.send("marker")
    alice.wait(r"\[gamesnight\] bob: marker$")
    assert not any("psst" in line for line in bob.seen + bob.drain())


def test_on_a_terminal_the_name_is_asked_for_and_exit_leaves_cleanly(
    broker: BrokerProc, clients: ClientFactory
):
    pexpect = pytest.importorskip("pexpect")
    watcher = clients.join("watcher")
    argv = ["-c", "from client.cli import main; main()", "join", "--server", broker.router]
    env = {**os.environ, "ROOM_DATA_DIR": str(broker.data_dir), "TERM": "xterm"}
    child = pexpect.spawn(sys.executable, argv, env=env, timeout=WAIT, dimensions=(24, 80))
    try:
        child.expect("Your name: ")
        child.sendline("zoe")
        child.expect(r"\* joined public")
        watcher.expect(r"^\* zoe entered public$")
        child.send("/exit\r")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        watcher.expect(r"^\* zoe left public$")
    finally:
        child.close(force=True)


def test_passwd_on_a_terminal_changes_the_password_unechoed(
    broker: BrokerProc, clients: ClientFactory
):
    pexpect = pytest.importorskip("pexpect")
    made = ctl(broker, "register", "zoe", env={"ROOM_PASSWORD": "old password"})
    assert made.returncode == 0, made.stderr
    argv = ["-c", "from client.cli import main; main()", "join", "--server", broker.router]
    argv += ["--name", "zoe"]
    env = {**os.environ, "ROOM_DATA_DIR": str(broker.data_dir), "TERM": "xterm"}
    child = pexpect.spawn(sys.executable, argv, env=env, timeout=WAIT, dimensions=(24, 80))
    try:
        child.expect("Password for zoe: ")
        child.sendline("old password")
        child.expect(r"\* joined public")
        child.send("/passwd\r")
        child.expect("New password:")
        child.send("new password\r")
        child.expect("Again:")
        child.send("new password\r")
        child.expect(r"\* your password is changed")
        assert b"new password" not in child.before  # never echoed
        child.send("/exit\r")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        child.close(force=True)
    old = clients.start("zoe", password="old password")
    assert old.wait() == 1 and "wrong password" in old.err[0], old.err
    new = clients.start("zoe", password="new password")
    new.expect(r"^\* joined public$")
