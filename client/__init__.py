"""The room chat client: a sans-IO session (``core``), a thin ZeroMQ layer (``connection``), two
front ends (``piped`` for scripts, ``tui`` for people) and the ``room-client`` CLI (``cli``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from client.control import CurveKeys


def run(
    *,
    server: str,
    name: str,
    room: str,
    history: int,
    interactive: bool,
    sub_hwm: int | None = None,
    curve: CurveKeys | None = None,
) -> int:
    """Chat until the user leaves or the broker ends the session; returns the exit code.

    Imported lazily so that ``import client`` (for ``client.ctl``) does not load prompt_toolkit.
    """
    from client.app import run as run_app

    return run_app(
        server=server,
        name=name,
        room=room,
        history=history,
        interactive=interactive,
        sub_hwm=sub_hwm,
        curve=curve,
    )
