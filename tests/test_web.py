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

from broker.config import HEARTBEAT, LIVENESS

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
  text: (li.querySelector('.text') || li).textContent}))"""


def _find(program: str, debian: str) -> str | None:
    found = shutil.which(program)
    return found or (debian if os.access(debian, os.X_OK) else None)


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

    def say(self, text: str) -> None:
        self.driver.find_element(By.ID, "message").send_keys(text + Keys.ENTER)

    def lines(self) -> list[dict[str, Any]]:
        return self.driver.execute_script(LINES_JS)

    def chat(self, room: str = "public") -> list[tuple[int, str, str]]:
        """The room's messages on the page, in page order: (seq, sender, text)."""
        return [(x["seq"], x["sender"], x["text"]) for x in self.lines() if x["room"] == room]

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
    SCREENSHOT.write_bytes(page.driver.get_screenshot_as_png())  # shown in the README
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    history = [x for x in page.lines() if x["room"] == "ops"]
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
    bob.send("quiet here")
    bob.expect(r"^\[public\] bob: quiet here$")
    page.wait_line(lambda x: x["text"] == "quiet here", "bob's line")
    assert not [line for line in bob.seen if "hear me" in line]
    assert not [x for x in page.lines() if x["text"] == "can anyone hear me?"]


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
