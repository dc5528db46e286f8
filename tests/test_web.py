"""``room-web`` end to end: a real broker, a real gateway, piped clients, and the page in a real
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium; no
browser is downloaded). One browser serves the module; each test opens tabs of its own.

Without Chromium these tests skip, which fails the run under CI (tests/conftest.py); ``.ci/run``
installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import client_factory, running_broker
from procs import WAIT, BrokerProc, ClientFactory, WebProc, ctl

from broker.config import DEFAULT_LIMITS, HEARTBEAT, LIVENESS

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "web.png"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root, in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,640",
)
LINES_JS = """return Array.from(document.querySelectorAll('#messages li')).map(li => ({
  kind: li.classList[0], cls: li.className, room: li.dataset.room || '',
  seq: Number(li.dataset.seq || 0), sender: li.dataset.sender || '',
  text: (li.querySelector('.text') || li).textContent, whole: li.textContent,
  shown: getComputedStyle(li).display !== 'none', marked: !!li.querySelector('.mark')}))"""
ROOM_JS = """const b = document.querySelector(`#rooms button[data-room='${arguments[0]}']`);
return b && Array.from(b.querySelectorAll('.flag')).map(f => [f.classList[1], f.title])"""
ON_SCREEN_JS = """const inside = (el) => { const r = el.getBoundingClientRect();
  return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth; };
