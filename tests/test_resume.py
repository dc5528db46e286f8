"""Coming back: a session resumed on a new connection reads its room at once, and catches up on
what was said while it was away without waiting for anyone to speak (a quiet room is the normal
case). Real brokers, gateways, clients and a real Chromium (the page)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procs import ClientFactory, WebProc
from test_web import Page, driver, pages, web  # noqa: F401  (fixtures)


def test_a_gateway_restart_shows_what_was_said_meanwhile_with_nothing_said_after(
    web: WebProc,  # noqa: F811
    clients: ClientFactory,
    pages: Callable[[str], Page],  # noqa: F811
) -> None:
    bob = clients.join("bob")
    page = pages(web.url)
    page.sign_in("alice")
    bob.send("m0")
    page.wait(lambda: len(page.chat()) == 1, "m0")
    assert web.stop() == 0
    page.wait(lambda: page.status() == "reconnecting", "status reconnecting")
    for k in range(1, 4):
        bob.send(f"m{k}")
        bob.expect(rf"^\[public\] bob: m{k}$")
    again = web.restart()
    try:
        page.wait(lambda: len(page.chat()) >= 4, "m1 to m3, with nobody speaking after")
        assert page.chat() == [(k + 1, "bob", f"m{k}") for k in range(4)]
    finally:
        again.stop()
        again.kill()


_ = Any