const list = document.getElementById('messages'), box = list.getBoundingClientRect();
const last = Array.from(list.children).filter(li => li.offsetParent !== null).pop();
const r = last.getBoundingClientRect(), rooms = document.getElementById('rooms');
return {width: innerWidth, input: inside(document.getElementById('message')),
  send: inside(document.querySelector('#say button')), last: last.textContent,
  newest: inside(last) && r.top >= box.top && r.bottom <= box.bottom + 1,
  rooms: [rooms.getBoundingClientRect().width, rooms.getBoundingClientRect().height],
  room: inside(rooms.querySelector('button'))}"""
MEMBERS_JS = """return Object.fromEntries(Array.from(document.querySelectorAll('#members li'))
  .map(li => [li.querySelector('.sender').textContent,
              (li.querySelector('.account') || {title: ''}).title]))"""


def _find(program: str, debian: str) -> str | None:
    found = shutil.which(program)
    return found or (debian if os.access(debian, os.X_OK) else None)


MESSAGE_KINDS = ("message", "history")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium = _find("chromium", "/usr/bin/chromium")
    chromedriver = _find("chromedriver", "/usr/bin/chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("needs Debian's chromium and chromium-driver: apt install chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager downloads nothing
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    browser.set_script_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """One tab of the shared browser, on the gateway's page."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        driver.switch_to.new_window("tab")
        self.handle = driver.current_window_handle
        driver.get(url)

    def focus(self) -> Page:
        self.driver.switch_to.window(self.handle)
        return self

    def sign_in(self, name: str) -> None:
        self.driver.find_element(By.ID, "name").send_keys(name + Keys.ENTER)
        self.wait_line(lambda line: line["text"] == "joined public", "* joined public")
        self.wait(lambda: self.status() == "connected", "status connected")

    def sign_in_with(
        self, name: str, password: str = "", register: bool = False, invite: str = ""
    ) -> None:
        """Fill the sign-in form and send it; wait for nothing (``sign_in`` waits to chat)."""
        find = self.driver.find_element
        for field, value in (("name", name), ("password", password)):
            find(By.ID, field).clear()
            find(By.ID, field).send_keys(value)
        if find(By.ID, "register").is_selected() != register:
            find(By.ID, "register").click()
        assert find(By.ID, "invite").is_displayed() == register  # only when registering
        if register:
            find(By.ID, "invite").clear()
            find(By.ID, "invite").send_keys(invite)
        find(By.ID, "name").send_keys(Keys.ENTER)

    def refused(self) -> str:
        """The sign-in form's one line, once it shows; the chat has not started."""
        error = self.driver.find_element(By.ID, "login-error")
        self.wait(lambda: bool(error.text), "a line on the sign-in form")
        assert self.driver.find_element(By.ID, "login").is_displayed()
        assert self.status() == "not connected"
        return error.text

    def marked(self) -> dict[str, str]:
        """The members list: each name, and the title of its logged-in mark ("" for none)."""
        return self.driver.execute_script(MEMBERS_JS)

    def say(self, text: str) -> None:
        self.driver.find_element(By.ID, "message").send_keys(text + Keys.ENTER)

    def lines(self) -> list[dict[str, Any]]:
        return self.driver.execute_script(LINES_JS)

    def chat(self, room: str = "public") -> list[tuple[int, str, str]]:
        """The room's messages on the page, in page order: (seq, sender, text)."""
        said = [x for x in self.lines() if x["room"] == room and x["kind"] in MESSAGE_KINDS]
        return [(x["seq"], x["sender"], x["text"]) for x in said]

    def shown(self, text: str) -> bool:
        """Whether a line that says ``text`` is displayed (not hidden as another room's)."""
        return any(x["shown"] for x in self.lines() if x["text"] == text)

    def flags(self, room: str) -> list[list[str]] | None:
        """The marks of ``room`` in the room list ([kind, title] each), None if not listed."""
        return self.driver.execute_script(ROOM_JS, room)

    def status(self) -> str:
        return self.driver.find_element(By.ID, "status").text

    def wait(self, ok: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        try:
            WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda _: ok())
        except TimeoutException:
            tail = [x["text"] for x in self.lines()[-8:]]
            raise AssertionError(
                f"page: no {what} within {timeout}s; status {self.status()!r}; lines {tail}"
            ) from None

    def wait_line(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def ok() -> bool:
            found[:] = [x for x in self.lines() if match(x)]
            return bool(found)

        self.wait(ok, what)
        return found[0]

    def close(self) -> None:
        self.focus()
        self.driver.close()
        self.driver.switch_to.window(self.driver.window_handles[0])


@pytest.fixture
def web(broker: BrokerProc) -> Iterator[WebProc]:
    proc = WebProc(broker)
    try:
        yield proc
    finally:
        proc.stop()
        proc.kill()


@pytest.fixture
def pages(driver: Any) -> Iterator[Callable[[str], Page]]:
    opened: list[Page] = []

    def open_page(url: str) -> Page:
        opened.append(Page(driver, url))
        return opened[-1]

    try:
        yield open_page
    finally:
        for page in opened:
            if page.handle in driver.window_handles:
                page.close()


def test_browser_and_terminal_talk_both_ways(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    carol = clients.join("carol")
    page = pages(web.url)
    page.sign_in("alice")
    bob.expect(r"^\* alice entered public$")
    page.say("hi bob, the page works")
    bob.expect(r"^\[public\] alice: hi bob, the page works$")
    bob.send("hello alice, from a terminal")
    carol.send("@alice welcome!")
    mine = page.wait_line(lambda x: x["sender"] == "alice", "alice's own line")
    got = page.wait_line(lambda x: x["sender"] == "bob", "bob's line")
    mention = page.wait_line(lambda x: x["sender"] == "carol", "carol's mention")
    assert (mine["room"], mine["kind"]) == ("public", "message")
    assert mine["text"] == "hi bob, the page works"
    assert "own" in mine["cls"]
    assert got["text"] == "hello alice, from a terminal"
    assert sorted(x["seq"] for x in (mine, got, mention)) == [1, 2, 3]  # bob and carol race
    assert "mention" in mention["cls"]
    page.wait(lambda: "bob" in page.driver.find_element(By.ID, "members").text, "bob in members")
    rooms = page.driver.find_element(By.ID, "rooms").text
    assert "public" in rooms and "3" in rooms, rooms
    page.say("/msg bob just between us")
    bob.expect(r"^\[@bob\] alice: just between us$")
    bob.send("/msg alice and back")
    direct = page.wait_line(lambda x: x["text"] == "and back", "bob's direct message")
    assert (direct["kind"], direct["sender"]) == ("direct", "bob")
    page.say("/who")
    page.wait_line(lambda x: x["text"].startswith("carol") and "public" in x["text"], "/who")


def test_another_room_shows_its_history(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob", "ops")
    for k in range(3):
        bob.send(f"ops note {k}")
        bob.expect(rf"^\[ops\] bob: ops note {k}$")
    page = pages(web.url)
    page.sign_in("alice")
    button = "#rooms button[data-room='ops']"
    page.wait(lambda: bool(page.driver.find_elements(By.CSS_SELECTOR, button)), "ops listed")
    page.driver.find_element(By.CSS_SELECTOR, button).click()
    page.wait_line(lambda x: x["text"] == "joined ops", "* joined ops")
    history = [x for x in page.lines() if x["room"] == "ops" and x["kind"] in MESSAGE_KINDS]
    assert [(x["kind"], x["seq"], x["text"]) for x in history] == [
        ("history", k + 1, f"ops note {k}") for k in range(3)
    ]
    bob.expect(r"^\* alice entered ops$")
    page.say("/history 2")
    page.wait_line(lambda x: x["text"] == "history ops (2 messages)", "/history's answer")
    assert page.chat("ops") == [(k + 1, "bob", f"ops note {k}") for k in range(3)]  # none twice


def test_a_blocked_user_sees_it_and_reaches_nobody(
    web: WebProc, broker: BrokerProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    assert ctl(broker, "block", "alice").returncode == 0
    page.wait(lambda: page.status() == "blocked", "status blocked")
    bob.expect(r"^\* alice was blocked$")
    page.say("can anyone hear me?")
    page.wait_line(lambda x: x["text"].startswith("you are blocked"), "the blocked notice")
    page.say("anyone at all?")
    bob.send("quiet here")
    bob.expect(r"^\[public\] bob: quiet here$")
    page.wait_line(lambda x: x["text"] == "quiet here", "bob's line")
    assert not [line for line in bob.seen if "hear me" in line or "at all" in line]
    assert not [x for x in page.chat() if x[1] == "alice"]  # no room message of hers
    for text in ("can anyone hear me?", "anyone at all?"):  # each shown refused, with its words
        refused = page.wait_line(lambda x, t=text: t in x["text"], f"{text!r} not delivered")
        assert refused["kind"] == "error" and refused["marked"], refused
        assert refused["text"].startswith("not delivered"), refused
        assert "blocked" in refused["text"], refused


def test_fire_ends_the_page_session_with_a_clear_message(
    web: WebProc, broker: BrokerProc, pages: Callable[[str], Page]
) -> None:
    page = pages(web.url)
    page.sign_in("alice")
    assert ctl(broker, "fire", "alice").returncode == 0
    page.wait(lambda: "fired" in page.status(), "the fired status")
    assert page.status() == "you were disconnected by the admin (fired)"
    assert page.driver.find_element(By.ID, "name").is_displayed()
    assert not page.driver.find_element(By.ID, "message").is_enabled()


def test_markup_shows_as_text_and_runs_nothing(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    attacks = [
        '<img src=x onerror="window.pwned=1">',
        "<script>window.pwned=2</script>",
        '<b onmouseover="window.pwned=3">bold?</b>',
    ]
    for text in attacks:
        bob.send(text)
    page.wait(lambda: len(page.chat()) == 3, "bob's three lines")  # before the page's own
    page.say('<iframe src="javascript:window.pwned=4"></iframe>')
    page.wait(lambda: len(page.chat()) == 4, "four lines")
    assert [text for _, _, text in page.chat()] == [
        *attacks,
        '<iframe src="javascript:window.pwned=4"></iframe>',
    ]
    found = page.driver.execute_script(
        "return [document.querySelectorAll('#messages img, #messages script, #messages b,"
        " #messages iframe').length, window.pwned === undefined]"
    )
    assert found == [0, True]


def test_a_reload_resumes_the_session_and_shows_nothing_twice(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    for k in range(3):
        bob.send(f"before {k}")
    page.wait(lambda: len(page.chat()) == 3, "three lines")
    page.driver.refresh()
    bob.send("during the reload")
    page.wait(lambda: len(page.chat()) == 4, "four lines after the reload")
    bob.send("after the reload")
    page.wait(lambda: len(page.chat()) == 5, "five lines")
    texts = ["before 0", "before 1", "before 2", "during the reload", "after the reload"]
    assert page.chat() == [(k + 1, "bob", text) for k, text in enumerate(texts)]
    assert page.driver.find_element(By.ID, "whoami").text == "alice"
    assert page.status() == "connected"
    assert not [line for line in bob.seen if "alice left" in line or line.count("entered") > 1]


def test_the_longest_legal_message_passes_however_json_escapes_it(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    quoted = '"' * DEFAULT_LIMITS.max_message  # each one two bytes in the frame's JSON
    page.driver.execute_script("document.getElementById('message').value = arguments[0]", quoted)
    page.say("")
    bob.expect(rf"^\[public\] alice: {quoted}$")
    assert page.status() == "connected"


def test_a_gateway_restart_loses_nothing_and_repeats_nothing(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    bob.send("m0")
    page.wait(lambda: len(page.chat()) == 1, "m0")
    assert web.stop() == 0
    page.wait(lambda: page.status() == "reconnecting", "status reconnecting")
    for k in range(1, 6):
        bob.send(f"m{k}")
        bob.expect(rf"^\[public\] bob: m{k}$")
    again = web.restart()
    try:
        page.wait(lambda: page.status() == "connected", "status connected again")
        # What was said meanwhile shows at once, with nobody speaking after (a quiet room).
        page.wait(lambda: len(page.chat()) >= 6, "m1 to m5, with nobody speaking after")
        for k in range(6, 9):
            bob.send(f"m{k}")
        page.wait(lambda: len(page.chat()) >= 9, "m0 to m8")
        time.sleep(0.3)  # anything repeated would come now; nothing may
        assert page.chat() == [(k + 1, "bob", f"m{k}") for k in range(9)]
        page.say("still me")
        bob.expect(r"^\[public\] alice: still me$")
        assert page.driver.find_element(By.ID, "whoami").text == "alice"
    finally:
        again.stop()
        again.kill()


def test_a_closed_tab_frees_its_name_within_a_heartbeat_timeout(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    bob.expect(r"^\* alice entered public$")
    page.close()
    closed = time.monotonic()
    bob.expect(r"^\* alice left public$", timeout=HEARTBEAT * LIVENESS + 2)
    assert time.monotonic() - closed <= HEARTBEAT * LIVENESS
    clients.join("alice")


def test_a_curve_broker_through_the_gateway(tmp_path: Path, pages: Callable[[str], Page]) -> None:
    with (
        running_broker(tmp_path / "data", "--curve") as broker,
        client_factory(broker) as clients,
    ):
        web = WebProc(broker)  # finds the broker's key in its data dir, as room-client does
        try:
            bob = clients.join("bob")
            page = pages(web.url)
            page.sign_in("alice")
            page.say("over CURVE")
            bob.expect(r"^\[public\] alice: over CURVE$")
        finally:
            web.stop()
            web.kill()


# ---- accounts: registering, signing in with a password, refusals on the form -------------------

PASSWORD = "correct horse battery staple"
ACCOUNT = "logged in to a registered account"


@contextlib.contextmanager
def _web_for(data_dir: Path, *broker_options: str) -> Iterator[tuple[BrokerProc, WebProc]]:
    """A broker started with ``broker_options``, and ``room-web`` for it."""
    with running_broker(data_dir, *broker_options) as broker:
        web = WebProc(broker)
        try:
            yield broker, web
        finally:
            web.stop()
            web.kill()


def test_a_name_registered_on_the_page_chats_logged_in(
    web: WebProc,
    broker: BrokerProc,
    clients: ClientFactory,
    pages: Callable[[str], Page],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--registration open`` (the default): Register makes the account, then signs in with
    it; the members list marks who is logged in, one who comes later too; the password is in
    neither the form, the tab's storage nor the gateway's output afterwards."""
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in_with("alice", PASSWORD, register=True)
    page.wait_line(lambda x: x["text"] == "joined public", "* joined public")
    page.say("registered from a browser")
    bob.expect(r"^\[public\] alice: registered from a browser$")
    assert re.search(r"^alice\s+public\s+logged in$", ctl(broker, "who").stdout, re.M)
    assert re.search(r"^alice\s", ctl(broker, "accounts").stdout, re.M)
    page.wait(lambda: page.marked() == {"alice": ACCOUNT, "bob": ""}, "alice marked, bob not")
    made = ctl(broker, "register", "carol", env={"ROOM_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("ROOM_PASSWORD", PASSWORD)  # carol's terminal logs in with it
    clients.join("carol")
    page.wait(lambda: page.marked().get("carol") == ACCOUNT, "carol, who came later, marked")
    form, stored = page.driver.execute_script(
        "return [['name', 'password', 'invite'].map(id => document.getElementById(id).value),"
        " JSON.stringify(sessionStorage)]"
    )
    assert form[1:] == ["", ""] and PASSWORD not in stored, (form, stored)
    assert not [line for line in web.drain() + web.err if PASSWORD in line]


def test_a_registered_name_signs_in_with_its_password_only(
    web: WebProc, broker: BrokerProc, pages: Callable[[str], Page]
) -> None:
    made = ctl(broker, "register", "alice", env={"ROOM_PASSWORD": PASSWORD})
    assert made.returncode == 0, made.stderr
    page = pages(web.url)
    page.sign_in_with("alice")
    assert page.refused() == "alice is a registered name: enter its password"
    page.sign_in_with("alice", "not the password")
    assert page.refused() == "login refused: wrong password for alice"
    page.sign_in_with("alice", PASSWORD)
    page.wait_line(lambda x: x["text"] == "joined public", "* joined public")
    page.wait(lambda: page.status() == "connected", "status connected")
    assert page.driver.find_element(By.ID, "login-error").text == ""
    assert not [x for x in page.lines() if "not needed" in x["text"]]
    page.wait(lambda: page.marked() == {"alice": ACCOUNT}, "alice marked logged in")
    assert ctl(broker, "ban", "alice").returncode == 0
    page.wait(lambda: page.driver.find_element(By.ID, "name").is_displayed(), "the form again")
    page.sign_in_with("alice", PASSWORD)
    assert page.refused() == "login refused: the admin banned the account alice"


def test_a_password_for_a_free_name_is_said_to_be_unneeded(
    web: WebProc, pages: Callable[[str], Page]
) -> None:
    page = pages(web.url)
    page.sign_in_with("alice", PASSWORD)
    said = page.wait_line(lambda x: "not needed" in x["text"], "the notice")
    assert said["text"] == "alice is not registered: the password was not needed"
    page.wait(lambda: page.marked() == {"alice": ""}, "alice in the members, unmarked")


def test_registration_closed_and_accounts_required_refuse_in_one_line(
    tmp_path: Path, pages: Callable[[str], Page]
) -> None:
    policy = ("--accounts", "required", "--registration", "closed")
    with _web_for(tmp_path / "data", *policy) as (broker, web):
        page = pages(web.url)
        page.sign_in_with("alice")
        assert page.refused() == "alice is not registered, and only registered names may chat here"
        page.sign_in_with("alice", PASSWORD, register=True)
        assert page.refused() == (
            "not registered: registration is closed on this broker: the admin registers names"
            " (room-ctl register)"
        )
        assert "alice" not in ctl(broker, "accounts").stdout
        made = ctl(broker, "register", "alice", env={"ROOM_PASSWORD": PASSWORD})
        assert made.returncode == 0, made.stderr
        page.sign_in_with("alice", PASSWORD)
        page.wait_line(lambda x: x["text"] == "joined public", "* joined public")


def test_registration_by_invite_takes_the_code_from_the_form(
    tmp_path: Path, pages: Callable[[str], Page]
) -> None:
    with _web_for(tmp_path / "data", "--registration", "invite") as (broker, web):
        page = pages(web.url)
        page.sign_in_with("alice", PASSWORD, register=True)
        assert page.refused() == (
            "not registered: registration is by invite on this broker: ask the admin for a code"
        )
        made = ctl(broker, "invite", "--hours", "1")
        assert made.returncode == 0, made.stderr
        page.sign_in_with("alice", PASSWORD, register=True, invite=made.stdout.split()[-1])
        page.wait_line(lambda x: x["text"] == "joined public", "* joined public")
        page.wait(lambda: page.marked() == {"alice": ACCOUNT}, "alice marked logged in")


def test_a_message_over_the_limit_is_refused_not_cut(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    """The page refuses a message over the broker's limit (4096 bytes here) in the terminal
    client's words, and keeps it in the input to shorten; it never cuts it."""
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    box = page.driver.find_element(By.ID, "message")
    for text, size in (("x" * 4100, 4100), ("é" * 2049, 4098)):  # bytes of UTF-8, not letters
        box.send_keys(text + Keys.ENTER)
        words = f"not delivered: message is {size} bytes; the limit is 4096"
        refused = page.wait_line(lambda x, w=words: x["text"] == w, words)
        assert refused["kind"] == "error", refused
        assert box.get_attribute("value") == text  # kept whole, to be shortened
        box.clear()
    page.say("y" * 4096)  # at the limit: sent
    bob.expect(r"^\[public\] alice: y{4096}$")
    assert not [line for line in bob.seen if "xxxx" in line or "éé" in line]
    assert not [x for x in page.chat() if x[1] == "alice" and x[2][0] != "y"]


def test_errors_look_like_errors_and_notices_like_notices(
    web: WebProc, pages: Callable[[str], Page]
) -> None:
    page = pages(web.url)
    page.sign_in("alice")
    for typed, said in (
        ("/nosuch", "unknown command /nosuch: try /help"),
        ("/join", "usage: /join ROOM"),
        ("/msg nobody are you there?", "not delivered: nobody is not connected: see /who"),
    ):
        page.say(typed)
        error = page.wait_line(lambda x, s=said: x["text"] == s, said)
        assert error["kind"] == "error" and error["marked"], error
    joined = page.wait_line(lambda x: x["text"] == "joined public", "* joined public")
    assert joined["kind"] == "notice" and not joined["marked"], joined
    colours = page.driver.execute_script(
        "return ['#messages li.error', '#messages li.notice'].map("
        "q => getComputedStyle(document.querySelector(q)).color)"
    )
    assert colours[0] != colours[1], colours


def test_each_room_shows_its_own_lines(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    """Notices of a room (who came and went, joined, its history) show only while the page is in
    that room, as its messages do; errors and direct messages show in every room."""
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    clients.join("carol")
    entered = page.wait_line(lambda x: x["text"] == "carol entered public", "carol entered")
    bob.send("said in public")
    page.wait(lambda: len(page.chat()) == 1, "bob's line")
    page.say("/join ops")
    page.wait_line(lambda x: x["text"] == "joined ops", "* joined ops")
    clients.join("dave", "ops")
    page.wait_line(lambda x: x["text"] == "dave entered ops", "dave entered ops")
    page.say("/nosuch")
    bob.send("/msg alice psst")
    page.wait_line(lambda x: x["text"] == "psst", "bob's direct message")

    def shown() -> set[str]:
        return {x["text"] for x in page.lines() if x["shown"]}

    everywhere = {"unknown command /nosuch: try /help", "psst"}
    in_public = {entered["text"], "said in public"}
    in_ops = {"joined ops", "dave entered ops"}
    page.wait(lambda: everywhere | in_ops <= shown() and not in_public & shown(), "ops alone")
    page.say("/join public")
    page.wait(lambda: everywhere | in_public <= shown() and not in_ops & shown(), "public alone")


def test_private_and_requested_rooms_are_marked(
    web: WebProc, broker: BrokerProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    assert ctl(broker, "private", "ops").returncode == 0
    clients.join("bob", "hall")
    page = pages(web.url)
    page.sign_in("alice")
    page.wait(lambda: page.flags("hall") == [] and bool(page.flags("ops")), "hall and ops listed")
    [(kind, title)] = page.flags("ops") or []
    assert kind == "private" and "admin" in title, (kind, title)
    page.driver.find_element(By.CSS_SELECTOR, "#rooms button[data-room='ops']").click()
    page.wait_line(lambda x: x["text"].startswith("ops is private"), "the request's notice")
    page.wait(lambda: [k for k, _ in page.flags("ops") or []] == ["requested"], "ops requested")
    [(_, title)] = page.flags("ops") or []
    assert "asked" in title and "admin" in title, title
    assert page.flags("public") == []
    assert ctl(broker, "allow", "alice", "ops").returncode == 0
    page.wait_line(lambda x: x["text"] == "joined ops", "* joined ops")
    page.wait(lambda: [k for k, _ in page.flags("ops") or []] == ["private"], "ops private again")


def test_a_denied_request_is_told_as_a_notice_in_every_room(
    web: WebProc, broker: BrokerProc, pages: Callable[[str], Page]
) -> None:
    """``room-ctl deny`` answers a waiting request with the broker's ``Notice``: the page shows it
    as a notice, in whichever room it is, and the room is no longer marked requested."""
    assert ctl(broker, "private", "ops").returncode == 0
    page = pages(web.url)
    page.sign_in("alice")
    page.say("/join ops")
    page.wait(lambda: [k for k, _ in page.flags("ops") or []] == ["requested"], "ops requested")
    assert ctl(broker, "deny", "alice", "ops").returncode == 0
    denied = page.wait_line(lambda x: "denied" in x["text"] and "ops" in x["text"], "the denial")
    assert denied["kind"] == "notice" and not denied["marked"], denied
    page.wait(lambda: [k for k, _ in page.flags("ops") or []] == ["private"], "ops not requested")
    page.say("/join hall")
    page.wait(lambda: page.shown("joined hall"), "the page in hall")
    assert page.shown(denied["text"])


def test_a_broker_notice_is_a_notice_shown_in_every_room(
    web: WebProc, broker: BrokerProc, pages: Callable[[str], Page]
) -> None:
    page = pages(web.url)
    page.sign_in("alice")
    assert ctl(broker, "block", "alice").returncode == 0
    page.wait(lambda: page.status() == "blocked", "status blocked")
    assert ctl(broker, "unblock", "alice").returncode == 0
    told = page.wait_line(lambda x: x["text"].startswith("you are unblocked"), "the Notice")
    assert told["kind"] == "notice" and told["shown"], told
    page.say("/join ops")
    page.wait(lambda: page.shown("joined ops"), "the page in ops")
    assert page.shown(told["text"])


def test_direct_messages_name_sender_and_recipient_as_the_terminal_does(
    web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    page.say("/msg bob just between us")
    bob.expect(r"^\[@bob\] alice: just between us$")
    bob.send("/msg alice and back")
    bob.send("in the room")
    page.wait(lambda: len(page.chat()) == 1, "bob's room line")
    lines = {x["text"]: x["whole"] for x in page.lines() if x["kind"] in ("direct", "message")}
    assert re.fullmatch(r"\d\d:\d\d \[@bob\] alice: just between us", lines["just between us"])
    assert re.fullmatch(r"\d\d:\d\d \[@alice\] bob: and back", lines["and back"])
    assert re.fullmatch(r"\d\d:\d\d bob: in the room", lines["in the room"])


@pytest.mark.parametrize("width", [360, 390, 600, 1280])
def test_the_input_and_the_newest_line_stay_on_screen_at_any_width(
    width: int, web: WebProc, clients: ClientFactory, pages: Callable[[str], Page]
) -> None:
    """A phone (360 to 600 px wide) and a desktop: after 60 messages the input line and the
    newest message are on screen, and the room list is readable."""
    senders = [clients.join("bob"), clients.join("carol")]
    page = pages(web.url)
    size = page.driver.get_window_size()
    page.driver.set_window_size(width, 800)
    try:
        page.sign_in("alice")
        for k in range(60):  # two senders: each within the broker's burst
            senders[k % 2].send(f"message {k}: " + "words to fill a line " * (k % 4))
        page.wait(lambda: len(page.chat()) == 60, "60 lines")
        seen: dict[str, Any] = {}

        def on_screen() -> bool:
            seen.update(page.driver.execute_script(ON_SCREEN_JS))
            return bool(seen["input"] and seen["send"] and seen["newest"] and seen["room"])

        page.wait(on_screen, f"input and newest line on screen at {width} px")
        assert seen["width"] == width, seen
        assert seen["last"].endswith(page.chat()[-1][2]), seen  # bob and carol race
        assert seen["rooms"][0] >= 150 and seen["rooms"][1] >= 30, seen  # readable, not a strip
        page.say("the newest")
        page.wait_line(lambda x: x["text"] == "the newest", "the page's own line")
        page.wait(on_screen, "the newest line on screen")
        assert seen["last"].endswith("alice: the newest"), seen
    finally:
        page.driver.set_window_size(size["width"], size["height"])


def test_the_page_as_shown_in_the_docs(
    web: WebProc,
    broker: BrokerProc,
    clients: ClientFactory,
    pages: Callable[[str], Page],
    tmp_path: Path,
) -> None:
    """A chat with a few messages, a direct message, an error and a private room, photographed
    at 1280 px (docs/web.png, shown in the README) and at 390 px (in the test's temp dir)."""
    for room in ("board", "ops"):
        assert ctl(broker, "private", room).returncode == 0
    bob = clients.join("bob")
    carol = clients.join("carol")
    clients.join("dave", "design")
    page = pages(web.url)
    size = page.driver.get_window_size()
    page.driver.set_window_size(1280, 720)
    try:
        page.sign_in("alice")
        bob.expect(r"^\* alice entered public$")
        page.say("morning! the page works on a phone too now")
        bob.expect(r"^\[public\] alice: morning!")
        bob.send("nice, the input stays in view")
        page.wait(lambda: len(page.chat()) == 2, "bob's line")
        carol.send("@alice can you look at the ops notes?")
        page.wait(lambda: len(page.chat()) == 3, "carol's line")
        bob.send("/msg alice lunch at noon?")
        page.wait_line(lambda x: x["text"] == "lunch at noon?", "bob's direct message")
        page.say("/msg bob yes, see you there")
        page.wait_line(lambda x: x["text"] == "yes, see you there", "alice's direct message")
        page.say("/join ops")
        page.wait_line(lambda x: x["text"].startswith("ops is private"), "the request's notice")
        page.say("/hsitory")
        page.wait_line(lambda x: x["kind"] == "error", "the error")
        page.wait(lambda: page.flags("design") is not None and page.flags("board"), "the rooms")
        SCREENSHOT.write_bytes(page.driver.get_screenshot_as_png())  # shown in the README
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page.driver.set_window_size(390, 844)
        page.wait(lambda: page.driver.execute_script("return innerWidth") == 390, "390 px")
        (tmp_path / "web-390.png").write_bytes(page.driver.get_screenshot_as_png())
    finally:
        page.driver.set_window_size(size["width"], size["height"])


# ---- what a browser cannot get around (an aiohttp client plays the browser) ---------------------


def test_origin_frame_size_flood_and_headers(web: WebProc) -> None:
    asyncio.run(_safety(web.url))


async def _safety(url: str) -> None:
    import aiohttp

    ws_url = url.replace("http://", "ws://") + "ws"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            csp = page.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "default-src 'none'" in csp
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url, origin="http://evil.example")
        assert refused.value.status == 403
        host = url.removeprefix("http://").rstrip("/")
        async with http.ws_connect(ws_url, origin=f"http://{host}") as ws:
            await ws.send_str(json.dumps({"t": "input", "text": "x" * 10_000}))
            msg = await ws.receive(timeout=WAIT)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009  # too big
        async with http.ws_connect(ws_url) as ws:
            await ws.send_str(json.dumps({"t": "resume", "token": "guessed"}))
            msg = await ws.receive(timeout=WAIT)
            assert json.loads(msg.data)["t"] == "error"  # no such tab, and no name to start one
            # The gateway may close the socket while the flood is still being written.
            with contextlib.suppress(aiohttp.ClientConnectionResetError):
                for _ in range(200):
                    await ws.send_str("{}")
            while (msg := await ws.receive(timeout=WAIT)).type is aiohttp.WSMsgType.TEXT:
                pass
            said = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else ws.close_code
            assert said == 4002, (msg, ws.close_code)  # flooding


def test_room_bench_web_quick_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """``room-bench --web --quick`` (WebSocket clients through the gateway): its figures are for
    docs/performance.md; here only that every message came once, in order."""
    out = tmp_path / "web.json"
    argv = [sys.executable, "-c", "from bench.cli import main; main()", "--web", "--quick",
            "--json", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    [entry] = json.loads(out.read_text())["scenarios"]
    assert entry["delivered"] == entry["expected"] > 0
    assert (entry["lost"], entry["duplicates"], entry["disorder"]) == (0, 0, 0)
